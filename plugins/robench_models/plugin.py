"""Registers the built-in complete-classifier namespaces: ``timm:*`` (timm's classifier with
its own head), ``robustbench:*`` (the RobustBench model zoo), ``file:*`` (TorchScript,
torch.export or weights + architecture) and ``py:*`` (a user factory).

Each namespace's parameters are documented in its module: ``timm_models``,
``robustbench_models`` and ``files``.  Those modules (torch, and timm or robustbench inside
them) are imported when a name of the namespace is checked or built, not when the plugin is
loaded or the namespaces are listed: factories and checks are :func:`robench.lazy` references.
"""

from __future__ import annotations

from typing import Any

import robench

#: the factories and name checks, and the module that defines each: imported when a name of
#: the namespace is used (``robench.lazy``), never when the namespaces are listed
_DEFINED_IN: dict[str, str] = {
    "timm_classifier": "robench_models.timm_models",
    "check_timm_model_name": "robench_models.timm_models",
    "robustbench_classifier": "robench_models.robustbench_models",
    "check_robustbench_name": "robench_models.robustbench_models",
    "file_classifier": "robench_models.files",
    "check_file_name": "robench_models.files",
    "py_classifier": "robench_models.files",
    "check_py_name": "robench_models.files",
}


def _lazy(name: str) -> Any:
    return robench.lazy(f"{_DEFINED_IN[name]}:{name}")


#: The factories and checks under the names this module exported before it became lazy
#: (``robench_models.plugin.timm_classifier``), imported on first use.
__getattr__ = robench.lazy_module_getattr(__name__, _DEFINED_IN)


@robench.hookimpl
def robench_register_models() -> list[robench.ModelSpec]:
    return [
        robench.ModelSpec(
            name="timm:*", factory=_lazy("timm_classifier"),
            validate_name=_lazy("check_timm_model_name"),
            source="timm classifier with its own head; weights from the HF hub or a local file",
            description="any timm model as a complete classifier; params: pretrained, "
                        "pretrained_file, num_classes, in_chans, image_size, class_names, "
                        "class_index, and timm's model kwargs",
        ),
        robench.ModelSpec(
            name="robustbench:*", factory=_lazy("robustbench_classifier"),
            validate_name=_lazy("check_robustbench_name"),
            source="RobustBench model zoo via robustbench.utils.load_model; checkpoints in "
                   "model_dir (~/.cache/robench/robustbench)",
            description="robustbench:DATASET/THREAT/NAME, e.g. robustbench:cifar10/Linf/"
                        "Standard; params: model_dir, download",
        ),
        robench.ModelSpec(
            name="file:*", factory=_lazy("file_classifier"), validate_name=_lazy("check_file_name"),
            fits_dataset=True,
            source="local file: TorchScript, torch.export (.pt2), or safetensors/state dict "
                   "+ arch",
            description="file:PATH; params: arch ('timm:NAME' | 'py:pkg.mod:fn'), "
                        "arch_params, num_classes, mean, std, image_size, in_chans, "
                        "class_names, class_index",
        ),
        robench.ModelSpec(
            name="py:*", factory=_lazy("py_classifier"), validate_name=_lazy("check_py_name"),
            fits_dataset=True,
            source="a Python factory on sys.path returning nn.Module or robench.Classifier",
            description="py:package.module:callable; params: num_classes, image_size, "
                        "in_chans, mean, std, class_names, class_index, and the factory's own",
        ),
    ]
