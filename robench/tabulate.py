"""Tabulation: the results table (``results.csv``) derived from the store alone.

One row per model x domain x attack x eps, plus the ``worst-case`` rows: per (model, domain,
threat, eps), a sample is robust only if no untargeted attack of that threat fooled it.  A
worst case missing an attack that failed is marked ``status = incomplete`` and names the
missing attack: it is an upper bound, never silently reported as complete.  Because the
table comes from the store, a resumed run and an uninterrupted one write the same rows, and
this module can be tested on a store written by hand, without training anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from robench.config import GridConfig
from robench.flags import add_flags, append_flag, training_failed
from robench.planning import AttackPlan, ModelPlan, attack_key, clean_key, domains
from robench.results import coerce_results
from robench.store import Store, unpack_mask


@dataclass
class Tabulated:
    results: pd.DataFrame
    #: per (model, domain): the clean task's model diagnostics (for the sanity flags)
    diagnostics: dict[tuple[str, str], dict[str, Any]]


def tabulate(config: GridConfig, store: Store, plans: Sequence[ModelPlan],
             train_keys: Mapping[str, str], model_keys: Mapping[str, str],
             attacks: Mapping[str, AttackPlan], device: str, threads: int = 1) -> Tabulated:
    """The results table of ``plans`` x domains x ``attacks`` from what ``store`` holds;
    ``train_keys`` name each model's training (or loading) task, ``model_keys`` the model
    its clean and attack tasks evaluated."""
    cfg = config
    rows: list[dict[str, Any]] = []
    diagnostics: dict[tuple[str, str], dict[str, Any]] = {}
    for plan in plans:
        trained = store.get(train_keys[plan.name]) or {}
        train_ok = store.status(train_keys[plan.name]) == "ok"
        key = model_keys[plan.name]
        base = {"model": plan.name, "backbone": plan.backbone, "head": plan.head,
                "adaptor": plan.adaptor, "defense": plan.defense,
                "precision": cfg.precision, "threads": threads, "seed": cfg.seed,
                "device": device,
                "params": trained.get("params", 0),
                "train_seconds": trained.get("train_seconds", float("nan")),
                "run": cfg.name}
        source_clean = store.get(clean_key(cfg, key, "source", cfg.dataset, threads)) if train_ok \
            else None
        alignment = (source_clean or {}).get("perceptual_alignment")
        base["perceptual_alignment"] = float("nan") if alignment is None else float(alignment)
        for domain, dataset in domains(cfg):
            clean = store.get(clean_key(cfg, key, domain, dataset, threads)) if train_ok \
                else None
            if clean and "correct" in clean:
                diagnostics[(plan.name, domain)] = {
                    **clean["diagnostics"], "num_classes": clean["num_classes"]}
            per_threat: dict[tuple[str, float], list[_Combined]] = {}
            labels: dict[tuple[str, float], str] = {}
            failed_by_threat: dict[str, list[str]] = {}
            for name, attack in attacks.items():
                akey = attack_key(cfg, attack, key, domain, dataset, threads)
                payload = store.get(akey) if train_ok else None
                status = store.status(akey) if train_ok else "failed"
                row0 = {**base, "dataset": dataset, "domain": domain, "attack": name,
                        "attack_params": json.dumps(cfg.plugin_params("attack", name),
                                                    sort_keys=True)}
                if status != "ok" or payload is None:
                    error = (payload or {}).get("error") or trained.get("error") or "not run"
                    eps_names = cfg.eps_labels(attack.threat)
                    for eps in cfg.eps_values(attack.threat):
                        rows.append({**row0, "threat": attack.threat,
                                     "attack_kind": attack.kind, "eps": eps,
                                     "eps_label": eps_names.get(eps, f"{eps:g}"),
                                     "clean_acc": (clean or {}).get("clean_acc"),
                                     "status": "failed", "error": error,
                                     "n": (clean or {}).get("n", 0)})
                    if attack.target is None:
                        failed_by_threat.setdefault(attack.threat, []).append(name)
                    continue
                threat = payload["threat"]
                for outcome in payload["outcomes"]:
                    status_row = "invalid" if outcome["n_invalid"] else "ok"
                    # absent from stores written before these counts existed: the row then
                    # reads 0 and says it was not checked (flag mismatch-unchecked)
                    unchecked = "n_verify_mismatch" not in outcome
                    reasons = ";".join(f"{k}={v}" for k, v in outcome["reasons"].items())
                    rows.append({
                        **row0, "threat": threat, "attack_kind": payload["kind"],
                        "eps": outcome["eps"], "eps_label": outcome["eps_label"],
                        "clean_acc": payload["clean_acc"],
                        "robust_acc": outcome["n_robust"] / payload["n"], "n": payload["n"],
                        "n_robust": outcome["n_robust"], "n_invalid": outcome["n_invalid"],
                        "n_verify_mismatch": outcome.get("n_verify_mismatch", 0),
                        "n_precision_mismatch": outcome.get("n_precision_mismatch", 0),
                        "_unchecked": unchecked,
                        "grad_evals": outcome["grad_evals"], "queries": outcome["queries"],
                        "seconds": outcome["seconds"], "status": status_row,
                        "error": f"verification: {reasons}" if reasons else "",
                        "attack_params": json.dumps(payload.get("attack_params", {}),
                                                    sort_keys=True, default=str),
                        "black_box": payload["black_box"],
                        "targeted": payload["targeted"],
                    })
                    if payload["targeted"]:
                        continue  # targeted success is not untargeted robustness
                    mask = unpack_mask(outcome["robust"], payload["n"])
                    per_threat.setdefault((threat, outcome["eps"]), []).append(_Combined(
                        mask=mask, status=status_row, attack=name,
                        verify_mismatch=outcome.get("n_verify_mismatch", 0),
                        precision_mismatch=outcome.get("n_precision_mismatch", 0),
                        unchecked=unchecked))
                    labels[(threat, outcome["eps"])] = outcome["eps_label"]
            for (threat, eps), entries in sorted(per_threat.items()):
                rows.append(_worst_case_row(
                    base, dataset=dataset, domain=domain, threat=threat, eps=eps,
                    eps_label=labels[(threat, eps)], clean=clean, entries=entries,
                    missing=failed_by_threat.get(threat, [])))
    frame = coerce_results(pd.DataFrame(rows))
    frame = add_flags(frame, diagnostics)
    if "status" in frame:
        append_flag(frame, frame["status"] == "incomplete", "worst-case-incomplete")
    if "_unchecked" in frame:
        append_flag(frame, frame["_unchecked"].fillna(False).astype(bool), "mismatch-unchecked")
    if not frame.empty:
        failed = _failed_trainings(cfg, store, plans, train_keys, model_keys, threads)
        append_flag(frame, frame["model"].isin(failed), "training-failed")
    frame = frame.drop(columns=[c for c in ("black_box", "targeted", "_unchecked")
                                if c in frame])
    return Tabulated(results=frame, diagnostics=diagnostics)


def _failed_trainings(config: GridConfig, store: Store, plans: Sequence[ModelPlan],
                      train_keys: Mapping[str, str], model_keys: Mapping[str, str],
                      threads: int) -> set[str]:
    """The models whose training failed (:func:`robench.flags.training_failed`), decided once
    per training task and given to every model it made: the collapse check reads the source
    clean pass of the model as trained (an inference defense around it does not count), or,
    when the grid evaluates it only behind one, the training accuracies alone."""
    by_training: dict[str, list[ModelPlan]] = {}
    for plan in plans:
        if not plan.complete:
            by_training.setdefault(train_keys[plan.name], []).append(plan)
    failed: set[str] = set()
    for key, group in by_training.items():
        if store.status(key) != "ok":
            continue
        cleans = {plan.name: store.get(clean_key(config, model_keys[plan.name], "source",
                                                 config.dataset, threads)) or {}
                  for plan in group}
        classes = next((c["num_classes"] for c in cleans.values() if c.get("num_classes")),
                       None)
        as_trained = [cleans[p.name] for p in group if model_keys[p.name] == key]
        clean_acc = as_trained[0].get("clean_acc") if as_trained else None
        if training_failed(store.get(key) or {}, classes, clean_acc):
            failed.update(plan.name for plan in group)
    return failed


@dataclass
class _Combined:
    """One untargeted attack's row as a worst case combines it."""

    mask: np.ndarray  # bool (n,): robust under this attack at this eps
    status: str
    attack: str
    verify_mismatch: int
    precision_mismatch: int
    #: stored by a robench that did not count mismatches (the counts read 0 unchecked)
    unchecked: bool = False


