"""The leaderboard: one row per model and test domain, ranked by a headline metric.

``results.csv`` has one row per model x domain x attack x eps; people comparing models want
one line each, with one number to sort by and the evidence next to it.  This module turns the
results table into that line, and every reporter (csv, md, html, json) and
``robench leaderboard merge`` go through :func:`build_leaderboard`, so the ranking is
computed in exactly one place.

Headline metric (see :data:`HEADLINE_DOC`): the *worst-case robust accuracy* at the grid's
main eps.  The threat is ``linf`` when the grid has it (else l2, l1, l0, corruption, in that
order); the eps is the one in the grid closest to that threat's reference budget
(:data:`REFERENCE_EPS`, 8/255 for linf).  Worst-case means: per sample, robust only if no
attack of the threat model fooled it (the harness's ``worst-case`` rows); a model without
such rows falls back to the lowest robust accuracy over its attacks, which is an upper bound
of the true worst case and is labelled as such in ``headline_source``.

Rows are ranked within each test set (dataset and domain): accuracies measured on different
test sets are not comparable, so a source row never outranks a target row or vice versa.
A model at or below the clean-accuracy floor (:data:`CHANCE_FACTOR` times chance, i.e. the
harness's ``near-chance`` flag) is ranked after every model above it, whatever its robust
accuracy: a model that is almost never right is almost never fooled, and must not win.

This module never imports :mod:`robench.merge` (merge imports this one).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robench.errors import UsageError
from robench.results import coerce_results

#: the threat models in the order the headline prefers them
THREAT_ORDER: tuple[str, ...] = ("linf", "l2", "l1", "l0", "corruption")

#: the budget each threat model's headline eps is chosen closest to (common literature values:
#: 8/255 and 0.5 are the RobustBench CIFAR-10 budgets; corruption severity 3 of 1..5)
REFERENCE_EPS: dict[str, float] = {
    "linf": 8 / 255,
    "l2": 0.5,
    "l1": 10.0,
    "l0": 10.0,
    "corruption": 3.0,
}

#: z of a two-sided 95% normal interval
Z95 = 1.959963984540054

#: columns identifying one leaderboard row; ``run`` keeps merged submissions apart
GROUP_KEYS: list[str] = ["run", "model", "dataset", "domain"]
#: one seed's entry: the leaderboard is computed per seed, then averaged over the seeds
SEED_KEYS: list[str] = [*GROUP_KEYS, "seed"]

#: the clean-accuracy floor, as a multiple of chance (1 / num_classes): at or below it a model
#: is ``near-chance`` (the harness's flag of the same name uses the same factor)
CHANCE_FACTOR = 1.5
NEAR_CHANCE_FLAG = "near-chance"

#: optional columns (not every results table has them) carried into the leaderboard
OPTIONAL_COLUMNS: tuple[str, ...] = ("defense", "precision")

#: how bad a row status is, for the headline's status (worst wins)
_STATUS_SEVERITY = {"": 0, "ok": 0, "invalid": 1, "incomplete": 2, "failed": 3}

HEADLINE_DOC = (
    "The headline metric is the worst-case robust accuracy: the fraction of the n test "
    "samples that are classified correctly and that no attack of the threat model fooled, "
    "at the grid's main eps. The threat is linf when the grid has it (else l2, l1, l0, "
    "corruption, in that order) and the eps is the grid's eps closest to the threat's "
    "reference budget (linf 8/255, l2 0.5, l1 10, l0 10 pixels, corruption severity 3). "
    "A model without worst-case rows for that threat falls back to the lowest robust "
    "accuracy over its attacks (an optimistic bound; see headline_source). A headline "
    "marked incomplete combines fewer attacks than the grid names (one failed; see flags), "
    "so it is optimistic too. Rows are ranked within each test set (dataset and domain), "
    "because accuracies on different test sets are not comparable. Only models above the "
    "clean-accuracy floor are ranked by the headline: a model whose clean accuracy is at "
    "most 1.5 times chance (flag near-chance) is almost never right, so it is almost never "
    "fooled and its robust accuracy means nothing; such models are ranked last and marked "
    "near chance. Ties are broken by clean accuracy. Intervals are 95% Wilson score "
    "intervals over the n samples; auc is the area under the robust-accuracy-vs-eps curve "
    "from eps 0 (= clean accuracy) to the grid's largest eps, divided by that eps."
)

_WORST = "worst-case"
_DOMAIN_ORDER = {"source": 0, "target": 1}


# --------------------------------------------------------------------------- small helpers


def wilson_interval(p: float, n: float, *, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``p`` measured on ``n`` samples.

    Used rather than the normal (Wald) interval because robust accuracies are often near 0
    or 1 on small test sets, where Wald's interval collapses to a point or leaves [0, 1].
    Returns ``(nan, nan)`` when ``p`` is unknown or ``n`` is not positive.
    """
    if n is None or p is None or not np.isfinite(p) or not np.isfinite(n) or n <= 0:
        return (math.nan, math.nan)
    p = min(max(float(p), 0.0), 1.0)
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def normalised_auc(eps: Sequence[float], acc: Sequence[float], clean_acc: float,
                   *, max_eps: float) -> float:
    """Area under the robust-accuracy-vs-eps curve, from eps 0 (clean accuracy) to ``max_eps``.

    The trapezoid area is divided by ``max_eps``, so the result is an accuracy in [0, 1]:
    the mean robust accuracy over budgets drawn uniformly from [0, max_eps].  ``max_eps`` is
    the grid's largest eps for the threat, shared by every model, so AUCs are comparable; a
    curve that stops short of it (a failed row, a missing eps) gives ``nan`` rather than an
    area over a different range.
    """
    points = sorted((float(e), float(a)) for e, a in zip(eps, acc, strict=True) if e > 0)
    if (not points or max_eps <= 0 or not np.isfinite(clean_acc)
            or any(not np.isfinite(a) for _, a in points)
            or not math.isclose(points[-1][0], max_eps, rel_tol=1e-9, abs_tol=1e-12)):
        return math.nan
    xs = [0.0] + [e for e, _ in points]
    ys = [float(clean_acc)] + [a for _, a in points]
    area = sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2.0 for i in range(len(xs) - 1))
    return area / max_eps


