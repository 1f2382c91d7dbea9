"""The robust-transfer table of RESULTS.md from the ``results.csv`` of several seeds' runs.

    robench grid examples/robust-mnist.toml --seed 0 --out runs/s0
    robench grid examples/robust-mnist.toml --seed 1 --out runs/s1 ...
    python benchmarks/summarize_transfer.py runs/s*/robust-mnist/results.csv

One Markdown row per model (``trades`` models left out unless ``--all``): source clean
accuracy, source worst case at Linf eps 0.1 and 0.3, source PGD at 0.3, target clean, target
worst case at 0.1, perceptual alignment (mean +- standard deviation over the files) and the
training seconds of each file, in the order given.
"""

from __future__ import annotations

import argparse
import statistics

import pandas as pd

COLUMNS = ("source clean", "source worst case @0.1", "@0.3", "source PGD @0.3",
           "target clean", "target worst case @0.1", "perceptual alignment")


def model_figures(rows: pd.DataFrame) -> dict[str, float]:
    """The table's figures for one model's rows of one run."""
    def robust(domain: str, attack: str, eps: str) -> float:
        hit = rows[(rows.domain == domain) & (rows.attack == attack) & (rows.threat == "linf")
                   & (rows.eps_label.astype(str) == eps)]
        return float(hit.robust_acc.iloc[0]) if len(hit) else float("nan")

    alignment = rows.perceptual_alignment.dropna()
    return {
        "source clean": float(rows[rows.domain == "source"].clean_acc.iloc[0]),
        "source worst case @0.1": robust("source", "worst-case", "0.1"),
        "@0.3": robust("source", "worst-case", "0.3"),
        "source PGD @0.3": robust("source", "pgd", "0.3"),
        "target clean": float(rows[rows.domain == "target"].clean_acc.iloc[0]),
        "target worst case @0.1": robust("target", "worst-case", "0.1"),
        "perceptual alignment": float(alignment.iloc[0]) if len(alignment) else float("nan"),
        "train s": float(rows.train_seconds.dropna().iloc[0]),
    }


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="results.csv of each seed's run")
    parser.add_argument("--all", action="store_true", help="keep the trades models")
    args = parser.parse_args()
    per_model: dict[str, list[dict[str, float]]] = {}
    for path in args.results:
        table = pd.read_csv(path)
        for model, rows in table.groupby("model"):
            if "trades" not in model or args.all:
                per_model.setdefault(str(model), []).append(model_figures(rows))
    print("| model | " + " | ".join(COLUMNS) + " | train s | runs |")
    print("|---" * (len(COLUMNS) + 3) + "|")
    for model, runs in per_model.items():
        cells = [_mean_sd([run[c] for run in runs]) for c in COLUMNS]
        seconds = ", ".join(f"{run['train s']:.0f}" for run in runs)
        print(f"| {model} | " + " | ".join(cells) + f" | {seconds} | {len(runs)} |")


if __name__ == "__main__":
    main()
