"""The data path (robench.data): lazy folders, the evaluated subset by index, 8-bit images,
streamed training, and a complete model's own preprocessing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import robench
from robench import data
from robench.host import PluginHost
from robench.loading import load_complete_on
from robench.models import RobenchModel
from robench.planning import ModelPlan

SIZES = ((300, 200), (180, 260), (64, 64), (97, 131))


def write_jpeg_folder(root: Path, *, classes: int = 3, per_class: dict[str, int],
                      seed: int = 0) -> Path:
    """``root/{train,test}/cNN/*.jpg`` of varied, non-square sizes with real texture."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for c in range(classes):
            folder = root / split / f"c{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                w, h = SIZES[(i + c) % len(SIZES)]
                base = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
                image = Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR)
                image.save(folder / f"{i:04d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_jpeg_folder(tmp_path_factory.mktemp("jpegs"), per_class={"train": 4,
                                                                          "test": 5})


@pytest.mark.parametrize("name", ["test_efficientnet", "test_resnet"])
def test_timm_model_sees_exactly_what_timm_pipeline_gives(folder: Path, name: str) -> None:
    """robench's logits on a folder equal timm's own create_transform(resolve_data_config)
    + ImageFolder + DataLoader pipeline on the same files, to the bit."""
    import timm
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder

    host = PluginHost.create()
    params = {"path": str(folder)}
    bundle = host.build("dataset", "imagefolder", **params)
    plan = ModelPlan(name=f"timm:{name}", model=f"timm:{name}",
                     model_params={"num_classes": 3})
    with pytest.warns(UserWarning, match="random weights"):
        module, classifier, preprocess, view = load_complete_on(
            host, plan, bundle, dataset="imagefolder", dataset_params=params)
    assert preprocess is not None and view.image_size == 160
    assert isinstance(classifier.module, timm.models.EfficientNet if "eff" in name
                      else timm.models.ResNet)
    batch = 8
    indices = data.subset_indices(len(view.test), None)
    images, labels = data.load_subset(view.test, indices, batch_size=batch, workers=1)
    assert images.data.dtype == torch.uint8  # kept as 8-bit pixels
    with torch.no_grad():
        ours = torch.cat([module(images[i:i + batch]) for i in range(0, len(labels), batch)])

    config = resolve_data_config({}, model=classifier.module)
    reference = ImageFolder(str(folder / "test"), transform=create_transform(**config))
    loader = torch.utils.data.DataLoader(reference, batch_size=batch, num_workers=1)
    with torch.no_grad():
        theirs = torch.cat([classifier.module(x) for x, _ in loader])
        their_labels = torch.cat([y for _, y in loader])
    assert torch.equal(labels, their_labels)
    assert torch.equal(ours, theirs)


def test_image_size_set_by_the_user_wins_over_the_model_preprocessing(folder: Path) -> None:
    host = PluginHost.create()
    params = {"path": str(folder), "image_size": 160}
    bundle = host.build("dataset", "imagefolder", **params)
    plan = ModelPlan(name="timm:test_resnet", model="timm:test_resnet",
                     model_params={"num_classes": 3})
    with pytest.warns(UserWarning):
        _module, _c, preprocess, view = load_complete_on(host, plan, bundle,
                                                         dataset="imagefolder",
                                                         dataset_params=params)
    assert preprocess is None and view is bundle


class CountingFiles(data.ImageFiles):
    decoded: list[int] = []

    def pixels(self, index: int) -> torch.Tensor:
        CountingFiles.decoded.append(index)
        return super().pixels(index)


def test_only_the_evaluated_subset_is_decoded(folder: Path) -> None:
    bundle = PluginHost.create().build("dataset", "imagefolder", path=str(folder))
    test = bundle.test
    counting = CountingFiles(test.files, test.labels, size=test.size, channels=test.channels)
    CountingFiles.decoded = []
    indices = data.subset_indices(len(counting), 6)
    images, labels = data.load_subset(counting, indices, batch_size=4, workers=0)
    assert sorted(CountingFiles.decoded) == indices.tolist()
    assert len(images) == 6 and torch.equal(labels, test.labels[indices])
    # the float view of the 8-bit subset is exactly what decoding each file gives
    assert torch.equal(images[:], torch.stack([test[i][0] for i in indices.tolist()]))


def test_subset_rule_is_the_fixed_one_for_every_dataset() -> None:
    """The rule every robench version used: randperm(n, seed 0)[:limit], sorted."""
    expected = torch.randperm(1797, generator=torch.Generator().manual_seed(0))[:300].sort()[0]
    assert torch.equal(data.subset_indices(1797, 300), expected)
    assert torch.equal(data.subset_indices(50, 300), torch.arange(50))


def test_training_streams_a_lazy_split_with_the_same_numbers(folder: Path) -> None:
    """A model trained on the lazy folder (batches decoded by loader workers, target batches
    for DANN too) ends with the very weights of one trained on the same images resident."""
    from robench.training import TrainSettings, train_model

    host = PluginHost.create()
    bundle = host.build("dataset", "imagefolder", path=str(folder), image_size=16)
    target = bundle.test
    settings = TrainSettings(epochs=2, batch_size=4, seed=3)

    def trained(source, target_images):
        torch.manual_seed(0)
        backbone = host.build("backbone", "digits-cnn", image_size=16, in_chans=3)
        head = host.build("head", "linear", num_features=backbone.num_features, num_classes=3)
        adaptor = host.build("adaptor", "dann", num_features=backbone.num_features)
        model = RobenchModel(backbone, head, in_chans=3)
        report = train_model(model, source, settings=settings, adaptor=adaptor,
                             target_images=target_images)
        return model, report

    lazy_model, lazy_report = trained(data.TrainingData(bundle.train, workers=1),
                                      data.TrainingData(target, workers=1))
    x, y = robench.as_tensors(bundle.train)
    xt, _ = robench.as_tensors(target)
    resident_model, resident_report = trained((x, y), xt)
    assert lazy_report.steps == resident_report.steps == 2 * (12 // 4)
    for (name, a), b in zip(lazy_model.state_dict().items(),
                            resident_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_pictured_classes_are_bounded_and_spread() -> None:
    assert data.pictured_classes(10, 10) == list(range(10))
    assert data.pictured_classes(3, 10) == [0, 1, 2]
    picked = data.pictured_classes(1000, 10)
    assert len(picked) == 10 and picked[0] == 0 and picked[-1] == 999
    assert data.pictured_classes(1000, 0) == []
    labels = np.array([0, 1, 0, 2, 0, 1])
    assert data.class_sample(labels, [0, 1], 2).tolist() == [0, 1, 2, 5]


def test_corrupt_jpeg_in_the_evaluated_subset_is_exit_2_before_any_work(tmp_path: Path) -> None:
    root = write_jpeg_folder(tmp_path / "data", per_class={"train": 3, "test": 3})
    broken = root / "test" / "c01" / "0001.jpg"
    broken.write_bytes(broken.read_bytes()[:200])  # a truncated JPEG
    out = tmp_path / "runs"
    config = tmp_path / "grid.toml"
    config.write_text(f'dataset = "imagefolder"\ntarget = "none"\n'
                      f'backbones = ["digits-cnn"]\nadaptors = ["none"]\nattacks = ["fgsm"]\n'
                      f'epochs = 1\n[data.imagefolder]\npath = "{root}"\nimage_size = 16\n')
    proc = subprocess.run([sys.executable, "-m", "robench.cli", "grid", str(config),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "0001.jpg" in proc.stderr and "cannot read image" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "default" / "results.sqlite").exists()  # refused before any work


def test_a_grid_decodes_the_evaluated_subset_once(folder: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation decodes the subset as the model sees it and leaves it for the tasks, which
    map it instead of decoding again; nothing else of the test split is read, and the
    decoded subset is removed when the run ends."""
    decoded: list[str] = []
    original = data.ImageFiles.pixels

    def counting(self: data.ImageFiles, index: int) -> torch.Tensor:
        decoded.append(self.files[index])
        return original(self, index)

    monkeypatch.setattr(data.ImageFiles, "pixels", counting)
    with pytest.warns(UserWarning, match="random weights"):
        rows = robench.run_grid({
            "name": "once", "dataset": "imagefolder", "target": "none",
            "models": ["timm:test_resnet"], "attacks": ["fgsm"], "limit": 6,
            "eps": {"linf": ["1/255"]}, "out": str(tmp_path), "reporters": ["csv"],
            "loader_workers": 0, "executor": {"local": {"workers": 1}},
            "data": {"imagefolder": {"path": str(folder)}},
            "model": {"timm:test_resnet": {"num_classes": 3}}})
    assert (rows["status"] == "ok").all()
    test_files = [f for f in decoded if "/test/" in f]
    assert len(test_files) == 6 and len(set(test_files)) == 6  # each once, six of fifteen
    assert not (tmp_path / "once" / "subsets").exists()