def _worst_case_row(base: dict[str, Any], *, dataset: str, domain: str, threat: str,
                    eps: float, eps_label: str, clean: dict[str, Any] | None,
                    entries: list[_Combined], missing: list[str]) -> dict[str, Any]:
    """Per sample robust only if robust under every attack in ``entries``; the mismatch
    counts are the sums of the attacks' (so their flags carry over)."""
    robust = np.logical_and.reduce([e.mask for e in entries])
    n = len(robust)
    if missing:
        status = "incomplete"
    elif any(e.status == "invalid" for e in entries):
        status = "invalid"
    else:
        status = "ok"
    return {
        **base, "dataset": dataset, "domain": domain, "attack": "worst-case",
        "threat": threat, "attack_kind": "worst-case", "eps": eps, "eps_label": eps_label,
        "clean_acc": clean["clean_acc"] if clean else float("nan"),
        "robust_acc": int(robust.sum()) / n if n else float("nan"), "n": n,
        "n_robust": int(robust.sum()), "status": status,
        "n_verify_mismatch": sum(e.verify_mismatch for e in entries),
        "n_precision_mismatch": sum(e.precision_mismatch for e in entries),
        "_unchecked": any(e.unchecked for e in entries),
        "error": f"worst case without {', '.join(missing)} (failed): an upper bound"
        if missing else "",
        "attack_params": json.dumps(sorted(e.attack for e in entries)),
    }