def eps_key(eps: float) -> float:
    """Eps rounded so that 8/255 read back from a CSV equals 8/255 computed in memory."""
    return round(float(eps), 12)


def format_eps(eps: float) -> str:
    """A short label for an eps that came without one (e.g. from an outside submission)."""
    return f"{eps:g}"


def robust_column(threat: str, label: str) -> str:
    """The leaderboard column holding robust accuracy at one threat and eps."""
    return f"robust[{threat}@{label}]"


def auc_column(threat: str) -> str:
    """The leaderboard column holding the normalised AUC of one threat's curve."""
    return f"auc[{threat}]"


# --------------------------------------------------------------------------- the headline


@dataclass(frozen=True)
class Headline:
    """The metric the leaderboard ranks by: robust accuracy at one threat and eps.

    ``threat == "none"`` means the grid had no attack rows at all; the headline is then the
    clean accuracy, so a clean-only run still gets a meaningful ranking.
    """

    threat: str
    eps: float
    eps_label: str

    @property
    def column(self) -> str:
        return "clean_acc" if self.threat == "none" else robust_column(self.threat, self.eps_label)

    def describe(self) -> str:
        """One line for reports, e.g. ``worst-case robust accuracy, linf @ 8/255``."""
        if self.threat == "none":
            return "clean accuracy (the results hold no attack rows)"
        return f"worst-case robust accuracy, {self.threat} @ {self.eps_label}"


def _attack_rows(results: pd.DataFrame) -> pd.DataFrame:
    """Rows that measure robustness at a positive budget of a real threat model."""
    mask = (results["threat"] != "none") & (results["threat"] != "") & (results["eps"] > 0)
    return results[mask.fillna(False)]


def _is_worst(rows: pd.DataFrame) -> pd.Series:
    return (rows["attack_kind"] == _WORST) | (rows["attack"] == _WORST)


def eps_labels(results: pd.DataFrame) -> dict[tuple[str, float], str]:
    """``(threat, eps_key) -> label``: the label written in the config, first one seen."""
    labels: dict[tuple[str, float], str] = {}
    for threat, eps, label in zip(results["threat"], results["eps"], results["eps_label"],
                                  strict=True):
        if not np.isfinite(eps):
            continue
        key = (str(threat), eps_key(eps))
        if key not in labels or (not labels[key] and label):
            labels[key] = str(label)
    return {k: (v or format_eps(k[1])) for k, v in labels.items()}


