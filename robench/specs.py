"""Spec objects: what a plugin registers, and the data bundles factories return.

A spec is a frozen dataclass that names one buildable thing (a dataset, a backbone, an
attack, ...), carries the metadata ``robench plugins`` and the leaderboards need without
building anything, and holds the ``factory`` that builds it.  The host fills in ``plugin``
(the registering plugin's canonical name) when it collects specs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:  # pragma: no cover - torch is imported only where tensors are made
    import torch

Threat = Literal["linf", "l2", "l1", "l0", "corruption", "none"]
THREATS: tuple[str, ...] = ("linf", "l2", "l1", "l0", "corruption", "none")
AttackKind = Literal["bounded", "minimal"]
ATTACK_KINDS: tuple[str, ...] = ("bounded", "minimal")
BACKBONE_TRAINING: tuple[str, ...] = ("fine-tune", "frozen", "partial")


@dataclass(frozen=True)
class PluginSpec:
    """Fields shared by every spec.

    ``name`` is what users type (``pgd``, ``timm:*``); a name ending in ``:*`` is a namespace
    whose factory also receives ``name=`` with the part after the prefix.
    """

    spec_kind: ClassVar[str] = ""

    name: str
    factory: Callable[..., Any]
    description: str = ""
    plugin: str = field(default="", compare=False)
    #: for a ``prefix:*`` namespace: ``validate_name(rest)`` raises ``UnknownNameError`` for a
    #: name the namespace cannot build, so typos fail before any work starts
    validate_name: Callable[[str], None] | None = field(default=None, compare=False)

    @property
    def is_namespace(self) -> bool:
        return self.name.endswith(":*")

    @property
    def prefix(self) -> str:
        return self.name[:-1] if self.is_namespace else self.name

    def metadata(self) -> dict[str, Any]:
        """Plain fields for listings (everything but the factory)."""
        out: dict[str, Any] = {"spec_kind": self.spec_kind, "name": self.name}
        for key, value in self.__dict__.items():
            if key in ("name", "factory", "validate_name"):
                continue
            out[key] = value
        return out


@dataclass(frozen=True)
class DatasetSpec(PluginSpec):
    """A dataset; ``factory(**params) -> DatasetBundle``."""

    spec_kind: ClassVar[str] = "dataset"


@dataclass(frozen=True)
class BackboneSpec(PluginSpec):
    """A feature extractor; ``factory(image_size=, in_chans=, **params) -> nn.Module``.

    The module maps images to pooled features ``(N, D)`` and has ``num_features = D``; it may
    carry ``mean``/``std`` (sequences of per-channel floats) that the harness applies inside
    the evaluated model.
    """

    spec_kind: ClassVar[str] = "backbone"
    pretrained: bool = False


@dataclass(frozen=True)
class HeadSpec(PluginSpec):
    """A classification head; ``factory(num_features=, num_classes=, **params) -> nn.Module``.

    ``backbone_training`` says how the backbone trains under it: ``fine-tune``, ``frozen`` or
    ``partial``.  The module may define ``prepare_backbone(backbone)`` (freeze what it must)
    and ``backbone_lr_scale`` (the backbone's learning rate relative to the head's).
    """

    spec_kind: ClassVar[str] = "head"
    backbone_training: str = "fine-tune"

    def __post_init__(self) -> None:
        if self.backbone_training not in BACKBONE_TRAINING:
            raise ValueError(
                f"HeadSpec {self.name!r}: backbone_training must be one of {BACKBONE_TRAINING}"
            )


@dataclass(frozen=True)
class AdaptorSpec(PluginSpec):
    """A domain-adaptation objective; ``factory(num_features=, **params) -> nn.Module``.

    The module has ``uses_target: bool`` and
    ``loss(source_features, target_features, progress) -> Tensor`` added to the task loss;
    ``progress`` runs from 0 to 1 over training, counted per optimiser step.
    """

    spec_kind: ClassVar[str] = "adaptor"
    uses_target: bool = True


@dataclass(frozen=True)
class AttackSpec(PluginSpec):
    """An attack; ``factory(**params)`` returns an object with
    ``perturb(model, x, y, eps, target=None) -> x_adv``.

    ``threat`` is the threat model whose eps list applies; ``kind`` is ``bounded`` (one run per
    eps) or ``minimal`` (one run with ``eps=None`` returns minimal adversarials, and the whole
    robust-accuracy-vs-eps curve follows from their norms).  ``black_box`` attacks use only
    model outputs; ``targeted`` says the attack honours ``target``.
    """

    spec_kind: ClassVar[str] = "attack"
    threat: str = "linf"
    kind: str = "bounded"
    black_box: bool = False
    targeted: bool = False
    #: a preset (an ensemble): the member attacks and their parameters, in the order they
    #: run; the grid runs each member on the samples the ones before did not fool
    members: tuple[tuple[str, dict[str, Any]], ...] = ()

    def __post_init__(self) -> None:
        if self.threat not in THREATS:
            raise ValueError(f"AttackSpec {self.name!r}: threat must be one of {THREATS}")
        if self.kind not in ATTACK_KINDS:
            raise ValueError(f"AttackSpec {self.name!r}: kind must be one of {ATTACK_KINDS}")


@dataclass(frozen=True)
class ExecutorSpec(PluginSpec):
    """Runs grid jobs; ``factory(**params)`` returns an object with
    ``run(jobs: Sequence[Job]) -> Iterator[JobOutcome]`` yielding outcomes as jobs finish.

    ``supports_dependencies``: the executor honours ``Job.after`` and receives the whole grid
    in one call; otherwise the driver sends all training, then all evaluation."""

    spec_kind: ClassVar[str] = "executor"
    supports_dependencies: bool = False


@dataclass(frozen=True)
class ReporterSpec(PluginSpec):
    """Writes reports; ``factory(**params)`` returns an object with
    ``write(results: DataFrame, run_dir: Path, context: dict) -> list[Path]``."""

    spec_kind: ClassVar[str] = "reporter"
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelSpec(PluginSpec):
    """A complete classifier, evaluated as it is and never trained by the grid;
    ``factory(**params) -> Classifier`` (images in [0, 1] -> logits, with what it expects).

    ``source`` says in a few words what the factory loads and from where (for
    ``robench plugins --kind model``).  ``fits_dataset``: the factory takes ``num_classes``,
    ``image_size`` and ``in_chans``, and where the user's table leaves them out the harness
    passes the dataset's (a user's own ``file:``/``py:`` model takes the data it is given;
    a pretrained zoo model keeps the head and input it was trained with).
    """

    spec_kind: ClassVar[str] = "model"
    source: str = ""
    fits_dataset: bool = False


DEFENSE_STAGES: tuple[str, ...] = ("none", "training", "inference")


@dataclass(frozen=True)
class DefenseSpec(PluginSpec):
    """A defense.  ``stage = "training"``: ``factory(**params)`` returns a training objective
    that perturbs each batch with robench's attacks (see ``robench.TrainingDefense``);
    ``stage = "inference"``: it returns a wrapper of the evaluated model (see
    ``robench.InferenceDefense``); ``stage = "none"`` is the undefended model."""

    spec_kind: ClassVar[str] = "defense"
    stage: str = "training"

    def __post_init__(self) -> None:
        if self.stage not in DEFENSE_STAGES:
            raise ValueError(f"DefenseSpec {self.name!r}: stage must be one of {DEFENSE_STAGES}")


SPEC_TYPES: dict[str, type[PluginSpec]] = {
    cls.spec_kind: cls
    for cls in (DatasetSpec, BackboneSpec, HeadSpec, AdaptorSpec, ModelSpec, DefenseSpec,
                AttackSpec, ExecutorSpec, ReporterSpec)
}


# --------------------------------------------------------------------------- data bundles


class TensorSplit:
    """A split held in memory: images ``(N, C, H, W)`` float32 in [0, 1], labels ``(N,)`` int64.

    A map-style dataset (``len`` and indexing), usable with ``torch.utils.data.DataLoader``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError("labels must be (N,) and match images")
        self.images = images.float().contiguous()
        self.labels = labels.long().contiguous()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


