"""robench: how robust is this image classifier, and how does transfer or domain adaptation
change that?  This module is the public API; plugins import only from here."""

from robench.errors import PluginError, RobenchError, UnknownNameError, UsageError
from robench.hookspecs import hookimpl, hookspec
from robench.host import PluginHost, build_plugin_manager
from robench.jobs import Job, JobOutcome
from robench.models import load_backbone_weights
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
    ReporterSpec,
    TensorSplit,
    as_tensors,
)

__version__ = "0.1.0"

from robench.config import GridConfig, load_config  # noqa: E402
from robench.grid import load_model, run_grid  # noqa: E402

__all__ = [
    "THREATS",
    "AdaptorSpec",
    "AttackSpec",
    "BackboneSpec",
    "Classifier",
    "DatasetBundle",
    "DatasetSpec",
    "DefenseSpec",
    "ExecutorSpec",
    "GridConfig",
    "HeadSpec",
    "Job",
    "ModelSpec",
    "JobOutcome",
    "PluginError",
    "PluginHost",
    "ReporterSpec",
    "RobenchError",
    "TensorSplit",
    "UnknownNameError",
    "UsageError",
    "__version__",
    "as_tensors",
    "build_plugin_manager",
    "hookimpl",
    "hookspec",
    "load_backbone_weights",
    "load_config",
    "load_model",
    "run_grid",
]
