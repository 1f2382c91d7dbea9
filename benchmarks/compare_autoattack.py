"""Compare robench's AutoAttack presets with the reference AutoAttack on a PGD-AT MNIST model.

    python benchmarks/compare_autoattack.py --n 20                  # smoke run
    python benchmarks/compare_autoattack.py --n 800 --json aa.json  # ~15 min, 2 loaded cores

1. Training, through robench itself: ``robench.run_grid`` on the shipped real MNIST subset
   (``mnist``, 28x28 grey, no target) trains ``digits-cnn`` + ``linear`` under the ``pgd-at``
   defense (Linf eps 0.3, PGD-``--at-steps`` inner maximisation, eps warm-up over 3 epochs,
   ``--epochs`` epochs, batch 64, one local worker) and evaluates FGSM at 0.3 (cheap).  The run
   folder is ``--out/pgd-at-mnist``: a second invocation resumes the training from its store.
   The model is ``robench.load_model(run_dir, "digits-cnn+linear+none+pgd-at")``.
2. The same N test images (``robench.worker.eval_subset(bundle, N)``: the subset a grid with
   ``limit = N`` evaluates), Linf eps 0.3, one torch thread:
   a. the reference AutoAttack (``pyautoattack``, version "standard", seed 0): robust accuracy
      is ``model(x_adv)`` correct, recomputed here, with the ball and box checked;
   b. robench's ``autoattack`` preset and c. its ``autoattack-fast`` preset, each through
      ``robench.evaluate`` (the grid's cascade and verification); the ensemble's robust
      accuracy is the ``worst-case`` row (the last member's row, checked equal);
   d. robench's ``pgd`` (20 steps) for context.
   Wall time and process CPU time are measured around each call (CPU time is the fairer
   figure on a shared machine: one torch thread, so it is the compute).  Per member: the
   reference's cumulative robust accuracy and time (from its log), robench's rows (robust
   accuracy, seconds, gradients, queries).  Per sample: where the reference and robench's
   ``autoattack`` disagree; those samples are then attacked by each member alone, on both
   sides (``--attribute``), to say which attack finds what the other side misses.
3. A table on stdout and, with ``--json``, every figure in a file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import robench
from robench.worker import eval_subset

EPS = 0.3
EPS_LABEL = "0.3"
RUN_NAME = "pgd-at-mnist"
MODEL = "digits-cnn+linear+none+pgd-at"
DATA = {"image_size": 28, "channels": 1}
#: the reference's members (its standard version), in order, and robench's names for them
REFERENCE_MEMBERS = ("apgd-ce", "apgd-t", "fab-t", "square")
#: robench's members of ``autoattack`` with the parameters the preset gives them
ROBENCH_MEMBERS = {"apgd-ce": {}, "apgd-t": {"n_target_classes": 9},
                   "fab-t": {"n_target_classes": 9}, "square": {"queries": 5000}}


def unpack_mask(text: str, n: int) -> np.ndarray:
    """A per-sample mask as the store keeps it (hex of ``np.packbits``)."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[:n].astype(bool)


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def preload() -> list[str]:
    """Import every module of robench and of its built-in plugins now.

    The working tree may be edited while this runs (for 15 minutes); modules imported lazily
    later would then come from another version than the ones already loaded.  Returns the
    modules that could not be imported (optional dependencies)."""
    import importlib
    import pkgutil

    failed = []
    for package in ("robench", "robench_attacks", "robench_datasets", "robench_defenses",
                    "robench_executors", "robench_heads", "robench_reports"):
        try:
            module = importlib.import_module(package)
        except Exception:  # noqa: BLE001 - reported, not fatal
            failed.append(package)
            continue
        for info in pkgutil.walk_packages(module.__path__, package + "."):
            try:
                importlib.import_module(info.name)
            except Exception:  # noqa: BLE001
                failed.append(info.name)
    return failed


