"""Grid configuration: TOML file + command-line flags -> a validated :class:`GridConfig`.

Every value is checked here, once, so that the grid never starts on unusable input; every
error is a :class:`UsageError` naming the key, the value and what is accepted.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_type_hints

from robench.errors import UsageError, closest
from robench.params import Check, check_value
from robench.specs import THREATS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: eps used for a threat model when neither config nor flags give any
DEFAULT_EPS: dict[str, tuple[str, ...]] = {
    "linf": ("2/255", "4/255", "8/255"),
    "l2": ("0.25", "0.5", "1", "2"),
    "l1": ("2", "5", "10"),
    "l0": ("5", "10", "20"),
    "corruption": ("1", "3", "5"),
    "none": ("0",),
}

#: per-plugin parameter tables: config key -> plugin kind
PARAM_TABLES: dict[str, str] = {
    "data": "dataset",
    "backbone": "backbone",
    "head": "head",
    "adaptor": "adaptor",
    "model": "model",
    "defense": "defense",
    "attack": "attack",
    "executor": "executor",
    "reporter": "reporter",
}

DEVICES = ("auto", "cpu", "cuda")
Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
LrSchedule = Literal["auto", "dann", "constant"]
LR_SCHEDULES: tuple[str, ...] = get_args(LrSchedule)
#: ``compile`` values accepted without asking torch: off and the usual torch.compile
#: backends; any other name that ``torch._dynamo.list_backends(exclude_tags=())`` lists is
#: accepted too
COMPILE_BACKENDS = ("off", "inductor", "aot_eager", "eager", "cudagraphs")


def _is_device(value: str) -> bool:
    return value in DEVICES or re.fullmatch(r"cuda:\d+", value) is not None


def _is_folder_name(value: str) -> bool:
    return bool(value) and not {"/", "\\"} & set(value) and value not in (".", "..")


# What each scalar key accepts, checked by robench.params like every plugin parameter (the
# command line's strings become the ints and floats asked for).
NonEmpty = Annotated[str, Check(test=lambda v: bool(v.strip()), rule="a non-empty string")]
RunName = Annotated[str, Check(test=_is_folder_name,
                               rule="a folder name under --out: non-empty, with no path "
                                    "separators")]
Device = Annotated[str, Check(test=_is_device, rule="auto, cpu, cuda or cuda:N")]
Limit = Annotated[int | None, Check(ge=1, rule="an integer >= 1, or 0 or 'all' for the "
                                                "whole test split")]
Count = Annotated[int, Check(ge=1)]
Natural = Annotated[int, Check(ge=0)]
Rate = Annotated[float, Check(ge=0)]
ClassImages = Annotated[int, Check(ge=0, rule="a number of classes >= 0 (0 or false: none; "
                                              "true: the default)")]
LoaderWorkers = Annotated[Annotated[int, Check(ge=0)] | Literal["auto"],
                          Check(rule="an integer >= 0, or 'auto' for one per usable core "
                                     "(at most 4)")]
ShardSize = Annotated[Annotated[int, Check(ge=1)] | Literal["auto"],
                      Check(rule="an integer >= 1 (samples per shard), or 'auto' (eight "
                                 "shards per attack, at least 32 samples each)")]
DEFAULT_CLASS_IMAGES = 10
DEFAULT_ALIGNMENT_IMAGES = 512


@dataclass
class GridConfig:
    """Everything that defines a grid run.  Field names are the TOML keys."""

    name: RunName = "default"
    dataset: NonEmpty = "digits"
    target: Annotated[str | None, Check(rule="a dataset name, or none")] = "digits-m"
    backbones: list[str] = field(default_factory=lambda: ["digits-cnn", "timm:test_resnet"])
    heads: list[str] = field(default_factory=lambda: ["linear"])
    adaptors: list[str] = field(default_factory=lambda: ["none", "dann"])
    #: complete classifiers evaluated as they are (``timm:resnet18``, ``file:model.pt``, ...),
    #: beside the trained backbone x head x adaptor x defense combinations
    models: list[str] = field(default_factory=list)
    #: defenses: ``none``, training defenses (``pgd-at``, ...) composed with every trained
    #: combination, inference defenses (``jpeg``, ...) wrapped around every evaluated model
    defenses: list[str] = field(default_factory=lambda: ["none"])
    attacks: list[str] = field(
        default_factory=lambda: ["fgsm", "pgd", "noise", "autoattack-fast"])
    eps: dict[str, list[str]] = field(default_factory=dict)
    reporters: list[str] = field(default_factory=lambda: ["csv", "md", "html", "json"])
    limit: Limit = 300
    epochs: Natural = 12
    batch_size: Count = 32
    lr: Rate = 1e-3
    #: "dann" (lr / (1 + 10 p) ** 0.75, Ganin & Lempitsky), "constant", or "auto": constant
    #: for models a training defense trains (adversarial training's recipe), "dann" for the
    #: rest; adaptors are always compared under one schedule (see :func:`lr_schedule_of`)
    lr_schedule: LrSchedule = "auto"
    weight_decay: Rate = 1e-4
    #: the one-seed shorthand of ``seeds``; with ``seeds`` set, its first seed
    seed: Natural = 0
    #: seeds as a grid axis: every model is trained and evaluated once per seed, each seed's
    #: tasks keyed as a one-seed run of that seed; empty means ``[seed]``
    seeds: list[int] = field(default_factory=list)
    device: Device = "auto"
    #: fp32, or autocast in bf16 / fp16 (fp16 on CUDA only) for training and attacks
    precision: Precision = "fp32"
    #: "off", or a torch.compile backend for the evaluated model (clean passes, attacks and
    #: verification; training is never compiled).  Unlike ``precision`` it is not part of
    #: any task key: it changes speed, not results (equal to float rounding, like ``device``),
    #: so switching it on or off resumes a run instead of recomputing it
    compile: str = "off"
    executor: NonEmpty = "local"
    out: NonEmpty = "reports"
    fresh: bool = False
    eval_batch_size: Count = 256
    #: class images (optimised from noise: what the model "sees" as a class) for at most this
    #: many classes, spread evenly over the class indices; 0 (or false) draws none.  The
    #: clean task's costliest part (160 steps per image at the model's input size): the
    #: default keeps a 1,000-class model as cheap as a 10-class one
    class_images: ClassImages = DEFAULT_CLASS_IMAGES
    #: perceptual alignment scores each class image against the mean of at most this many
    #: training images of its class (the first ones by index), decoded batch by batch
    alignment_images: Count = DEFAULT_ALIGNMENT_IMAGES
    #: loader worker processes that decode a dataset read from files (0: decode in the
    #: task's own process; "auto": one per usable core, at most 4)
    loader_workers: LoaderWorkers = "auto"
    #: samples per shard of an attack task (consecutive samples of the evaluated subset; each
    #: shard is a job of its own, stored when it finishes); "auto": a task of n samples in
    #: shards of max(32, ceil(n / 8)).  Not part of any task key (see docs/protocol.md)
    shard_size: ShardSize = "auto"
    #: per-plugin parameters: {"attack": {"pgd": {"steps": 20}}, ...}
    params: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    # ------------------------------------------------------------------ derived

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / self.name

    @property
    def seed_list(self) -> list[int]:
        """The seeds the grid runs, in order: ``seeds``, or ``[seed]`` when it is empty."""
        return list(self.seeds) or [self.seed]

    def plugin_params(self, kind: str, name: str) -> dict[str, Any]:
        table = {v: k for k, v in PARAM_TABLES.items()}[kind]
        return dict(self.params.get(table, {}).get(name, {}))

    def eps_labels(self, threat: str) -> dict[float, str]:
        """Each eps of ``threat`` as a float, with the text it was written as (``8/255``)."""
        raw = self.eps.get(threat) or list(DEFAULT_EPS[threat])
        return {float(parse_eps_value(threat, v)): str(v) for v in raw}

    def eps_values(self, threat: str) -> list[float]:
        """The eps list of ``threat``, ascending, as floats."""
        return sorted(self.eps_labels(threat))


# --------------------------------------------------------------------------- eps


def parse_eps_value(threat: str, text: Any) -> Fraction:
    """``"4/255"`` -> Fraction(4, 255); refuses negatives, NaN and non-numbers."""
    raw = str(text).strip()
    try:
        if isinstance(text, float):
            if not math.isfinite(text):
                raise ValueError
            value = Fraction(text).limit_denominator(10**9)
        else:
            value = Fraction(raw)
    except (ValueError, ZeroDivisionError):
        raise UsageError(
            f"Bad eps {raw!r} for threat {threat!r}: write a number or a fraction such as "
            f"0.5 or 8/255."
        ) from None
    if value < 0:
        raise UsageError(f"Bad eps {raw!r} for threat {threat!r}: eps must be >= 0.")
    if threat == "linf" and value > 1:
        raise UsageError(
            f"Bad eps {raw!r} for threat 'linf': images are in [0, 1], so an Linf eps above 1 "
            f"means nothing (did you mean {raw}/255?)."
        )
    if threat == "corruption" and (value.denominator != 1 or not 1 <= value <= 5):
        raise UsageError(f"Bad severity {raw!r} for threat 'corruption': use integers 1 to 5.")
    if threat == "l0" and value.denominator != 1:
        raise UsageError(f"Bad eps {raw!r} for threat 'l0': it counts pixels, use an integer.")
    return value


def parse_eps_flag(text: str) -> tuple[str, list[str]]:
    """``"linf:1/255,4/255"`` -> ("linf", ["1/255", "4/255"]), validated."""
    threat, sep, values = text.partition(":")
    threat = threat.strip().lower()
    if not sep or not values.strip():
        raise UsageError(
            f"Bad --eps {text!r}: write THREAT:E1,E2,... such as linf:1/255,4/255 or l2:0.5."
        )
    check_threat(threat)
    parts = [v.strip() for v in values.split(",") if v.strip()]
    for part in parts:
        parse_eps_value(threat, part)
    return threat, parts


def check_threat(threat: str) -> None:
    if threat not in THREATS:
        hint = closest(threat, THREATS)
        raise UsageError(
            f"Unknown threat model {threat!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; threat models are {', '.join(THREATS)}."
        )


def torch_compile_backends() -> tuple[str, ...]:
    """Every backend name this torch's ``torch.compile`` knows, or () if it cannot say."""
    try:
        from torch._dynamo import list_backends

        return tuple(list_backends(exclude_tags=()))
    except Exception:  # a private API: an older or newer torch may lack it
        return ()


