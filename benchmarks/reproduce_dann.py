"""Reproduce the DANN effect on digits -> digits-m through the real grid.

    python benchmarks/reproduce_dann.py --seeds 5 --backbones digits-cnn

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--backbones", default="digits-cnn")
    parser.add_argument("--out", default=None, help="keep the runs here (default: temporary)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="robench-dann-"))
    rows = []
    for seed in range(args.seeds):
        results = robench.run_grid({
            "name": f"dann-seed{seed}", "seed": seed, "dataset": "digits", "target": "digits-m",
            "backbones": args.backbones.split(","), "heads": ["linear"],
            "adaptors": ["none", "dann"], "attacks": ["fgsm"], "eps": {"linf": ["2/255"]},
            "limit": "all", "reporters": ["csv"], "out": str(out),
        })
        with sqlite3.connect(out / f"dann-seed{seed}" / "results.sqlite") as db:
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
