"""Complete classifiers fitted to a dataset: the evaluated module of a ``model`` plugin.

A model plugin returns a :class:`robench.Classifier` (what the network expects: its classes,
input size, channels, mean and std).  :func:`fit_to_dataset` turns it into the module the
harness evaluates, images of the dataset in [0, 1] -> logits over the dataset's classes:

1. **Channels.**  A classifier that needs 3 channels evaluated on grey (1-channel) data gets
   the grey channel repeated three times *inside* the module, so attacks perturb the one
   channel the data has and eps keeps its meaning.  This is automatic (``repeat_grey=True``,
   the default); a grey image shown to an RGB model is exactly its 3-channel copy.  Any other
   channel mismatch is a :class:`robench.UsageError`.
2. **Input size.**  A classifier that states an ``image_size`` is evaluated only on data of
   that size; nothing is resized (resizing would change what eps means).  A classifier with
   ``image_size=None`` takes any size.
3. **Normalisation.**  ``Normalize(mean, std)`` inside the module when the classifier gives
   them, so attacks always work in [0, 1] pixel space.
4. **Classes.**  With as many outputs as the dataset has classes, the outputs are used as
   they are, reordered to the dataset's order when both sides name their classes and the
   names are the same set.  With more outputs (an ImageNet classifier on a 10-class subset
   of ImageNet), the classifier's ``class_names`` must name every dataset class; those
   logits are selected in dataset order, and the prediction is the arg-max over the dataset's
   classes only.  Names match exactly, or else ignoring case and surrounding space.
   Anything else (fewer outputs, unnamed extra outputs, names that do not cover the dataset)
   is a :class:`robench.UsageError` naming the model, the dataset and both class counts.
5. **Frozen.**  The module is in eval mode and every parameter has ``requires_grad=False``:
   attacks take gradients with respect to the input only.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robench.errors import UsageError
from robench.models import Normalize, count_parameters, freeze
from robench.specs import Classifier


class DatasetClassifier(nn.Module):
    """Images of the dataset in [0, 1] -> logits over the dataset's classes.

    ``repeat``: how many times the input channels are repeated (3 for grey data on an RGB
    model, else 1); ``normalize``: ``Normalize`` or ``None``; ``class_index``: the
    classifier outputs kept, in dataset order, or ``None`` for all of them as they are.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        normalize: Normalize | None = None,
        repeat: int = 1,
        class_index: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.module = module
        self.normalize = normalize
        self.repeat = int(repeat)
        if class_index is None:
            self.class_index: torch.Tensor | None = None
        else:
            self.register_buffer("class_index", torch.as_tensor(list(class_index),
                                                                dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.repeat != 1:
            x = x.repeat(1, self.repeat, 1, 1)
        if self.normalize is not None:
            x = self.normalize(x)
        logits = self.module(x)
        if isinstance(logits, (tuple, list)):  # e.g. (logits, aux) from some zoo models
            logits = logits[0]
        if self.class_index is not None:
            logits = logits.index_select(1, self.class_index)
        return logits


def _norm(name: str) -> str:
    return str(name).strip().lower()


def _match_classes(model_names: Sequence[str], dataset_names: Sequence[str]) -> list[int] | None:
    """Indices into ``model_names`` of every dataset class in dataset order, or ``None``
    when some dataset class is not named by the model (exact match first, then by case)."""
    exact = {str(n): i for i, n in reversed(list(enumerate(model_names)))}
    loose: dict[str, int] = {}
    for i, n in reversed(list(enumerate(model_names))):
        loose[_norm(n)] = i
    out = []
    for name in dataset_names:
        if str(name) in exact:
            out.append(exact[str(name)])
        elif _norm(name) in loose:
            out.append(loose[_norm(name)])
        else:
            return None
    return out if len(set(out)) == len(out) else None


def _shape(size: int | None, chans: int | None) -> str:
    c = "any" if chans is None else str(chans)
    s = "any size" if size is None else f"{size}x{size}"
    return f"{c}-channel images of {s}"


def _preview(names: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(repr(str(x)) for x in list(names)[:n])
    return shown + (", ..." if len(names) > n else "")


def fit_to_dataset(
    classifier: Classifier,
    *,
    model_name: str,
    dataset: str,
    num_classes: int,
    class_names: Sequence[str],
    image_size: int,
    in_chans: int,
    repeat_grey: bool = True,
) -> nn.Module:
    """The evaluated module for ``classifier`` on ``dataset`` (see the module docstring).

    ``num_classes``, ``class_names``, ``image_size`` and ``in_chans`` are the dataset's.
    Raises :class:`robench.UsageError`, naming the model and the dataset with both shapes or
    class counts, when the classifier cannot be evaluated on the data.
    """
    if not isinstance(classifier, Classifier):
        raise UsageError(
            f"Model {model_name!r}: its factory returned {type(classifier).__name__}, not a "
            f"robench.Classifier; a model plugin must return robench.Classifier(module, "
            f"num_classes, ...)."
        )
    # -- channels and input size
    repeat = 1
    want_chans = classifier.in_chans
    if want_chans is not None and want_chans != in_chans:
        if repeat_grey and in_chans == 1 and want_chans == 3:
            repeat = 3
        else:
            raise UsageError(
                f"Model {model_name!r} needs {_shape(classifier.image_size, want_chans)}, but "
                f"dataset {dataset!r} has {_shape(image_size, in_chans)}. Use a dataset with "
                f"{want_chans} channels (or, for grey data on an RGB model, keep repeat_grey "
                f"on), or a model built for {in_chans} channels (in_chans = {in_chans})."
            )
    if classifier.image_size is not None and int(classifier.image_size) != int(image_size):
        raise UsageError(
            f"Model {model_name!r} needs {_shape(classifier.image_size, want_chans)}, but "
            f"dataset {dataset!r} has {_shape(image_size, in_chans)}. robench does not resize "
            f"inside the model (eps would change meaning): load the dataset at "
            f"image_size = {classifier.image_size}, or, where the architecture allows another "
            f"size, set the model's image_size = {image_size}."
        )
    # -- normalisation
    normalize = None
    if classifier.mean is not None or classifier.std is not None:
        if classifier.mean is None or classifier.std is None:
            raise UsageError(f"Model {model_name!r}: mean and std must be given together.")
        chans = want_chans if want_chans is not None else in_chans
        mean, std = list(classifier.mean), list(classifier.std)
        if len(mean) != chans or len(std) != chans:
            raise UsageError(
                f"Model {model_name!r}: mean/std have {len(mean)}/{len(std)} entries but the "
                f"model receives {chans}-channel images."
            )
        try:
            normalize = Normalize(mean, std)
        except ValueError as exc:
            raise UsageError(f"Model {model_name!r}: {exc}.") from None
    # -- classes
    model_classes = int(classifier.num_classes)
    model_names = list(classifier.class_names or ())
    if model_names and len(model_names) != model_classes:
        raise UsageError(
            f"Model {model_name!r} has {model_classes} outputs but {len(model_names)} class "
            f"names; they must be as many."
        )
    data_names = list(class_names or ())
    index: list[int] | None = None
    if model_classes == num_classes:
        if model_names and data_names:
            index = _match_classes(model_names, data_names)
            if index is None:
                warnings.warn(
                    f"Model {model_name!r} and dataset {dataset!r} both have {num_classes} "
                    f"classes but name them differently (model: {_preview(model_names)}; "
                    f"dataset: {_preview(data_names)}); outputs are used in the model's order.",
                    stacklevel=2,
                )
            elif index == list(range(num_classes)):
                index = None
    elif model_classes > num_classes:
        index = _match_classes(model_names, data_names) if model_names and data_names else None
        if index is None:
            if not model_names or not data_names:
                missing = "the model's outputs have no class names" if not model_names else \
                    "the dataset's classes have no names"
            else:
                lost = [n for n in data_names if _match_classes(model_names, [n]) is None]
                missing = (f"{len(lost)} of the dataset's class names are not among the "
                           f"model's ({_preview(lost)}; the model's are like "
                           f"{_preview(model_names, 3)})")
            raise UsageError(
                f"Model {model_name!r} has {model_classes} classes and dataset {dataset!r} has "
                f"{num_classes}; a subset of the outputs can be evaluated only when the model "
                f"names every dataset class, but {missing}. Map dataset class names to model "
                f"output indices with the model's class_index = 'file.json' (or .csv), where "
                f"the model supports it, or use a model with {num_classes} classes."
            )
    else:
        raise UsageError(
            f"Model {model_name!r} has {model_classes} classes but dataset {dataset!r} has "
            f"{num_classes}: a classifier cannot be evaluated on more classes than it "
            f"predicts. Use a dataset with at most {model_classes} classes, or train a head "
            f"on this dataset (backbones + heads) instead."
        )
    module = DatasetClassifier(classifier.module, normalize=normalize, repeat=repeat,
                               class_index=index)
    return freeze(module)


def describe(classifier: Classifier) -> dict[str, Any]:
    """Provenance of a classifier: plain JSON-able values (classes, input, weights, info)."""
    names = list(classifier.class_names or ())
    return {
        "num_classes": int(classifier.num_classes),
        "class_names": f"{len(names)} names, first {_preview(names, 3)}" if names else "",
        "input": {
            "image_size": classifier.image_size,
            "in_chans": classifier.in_chans,
            "range": "[0, 1]",
            "mean": None if classifier.mean is None else [float(v) for v in classifier.mean],
            "std": None if classifier.std is None else [float(v) for v in classifier.std],
        },
        "module": type(classifier.module).__name__,
        "parameters": count_parameters(classifier.module),
        "info": dict(classifier.info),
    }


class InputMismatchError(UsageError):
    """A complete model that cannot take the dataset's images; ``takes`` is an input
    ``(channels, image_size)`` the model does take and the dataset can serve, if any."""

    def __init__(self, message: str, takes: tuple[int, int] | None = None) -> None:
        super().__init__(message)
        self.takes = takes


#: inputs tried when a model refuses the dataset's: MNIST's native 1x28x28 first
CANDIDATE_INPUTS: tuple[tuple[int, int], ...] = ((1, 28), (1, 32), (3, 28), (3, 32))


def _forward_fails(module: nn.Module, chans: int, size: int) -> str:
    """Why ``module`` cannot classify two grey images of ``chans x size x size`` ("" when it
    returns logits)."""
    x = torch.full((2, chans, size, size), 0.5)
    try:
        with torch.no_grad():
            out = module(x)
    except Exception as exc:  # the model's own code: any error means "not this input"
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2:
        return f"it returned {getattr(out, 'shape', type(out).__name__)}, not (N, classes)"
    return ""


def check_takes_input(fitted: nn.Module, classifier: Classifier, *, model_name: str,
                      dataset: str, image_size: int, in_chans: int,
                      servable: Any = None) -> None:
    """Run the fitted model once on two grey images of the dataset's shape; a model that
    cannot take them is refused before any work (:class:`InputMismatchError`), with one
    sentence naming both shapes and how to change either.  ``servable(chans, size)`` says
    whether the dataset can be served at another input; the first of
    :data:`CANDIDATE_INPUTS` that the model takes and the dataset can serve is suggested."""
    why = _forward_fails(fitted, in_chans, image_size)
    if not why:
        return
    takes = None
    for chans, size in CANDIDATE_INPUTS:
        if (chans, size) == (in_chans, image_size) or servable is None or \
                not servable(chans, size):
            continue
        if not _forward_fails(classifier.module, chans, size):
            takes = (chans, size)
            break
    have = f"{in_chans}x{image_size}x{image_size}"
    if takes is not None:
        fix = (f"it takes {takes[0]}x{takes[1]}x{takes[1]}: serve the dataset so "
               f"([data.{dataset}] channels = {takes[0]}, image_size = {takes[1]}; from Python "
               f"dataset_params={{\"channels\": {takes[0]}, \"image_size\": {takes[1]}}}), or "
               f"change the model's input layer to take {have}")
    else:
        fix = (f"give the model's table in_chans and image_size if it needs another input, "
               f"and the dataset's channels and image_size to match (from Python "
               f"dataset_params={{\"channels\": 1, \"image_size\": 28}}), or change the "
               f"model's input layer to take {have}")
    raise InputMismatchError(
        f"Model {model_name!r} cannot take dataset {dataset!r}'s {have} images ({why}); "
        f"{fix}.", takes=takes)
