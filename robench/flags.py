"""Sanity flags on result rows: signs that a number should not be trusted as it stands.

From AutoAttack's checks and the Athalye/Carlini/Tramer checklists.  A flag never changes a
number; it tells the reader where to look.  Codes (docs/protocol.md explains each):

``robust-above-clean``           robust accuracy higher than clean accuracy
``rises-with-eps``               robust accuracy higher at a larger eps of the same attack
``outputs-look-like-probabilities``  the model's outputs are in [0, 1] and sum to 1 (softmax
                                 inside the model weakens cross-entropy gradients)
``nondeterministic``             two identical forward passes gave different outputs
``zero-gradients``               some clean samples have an all-zero input gradient
``near-chance``                  clean accuracy close to 1 / num_classes: a random model
``black-box-stronger``           a black-box attack fooled more samples than every white-box
                                 attack of the threat model (gradient masking)
``weaker-than-noise``            a gradient attack left more samples robust than random noise
``unbounded-eps-robust``         accuracy above 1% at an Linf eps that allows any image (the
                                 grid's rows at eps >= 1, and the harness's own PGD at eps 1
                                 in every clean task, which flags all the model's rows)
``verify-mismatch``              examples the attack saw as adversarial failed the harness's
                                 verification (``n_verify_mismatch`` > 0): the model's output
                                 depends on the batch (kernels, batch statistics, randomness)
``precision-mismatch``           adversarials of a bf16 / fp16 run that the fp32 model does not
                                 confirm (``n_precision_mismatch`` > 0)
``worst-case-incomplete``        a worst-case row without an attack of its group that failed
                                 (raised in ``robench.tabulate``, where the status is decided)
``mismatch-unchecked``           an attack result resumed from a store written before robench
                                 counted verification mismatches: its counts read 0 without
                                 having been checked (raised in ``robench.tabulate``)
``training-failed``              a trained model whose final training accuracy (or a defense's
                                 ``*train_acc`` metric) is near chance, whose training loss
                                 ended non-finite, or whose source clean accuracy collapsed to
                                 near chance although training ended above it: every row of
                                 the model (raised in ``robench.tabulate``, from the store)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import pandas as pd

#: every flag code, in the order the docstring above explains them (the one list of them)
FLAG_CODES: tuple[str, ...] = tuple(re.findall(r"^``([a-z0-9-]+)``", __doc__ or "", re.M))

#: accuracy at or below this many times chance (1 / num_classes) is near chance (the
#: leaderboard's floor, ``robench.leaderboard.CHANCE_FACTOR``, is the same)
CHANCE_FACTOR = 1.5
#: robust accuracy margin (fraction) for comparisons between attacks
MARGIN = 0.002
#: count column -> the flag a nonzero count raises on its row
MISMATCH_FLAGS: dict[str, str] = {
    "n_verify_mismatch": "verify-mismatch",
    "n_precision_mismatch": "precision-mismatch",
}


def append_flag(frame: pd.DataFrame, mask: Any, flag: str) -> None:
    """Add ``flag`` to the ``flags`` of the rows of ``frame`` selected by ``mask``, in place."""
    if not mask.any():
        return
    current = frame.loc[mask, "flags"].astype(str)
    frame.loc[mask, "flags"] = [f"{c};{flag}" if c else flag for c in current]


def add_flags(
    frame: pd.DataFrame, diagnostics: dict[tuple[str, str], dict[str, Any]]
) -> pd.DataFrame:
    """Return ``frame`` with its ``flags`` column filled."""
    frame = frame.copy()
    frame["flags"] = ""
    if frame.empty:
        return frame
    ok = frame["status"].isin(["ok", "invalid"]) & frame["robust_acc"].notna()
    append_flag(frame, ok & (frame["robust_acc"] > frame["clean_acc"] + 1e-9), "robust-above-clean")

    group_cols = ["model", "domain", "attack", "threat"]
    nested = ~frame["threat"].isin(["corruption", "none"])  # severities are not nested balls
    for _, group in frame[ok & nested].groupby(group_cols):
        ordered = group.sort_values("eps")
        rising = ordered["robust_acc"].diff() > 1e-9
        append_flag(frame, frame.index.isin(ordered.index[rising]), "rises-with-eps")

    for (model, domain), diag in diagnostics.items():
        rows = (frame["model"] == model) & (frame["domain"] == domain)
        if diag.get("outputs-look-like-probabilities"):
            append_flag(frame, rows, "outputs-look-like-probabilities")
        if diag.get("nondeterministic"):
            append_flag(frame, rows, "nondeterministic")
        if diag.get("zero-gradient-fraction", 0) > 0:
            append_flag(frame, rows, "zero-gradients")

    if "black_box" in frame:
        black_box = frame["black_box"].fillna(False).astype(bool)
    else:
        black_box = pd.Series(False, index=frame.index)
    attack_rows = ok & (frame["attack_kind"] != "worst-case")
    for _, group in frame[attack_rows].groupby(["model", "domain", "threat", "eps"]):
        bb = group[black_box[group.index]]
        wb = group[~black_box[group.index] & (group["attack"] != "noise")]
        if not bb.empty and not wb.empty:
            best_wb = wb["robust_acc"].min()
            stronger = bb.index[bb["robust_acc"] < best_wb - MARGIN]
            append_flag(frame, frame.index.isin(stronger), "black-box-stronger")
        noise = group[group["attack"] == "noise"]
        if not noise.empty and not wb.empty:
            weaker = wb.index[wb["robust_acc"] > noise["robust_acc"].min() + MARGIN]
            append_flag(frame, frame.index.isin(weaker), "weaker-than-noise")

    unbounded = ok & (frame["threat"] == "linf") & (frame["eps"] >= 1.0) & (
        frame["robust_acc"] > 0.01)
    # the harness's own check (PGD at Linf eps 1 in every clean task): it flags every row
    # of the model and domain, whatever eps the grid lists
    for (model, domain), diag in diagnostics.items():
        robust = diag.get("unbounded_linf_robust")
        if robust is not None and robust > 0.01:
            unbounded |= (frame["model"] == model) & (frame["domain"] == domain)
    append_flag(frame, unbounded, "unbounded-eps-robust")

    # counted by the harness on each attack row (and summed on worst-case rows)
    for column, flag in MISMATCH_FLAGS.items():
        if column in frame:
            counts = pd.to_numeric(frame[column], errors="coerce").fillna(0)
            append_flag(frame, counts > 0, flag)

    num_classes = {k: d.get("num_classes") for k, d in diagnostics.items()}
    for (model, domain), classes in num_classes.items():
        if not classes:
            continue
        rows = (frame["model"] == model) & (frame["domain"] == domain) & (
            frame["clean_acc"] <= CHANCE_FACTOR / classes)
        append_flag(frame, rows, "near-chance")
    return frame


def training_accuracies(trained: Mapping[str, Any]) -> dict[str, float]:
    """The final training accuracies a training task stored: ``train_acc`` (over the last
    epoch, on the batches the loss trained on: adversarial ones under a training defense)
    and every ``*train_acc`` metric of the adaptor or defense (``adv_train_acc``,
    ``clean_train_acc``); finite values only."""
    values = {"train_acc": trained.get("train_acc")}
    metrics = trained.get("metrics")
    if isinstance(metrics, Mapping):
        values.update({str(k): v for k, v in metrics.items() if str(k).endswith("train_acc")})
    out = {}
    for name, value in values.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[name] = number
    return out


def training_failed(trained: Mapping[str, Any], num_classes: int | None,
                    source_clean_acc: float | None) -> bool:
    """Whether a training run failed (flag ``training-failed``): a final training accuracy at
    or below :data:`CHANCE_FACTOR` / ``num_classes``, a non-finite final training loss, or a
    source clean accuracy at or below that floor although every training accuracy ended
    above it (the model collapsed).  ``trained`` is the training task's payload; a payload
    without training accuracies (a loaded complete model, zero epochs) never fails."""
    accuracies = training_accuracies(trained)
    if not accuracies:
        return False
    loss = trained.get("final_loss")
    if isinstance(loss, (int, float)) and not math.isfinite(loss):
        return True
    if not num_classes:
        return False
    floor = CHANCE_FACTOR / num_classes + 1e-12
    if min(accuracies.values()) <= floor:
        return True
    return source_clean_acc is not None and math.isfinite(source_clean_acc) \
        and source_clean_acc <= floor
