"""robench: how robust is this image classifier, and how does transfer or domain adaptation
change that?  This module is the public API; plugins import only from here."""

from typing import Any

from robench.config import GridConfig, load_config
from robench.errors import PluginError, RobenchError, UnknownNameError, UsageError
from robench.hookspecs import hookimpl, hookspec
from robench.host import PluginHost, build_plugin_manager
from robench.jobs import Job, JobOutcome
from robench.lazy import lazy
from robench.lazy import module_getattr as lazy_module_getattr
from robench.params import Check, checked, table_ref
from robench.specs import (
    THREATS,
    AdaptorSpec,
    AttackSpec,
    BackboneSpec,
    Classifier,
    DatasetBundle,
    DatasetSpec,
    DefenseSpec,
    ExecutorSpec,
    HeadSpec,
    ModelSpec,
    Preprocess,
    ReporterSpec,
    TensorSplit,
    as_tensors,
)
from robench.version import __version__

#: imported on first use, so that ``import robench`` (and every CLI error) does not wait for
#: torch: name -> module that defines it
_LAZY: dict[str, str] = {
    "run_grid": "robench.grid",
    "load_model": "robench.grid",
    "evaluate": "robench.api",
    "load_backbone_weights": "robench.models",
    "ImageFiles": "robench.data",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'robench' has no attribute {name!r}")

#: the modules a plugin may import: this one, and those documented in docs/plugins.md
#: (tests/core/test_architecture.py holds the built-in plugins to it)
PUBLIC_MODULES: tuple[str, ...] = (
    "robench",
    "robench.classifiers",
    "robench.data",
    "robench.defenses",
    "robench.errors",
    "robench.examples",
    "robench.io",
    "robench.jobs",
    "robench.leaderboard",
    "robench.models",
    "robench.protocols",
    "robench.results",
    "robench.streams",
    "robench.testing",
)

__all__ = [
    "PUBLIC_MODULES",
    "THREATS",
    "AdaptorSpec",
    "AttackSpec",
    "BackboneSpec",
    "Check",
    "Classifier",
    "DatasetBundle",
    "DatasetSpec",
    "DefenseSpec",
    "ExecutorSpec",
    "GridConfig",
    "HeadSpec",
    "ImageFiles",
    "Job",
    "ModelSpec",
    "JobOutcome",
    "PluginError",
    "PluginHost",
    "Preprocess",
    "ReporterSpec",
    "RobenchError",
    "TensorSplit",
    "UnknownNameError",
    "UsageError",
    "__version__",
    "as_tensors",
    "build_plugin_manager",
    "checked",
    "hookimpl",
    "hookspec",
    "lazy",
    "lazy_module_getattr",
    "load_backbone_weights",
    "load_config",
    "load_model",
    "run_grid",
    "table_ref",
]