def main_eps(threat: str, eps_values: Iterable[float]) -> float:
    """The eps of ``eps_values`` closest to the threat's reference budget (larger on a tie).

    A threat without a reference budget (a plugin's own) uses the median of its grid, so the
    headline is neither the trivial smallest nor the hopeless largest budget.
    """
    values = sorted({eps_key(e) for e in eps_values if np.isfinite(e) and e > 0})
    if not values:
        raise ValueError(f"no positive eps for threat {threat!r}")
    reference = REFERENCE_EPS.get(threat)
    if reference is None:
        return values[(len(values) - 1) // 2]
    return min(values, key=lambda e: (abs(e - reference), -e))


def main_eps_by_threat(results: pd.DataFrame) -> dict[str, tuple[float, str]]:
    """``threat -> (eps, label)``: each threat's main eps in the grid, threats in order."""
    return _main_eps_by_threat(coerce_results(results))


def _main_eps_by_threat(results: pd.DataFrame) -> dict[str, tuple[float, str]]:
    rows = _attack_rows(results)
    labels = eps_labels(results)
    present = list(dict.fromkeys(rows["threat"]))
    threats = [t for t in THREAT_ORDER if t in present] + sorted(
        t for t in present if t not in THREAT_ORDER)
    out: dict[str, tuple[float, str]] = {}
    for threat in threats:
        eps = main_eps(threat, rows.loc[rows["threat"] == threat, "eps"])
        out[threat] = (eps, labels[(threat, eps)])
    return out


def choose_headline(results: pd.DataFrame) -> Headline:
    """The headline threat and eps for a results table (see the module docstring)."""
    return _headline_of(main_eps_by_threat(results))


def _headline_of(mains: Mapping[str, tuple[float, str]]) -> Headline:
    if not mains:
        return Headline(threat="none", eps=0.0, eps_label="0")
    threat = next(iter(mains))
    eps, label = mains[threat]
    return Headline(threat=threat, eps=eps, eps_label=label)


# --------------------------------------------------------------------------- curves


def robust_curves(results: pd.DataFrame) -> pd.DataFrame:
    """Robust accuracy per leaderboard row, threat and eps, in long form.

    Columns: the :data:`GROUP_KEYS`, ``threat``, ``eps``, ``eps_label``, ``robust_acc`` and
    ``source`` (``worst-case`` when taken from the harness's worst-case rows, else
    ``min-over-attacks``: the lowest robust accuracy of any attack at that eps).  Worst-case
    rows win whenever a row has them for the threat, because they are per-sample and so at
    most the minimum over attacks.
    With several seeds, ``robust_acc`` is the mean over the seeds of each seed's curve.
    """
    curves = _robust_curves(coerce_results(results), SEED_KEYS)
    curves = _mean_over_seeds(curves, ["threat", "eps", "eps_label", "source"])
    return curves[[*GROUP_KEYS, "threat", "eps", "eps_label", "robust_acc", "source"]]


def _mean_over_seeds(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """``frame`` (with :data:`SEED_KEYS` and ``by``) with ``robust_acc`` averaged over seeds."""
    columns = [*GROUP_KEYS, *by, "robust_acc"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    out = frame.groupby([*GROUP_KEYS, *by], sort=False, dropna=False)["robust_acc"].mean()
    return out.reset_index()[columns]


def _robust_curves(results: pd.DataFrame, group: Sequence[str] = tuple(GROUP_KEYS)
                   ) -> pd.DataFrame:
    rows = _attack_rows(results).copy()
    columns = [*group, "threat", "eps", "eps_label", "robust_acc", "source"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    labels = eps_labels(results)
    rows["eps"] = rows["eps"].map(eps_key)
    rows["worst"] = _is_worst(rows)
    keys = [*group, "threat"]
    has_worst = rows.groupby(keys, sort=False)["worst"].transform("any")
    use = rows[rows["worst"] == has_worst].copy()
    use["source"] = np.where(use["worst"], _WORST, "min-over-attacks")
    curves = (use.groupby([*keys, "eps", "source"], sort=False)["robust_acc"]
              .min().reset_index())
    curves["eps_label"] = [labels[(t, e)] for t, e in zip(curves["threat"], curves["eps"],
                                                           strict=True)]
    return curves[columns].sort_values([*keys, "eps"], kind="stable").reset_index(drop=True)


def attack_matrix(results: pd.DataFrame) -> pd.DataFrame:
    """Robust accuracy per leaderboard row and attack, each at its threat's main eps.

    Long form with the :data:`GROUP_KEYS`, ``attack``, ``threat``, ``eps``, ``eps_label`` and
    ``robust_acc``: the data of the HTML report's model x attack heatmap (with several seeds,
    the mean over the seeds).
    """
    results = coerce_results(results)
    rows = _attack_rows(results)
    columns = [*GROUP_KEYS, "attack", "threat", "eps", "eps_label", "robust_acc"]
    mains = main_eps_by_threat(results)
    parts = []
    for threat, (eps, label) in mains.items():
        at = rows[(rows["threat"] == threat) & (rows["eps"].map(eps_key) == eps)]
        at = at.groupby([*SEED_KEYS, "attack", "threat"], sort=False)["robust_acc"].min()
        at = _mean_over_seeds(at.reset_index(), ["attack", "threat"])
        at["eps"], at["eps_label"] = eps, label
        parts.append(at)
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)[columns]


def headline_attacks(results: pd.DataFrame) -> pd.DataFrame:
    """The attacks behind each leaderboard row's headline, strongest first.

    Long form with the :data:`GROUP_KEYS`, ``attack``, ``threat``, ``eps``, ``eps_label``,
    ``robust_acc`` and ``rank``: every attack of the headline threat at the headline eps
    (the numbers of :func:`attack_matrix`), the one that fooled the most samples first
    (``rank`` 1; ties keep the results' order).  Rank 1 is *the headline attack*: the
    attack whose number is the headline when it is the minimum over attacks, and the
    strongest member of the worst case otherwise (a preset's member counts the samples the
    members before it fooled, as its rows do).  Worst-case rows and attacks without a
    number (failed) are left out; a row whose attacks all failed has none.
    """
    results = coerce_results(results)
    headline = choose_headline(results)
    columns = [*GROUP_KEYS, "attack", "threat", "eps", "eps_label", "robust_acc", "rank"]
    matrix = attack_matrix(results)
    if headline.threat == "none" or matrix.empty:
        return pd.DataFrame(columns=columns)
    at = matrix[(matrix["threat"] == headline.threat) & (matrix["attack"] != _WORST)
                & matrix["robust_acc"].notna()]
    at = at.assign(_group=at.groupby(GROUP_KEYS, sort=False, dropna=False).ngroup())
    at = at.sort_values(["_group", "robust_acc"], kind="stable")
    at["rank"] = at.groupby("_group").cumcount() + 1
    return at[columns].reset_index(drop=True)


# --------------------------------------------------------------------------- the table


def _union_flags(values: pd.Series) -> str:
    flags = {f.strip() for v in values for f in str(v).split(";") if f.strip()}
    return ";".join(sorted(flags))


def _status_summary(values: pd.Series) -> str:
    counts = Counter(v or "unknown" for v in values)
    if len(counts) == 1:
        return next(iter(counts))
    order = ["ok", "invalid", "incomplete", "failed"]
    names = [s for s in order if s in counts] + sorted(s for s in counts if s not in order)
    return ", ".join(f"{name} {counts[name]}" for name in names)


def _joined(values: pd.Series) -> str:
    return ";".join(dict.fromkeys(str(v) for v in values if str(v)))


def _base_rows(results: pd.DataFrame) -> pd.DataFrame:
    """One row per leaderboard entry and seed with the plain aggregates (no robustness yet).

    Cost totals count attack rows only: worst-case rows summarise attacks already counted.
    The clean accuracy prefers rows that ran (every row of an entry carries it).
    """
    attack = ~_is_worst(results)
    frame = results.assign(
        _seconds=results["seconds"].fillna(0.0).where(attack, 0.0),
        _grad=results["grad_evals"].where(attack, 0),
        _queries=results["queries"].where(attack, 0),
        _verify=results["n_verify_mismatch"].where(attack, 0),
        _precision=results["n_precision_mismatch"].where(attack, 0),
        _clean_ran=results["clean_acc"].where(results["status"] != "failed"),
    )
    optional = [c for c in OPTIONAL_COLUMNS if c in frame]
    for column in optional:
        frame[column] = frame[column].astype("string").fillna("").str.strip()
    for column in ("backbone", "head", "adaptor"):
        frame[column] = frame[column].replace("", pd.NA)
    grouped = frame.groupby(SEED_KEYS, sort=False, dropna=False)
    spec: dict[str, tuple[str, Any]] = {
        "backbone": ("backbone", "first"),
        "head": ("head", "first"),
        "adaptor": ("adaptor", "first"),
        "n": ("n", "max"),
        "_clean_ran": ("_clean_ran", "first"),
        "_clean_any": ("clean_acc", "first"),
        "flags": ("flags", _union_flags),
        "status": ("status", _status_summary),
        "params": ("params", "max"),
        "train_seconds": ("train_seconds", "max"),
        "attack_seconds": ("_seconds", "sum"),
        "grad_evals": ("_grad", "sum"),
        "queries": ("_queries", "sum"),
        "n_verify_mismatch": ("_verify", "sum"),
        "n_precision_mismatch": ("_precision", "sum"),
        "seed": ("seed", "first"),
        **({"perceptual_alignment": ("perceptual_alignment", "first")}
           if "perceptual_alignment" in frame else {}),
        "device": ("device", _joined),
    }
    spec.pop("seed")  # a group key
    for column in optional:
        spec[column] = (column, _joined)
    if "num_classes" in frame:
        frame["num_classes"] = pd.to_numeric(frame["num_classes"], errors="coerce")
        spec["_classes"] = ("num_classes", "max")
    if "source_file" in frame:
        spec["source_file"] = ("source_file", _joined)
    board = grouped.agg(**spec).reset_index()
    board["clean_acc"] = board["_clean_ran"].fillna(board["_clean_any"]).astype("float64")
    for column in ("backbone", "head", "adaptor"):
        board[column] = board[column].astype("string").fillna("")
    board["near_chance"] = _near_chance(board)
    return board.drop(columns=["_clean_ran", "_clean_any", "_classes"], errors="ignore")


def _near_chance(board: pd.DataFrame) -> pd.Series:
    """At or below the clean-accuracy floor: flagged ``near-chance`` by the harness, or, when
    the table says how many classes there are (an optional ``num_classes`` column), clean
    accuracy at most :data:`CHANCE_FACTOR` / num_classes."""
    flagged = board["flags"].map(lambda f: NEAR_CHANCE_FLAG in str(f).split(";"))
    if "_classes" in board:
        classes = pd.to_numeric(board["_classes"], errors="coerce")
        floor = CHANCE_FACTOR / classes.where(classes > 0)
        flagged |= (board["clean_acc"] <= floor + 1e-12).fillna(False)
    return flagged.astype(bool)


def _headline_status(results: pd.DataFrame, headline: Headline) -> dict[tuple[Any, ...], str]:
    """Per leaderboard row and seed, how trustworthy its headline is: ``ok``, ``invalid``
    (a combined row failed verification), ``incomplete`` (an attack of the threat failed, so
    fewer attacks were combined) or ``failed``; the worst status at the headline threat and
    eps."""
    if headline.threat == "none":
        return {}
    rows = results[(results["threat"] == headline.threat)
                   & (results["eps"].map(eps_key) == headline.eps)]
    if rows.empty:
        return {}
    worst = _is_worst(rows)
    status = rows["status"].astype(str).str.strip()
    # a failed attack leaves the worst case (or the minimum) over the remaining attacks
    status = status.where(worst | (status != "failed"), "incomplete")
    severity = status.map(lambda s: _STATUS_SEVERITY.get(s, 1))
    frame = rows[SEED_KEYS].assign(_status=status, _severity=severity)
    top = frame.sort_values("_severity", kind="stable").groupby(SEED_KEYS, sort=False).last()
    return {key: value for key, value in zip(top.index, top["_status"], strict=True)}


def _rank_within_test_sets(board: pd.DataFrame) -> pd.DataFrame:
    """Sort best first inside each dataset x domain block and number the rows 1, 2, 2, 4.

    Models above the clean-accuracy floor come first, ordered by headline then clean
    accuracy; near-chance models follow them, ordered the same way among themselves."""
    block_order = {k: i for i, k in enumerate(dict.fromkeys(zip(board["dataset"],
                                                                board["domain"],
                                                                strict=True)))}
    board = board.assign(
        _domain=board["domain"].map(lambda d: _DOMAIN_ORDER.get(d, 2)),
        _block=[block_order[k] for k in zip(board["dataset"], board["domain"], strict=True)],
        _floor=board["near_chance"].astype(bool),
        _head=board["headline_acc"].fillna(-1.0),
        _clean=board["clean_acc"].fillna(-1.0),
    )
    board = board.sort_values(["_domain", "_block", "_floor", "_head", "_clean", "model", "run"],
                              ascending=[True, True, True, False, False, True, True],
                              kind="stable")
    ranks: list[int] = []
    previous: tuple[Any, ...] | None = None
    position = 0
    for current in zip(board["_block"], board["_floor"], board["_head"], board["_clean"],
                       strict=True):
        position = 1 if previous is None or previous[0] != current[0] else position + 1
        if previous is not None and previous == current:
            ranks.append(ranks[-1])
        else:
            ranks.append(position)
        previous = current
    board.insert(0, "rank", ranks)
    return board.drop(columns=["_domain", "_block", "_floor", "_head", "_clean"]
                      ).reset_index(drop=True)


def _add_comparisons(board: pd.DataFrame) -> pd.DataFrame:
    """Domain gap (source minus target) and adaptation gain (model minus its ``none`` twin),
    of one seed's rows: paired by seed (and so by the samples, the same for every seed)."""
    values = ["clean_acc", "headline_acc"]
    model_keys = ["run", "model", "seed"]
    source = board.loc[board["domain"] == "source", model_keys + values]
    target = board.loc[board["domain"] == "target", model_keys + values]
    pairs = source.drop_duplicates(model_keys).merge(target.drop_duplicates(model_keys),
                                                     on=model_keys, suffixes=("_s", "_t"))
    pairs["gap_clean"] = pairs["clean_acc_s"] - pairs["clean_acc_t"]
    pairs["gap_robust"] = pairs["headline_acc_s"] - pairs["headline_acc_t"]
    board = board.merge(pairs[model_keys + ["gap_clean", "gap_robust"]], on=model_keys,
                        how="left")

    keys = ["run", "seed", "dataset", "domain", "backbone", "head", "adaptor",
            *(c for c in OPTIONAL_COLUMNS if c in board)]
    # a defense has its own twin without an adaptor; an adaptor its own without a defense
    board = _twin_gain(board, "adaptor", "adapt_gain", keys)
    if "defense" in board:
        board = _twin_gain(board, "defense", "defense_gain", keys)
    return board


def _twin_gain(board: pd.DataFrame, part: str, prefix: str, keys: list[str]) -> pd.DataFrame:
    """``PREFIX_clean``/``PREFIX_robust``: each row minus its twin with ``part`` = ``none``
    (same ``keys`` but ``part``); blank on the ``none`` rows themselves."""
    twin_keys = [k for k in keys if k != part]
    twins = (board.loc[board[part] == "none", twin_keys + ["clean_acc", "headline_acc"]]
             .drop_duplicates(twin_keys)
             .rename(columns={"clean_acc": "_twin_clean", "headline_acc": "_twin_head"}))
    board = board.merge(twins, on=twin_keys, how="left")
    changed = ~board[part].isin(["none", ""])
    board[f"{prefix}_clean"] = (board["clean_acc"] - board["_twin_clean"]).where(changed)
    board[f"{prefix}_robust"] = (board["headline_acc"] - board["_twin_head"]).where(changed)
    return board.drop(columns=["_twin_clean", "_twin_head"])


#: the paired differences: per seed (same seed, same samples), then over the seeds a mean
#: with a 95% t-interval (``COLUMN_ci_low``/``COLUMN_ci_high``; nan with one seed: untested)
PAIRED_COLUMNS: tuple[str, ...] = ("gap_clean", "gap_robust", "adapt_gain_clean",
                                   "adapt_gain_robust", "defense_gain_clean",
                                   "defense_gain_robust")
#: the confidence of the paired intervals
PAIRED_CONFIDENCE = 0.95


def paired_interval(values: Sequence[float], confidence: float = PAIRED_CONFIDENCE
                    ) -> tuple[float, float]:
    """The t-interval of the mean of per-seed paired differences: ``mean +- t * sd / sqrt(n)``
    with Student's t quantile at ``(1 + confidence) / 2`` and ``n - 1`` degrees of freedom.
    Values that are nan are left out; fewer than two values give ``(nan, nan)`` (untested).
    With no spread at all the interval is the point itself."""
    from scipy.stats import t as student_t

    finite = np.asarray([v for v in values if v is not None and math.isfinite(float(v))],
                        dtype=float)
    n = len(finite)
    if n < 2:
        return math.nan, math.nan
    mean = float(finite.mean())
    half = float(student_t.ppf((1 + confidence) / 2, n - 1) * finite.std(ddof=1) / math.sqrt(n))
    return mean - half, mean + half


def significance(low: Any, high: Any, n_seeds: Any) -> str:
    """How a reader should take a paired difference: ``untested`` (one seed), ``n.s.``
    (its interval holds 0: not significant), ``significant`` (it does not), or ``""`` when the
    difference itself is missing."""
    try:
        seeds = int(n_seeds)
    except (TypeError, ValueError):
        seeds = 0
    if seeds < 2:
        return "untested"
    if not (_is_number(low) and _is_number(high)):
        return ""
    return "n.s." if low <= 0 <= high else "significant"


def _is_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


#: per-seed columns the leaderboard averages over the seeds (besides robust[...] and auc[...])
_MEAN_COLUMNS: tuple[str, ...] = ("clean_acc", "headline_acc", *PAIRED_COLUMNS,
                                  "perceptual_alignment")
#: per-seed columns summed over the seeds: what the entry cost, and its mismatch counts
_SUM_COLUMNS: tuple[str, ...] = ("train_seconds", "attack_seconds", "grad_evals", "queries",
                                 "n_verify_mismatch", "n_precision_mismatch")


def _over_seeds(per_seed: pd.DataFrame, results: pd.DataFrame,
                means: Sequence[str]) -> pd.DataFrame:
    """One row per :data:`GROUP_KEYS` entry from its seeds' rows: accuracies, gaps and gains
    are means over the seeds (a seed without a value is left out of its mean), with the
    sample standard deviation and the lowest seed of clean and headline accuracy and
    ``n_seeds``; costs are sums; flags the union; near chance when any seed is; the headline
    status the worst seed's; ``seed`` the seed, or the seeds joined by ``;``."""
    board = per_seed.copy()
    if "perceptual_alignment" in board:
        board["perceptual_alignment"] = board["perceptual_alignment"].astype("float64")
    agg: dict[str, tuple[str, Any]] = {}
    for column in board.columns:
        if column in GROUP_KEYS:
            continue
        if column in _MEAN_COLUMNS or column in means:
            agg[column] = (column, "mean")
        elif column in _SUM_COLUMNS:
            agg[column] = (column, lambda v: v.sum(min_count=1))
        elif column == "flags":
            agg[column] = (column, _union_flags)
        elif column == "near_chance":
            agg[column] = (column, "any")
        elif column == "headline_status":
            agg[column] = (column, lambda v: max(v, key=lambda s: _STATUS_SEVERITY.get(s, 1))
                           if len(v) else "")
        elif column == "seed":
            agg[column] = (column, lambda v: ";".join(str(x) for x in v))
        elif column in ("n", "params"):
            agg[column] = (column, "max")
        elif column == "device":
            agg[column] = (column, _joined)
        elif column != "status":
            agg[column] = (column, "first")
    grouped = board.groupby(GROUP_KEYS, sort=False, dropna=False)
    out = grouped.agg(
        **agg,
        n_seeds=("seed", "nunique"),
        clean_acc_std=("clean_acc", "std"),
        clean_acc_worst=("clean_acc", "min"),
        headline_acc_std=("headline_acc", "std"),
        headline_acc_worst=("headline_acc", "min"),
    ).reset_index()
    for column in PAIRED_COLUMNS:
        if column in board:
            bounds = [paired_interval(list(values)) for _, values in grouped[column]]
            out[f"{column}_ci_low"] = [low for low, _ in bounds]
            out[f"{column}_ci_high"] = [high for _, high in bounds]
    # the status counts every row of every seed, as a one-seed board counts its rows
    statuses = results.groupby(GROUP_KEYS, sort=False, dropna=False)["status"].agg(
        _status_summary)
    out["status"] = [statuses.get(key, "") for key in
                     out[GROUP_KEYS].itertuples(index=False, name=None)]
    if (out["n_seeds"] <= 1).all():  # every entry has one seed: the int column of before
        out["seed"] = board.groupby(GROUP_KEYS, sort=False, dropna=False)["seed"].first(
        ).to_numpy()
    return out


def build_leaderboard(results: pd.DataFrame) -> pd.DataFrame:
    """One row per model and test domain (and run, when merged), best first; with several
    seeds, one row per model configuration, ranked by the mean over its seeds.

    Columns, in order: ``rank`` (within the row's dataset x domain; near-chance models after
    all others), ``model``, ``backbone``, ``head``, ``adaptor``, ``defense`` and ``precision``
    when the results have them, ``dataset``, ``domain``, ``n``, ``clean_acc`` with
    ``clean_ci_low``/``clean_ci_high``, ``headline_acc`` with ``headline_ci_low``/
    ``headline_ci_high``, ``headline_metric`` (what it is, e.g. ``worst-case robust accuracy,
    linf @ 8/255``), ``headline_source``, ``headline_status`` (``ok``, ``invalid``,
    ``incomplete`` or ``failed``: the worst status of the rows the headline comes from),
    ``near_chance`` (at or below the clean-accuracy floor, ranked last), ``n_seeds``,
    ``clean_acc_std``, ``clean_acc_worst``, ``headline_acc_std``, ``headline_acc_worst``
    (the spread over the seeds: every row is a mean over its seeds, each seed computed as a
    one-seed leaderboard would, then :func:`_over_seeds`); then
    ``robust[THREAT@EPS]`` for every threat and eps of the grid and ``auc[THREAT]`` per threat;
    ``gap_clean``/``gap_robust`` (source minus target of the same model);
    ``adapt_gain_clean``/``adapt_gain_robust`` (this row minus the same backbone+head with
    adaptor ``none``, same run, dataset and domain; on target rows this is the adaptation gain,
    on source rows what adapting cost the source); ``defense_gain_clean``/
    ``defense_gain_robust`` when the results have a ``defense`` column (this row minus the
    same model with defense ``none``); each of these paired differences is computed per seed
    and averaged, and followed by ``COLUMN_ci_low``/``COLUMN_ci_high``, its 95% t-interval
    over the seeds (:func:`paired_interval`; nan with one seed: untested, see
    :func:`significance`); ``flags`` (union), ``status`` (e.g. ``ok``
    or ``ok 10, invalid 2``), ``params``, ``train_seconds``, ``attack_seconds``,
    ``grad_evals``, ``queries``, ``n_verify_mismatch``, ``n_precision_mismatch`` (totals over
    the attacks), ``run``, ``seed``, ``device`` and
    ``source_file`` when the results have it.
    Accuracies are fractions in [0, 1]; ``nan`` where a value cannot be computed.
    """
    results = coerce_results(results)
    mains = _main_eps_by_threat(results)
    headline = _headline_of(mains)
    optional = [c for c in OPTIONAL_COLUMNS if c in results]
    fixed = ["rank", "model", "backbone", "head", "adaptor", *optional, "dataset", "domain",
             "n", "clean_acc", "clean_ci_low", "clean_ci_high", "headline_acc",
             "headline_ci_low", "headline_ci_high", "headline_metric", "headline_source",
             "headline_status", "near_chance", "n_seeds", "clean_acc_std", "clean_acc_worst",
             "headline_acc_std", "headline_acc_worst"]
    comparisons = [c for c in PAIRED_COLUMNS
                   if not c.startswith("defense_") or "defense" in results]
    tail = [*(x for c in comparisons for x in (c, f"{c}_ci_low", f"{c}_ci_high")),
            *(["perceptual_alignment"] if "perceptual_alignment" in results else []), "flags",
            "status", "params", "train_seconds", "attack_seconds", "grad_evals", "queries",
            "n_verify_mismatch", "n_precision_mismatch", "run", "seed", "device"]
    if "source_file" in results:
        tail.append("source_file")
    if results.empty:
        return pd.DataFrame(columns=fixed + tail)

    board = _base_rows(results)
    curves = _robust_curves(results, SEED_KEYS)
    robust_cols: list[str] = []
    auc_cols: list[str] = []
    if not curves.empty:
        curves["column"] = [robust_column(t, lbl) for t, lbl in
                            zip(curves["threat"], curves["eps_label"], strict=True)]
        threat_rank = {t: i for i, t in enumerate(mains)}
        order = (curves[["threat", "eps", "column"]].drop_duplicates()
                 .assign(_t=lambda f: f["threat"].map(threat_rank))
                 .sort_values(["_t", "eps"]))
        robust_cols = list(dict.fromkeys(order["column"]))
        wide = curves.pivot_table(index=SEED_KEYS, columns="column", values="robust_acc",
                                  aggfunc="min", dropna=False)
        board = board.merge(wide.reset_index(), on=SEED_KEYS, how="left")
        sources = curves.groupby([*SEED_KEYS, "threat"])["source"].first()
        clean = board["clean_acc"].to_numpy(dtype=float)
        for threat in threat_rank:
            auc_cols.append(auc_column(threat))
            grid = order[order["threat"] == threat]
            accs = board[list(grid["column"])].to_numpy(dtype=float)
            eps = list(grid["eps"])
            board[auc_column(threat)] = [
                normalised_auc(eps, row, c, max_eps=eps[-1]) for row, c in zip(accs, clean,
                                                                               strict=True)
            ]
        board["headline_source"] = [
            sources.get((*k, headline.threat), "") for k in
            zip(*(board[c] for c in SEED_KEYS), strict=True)
        ]
    else:
        board["headline_source"] = "clean"

    for column in robust_cols:
        if column not in board:
            board[column] = math.nan
    if headline.column in board:
        board["headline_acc"] = board[headline.column].astype("float64")
    else:
        board["headline_acc"] = math.nan
    board["headline_metric"] = headline.describe()
    board.loc[board["headline_acc"].isna(), "headline_source"] = ""
    statuses = _headline_status(results, headline)
    board["headline_status"] = [statuses.get(key, "") for key in
                                board[SEED_KEYS].itertuples(index=False, name=None)]
    board = _add_comparisons(board)
    board = _over_seeds(board, results, means=[*robust_cols, *auc_cols])
    clean_ci = [wilson_interval(p, n) for p, n in zip(board["clean_acc"], board["n"],
                                                       strict=True)]
    head_ci = [wilson_interval(p, n) for p, n in zip(board["headline_acc"], board["n"],
                                                      strict=True)]
    board["clean_ci_low"], board["clean_ci_high"] = zip(*clean_ci, strict=True)
    board["headline_ci_low"], board["headline_ci_high"] = zip(*head_ci, strict=True)
    board = _rank_within_test_sets(board)
    return board[fixed + robust_cols + auc_cols + tail]


# --------------------------------------------------------------------------- writing reports


#: the reporters ``robench report`` runs when run.json names none
DEFAULT_REPORTERS: tuple[str, ...] = ("csv", "md", "html", "json")


def write_reports(
    results: pd.DataFrame,
    run_dir: str | Path,
    context: Mapping[str, Any],
    *,
    reporters: Sequence[str] = DEFAULT_REPORTERS,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    host: Any = None,
) -> list[Path]:
    """Run the named reporters on a results table; the files they wrote, in order.

    Reporters are looked up through the plugin host like every other plugin (the core never
    imports ``robench_reports``), so a third-party reporter named in a config works here too.
    ``params`` maps reporter name to its factory parameters (the config's ``[reporter.X]``).
    """
    if host is None:
        from robench.host import PluginHost

        host = PluginHost.create()
    results = coerce_results(results)
    written: list[Path] = []
    for name in reporters:
        reporter = host.build("reporter", name, **dict((params or {}).get(name, {})))
        written.extend(Path(p) for p in reporter.write(results, Path(run_dir), dict(context)))
    return written


def reporter_params(config: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``reporter name -> parameters`` from a run's config (its ``[reporter.NAME]`` tables,
    stored as ``params.reporter``); empty when the config has none."""
    params = (config or {}).get("params") if isinstance(config, Mapping) else None
    table = params.get("reporter") if isinstance(params, Mapping) else None
    if not isinstance(table, Mapping):
        return {}
    return {str(k): dict(v) for k, v in table.items() if isinstance(v, Mapping)}


def read_run_json(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's ``run.json`` as a dict; ``{}`` when there is none."""
    run_json = Path(run_dir) / "run.json"
    if not run_json.is_file():
        return {}
    try:
        meta = json.loads(run_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{run_json}: not readable as JSON ({exc}).") from exc
    if not isinstance(meta, dict):
        raise UsageError(f"{run_json}: expected a JSON object, got {type(meta).__name__}.")
    return meta


def report_context(
    run_dir: str | Path,
    meta: Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    results: pd.DataFrame | None = None,
    examples: bool = True,
) -> dict[str, Any]:
    """The ``context`` every reporter receives; the one place it is built.

    ``meta`` is shaped like a run's ``run.json`` (what the grid writes): ``name``, ``config``
    (the run's configuration) and either a ``provenance`` mapping or the provenance keys at
    top level (versions, device, seed, ...).  A missing or partial ``meta`` is fine (a
    results.csv copied on its own still gets a report): the title is then ``name``, else the
    results' ``run`` column, else the folder's name.  ``examples`` says whether
    ``run_dir/examples`` holds this run's example images (a merge of several runs has none).

    Returns ``{"name": str, "config": dict, "provenance": dict, "examples_dir": Path|None}``.
    """
    run_dir = Path(run_dir)
    meta = dict(meta or {})
    config = meta.get("config") if isinstance(meta.get("config"), Mapping) else {}
    provenance = meta.get("provenance")
    if not isinstance(provenance, Mapping):
        provenance = {k: v for k, v in meta.items() if k not in ("config", "name")}
    title = name or meta.get("name") or config.get("name")
    if not title and results is not None and "run" in results and len(results):
        title = _joined(results["run"].astype(str))
    return {
        "name": str(title or run_dir.resolve().name),
        "config": dict(config),
        "provenance": dict(provenance),
        "examples_dir": run_dir / "examples" if examples else None,
    }
