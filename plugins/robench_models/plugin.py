"""Registers the built-in complete-classifier namespaces: ``timm:*`` (timm's classifier with
its own head), ``robustbench:*`` (the RobustBench model zoo), ``file:*`` (TorchScript,
torch.export or weights + architecture) and ``py:*`` (a user factory).

Each namespace's parameters are documented in its module: ``timm_models``,
``robustbench_models`` and ``files``.  Heavy imports (timm, robustbench) happen when a name
is resolved, not when the plugin is loaded.
"""

from __future__ import annotations

import robench

from .files import check_file_name, check_py_name, file_classifier, py_classifier
from .robustbench_models import check_robustbench_name, robustbench_classifier
from .timm_models import check_timm_model_name, timm_classifier


@robench.hookimpl
def robench_register_models() -> list[robench.ModelSpec]:
    return [
        robench.ModelSpec(
            name="timm:*", factory=timm_classifier, validate_name=check_timm_model_name,
            source="timm classifier with its own head; weights from the HF hub or a local file",
            description="any timm model as a complete classifier; params: pretrained, "
                        "pretrained_file, num_classes, in_chans, image_size, class_names, "
                        "class_index, and timm's model kwargs",
        ),
        robench.ModelSpec(
            name="robustbench:*", factory=robustbench_classifier,
            validate_name=check_robustbench_name,
            source="RobustBench model zoo via robustbench.utils.load_model; checkpoints in "
                   "model_dir (~/.cache/robench/robustbench)",
            description="robustbench:DATASET/THREAT/NAME, e.g. robustbench:cifar10/Linf/"
                        "Standard; params: model_dir, download",
        ),
        robench.ModelSpec(
            name="file:*", factory=file_classifier, validate_name=check_file_name,
            source="local file: TorchScript, torch.export (.pt2), or safetensors/state dict "
                   "+ arch",
            description="file:PATH; params: arch ('timm:NAME' | 'py:pkg.mod:fn'), "
                        "arch_params, num_classes, mean, std, image_size, in_chans, "
                        "class_names, class_index",
        ),
        robench.ModelSpec(
            name="py:*", factory=py_classifier, validate_name=check_py_name,
            source="a Python factory on sys.path returning nn.Module or robench.Classifier",
            description="py:package.module:callable; params: num_classes, image_size, "
                        "in_chans, mean, std, class_names, class_index, and the factory's own",
        ),
    ]