def check_compile(value: Any) -> str:
    """``"off"`` or a torch.compile backend name; anything else is a UsageError."""
    name = value.strip() if isinstance(value, str) else None
    if name in COMPILE_BACKENDS:
        return name
    known = torch_compile_backends()
    if name and name in known:
        return name
    hint = closest(str(value), [*COMPILE_BACKENDS, *known], n=1)
    raise UsageError(
        f"Bad compile {value!r}"
        + (f" (did you mean {hint[0]!r}?)" if hint else "")
        + f": use {', '.join(COMPILE_BACKENDS[:-1])} or {COMPILE_BACKENDS[-1]}, or another "
        f"backend listed by torch._dynamo.list_backends(exclude_tags=()). off is the default; "
        f"inductor needs a C++ compiler (and Triton on a GPU); aot_eager and eager compile "
        f"nothing and only check that the model traces."
    )


# --------------------------------------------------------------------------- loading


_FIELD_TYPES = {f.name: f.type for f in fields(GridConfig)}
#: keys whose values robench.params checks against the field's annotation
_SCALAR_KEYS = ("name", "dataset", "executor", "out", "limit", "epochs", "batch_size",
                "eval_batch_size", "seed", "lr", "weight_decay", "fresh", "device",
                "lr_schedule", "precision", "class_images", "alignment_images",
                "loader_workers", "shard_size")