def tree_state() -> dict[str, str]:
    """sha256 of the library's Python files, to tell whether they changed during the run."""
    import hashlib

    root = Path(robench.__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted([*root.glob("robench/*.py"), *root.glob("plugins/*/*.py")]):
        digest.update(path.name.encode() + path.read_bytes())
    return {"root": str(root), "sha256": digest.hexdigest()[:16]}


# --------------------------------------------------------------------------- training


def train(out: Path, *, epochs: int, at_steps: int, n: int) -> tuple[Path, dict[str, Any]]:
    """Train (or resume) the PGD-AT model with robench's grid; FGSM at 0.3 on the N images."""
    config = {
        "name": RUN_NAME, "dataset": "mnist", "target": "none", "data": {"mnist": DATA},
        "backbones": ["digits-cnn"], "heads": ["linear"], "adaptors": ["none"],
        "defenses": ["pgd-at"],
        "defense": {"pgd-at": {"eps": EPS, "steps": at_steps, "warmup_epochs": 3}},
        "attacks": ["fgsm"], "eps": {"linf": [EPS_LABEL]}, "epochs": epochs,
        "batch_size": 64, "executor": {"local": {"workers": 1}}, "limit": n,
        "device": "cpu", "seed": 0, "out": str(out), "reporters": ["csv"],
    }
    start = time.perf_counter()
    rows = robench.run_grid(config)
    seconds = time.perf_counter() - start
    fgsm = rows[(rows["model"] == MODEL) & (rows["attack"] == "fgsm")]
    if fgsm.empty or fgsm.iloc[0]["status"] != "ok":
        raise SystemExit(f"training grid failed:\n{rows.to_string()}")
    row = fgsm.iloc[0]
    return out / RUN_NAME, {
        "epochs": epochs, "at_steps": at_steps, "train_seconds": float(row["train_seconds"]),
        "grid_seconds_this_call": round(seconds, 1), "grid_clean_acc": float(row["clean_acc"]),
        "grid_fgsm_robust_acc": float(row["robust_acc"]), "grid_n": int(row["n"]),
    }


# --------------------------------------------------------------------------- reference


class _Log(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _reference_log(lines: list[str]) -> dict[str, dict[str, float]]:
    """Per member: cumulative robust accuracy and cumulative time, from AutoAttack's log."""
    members = {}
    pattern = re.compile(r"robust accuracy after (\S+): ([\d.]+)% \(total time ([\d.]+) s\)")
    for line in lines:
        if match := pattern.search(line):
            members[match[1].lower()] = {"robust_acc": float(match[2]) / 100,
                                         "cumulative_seconds": float(match[3])}
    return members


def reference(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
              attacks: list[str] | None = None, batch_size: int = 256) -> dict[str, Any]:
    """The reference AutoAttack (standard, or ``attacks`` as a custom version)."""
    from pyautoattack import AutoAttack

    logger = logging.getLogger("auto-attack")
    handler = _Log()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        if attacks is None:
            adversary = AutoAttack(model, norm="Linf", eps=EPS, version="standard", seed=0)
        else:
            adversary = AutoAttack(model, norm="Linf", eps=EPS, version="custom", seed=0,
                                   attacks=attacks)
            adversary.apgd_targeted.n_target_classes = 9
            adversary.fab.n_target_classes = 9
            adversary.square.n_queries = 5000
        start, cpu = time.perf_counter(), time.process_time()
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        logger.removeHandler(handler)
    with torch.no_grad():
        robust = model(x_adv).argmax(1) == y
    linf = float((x_adv - x).abs().flatten(1).amax(1).max())
    return {"robust": robust, "robust_acc": int(robust.sum()) / len(y),
            "n_robust": int(robust.sum()), "seconds": seconds, "cpu_seconds": cpu,
            "max_linf": linf,
            "in_box": bool(x_adv.min() >= 0 and x_adv.max() <= 1),
            "members": _reference_log(handler.lines)}


# --------------------------------------------------------------------------- robench


def robench_attack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, attack: str,
                   attack_params: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One attack (or preset) through ``robench.evaluate``; rows, masks and wall time.

    The images go in as tensors, ``(x, y)``.  When ``y`` lacks a class, robench's clean task
    fails (its perceptual-alignment score needs a training image of every class, and an
    in-memory dataset's training split is the tensors themselves), and the grid then stops with
    ``KeyError('clean_acc')``; such a subset (small N) is passed by name instead, ``"mnist"``
    with ``limit = N``: the same images, ``eval_subset(bundle, N)``."""
    if len(torch.unique(y)) == 10:
        dataset: Any = (x, y)
        route = {"limit": None, "num_classes": 10}
    else:
        dataset = "mnist"
        route = {"limit": len(y), "dataset_params": DATA}
    with tempfile.TemporaryDirectory(prefix="aa-bench-") as tmp:
        start, cpu = time.perf_counter(), time.process_time()
        rows = robench.evaluate(model, dataset, attacks=[attack], eps={"linf": [EPS_LABEL]},
                                out=tmp, name="eval", device="cpu", reporters=("csv",),
                                attack_params=attack_params, **route)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        db = sqlite3.connect(Path(tmp) / "eval" / "results.sqlite")
        try:
            masks = {}
            for label, payload in db.execute(
                    "SELECT label, payload FROM tasks WHERE kind = 'attack' ORDER BY rowid"):
                payload = json.loads(payload)
                for outcome in payload.get("outcomes", []):
                    masks[label] = unpack_mask(outcome["robust"], payload["n"])
        finally:
            db.close()
    members = []
    for _, row in rows.iterrows():
        members.append({
            "attack": row["attack"], "status": row["status"], "flags": row["flags"],
            "robust_acc": float(row["robust_acc"]), "n_robust": int(row["n_robust"]),
            "n_invalid": int(row["n_invalid"]), "grad_evals": int(row["grad_evals"]),
            "queries": int(row["queries"]),
            "seconds": None if row["seconds"] != row["seconds"] else float(row["seconds"]),
            "attack_params": row["attack_params"]})
    worst = rows[rows["attack"] == "worst-case"]
    attack_rows = rows[rows["attack"] != "worst-case"]
    last = attack_rows.iloc[-1]
    if worst.empty:
        raise SystemExit(f"no worst-case row for {attack}:\n{rows.to_string()}")
    robust_acc = float(worst.iloc[0]["robust_acc"])
    return {"rows": members, "robust_acc": robust_acc,
            "n_robust": int(worst.iloc[0]["n_robust"]),
            "last_member_n_robust": int(last["n_robust"]),
            "last_member_robust_acc": float(last["robust_acc"]),
            "clean_acc": float(last["clean_acc"]), "seconds": seconds, "cpu_seconds": cpu,
            "masks": masks, "status": sorted(set(rows["status"])),
            "route": "tensors" if isinstance(dataset, tuple) else "dataset mnist, limit N"}


def ensemble_mask(result: dict[str, Any]) -> torch.Tensor:
    """Per sample: robust after every member (the AND of the members' cumulative masks)."""
    masks = list(result["masks"].values())
    if not masks:
        raise SystemExit("no per-sample masks in the store")
    robust = masks[0].copy()
    for mask in masks[1:]:
        robust &= mask
    return torch.from_numpy(robust)


# --------------------------------------------------------------------------- attribution


def attribute(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
              indices: list[int]) -> list[dict[str, Any]]:
    """Each member alone, on both sides, on the given samples: who fools which sample.

    Reference members: a custom AutoAttack with that one attack (its standard settings).
    robench members: built through the plugin host with the preset's parameters and run on
    the samples directly (``perturb``, torch seeded with 0), each example checked here: in the
    ball, in [0, 1], misclassified.  (Not through ``robench.evaluate``: a handful of samples
    lacks classes, see :func:`robench_attack`.)"""
    if not indices:
        return []
    xs, ys = x[indices], y[indices]
    host = robench.PluginHost.create()
    ref, ours = {}, {}
    for member in REFERENCE_MEMBERS:
        ref[member] = reference(model, xs, ys, attacks=[member])["robust"]
        attack = host.build("attack", member, **ROBENCH_MEMBERS[member])
        torch.manual_seed(0)
        adv = attack.perturb(model, xs, ys, EPS)
        with torch.no_grad():
            wrong = model(adv).argmax(1) != ys
        valid = ((adv - xs).abs().flatten(1).amax(1) <= EPS * (1 + 1e-5)) & (
            adv.flatten(1).amin(1) >= 0) & (adv.flatten(1).amax(1) <= 1)
        ours[member] = ~(wrong & valid)
    with torch.no_grad():
        logits = model(xs)
    top2 = logits.topk(2, dim=1).values
    out = []
    for j, index in enumerate(indices):
        out.append({
            "index": index, "label": int(ys[j]), "clean_margin": round(
                float(top2[j, 0] - top2[j, 1]), 3),
            "reference_fooled_by": [m for m in REFERENCE_MEMBERS if not bool(ref[m][j])],
            "robench_fooled_by": [m for m in REFERENCE_MEMBERS if not bool(ours[m][j])]})
    return out


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="test images (default 200)")
    parser.add_argument("--out", default="/tmp/aa_bench",
                        help="folder of the training run (reused between invocations)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--at-steps", type=int, default=5, help="PGD steps of pgd-at")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="batch size of the reference AutoAttack")
    parser.add_argument("--attribute", type=int, default=20,
                        help="attack at most this many disagreeing samples member by member "
                             "(0: skip)")
    parser.add_argument("--json", default=None, help="write every figure to this file")
    args = parser.parse_args()

    tree_start = tree_state()
    failed_imports = preload()
    torch.set_num_threads(1)
    report: dict[str, Any] = {"n": args.n, "eps": EPS, "threat": "linf",
                              "tree_start": tree_start, "unimportable": failed_imports,
                              "torch_threads": torch.get_num_threads(),
                              "cpu": platform.processor() or platform.machine(),
                              "cores": os.cpu_count(), "load_start": load()}
    t_all = time.perf_counter()

    run_dir, report["training"] = train(Path(args.out), epochs=args.epochs,
                                        at_steps=args.at_steps, n=args.n)
    report["load_after_training"] = load()
    torch.set_num_threads(1)
    same_name = [p.stem for p in sorted((run_dir / "models").glob("*.json"))
                 if json.loads(p.read_text()).get("plan", {}).get("name") == MODEL]
    report["training"]["model_keys"] = same_name
    if len(same_name) > 1:  # load_model picks one of them by name, silently
        print(f"warning: {run_dir} holds {len(same_name)} models named {MODEL} "
              f"({', '.join(same_name)}): load_model returns one of them; use a fresh --out",
              flush=True)
    model = robench.load_model(run_dir, MODEL)
    bundle = robench.PluginHost.create().build("dataset", "mnist", **DATA)
    x, y = eval_subset(bundle, args.n)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    report["clean_acc"] = float(clean.float().mean())
    report["subset"] = {"test_split": len(bundle.test), "labels": torch.bincount(
        y, minlength=10).tolist()}
    print(f"model {MODEL} from {run_dir}; N={args.n}; clean accuracy "
          f"{report['clean_acc']:.3f}; load {report['load_start']}", flush=True)

    results: dict[str, dict[str, Any]] = {}
    loads: dict[str, list[float]] = {}
    print("reference AutoAttack (standard) ...", flush=True)
    results["reference"] = reference(model, x, y, batch_size=args.batch_size)
    loads["reference"] = load()
    for name in ("autoattack", "autoattack-fast", "pgd"):
        print(f"robench {name} ...", flush=True)
        results[name] = robench_attack(model, x, y, name)
        loads[name] = load()
        if abs(results[name]["clean_acc"] - report["clean_acc"]) > 1e-6:
            print(f"  warning: robench's clean accuracy {results[name]['clean_acc']} differs",
                  flush=True)

    ref = results["reference"]
    ours_mask = ensemble_mask(results["autoattack"])
    fast_mask = ensemble_mask(results["autoattack-fast"])
    ref_mask = ref["robust"]
    only_ref = [i for i in range(args.n) if not ref_mask[i] and ours_mask[i]]
    only_ours = [i for i in range(args.n) if ref_mask[i] and not ours_mask[i]]
    report["disagreement"] = {
        "fooled_by_reference_only": only_ref, "fooled_by_robench_autoattack_only": only_ours,
        "fooled_by_reference_not_fast": [i for i in range(args.n)
                                         if not ref_mask[i] and fast_mask[i]],
        # the per-sample masks read from the store count what the worst-case row counts,
        # and the last member's row is the ensemble's
        "masks_consistent_with_rows": {
            name: int(ensemble_mask(results[name]).sum()) == results[name]["n_robust"]
            == results[name]["last_member_n_robust"]
            for name in ("autoattack", "autoattack-fast", "pgd")},
    }
    if args.attribute and (only_ref or only_ours):
        picked = (only_ref + only_ours)[:args.attribute]
        print(f"attributing {len(picked)} disagreeing samples member by member ...", flush=True)
        start = time.perf_counter()
        report["disagreement"]["attribution"] = attribute(model, x, y, picked)
        report["disagreement"]["attribution_seconds"] = round(time.perf_counter() - start, 1)

    report["results"] = {
        name: {k: v for k, v in r.items() if k not in ("robust", "masks")}
        for name, r in results.items()}
    report["loads"] = loads
    def points(name: str) -> float:  # from the counts: no float noise
        return round(100 * (results[name]["n_robust"] - ref["n_robust"]) / args.n, 2) + 0.0

    def over(name: str, what: str) -> float:
        return round(results[name][what] / ref[what], 3)

    report["ratios"] = {
        "robench_autoattack_minus_reference_points": points("autoattack"),
        "robench_fast_minus_reference_points": points("autoattack-fast"),
        "fast_seconds_over_reference": over("autoattack-fast", "seconds"),
        "robench_autoattack_seconds_over_reference": over("autoattack", "seconds"),
        "fast_cpu_seconds_over_reference": over("autoattack-fast", "cpu_seconds"),
        "robench_autoattack_cpu_seconds_over_reference": over("autoattack", "cpu_seconds"),
    }
    report["load_end"] = load()
    report["tree_end"] = tree_state()
    report["tree_changed_during_run"] = report["tree_end"] != tree_start
    report["total_seconds"] = round(time.perf_counter() - t_all, 1)

    print()
    print(f"N = {args.n}, Linf eps {EPS}, clean accuracy {report['clean_acc']:.3f}, "
          f"torch threads {report['torch_threads']}")
    print(f"{'attack':34s} {'robust acc':>10s} {'robust':>8s} {'wall s':>8s} {'CPU s':>8s}")
    labels = {"reference": "reference AutoAttack (standard)",
              "autoattack": "robench autoattack",
              "autoattack-fast": "robench autoattack-fast", "pgd": "robench pgd (20 steps)"}
    for name, r in results.items():
        print(f"{labels[name]:34s} {r['robust_acc']:10.4f} {r['n_robust']:4d}/{args.n:<3d} "
              f"{r['seconds']:8.1f} {r['cpu_seconds']:8.1f}")
    print("\nper member (cumulative robust accuracy):")
    for member, m in ref["members"].items():
        print(f"  reference {member:22s} {m['robust_acc']:.4f}  "
              f"(cumulative {m['cumulative_seconds']:.1f} s)")
    for name in ("autoattack", "autoattack-fast"):
        for row in results[name]["rows"]:
            seconds = "" if row["seconds"] is None else f"{row['seconds']:.1f} s"
            print(f"  robench   {row['attack']:22s} {row['robust_acc']:.4f}  {seconds:>9s}  "
                  f"grads {row['grad_evals']}  queries {row['queries']}  {row['status']}"
                  f"{'  ' + row['flags'] if row['flags'] == row['flags'] and row['flags'] else ''}")
    ratios = report["ratios"]
    print(f"\nrobench autoattack - reference: "
          f"{ratios['robench_autoattack_minus_reference_points']:+.2f} points; "
          f"autoattack-fast - reference: {ratios['robench_fast_minus_reference_points']:+.2f} "
          f"points")
    print(f"time: fast / reference {ratios['fast_seconds_over_reference']:.3f} wall, "
          f"{ratios['fast_cpu_seconds_over_reference']:.3f} CPU; robench autoattack / "
          f"reference {ratios['robench_autoattack_seconds_over_reference']:.3f} wall, "
          f"{ratios['robench_autoattack_cpu_seconds_over_reference']:.3f} CPU")
    print(f"reference x_adv: max linf {ref['max_linf']:.6f}, in [0, 1]: {ref['in_box']}")
    print(f"fooled by the reference only: {only_ref}; by robench autoattack only: {only_ours}")
    for item in report["disagreement"].get("attribution", []):
        print(f"  sample {item['index']} (label {item['label']}, clean margin "
              f"{item['clean_margin']}): reference members fooling it alone "
              f"{item['reference_fooled_by']}, robench members {item['robench_fooled_by']}")
    if report["tree_changed_during_run"]:
        print("warning: robench's files changed during the run (modules were preloaded)")
    print(f"load average: start {report['load_start']}, after training "
          f"{report['load_after_training']}, end {report['load_end']}; total "
          f"{report['total_seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
