"""Example images for the reports: the one place their file format is defined.

Tasks write what they already computed (``examples/tasks/<task key>.npz``): an attack task
a few adversarial examples per eps of its grid with the clean images, labels and both
predictions; a clean task the class images of the model.  After a run, :func:`assemble`
combines them into one file per model and domain, ``examples/<model>__<domain>.npz``, which
the HTML report reads.  Reports never load a model.

Attack task file keys: ``attack``, ``threat``, ``eps`` (the task's eps, ascending) and, when
it found adversarials, per kept example ``indices`` (its sample in the evaluated subset),
``found_eps`` (the eps whose run produced it; for a minimal-norm attack the smallest eps
whose ball holds it), ``adversarial_at`` (bool ``(m, len(eps))``: inside that eps's ball
and adversarial there; an example found at a smaller eps of a nested threat is inside every
larger ball), ``images_clean``, ``images_adv``, ``labels``, ``pred_clean``, ``pred_adv``.

Per-model file keys (all arrays; text as 0-d unicode arrays, images uint8 ``(k, H, W, C)``):
``model``, ``domain``, ``dataset``, ``class_names``, optionally ``class_images`` and, when an
attack found adversarials, ``attack``, ``threat``, ``eps`` (the one eps every example shown
is adversarial at), ``images_clean``, ``images_adv``, ``labels``, ``pred_clean``,
``pred_adv``, ``found_eps`` and ``example_attacks`` (per example: the eps and the attack
that found it), ``role`` (``headline``: the attack behind the headline at the headline eps;
``fallback``: another attack or eps, because that one kept no example) and the headline's
``headline_attack``, ``headline_threat`` and ``headline_eps``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robench.io import atomic_write_bytes

TEXT_KEYS = ("model", "domain", "dataset", "attack", "threat")
IMAGE_KEYS = ("images_clean", "images_adv", "class_images")
INT_KEYS = ("labels", "pred_clean", "pred_adv", "class_labels", "indices")
#: examples an attack task keeps per eps of its grid (a few: the report shows one eps)
EXAMPLES_PER_EPS = 4
#: per-example arrays of an attack's files (the first axis is the example)
EXAMPLE_KEYS = ("indices", "found_eps", "adversarial_at", "images_clean", "images_adv",
                "labels", "pred_clean", "pred_adv", "example_attacks")


def _uint8_hwc(images: Any) -> np.ndarray:
    """``(k, C, H, W)`` floats in [0, 1] (tensor or array) -> ``(k, H, W, C)`` uint8."""
    array = images.detach().cpu().float().numpy() if hasattr(images, "detach") else \
        np.asarray(images, dtype=np.float32)
    return (np.clip(array, 0, 1) * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)


def _save(path: Path, arrays: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def task_file(run_dir: str | Path, key: str) -> Path:
    return Path(run_dir) / "examples" / "tasks" / f"{key}.npz"


def write_task_examples(run_dir: str | Path, key: str, **arrays: Any) -> Path:
    """Save a task's examples: images as float ``(k, C, H, W)`` in [0, 1], the rest as is."""
    out: dict[str, Any] = {}
    for name, value in arrays.items():
        if name in IMAGE_KEYS:
            out[name] = _uint8_hwc(value)
        elif name in INT_KEYS:
            out[name] = np.asarray(value.cpu() if hasattr(value, "cpu") else value,
                                   dtype=np.int64)
        else:
            out[name] = np.asarray(value)
    path = task_file(run_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(path, out)
    return path


def read_task_examples(run_dir: str | Path, key: str) -> dict[str, np.ndarray] | None:
    path = task_file(run_dir, key)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def merge_task_examples(run_dir: str | Path, key: str, parts: Sequence[str], *,
                        nested: bool, per_eps: int = EXAMPLES_PER_EPS) -> Path:
    """Write task ``key``'s examples from those of its shards ``parts`` (task files whose
    ``indices`` are already indices in the evaluated subset): the examples of every shard
    pooled, and kept by :func:`select_examples` as one task would keep its own."""
    files = [f for f in (read_task_examples(run_dir, part) for part in parts) if f is not None]
    head = {name: files[0][name] for name in ("attack", "threat", "eps")
            if files and name in files[0]}
    pooled = [f for f in files if "indices" in f and len(f["indices"])]
    path = task_file(run_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not pooled:
        _save(path, head)
        return path
    arrays = {name: np.concatenate([f[name] for f in pooled])
              for name in EXAMPLE_KEYS if name in pooled[0]}
    eps_grid = np.asarray(head["eps"], dtype=np.float64)
    found = {int(index): int(np.argmin(np.abs(eps_grid - float(at))))
             for index, at in zip(arrays["indices"], arrays["found_eps"], strict=True)}
    chosen, adversarial_at = select_examples(found, len(eps_grid), nested=nested,
                                             per_eps=per_eps)
    rows = [int(np.flatnonzero(arrays["indices"] == index)[0]) for index in chosen]
    out = {**head, **{name: value[rows] for name, value in arrays.items()}}
    out["adversarial_at"] = adversarial_at
    _save(path, out)
    return path


def slug(model: str, domain: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{model}__{domain}")


def select_examples(found: Mapping[int, int], eps_count: int, *, nested: bool,
                    per_eps: int) -> tuple[list[int], np.ndarray]:
    """Which of an attack's examples a task keeps, so that every eps of its grid has up to
    ``per_eps`` examples adversarial at it (the report shows one eps, chosen after the run).

    ``found`` maps a sample to the position (in the eps list) of the eps whose run produced
    its example.  A nested threat's example is adversarial at that eps and every larger one;
    a corruption's severity only at its own.  Per eps, the examples found at that very eps
    come first (they needed its budget), then those found at the largest smaller eps.
    Returns the kept samples, ascending, and their ``adversarial_at`` matrix
    ``(len(kept), eps_count)``."""
    def inside(index: int, k: int) -> bool:
        return found[index] <= k if nested else found[index] == k

    kept: set[int] = set()
    for k in range(eps_count):
        pool = sorted((i for i in found if inside(i, k)), key=lambda i: (-found[i], i))
        kept.update(pool[:per_eps])
    order = sorted(kept)
    matrix = np.array([[inside(i, k) for k in range(eps_count)] for i in order],
                      dtype=bool).reshape(len(order), eps_count)
    return order, matrix


@dataclass(frozen=True)
class ExampleChoice:
    """One candidate for a model's strip: an attack's examples at one eps.

    ``keys`` are the task files pooled, in order: the attack's own and, for a preset's
    member, then those of the members before it (the member's row counts the samples they
    fooled, so their examples are its examples too).  ``role`` is ``headline`` for the
    attack behind the headline at the headline eps, ``fallback`` for every other one."""

    attack: str
    threat: str
    eps: float
    keys: tuple[str, ...]
    role: str = "fallback"


@dataclass(frozen=True)
class AttackExamples:
    """One attack of a model and domain, as the choice of its strip needs it: its threat,
    its eps grid and the task files holding its examples (see :class:`ExampleChoice`)."""

    name: str
    threat: str
    eps: tuple[float, ...]
    keys: tuple[str, ...]


def example_choices(attacks: Sequence[AttackExamples], *, ranked: Sequence[str],
                    main_eps: Mapping[str, float]) -> list[ExampleChoice]:
    """The candidates for a model's strip, best first.

    ``ranked`` names the attacks of the headline threat, strongest at the headline eps
    first (:func:`robench.leaderboard.headline_attacks`); ``main_eps`` maps each threat to
    its main eps (the headline eps for the headline threat); ``attacks`` are in the order
    the fallbacks take.  The order: the headline attack at the headline eps (role
    ``headline``); the other ranked attacks at that eps; the remaining attacks at their
    threat's main eps; then every attack at its other eps, the larger ones first, nearest
    its main eps first.  An attack without a main eps (a threat with no positive eps) only
    comes in the last round.
    """
    by_name = {a.name: a for a in attacks}
    order = [by_name[n] for n in dict.fromkeys(ranked) if n in by_name]
    order += [a for a in attacks if a not in order]
    headline = order[0].name if ranked and ranked[0] in by_name else None
    choices: list[ExampleChoice] = []
    for attack in order:
        main = main_eps.get(attack.threat)
        if main is not None:
            choices.append(ExampleChoice(
                attack=attack.name, threat=attack.threat, eps=float(main), keys=attack.keys,
                role="headline" if attack.name == headline else "fallback"))
    for attack in order:
        main = main_eps.get(attack.threat)
        others = [e for e in attack.eps if main is None or not _close(e, main)]
        if main is not None:  # a nested threat's example at a smaller eps would be
            others.sort(key=lambda e: (e < main, abs(e - main)))  # inside the main ball
        choices += [ExampleChoice(attack=attack.name, threat=attack.threat, eps=float(e),
                                  keys=attack.keys) for e in others]
    return choices


def _close(a: float, b: float) -> bool:
    return bool(np.isclose(a, b, rtol=1e-9, atol=1e-12))


def _examples_at(found: Mapping[str, np.ndarray], attack: str,
                 eps: float) -> dict[str, np.ndarray] | None:
    """The examples of one attack task file that are adversarial at ``eps``, or None.

    A file written before ``adversarial_at`` existed counts at its one ``eps`` only."""
    if "images_adv" not in found or not len(found["images_adv"]):
        return None
    grid = np.atleast_1d(np.asarray(found["eps"], dtype=np.float64))
    column = [k for k, value in enumerate(grid) if _close(value, eps)]
    if not column:
        return None
    m = len(found["images_adv"])
    if "adversarial_at" in found:
        mask = np.asarray(found["adversarial_at"], dtype=bool)[:, column[0]]
    else:  # an older task file: its examples were adversarial at its (largest) eps
        mask = np.ones(m, dtype=bool)
    if not mask.any():
        return None
    out = {name: np.asarray(found[name])[mask] for name in EXAMPLE_KEYS
           if name in found and name not in ("adversarial_at", "example_attacks")}
    out.setdefault("found_eps", np.full(m, float(grid[column[0]]))[mask])
    out["example_attacks"] = np.asarray([attack] * int(mask.sum()))
    # those found at this very eps first (they needed its budget), then the larger smaller
    order = np.argsort(-out["found_eps"], kind="stable")
    return {name: value[order] for name, value in out.items()}


def assemble(run_dir: str | Path, *, model: str, domain: str, dataset: str,
             class_names: Sequence[str], class_images_key: str | None,
             choices: Sequence[ExampleChoice], headline: ExampleChoice | None = None,
             limit: int = 8) -> Path:
    """Write ``examples/<model>__<domain>.npz`` from the task files: the class images of
    ``class_images_key`` and the examples of the first of ``choices`` (in the order given)
    with at least one example adversarial at its eps, at most ``limit`` of them.

    ``headline`` is the attack behind the headline at the headline eps (usually the first
    choice), written beside the examples so that a report can say what a fallback replaces.
    """
    arrays: dict[str, Any] = {"model": np.asarray(model), "domain": np.asarray(domain),
                              "dataset": np.asarray(dataset),
                              "class_names": np.asarray([str(c) for c in class_names])}
    pictures = read_task_examples(run_dir, class_images_key) if class_images_key else None
    if pictures and "class_images" in pictures:
        arrays["class_images"] = pictures["class_images"]
        if "class_labels" in pictures:  # a subset of the classes was pictured
            arrays["class_image_names"] = np.asarray(
                [str(class_names[int(i)]) for i in pictures["class_labels"]])
    if headline is not None:
        arrays.update(headline_attack=np.asarray(headline.attack),
                      headline_threat=np.asarray(headline.threat),
                      headline_eps=np.asarray(float(headline.eps)))
    for choice in choices:
        parts = []
        for key in choice.keys:
            found = read_task_examples(run_dir, key)
            picked = _examples_at(found, str(found["attack"]), choice.eps) if found else None
            if picked:
                parts.append(picked)
        if not parts:
            continue
        shown = {name: np.concatenate([p[name] for p in parts])[:limit]
                 for name in parts[0] if all(name in p for p in parts)}
        arrays.update(shown, attack=np.asarray(choice.attack),
                      threat=np.asarray(choice.threat), eps=np.asarray(float(choice.eps)),
                      role=np.asarray(choice.role))
        break
    path = Path(run_dir) / "examples" / f"{slug(model, domain)}.npz"
    _save(path, arrays)
    return path
