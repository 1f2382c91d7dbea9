"""Sample shards: an attack task split into jobs over consecutive samples of its subset.

One attack on one model and domain is one *task* (one store key, one set of rows).  Its
evaluated samples are split into shards of ``shard_size`` consecutive samples; each shard is
a job of its own, so the shards of one model's attack run side by side on every worker, GPU
and Ray node, and the store commits each finished shard.  When a task's last shard is in,
the driver merges the shards' payloads into the task's payload (:func:`merge_payloads`):
tabulation reads tasks, never shards, so ``results.csv`` has the same shape for any shard
size.  A task of one shard is keyed, stored and run exactly as an unsharded task.

What a shard computes depends only on its samples: random draws come from per-sample
streams (:mod:`robench.streams`), a preset's member reads the masks the previous member
wrote for the same shard, and examples carry their indices in the subset.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from robench.store import pack_mask, unpack_mask

#: ``shard_size = "auto"`` splits a task into this many shards ...
AUTO_SHARDS = 8
#: ... of at least this many samples
AUTO_MIN_SHARD = 32


def resolve_shard_size(shard_size: int | str, n: int) -> int:
    """The shard size of a task of ``n`` samples: the configured size, or for ``"auto"``
    ``max(32, ceil(n / 8))`` (eight shards, none under 32 samples; a task of up to 32
    samples is one shard).  Depends only on the config and ``n``, never on the workers, so a
    grid's rows do not depend on where it runs."""
    if shard_size == "auto":
        return max(AUTO_MIN_SHARD, math.ceil(n / AUTO_SHARDS))
    return int(shard_size)


def shard_ranges(n: int, size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each shard of ``n`` samples in shards of ``size`` (the last one
    shorter); one empty range for an empty subset."""
    if n <= 0:
        return [(0, 0)]
    size = max(1, int(size))
    return [(start, min(n, start + size)) for start in range(0, n, size)]


def shard_key(task_key: str, start: int, stop: int, n: int) -> str:
    """The store key of samples ``[start, stop)`` of the task ``task_key`` over ``n``
    samples: the task's own key when the shard is the whole subset."""
    if start == 0 and stop >= n:
        return task_key
    return f"{task_key}.{start}-{stop}"


def merge_payloads(payloads: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The payload of a whole attack task from those of its shards, in sample order.

    Counts, costs and seconds add up; per-sample masks are concatenated; accuracies are
    recomputed from the counts.  The result has the fields an unsharded task writes, plus
    ``shards`` and ``shard_size``."""
    if len(payloads) == 1:
        return dict(payloads[0])
    first = payloads[0]
    n = sum(int(p["n"]) for p in payloads)
    correct = sum(_correct(p) for p in payloads)
    outcomes = []
    for k, outcome in enumerate(first["outcomes"]):
        parts = [p["outcomes"][k] for p in payloads]
        if any(float(part["eps"]) != float(outcome["eps"]) for part in parts):
            raise ValueError("the shards of one task attacked different eps lists")
        robust = np.concatenate([unpack_mask(part["robust"], int(p["n"]))
                                 for part, p in zip(parts, payloads, strict=True)])
        reasons: Counter = Counter()
        for part in parts:
            reasons.update(part.get("reasons", {}))
        merged = {
            "eps": outcome["eps"], "eps_label": outcome["eps_label"],
            "robust": pack_mask(robust), "n_robust": int(robust.sum()),
            "robust_acc": int(robust.sum()) / n if n else 0.0,
            "reasons": dict(reasons),
        }
        for count in ("n_invalid", "n_verify_mismatch", "n_precision_mismatch", "grad_evals",
                      "queries"):
            if all(count in part for part in parts):
                merged[count] = sum(int(part[count]) for part in parts)
        merged["seconds"] = sum(float(part["seconds"]) for part in parts)
        outcomes.append(merged)
    return {
        **{k: v for k, v in first.items() if k not in ("start", "stop")},
        "n": n, "n_correct": correct, "clean_acc": correct / n if n else 0.0,
        "examples": sum(int(p.get("examples", 0)) for p in payloads),
        "batch_size": min(int(p["batch_size"]) for p in payloads),
        "outcomes": outcomes, "shards": len(payloads),
        "shard_size": max(int(p["n"]) for p in payloads),
    }


def _correct(payload: dict[str, Any]) -> int:
    if "n_correct" in payload:
        return int(payload["n_correct"])
    return round(float(payload["clean_acc"]) * int(payload["n"]))


def masks_of(payload: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The eps list and the per-eps robust masks ``(len(eps), n)`` of a task's payload (what
    the next member of a preset starts from)."""
    n = int(payload["n"])
    eps = np.array([float(o["eps"]) for o in payload["outcomes"]])
    robust = np.stack([unpack_mask(o["robust"], n) for o in payload["outcomes"]]) \
        if payload["outcomes"] else np.zeros((0, n), dtype=bool)
    return eps, robust