_LIST_KEYS = ("backbones", "heads", "adaptors", "models", "defenses", "attacks", "reporters")
#: the dataset whose showcase target and adaptors are the defaults (the default grid's)
SHOWCASE_DATASET = "digits"


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise UsageError(f"Config file {str(path)!r} does not exist.")
    if path.is_dir():
        raise UsageError(f"Config path {str(path)!r} is a folder; give a TOML file.")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"Config file {str(path)!r} is not valid TOML: {exc}.") from None


def _split_names(value: Any, key: str) -> list[str]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, Sequence):
        items = [str(v).strip() for v in value]
    else:
        raise UsageError(f"Config key {key!r} must be a list of names, got {value!r}.")
    items = [i for i in items if i]
    if not items:
        raise UsageError(f"Config key {key!r} is empty; give at least one name.")
    if len(set(items)) != len(items):
        raise UsageError(f"Config key {key!r} lists a name twice: {items}.")
    return items


@cache
def _annotations() -> dict[str, Any]:
    """The fields' annotations as objects (``Annotated`` checks included)."""
    return get_type_hints(GridConfig, include_extras=True)


def _scalar(key: str, value: Any) -> Any:
    """A scalar key's value, checked against its field's annotation (strings from the command
    line converted to the number asked for); names and paths stripped, device lower-cased."""
    if key == "limit" and value in (0, "0", "all") and not isinstance(value, bool):
        return None  # the whole test split
    if key == "class_images" and isinstance(value, bool):
        return DEFAULT_CLASS_IMAGES if value else 0
    if key == "class_images" and isinstance(value, str) and value.strip().lower() in (
            "true", "false"):
        return DEFAULT_CLASS_IMAGES if value.strip().lower() == "true" else 0
    if isinstance(value, str):
        value = value.strip().lower() if key == "device" else value.strip()
    return check_value(_annotations()[key], value, subject=f"Config key {key!r}", coerce=True)