@dataclass
class DatasetBundle:
    """What a dataset factory returns.

    ``train`` and ``test`` are map-style datasets of ``(image, label)``, images ``(C, H, W)``
    float in [0, 1].  They may be large (a
    folder of ImageNet's size): the harness reads them by index, decodes only the evaluated
    subset and the training batches (``robench.data``), and never materialises a split.
    Small built-ins hold a :class:`TensorSplit`; folders a lazy ``robench.ImageFiles``.
    ``domain`` names the domain the images come from (e.g. ``photo`` in PACS).
    """

    name: str
    num_classes: int
    image_size: int
    in_chans: int
    train: Any  # a map-style dataset (torch Dataset, TensorSplit, ...)
    test: Any
    class_names: Sequence[str] = ()
    domain: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def input_format(self) -> str:
        """The images it serves, as reports state it: ``1x28x28 grey``, ``3x32x32 RGB``."""
        colour = {1: "grey", 3: "RGB"}.get(int(self.in_chans), f"{self.in_chans} channels")
        return f"{self.in_chans}x{self.image_size}x{self.image_size} {colour}"


INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
CROP_MODES = ("center", "squash")


@dataclass(frozen=True)
class Preprocess:
    """How a model wants its images made from a file: resize, then centre-crop to ``size``.

    ``resize`` is the shorter side after resizing (``crop_mode="center"``, the aspect ratio
    kept) or both sides (``"squash"``); timm's eval transform uses
    ``resize = floor(size / crop_pct)``.  Applied to PIL images with torchvision's
    ``Resize``/``CenterCrop``, the same operations timm's ``create_transform`` builds.
    """

    size: int
    resize: int
    interpolation: str = "bilinear"
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, "
                             f"got {self.interpolation!r}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}")
        if self.size < 1 or self.resize < self.size:
            raise ValueError(f"need 1 <= size <= resize, got size {self.size}, "
                             f"resize {self.resize}")

    @classmethod
    def from_crop_pct(cls, size: int, crop_pct: float, *, interpolation: str = "bilinear",
                      crop_mode: str = "center") -> Preprocess:
        import math

        return cls(size=int(size), resize=int(math.floor(size / crop_pct)),
                   interpolation=interpolation, crop_mode=crop_mode)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    def describe(self) -> str:
        how = "shorter side" if self.crop_mode == "center" else "both sides"
        return (f"resize ({how}) to {self.resize} px ({self.interpolation}), centre crop "
                f"{self.size} px")

    def pil_transform(self) -> Callable[[Any], Any]:
        """PIL image -> PIL image of ``size x size``."""
        from torchvision import transforms
        from torchvision.transforms import InterpolationMode

        mode = InterpolationMode(self.interpolation)
        resize = self.resize if self.crop_mode == "center" else (self.resize, self.resize)
        return transforms.Compose([transforms.Resize(resize, interpolation=mode),
                                   transforms.CenterCrop(self.size)])


