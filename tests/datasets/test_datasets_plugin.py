"""The datasets plugin as the harness sees it: through a plugin host and its entry point."""

from __future__ import annotations

import inspect
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import robench_datasets.plugin
import torch
from PIL import Image

import robench

NAMES = ["cifar10", "cifar100", "digits", "digits-m", "imagefolder", "imagefolder:*", "mnist",
         "mnist-m", "svhn"]


@pytest.fixture
def host() -> robench.PluginHost:
    return robench.PluginHost.create(entry_points=False, plugins=[robench_datasets.plugin])


def test_registers_every_dataset_with_a_description(host: robench.PluginHost) -> None:
    specs = host.specs("dataset")
    assert sorted(specs) == NAMES
    for spec in specs.values():
        assert isinstance(spec, robench.DatasetSpec)
        assert spec.plugin == "robench_datasets.plugin" and spec.description


def test_factories_take_keyword_only_params_with_defaults(host: robench.PluginHost) -> None:
    """The host checks user params against the signature; required params would surface as a
    TypeError instead of a UsageError, so every param has a default and the factory checks
    (except ``name`` of a namespace, which the host always passes)."""
    for spec in host.specs("dataset").values():
        params = inspect.signature(spec.factory).parameters.values()
        assert params and all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
        user_params = [p for p in params if not (spec.is_namespace and p.name == "name")]
        assert all(p.default is not inspect.Parameter.empty for p in user_params)


def test_build_through_the_host(host: robench.PluginHost) -> None:
    bundle = host.build("dataset", "digits", image_size=16)
    assert isinstance(bundle, robench.DatasetBundle)
    assert robench.as_tensors(bundle.train)[0].shape[1:] == (3, 16, 16)
    images, labels = robench.as_tensors(bundle.test)
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    target = host.build("dataset", "digits-m", image_size=16)
    assert torch.equal(target.test.labels, bundle.test.labels)


def test_imagefolder_domains_by_name(host: robench.PluginHost, tmp_path: Path) -> None:
    """``imagefolder:DOMAIN`` gives source and target domains of one tree names of their own."""
    for domain, value in (("photo", 30), ("sketch", 220)):
        for cls in ("a", "b"):
            (tmp_path / domain / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (10, 10), (value,) * 3).save(tmp_path / domain / cls / f"{i}.png")
    sketch = host.build("dataset", "imagefolder:sketch", path=str(tmp_path), image_size=8)
    assert sketch.domain == "sketch"
    sketch_x = robench.as_tensors(sketch.train)[0]
    assert torch.allclose(sketch_x, torch.full_like(sketch_x, 220 / 255))
    assert host.build("dataset", "imagefolder", path=tmp_path, domain="photo").domain == "photo"
    with pytest.raises(robench.UsageError, match="unknown domain 'art'"):
        host.build("dataset", "imagefolder:art", path=str(tmp_path))


def test_usage_errors_through_the_host(host: robench.PluginHost) -> None:
    with pytest.raises(robench.UsageError, match="no parameter 'colour'.*image_size"):
        host.build("dataset", "digits", colour="red")
    with pytest.raises(robench.UsageError, match="needs root="):
        host.build("dataset", "cifar10")
    with pytest.raises(robench.UsageError, match="needs path="):
        host.build("dataset", "imagefolder")
    with pytest.raises(robench.UnknownNameError, match="digits"):
        host.build("dataset", "digit")


def test_declared_as_an_entry_point() -> None:
    """Built-in plugins are found exactly as third-party ones: entry-point group ``robench``."""
    declared = {ep.name: ep.value for ep in entry_points(group="robench")}
    assert declared.get("datasets") == "robench_datasets.plugin"
