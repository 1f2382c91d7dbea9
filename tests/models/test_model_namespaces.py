"""The built-in complete-classifier namespaces (plugin ``models``): ``timm:*``, ``file:*``,
``py:*`` and ``robustbench:*``, built through the plugin host, offline."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import warnings

import pytest
import torch
from safetensors.torch import save_file

import robench
from robench.classifiers import describe, fit_to_dataset

SIZE = 32


@pytest.fixture(scope="module")
def host() -> robench.PluginHost:
    return robench.PluginHost.create()


@pytest.fixture(scope="module")
def timm_net() -> torch.nn.Module:
    """A 10-class timm classifier with its own (non-random, seeded) head."""
    import timm

    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=10).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def _normalised(model, x, mean, std):
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        return model((x - mean_t) / std_t)


def _fit(clf, name="m", num_classes=10, names=(), size=SIZE, chans=3):
    return fit_to_dataset(clf, model_name=name, dataset="data", num_classes=num_classes,
                          class_names=names, image_size=size, in_chans=chans)


def test_registered_namespaces_have_sources(host):
    specs = host.specs("model")
    for name in ("timm:*", "robustbench:*", "file:*", "py:*"):
        assert name in specs and specs[name].source and specs[name].validate_name


# --------------------------------------------------------------------------- timm:


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_timm_classifier_from_pretrained_file_matches_timm(host, timm_net, images, tmp_path,
                                                          fmt):
    state = timm_net.state_dict()
    if fmt == "safetensors":
        path = tmp_path / "net.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:  # a training script's checkpoint: wrapped, DataParallel prefix
        path = tmp_path / "net.pth"
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3},
                   path)
    clf = host.build("model", "timm:test_resnet", pretrained_file=str(path),
                     image_size=SIZE)
    assert clf.num_classes == 10  # read from the file's head
    assert clf.image_size == SIZE and clf.in_chans == 3
    assert clf.info["weights"]["sha256"] and clf.info["source"] == "timm"
    model = _fit(clf, "timm:test_resnet")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        got = model(images)
    expected = _normalised(timm_net, images, clf.mean, clf.std)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert describe(clf)["num_classes"] == 10


def test_timm_pretrained_file_of_another_architecture_is_refused(host, tmp_path):
    import timm

    other = timm.create_model("test_efficientnet", num_classes=10)
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(robench.UsageError, match="does not fit the architecture"):
        host.build("model", "timm:test_resnet", pretrained_file=str(path), num_classes=10)


def test_timm_imagenet_names_and_class_index_select_a_subset(host, images, tmp_path):
    import timm

    torch.manual_seed(2)
    full = timm.create_model("test_resnet").eval()  # 1000 ImageNet classes
    path = tmp_path / "in1k.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(path))
    plain = host.build("model", "timm:test_resnet", pretrained_file=str(path), image_size=SIZE)
    assert plain.num_classes == 1000 and plain.class_names[0] == "n01440764"
    expected = _normalised(full, images, plain.mean, plain.std)

    # dataset classes named by wnid (an ImageNet folder subset): matched without help
    wnids = [plain.class_names[i] for i in (7, 3, 999)]
    by_wnid = _fit(plain, num_classes=3, names=wnids)
    with torch.no_grad():
        torch.testing.assert_close(by_wnid(images), expected[:, [7, 3, 999]])

    # folder names the model does not know: mapped by a class_index file (JSON and CSV)
    (tmp_path / "index.json").write_text(json.dumps({"tench": 0, "goldfish": 1, "toaster": 859}))
    (tmp_path / "index.csv").write_text("name,index\ntench,0\ngoldfish,1\ntoaster,859\n")
    folders = ["toaster", "tench", "goldfish"]
    with pytest.raises(robench.UsageError, match="1000 classes and dataset 'data' has 3"):
        _fit(plain, num_classes=3, names=folders)
    for index_file in ("index.json", "index.csv"):
        clf = host.build("model", "timm:test_resnet", pretrained_file=str(path),
                         image_size=SIZE, class_index=str(tmp_path / index_file))
        model = _fit(clf, num_classes=3, names=folders)
        with torch.no_grad():
            torch.testing.assert_close(model(images), expected[:, [859, 0, 1]])


@pytest.mark.filterwarnings("ignore:.*has random weights:UserWarning")
def test_timm_class_index_errors(host, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"a": 1, "b": 1}))
    with pytest.raises(robench.UsageError, match="both map to output 1"):
        host.build("model", "timm:test_resnet", class_index=str(bad))
    bad.write_text(json.dumps({"a": 5000}))
    with pytest.raises(robench.UsageError, match="outside the model's 1000 outputs"):
        host.build("model", "timm:test_resnet", class_index=str(bad))


def test_timm_names_are_validated_early(host):
    with pytest.raises(robench.UnknownNameError, match="timm:test_resnet"):
        host.resolve("model", "timm:test_resnett")


# --------------------------------------------------------------------------- file:


def test_torchscript_file_matches(host, timm_net, images, tmp_path):
    path = tmp_path / "net.torchscript.pt"
    with warnings.catch_warnings():  # torch.jit.trace is deprecated, still supported
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.trace(timm_net, images).save(str(path))
    clf = host.build("model", f"file:{path}", image_size=SIZE, in_chans=3)
    assert clf.num_classes == 10 and clf.info["source"] == "torchscript"
    model = _fit(clf)  # no mean/std given: the module receives [0, 1] images
    with torch.no_grad():
        torch.testing.assert_close(model(images), timm_net(images), rtol=1e-5, atol=1e-5)
    # a gradient reaches the input (attacks need it)
    x = images.clone().requires_grad_(True)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_exported_program_matches_and_static_batch_is_refused(host, timm_net, images,
                                                              tmp_path):
    batch = torch.export.Dim("batch")
    dynamic = torch.export.export(timm_net, (images,), dynamic_shapes={"x": {0: batch}})
    path = tmp_path / "net.pt2"
    torch.export.save(dynamic, str(path))
    clf = host.build("model", f"file:{path}")
    assert (clf.num_classes, clf.image_size, clf.in_chans) == (10, SIZE, 3)
    model = _fit(clf)
    with torch.no_grad():
        torch.testing.assert_close(model(images[:3]), timm_net(images[:3]), rtol=1e-5,
                                   atol=1e-5)
    static = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(timm_net, (images,)), str(static))
    with pytest.raises(robench.UsageError, match="batch size 4 only"):
        host.build("model", f"file:{static}")


def test_safetensors_with_timm_arch_matches(host, timm_net, images, tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in timm_net.state_dict().items()}, str(path))
    with pytest.raises(robench.UsageError, match="no architecture; set arch"):
        host.build("model", f"file:{path}")
    clf = host.build("model", f"file:{path}", arch="timm:test_resnet", image_size=SIZE)
    assert clf.num_classes == 10 and clf.info["arch"] == "timm:test_resnet"
    with torch.no_grad():
        torch.testing.assert_close(_fit(clf)(images),
                                   _normalised(timm_net, images, clf.mean, clf.std),
                                   rtol=1e-5, atol=1e-5)


def test_pickled_full_model_is_refused(host, timm_net, tmp_path):
    path = tmp_path / "full.pt"
    torch.save(timm_net, path)
    with pytest.raises(robench.UsageError, match="never unpickles arbitrary objects"):
        host.build("model", f"file:{path}", arch="timm:test_resnet")


def test_missing_file_is_refused_when_resolved(host, tmp_path):
    with pytest.raises(robench.UsageError, match="no file"):
        host.resolve("model", f"file:{tmp_path / 'nothing.pt'}")


# --------------------------------------------------------------------------- py:

PACKAGE = '''
import torch
from torch import nn

import robench


class Tiny(nn.Module):
    def __init__(self, classes, chans):
        super().__init__()
        self.conv = nn.Conv2d(chans, 4, 3, padding=1)
        self.fc = nn.Linear(4, classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def build(width=7, in_chans=1):
    torch.manual_seed(width)
    return Tiny(width, in_chans)


def build_classifier(num_classes=5):
    torch.manual_seed(0)
    return robench.Classifier(Tiny(num_classes, 3), num_classes,
                              class_names=[f"c{i}" for i in range(num_classes)],
                              image_size=16, in_chans=3, mean=[0.5] * 3, std=[0.25] * 3)
'''


@pytest.fixture()
def user_package(tmp_path, monkeypatch):
    pkg = tmp_path / "user_models_h4"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(PACKAGE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_models_h4"
    sys.modules.pop("user_models_h4", None)


def test_py_factory_returning_a_module(host, user_package):
    clf = host.build("model", f"py:{user_package}:build", width=6, image_size=12, in_chans=1)
    assert clf.num_classes == 6  # counted with one forward pass on a 1x12x12 dummy input
    assert (clf.image_size, clf.in_chans, clf.mean) == (12, 1, None)
    module = sys.modules[user_package].build(width=6, in_chans=1)
    x = torch.rand(3, 1, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(_fit(clf, num_classes=6, size=12, chans=1)(x), module(x))
    with pytest.raises(robench.UsageError, match="number of classes is unknown"):
        host.build("model", f"py:{user_package}:build")


def test_py_factory_returning_a_classifier_and_safetensors_py_arch(host, user_package,
                                                                   tmp_path):
    clf = host.build("model", f"py:{user_package}:build_classifier", num_classes=4)
    assert (clf.num_classes, clf.image_size, list(clf.class_names)) == \
        (4, 16, ["c0", "c1", "c2", "c3"])
    # weights of the same architecture, loaded into it through file: + arch = "py:..."
    torch.manual_seed(5)
    trained = sys.modules[user_package].Tiny(4, 3)
    path = tmp_path / "tiny.safetensors"
    save_file(trained.state_dict(), str(path))
    loaded = host.build("model", f"file:{path}", arch=f"py:{user_package}:build_classifier",
                        arch_params={"num_classes": 4})
    x = torch.rand(2, 3, 16, 16)
    model = _fit(loaded, num_classes=4, names=["c3", "c2", "c1", "c0"], size=16)
    with torch.no_grad():  # dataset order reverses the model's: the logits are reordered
        torch.testing.assert_close(model(x), trained((x - 0.5) / 0.25)[:, [3, 2, 1, 0]])


def test_py_names_and_imports_are_checked(host, user_package):
    with pytest.raises(robench.UsageError, match="py:package.module:callable"):
        host.resolve("model", "py:not a name")
    with pytest.raises(robench.UsageError, match="no module 'no_such_pkg_h4'"):
        host.resolve("model", "py:no_such_pkg_h4.models:build")
    with pytest.raises(robench.UsageError, match="cannot import module 'user_models_h4.nope'"):
        host.build("model", f"py:{user_package}.nope:build", num_classes=3)
    with pytest.raises(robench.UsageError, match="has no attribute 'missing'"):
        host.build("model", f"py:{user_package}:missing", num_classes=3)
    with pytest.raises(robench.UsageError, match="takes no parameter 'depth'"):
        host.build("model", f"py:{user_package}:build", depth=3, num_classes=3)


# --------------------------------------------------------------------------- robustbench:


def test_autoattack_alias_makes_robustbench_importable():
    from robench_models.robustbench_models import ensure_autoattack, import_robustbench

    ensure_autoattack()
    import autoattack
    import autoattack.state

    assert hasattr(autoattack, "AutoAttack") and hasattr(autoattack.state, "EvaluationState")
    rb = import_robustbench()
    assert callable(rb.load_model)


def _zoo_arch(dataset, threat, name):
    from robench_models.robustbench_models import _zoo

    return _zoo(dataset, threat)[name]["model"]()


def test_robustbench_model_loads_from_local_model_dir(host, tmp_path):
    entry = "cifar10/Linf/Ding2020MMA"  # a 5.8M-parameter WideResNet of the zoo
    torch.manual_seed(0)
    reference = _zoo_arch("cifar10", "Linf", "Ding2020MMA").eval()
    with pytest.raises(robench.UsageError, match=r"Ding2020MMA\.pt' is missing.*download = "):
        host.build("model", f"robustbench:{entry}", model_dir=str(tmp_path))
    folder = tmp_path / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}},
               folder / "Ding2020MMA.pt")
    clf = host.build("model", f"robustbench:{entry}", model_dir=str(tmp_path))
    assert (clf.num_classes, clf.image_size, clf.in_chans, clf.mean) == (10, 32, 3, None)
    assert clf.class_names[0] == "airplane" and clf.info["weights"][0]["sha256"]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(_fit(clf, names=clf.class_names)(x), reference(x))


def test_robustbench_checkpoint_needing_unpickling_is_refused(host, tmp_path):
    reference = _zoo_arch("cifar10", "Linf", "Ding2020MMA")
    folder = tmp_path / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    torch.save({"state_dict": reference.state_dict(), "args": argparse.Namespace(lr=0.1)},
               folder / "Ding2020MMA.pt")
    with pytest.raises(robench.UsageError, match="weights_only=True"):
        host.build("model", "robustbench:cifar10/Linf/Ding2020MMA", model_dir=str(tmp_path))


def test_robustbench_names_are_validated_and_downloads_blocked(host, tmp_path):
    with pytest.raises(robench.UnknownNameError, match="Standard"):
        host.resolve("model", "robustbench:cifar10/Linf/Standart")
    with pytest.raises(robench.UsageError, match="DATASET/THREAT/NAME"):
        host.resolve("model", "robustbench:cifar10/Standard")
    with pytest.raises(robench.UsageError, match="unknown RobustBench threat model"):
        host.resolve("model", "robustbench:cifar10/Linf2/Standard")
    import robustbench.utils
    import timm.models._hub
    from robench_models.robustbench_models import _DownloadBlocked, _no_downloads

    with _no_downloads():
        with pytest.raises(_DownloadBlocked):
            torch.hub.download_url_to_file("https://example.invalid/x.pth",
                                           str(tmp_path / "x.pth"))
        with pytest.raises(_DownloadBlocked):
            robustbench.utils.download_gdrive_new("abc", tmp_path / "y.pt")
    assert timm.models._hub.download_url_to_file is torch.hub.download_url_to_file
    assert not (tmp_path / "x.pth").exists()