@dataclass
class Classifier:
    """What a model factory returns: a complete classifier and what it expects.

    ``module`` maps images to logits ``(N, num_classes)``.  When ``mean``/``std`` are given,
    the harness applies them inside the evaluated model (``module`` then receives normalised
    images); otherwise ``module`` receives images in [0, 1].  ``class_names`` are the names of
    the output classes where known (an ImageNet classifier's 1,000 names); ``image_size`` and
    ``in_chans`` the input it needs, where it needs one.  ``info`` is recorded in provenance
    (for example the checkpoint file and its hash).  ``preprocess`` is how the model's own
    library makes its input from an image file (timm: resize, then centre crop): a dataset
    read from files is decoded that way for this model, unless the dataset's ``image_size``
    is set explicitly.
    """

    module: torch.nn.Module
    num_classes: int
    class_names: Sequence[str] = ()
    image_size: int | None = None
    in_chans: int | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    preprocess: Preprocess | None = None


def as_tensors(split: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Materialise a split as ``(images, labels)`` float tensors in [0, 1].  Decodes every
    image of a lazy split: for small data and tests; the harness reads splits through
    ``robench.data`` instead."""
    import torch

    if isinstance(split, TensorSplit):
        return split.images, split.labels
    images, labels = [], []
    for index in range(len(split)):
        image, label = split[index]
        image = torch.as_tensor(image)
        # 8-bit pixels (decoded files) read as x / 255, as torchvision's ToTensor does
        images.append(image.float().div_(255.0) if image.dtype == torch.uint8
                      else image.float())
        labels.append(int(label))
    if not images:
        raise ValueError("empty split")
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)