def _seeds(value: Any) -> list[int]:
    """``seeds``: a list of integers >= 0, or the command line's ``"0,1,2"``; empty is the
    default (``[seed]``)."""
    items = value.split(",") if isinstance(value, str) else value
    if isinstance(items, (int, float)) and not isinstance(items, bool):
        items = [items]
    if not isinstance(items, Sequence) or isinstance(items, str):
        raise UsageError(f"Config key 'seeds' must be a list of integers >= 0 such as "
                         f"[0, 1, 2] (--seeds 0,1,2), got {value!r}.")
    items = [i.strip() if isinstance(i, str) else i for i in items]
    # an empty list is the default: one seed, ``seed``
    seeds = [check_value(_annotations()["seed"], i, subject="Config key 'seeds'", coerce=True)
             for i in items if i != ""]
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"Config key 'seeds' lists a seed twice: {seeds}.")
    return seeds


def _one_seed_source(data: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    """``seed`` is the one-seed shorthand of ``seeds``: a flag (override) for one of them
    replaces the config's other one; given together at one level, they must agree."""
    given = {k for k in ("seed", "seeds") if overrides.get(k) is not None}
    if len(given) == 1:
        data.pop(({"seed", "seeds"} - given).pop(), None)


def build_config(data: Mapping[str, Any] | None = None, **overrides: Any) -> GridConfig:
    """Validate a config mapping (from TOML) plus flag overrides into a GridConfig.

    ``overrides`` with value ``None`` are ignored, so CLI flags left out keep the file's value.
    """
    merged: dict[str, Any] = dict(data or {})
    _one_seed_source(merged, overrides)
    config = GridConfig()
    executor_table = merged.get("executor")
    if isinstance(executor_table, Mapping):
        # TOML cannot hold both executor = "ray" and [executor.ray]: a single [executor.NAME]
        # table selects that executor and sets its parameters.
        merged.pop("executor")
        merged.setdefault("_executor_params", executor_table)
        if len(executor_table) == 1:
            merged["executor"] = next(iter(executor_table))
    for key, value in overrides.items():
        if value is not None:
            merged[key] = value
    # The showcase's digits-m target and none/dann adaptors belong to the showcase dataset;
    # another dataset gets no target and no adaptation unless asked.  A grid that names
    # complete models and no backbones evaluates only those models.
    if merged.get("dataset", SHOWCASE_DATASET) != SHOWCASE_DATASET:
        if merged.get("target") is None:
            merged["target"] = "none"
        merged.setdefault("adaptors", ["none"])
    if merged.get("models") and "backbones" not in merged:
        config.backbones = []
    if "_executor_params" in merged:
        merged["executor_params_table"] = merged.pop("_executor_params")
    known = list(dict.fromkeys([*_FIELD_TYPES, *PARAM_TABLES]))
    for key, value in merged.items():
        if key == "executor_params_table":
            key = "executor"
        if key in _LIST_KEYS and isinstance(value, Mapping) and key[:-1] in PARAM_TABLES:
            table = key[:-1]
            first = next(iter(value), "NAME")
            raise UsageError(
                f"Config table [{key}.{first}] looks like parameters for {table} {first!r}: "
                f"parameter tables are singular, [{table}.{first}]. The plural key {key!r} "
                f"is the list of names ({key} = [\"{first}\", ...]).")
        if key in PARAM_TABLES and (key not in _FIELD_TYPES or isinstance(value, Mapping)):
            if not isinstance(value, Mapping) or not all(
                isinstance(v, Mapping) for v in value.values()
            ):
                raise UsageError(
                    f"Config table [{key}] must hold one sub-table per plugin name, such as "
                    f"[{key}.NAME] with its parameters."
                )
            config.params[key] = {str(k): dict(v) for k, v in value.items()}
            continue
        if key == "params":
            raise UsageError(
                f"Config key 'params' is not a table of its own: plugin parameters go in "
                f"top-level tables named by kind ({', '.join(sorted(PARAM_TABLES))}), such as "
                f"[data.mnist] in TOML or {{'data': {{'mnist': {{...}}}}}} in Python.")
        if key not in _FIELD_TYPES:
            hint = closest(key, [k for k in known if k != "params"])
            raise UsageError(
                f"Unknown config key {key!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f". Known keys: {', '.join(k for k in known if k != 'params')}."
            )
        if key in _LIST_KEYS:
            setattr(config, key, _split_names(value, key))
        elif key == "eps":
            if not isinstance(value, Mapping):
                raise UsageError(
                    "Config key 'eps' must be a table such as [eps] linf = ['4/255', '8/255']."
                )
            eps: dict[str, list[str]] = {}
            for threat, values in value.items():
                check_threat(str(threat))
                if isinstance(values, (str, int, float)):
                    values = [values]
                if not isinstance(values, Sequence) or not values:
                    raise UsageError(f"eps for threat {threat!r} must be a non-empty list.")
                for v in values:
                    parse_eps_value(str(threat), v)
                eps[str(threat)] = [str(v) for v in values]
            config.eps = eps
        elif key in _SCALAR_KEYS:
            setattr(config, key, _scalar(key, value))
        elif key == "seeds":
            config.seeds = _seeds(value)
        elif key == "compile":
            config.compile = check_compile(value)
        elif key == "target":
            target = _scalar(key, value)
            config.target = None if target in ("", "none", None) else target
        else:  # pragma: no cover - every field is one of the kinds above
            raise AssertionError(f"config key {key!r} has no check")
    if config.seeds:
        if "seed" in merged and config.seed != config.seeds[0]:
            raise UsageError(
                f"Config keys 'seed' ({config.seed}) and 'seeds' ({config.seeds}) disagree: "
                f"seed is the one-seed shorthand of seeds (seeds = [seed]); give one of them.")
        config.seed = config.seeds[0]
    if config.target == config.dataset:
        raise UsageError(
            f"target {config.target!r} is the same as dataset; give another domain or none."
        )
    return config


def load_config(path: str | Path | None = None, **overrides: Any) -> GridConfig:
    """Read an optional TOML file and apply flag overrides."""
    data = load_toml(path) if path is not None else {}
    return build_config(data, **overrides)


def lr_schedule_of(config: GridConfig, defense_stage: str | None) -> str:
    """The learning-rate schedule a trained model gets: the grid's ``lr_schedule`` when it
    names one, else (``"auto"``) ``"constant"`` for a model that a training defense trains and
    ``"dann"`` for the others.

    Measured through ``robench grid`` (benchmarks/RESULTS.md): PGD-AT on mnist at eps 0.3
    ends far less robust under the DANN annealing than with a constant lr, while the
    annealing is what lets DANN's adversarial game settle.  Models of one defense share one
    schedule, so adaptation gains stay comparisons under one optimiser schedule.
    """
    if config.lr_schedule != "auto":
        return config.lr_schedule
    return "constant" if defense_stage == "training" else "dann"
