"""The results table: its columns, their meaning and types.

One row per model x domain x attack x eps (plus ``worst-case`` rows per threat model).
This is the contract of ``results.csv``; docs/results.md explains each column.

Importing this module (``run_grid`` and ``evaluate`` do) registers the pandas accessor
``frame.robench``: ``results.robench.flags`` (each row's flags as a list) and
``results.robench.has_flag("near-chance")``.  ``results.flags`` is pandas' own
``DataFrame.flags``, not the column: write ``results["flags"]`` or use the accessor.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

#: column -> (dtype, meaning)
COLUMNS: dict[str, tuple[str, str]] = {
    "model": ("string", "model name: backbone+head+adaptor[+defense], or a complete model's "
                        "name (timm:resnet18, file:model.pt)[+defense]"),
    "backbone": ("string", "backbone plugin name, e.g. timm:test_resnet (blank for a complete "
                           "model)"),
    "head": ("string", "head plugin name"),
    "adaptor": ("string", "adaptor plugin name ('none' when source only)"),
    "defense": ("string", "defense plugin name ('none' when undefended)"),
    "dataset": ("string", "dataset plugin name of the evaluated domain"),
    "domain": ("string", "'source' or 'target'"),
    "attack": ("string", "attack plugin name, or 'worst-case'"),
    "threat": ("string", "linf, l2, l1, l0, corruption or none"),
    "attack_kind": ("string", "bounded, minimal or worst-case"),
    "eps": ("float64", "perturbation budget (severity for corruptions)"),
    "eps_label": ("string", "eps as written in the config, e.g. 8/255"),
    "clean_acc": ("float64", "fraction of the n samples classified correctly without attack"),
    "robust_acc": ("float64", "fraction of the n samples correct and not fooled at this eps"),
    "n": ("int64", "samples evaluated"),
    "n_robust": ("int64", "samples correct and not fooled"),
    "n_invalid": ("int64", "adversarials that failed verification (counted as not fooled)"),
    "n_verify_mismatch": ("int64", "adversarials the attack saw as such but verification did "
                                   "not (each re-attacked once, else counted as not fooled); a "
                                   "worst-case row sums its attacks'"),
    "n_precision_mismatch": ("int64", "fooled samples whose adversarial the fp32 model does not "
                                      "confirm (bf16 / fp16 runs; 0 in fp32); a worst-case row "
                                      "sums its attacks'"),
    "grad_evals": ("int64", "input gradients the attack computed for this eps, over samples"),
    "queries": ("int64", "model forward evaluations the attack made for this eps, over samples"),
    "seconds": ("float64", "wall time spent on this eps"),
    "status": ("string", "ok, invalid (verification failed), failed (the task raised) or, "
                         "on a worst-case row, incomplete (an attack of its group failed)"),
    "flags": ("string", "';'-separated sanity flags (docs/protocol.md)"),
    "error": ("string", "error text when status is failed"),
    "precision": ("string", "fp32, or the autocast precision (bf16, fp16) of training and "
                            "attacks"),
    "threads": ("int64", "torch intra-op threads each task ran with (1 by default: the numbers "
                         "are then the same on every machine)"),
    "seed": ("int64", "the run's seed"),
    "device": ("string", "device the row was computed on"),
    "params": ("int64", "parameters of the evaluated model"),
    "train_seconds": ("float64", "wall time spent training the model"),
    "attack_params": ("string", "JSON of the attack's parameters"),
    "perceptual_alignment": ("float64", "fraction of the model's class images (optimised from "
                                        "noise) most similar to the mean training image of "
                                        "their own class; 1/classes is chance"),
    "run": ("string", "run name"),
}

COLUMN_NAMES: list[str] = list(COLUMNS)


def empty_results() -> pd.DataFrame:
    return coerce_results(pd.DataFrame(columns=COLUMN_NAMES))


def coerce_results(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns in contract order with contract dtypes; extra columns kept at the end."""
    frame = frame.copy()
    for column, (dtype, _) in COLUMNS.items():
        if column not in frame:
            frame[column] = pd.NA
        if dtype == "string":
            frame[column] = frame[column].astype("string").fillna("")
        elif dtype == "int64":
            frame[column] = pd.to_numeric(frame[column], errors="coerce").fillna(0).astype("int64")
        else:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    extra = [c for c in frame.columns if c not in COLUMNS]
    return frame[COLUMN_NAMES + extra].reset_index(drop=True)


def read_results(path: str | Path) -> pd.DataFrame:
    """A ``results.csv`` (or a merged one) with the contract's dtypes: text cells that are
    empty read as ``""``, not NaN, and ``frame.robench`` is available."""
    return coerce_results(pd.read_csv(path))


@pd.api.extensions.register_dataframe_accessor("robench")
class RobenchAccessor:
    """``frame.robench``: the ``flags`` column of a results table or leaderboard, read
    without colliding with pandas' ``DataFrame.flags`` (an attribute of every DataFrame)."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self._frame = frame

    def _column(self) -> pd.Series:
        if "flags" not in self._frame:
            raise AttributeError("frame.robench needs a 'flags' column: a robench results "
                                 "table (results.csv) or leaderboard")
        return self._frame["flags"]

    @property
    def flags(self) -> pd.Series:
        """Each row's sanity flags as a list of codes (``[]`` when none), on the frame's
        index."""
        return self._column().map(
            lambda cell: [f for f in str(cell).split(";") if f] if isinstance(cell, str)
            else [])

    def has_flag(self, flag: str) -> pd.Series:
        """A boolean mask of the rows that carry ``flag`` (a code of docs/protocol.md, such
        as ``near-chance``); a code robench does not raise is refused, with the closest."""
        from robench.errors import UsageError, closest
        from robench.flags import FLAG_CODES

        if flag not in FLAG_CODES:
            close = closest(flag, FLAG_CODES, n=2, cutoff=0.75)
            hint = f"Did you mean {', '.join(repr(c) for c in close)}? " if close else ""
            raise UsageError(f"{flag!r} is not a robench flag. {hint}Flags are "
                             f"{', '.join(FLAG_CODES)}.")
        return self.flags.map(lambda codes: flag in codes).astype(bool)
