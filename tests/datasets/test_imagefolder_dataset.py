"""``imagefolder`` on small PNG trees written here: layouts, splits, pixels and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from robench_datasets.imagefolder import imagefolder

import robench

# Each class is a solid colour, so a label can be checked against the pixels it came with.
COLOURS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "fox": (0, 0, 255)}


def _write_class_tree(root: Path, per_class: int = 5, size: tuple[int, int] = (20, 12),
                      classes: dict[str, tuple[int, int, int]] = COLOURS) -> None:
    for name, colour in classes.items():
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", size, colour).save(folder / f"{i:03d}.png")


def _assert_labels_match_colours(split: robench.TensorSplit, class_names: list[str]) -> None:
    for image, label in split:
        expected = torch.tensor(COLOURS[class_names[label]], dtype=torch.float32) / 255
        assert torch.allclose(image.mean(dim=(1, 2)), expected, atol=1e-6)


def test_plain_tree_gets_a_stratified_split(tmp_path: Path) -> None:
    _write_class_tree(tmp_path)
    bundle = imagefolder(path=str(tmp_path), image_size=16)
    assert bundle.num_classes == 3 and list(bundle.class_names) == ["cat", "dog", "fox"]
    assert (bundle.image_size, bundle.in_chans, bundle.domain) == (16, 3, tmp_path.name)
    assert (len(bundle.train), len(bundle.test)) == (12, 3)
    assert np.bincount(bundle.test.labels.numpy()).tolist() == [1, 1, 1]  # 0.2 of 5 per class
    assert robench.as_tensors(bundle.train)[0].shape == (12, 3, 16, 16)  # 20x12 cropped, resized
    assert robench.as_tensors(bundle.train)[0].dtype == torch.float32
    train_x = robench.as_tensors(bundle.train)[0]
    assert train_x.min() >= 0 and train_x.max() <= 1
    assert bundle.info["split"] == "stratified"
    _assert_labels_match_colours(bundle.train, list(bundle.class_names))
    _assert_labels_match_colours(bundle.test, list(bundle.class_names))

    again = imagefolder(path=tmp_path, image_size=16)
    assert torch.equal(robench.as_tensors(again.test)[0], robench.as_tensors(bundle.test)[0])
    assert torch.equal(again.test.labels, bundle.test.labels)
    bigger = imagefolder(path=tmp_path, image_size=16, test_fraction=0.4)
    assert len(bigger.test) == 6


def test_gray_images_and_one_channel(tmp_path: Path) -> None:
    for name, value in (("a", 40), ("b", 200)):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("L", (9, 9), value).save(tmp_path / name / f"{i}.png")
    rgb = imagefolder(path=tmp_path, image_size=8)
    assert robench.as_tensors(rgb.train)[0].shape[1] == 3
    rgb_x = robench.as_tensors(rgb.train)[0]
    assert torch.equal(rgb_x[:, 0], rgb_x[:, 1])
    gray = imagefolder(path=tmp_path, image_size=8, channels=1)
    assert gray.in_chans == 1 and robench.as_tensors(gray.train)[0].shape[1:] == (1, 8, 8)
    gray_x = robench.as_tensors(gray.train)[0]
    assert sorted(set(gray_x.flatten().tolist())) == pytest.approx([40 / 255,
                                                                               200 / 255])


def test_domain_layout(tmp_path: Path) -> None:
    _write_class_tree(tmp_path / "photo")
    _write_class_tree(tmp_path / "sketch", per_class=4)
    bundle = imagefolder(path=tmp_path, domain="sketch", image_size=8)
    assert bundle.domain == "sketch" and bundle.num_classes == 3
    assert len(bundle.train) + len(bundle.test) == 12
    _assert_labels_match_colours(bundle.test, list(bundle.class_names))

    with pytest.raises(robench.UsageError, match="unknown domain 'art'.*photo, sketch"):
        imagefolder(path=tmp_path, domain="art")
    # Without domain= a domain tree is not silently read as one class per domain.
    with pytest.raises(robench.UsageError, match="pass domain= one of photo, sketch"):
        imagefolder(path=tmp_path)


def test_office31_style_wrapper_folder(tmp_path: Path) -> None:
    _write_class_tree(tmp_path / "amazon" / "images")
    _write_class_tree(tmp_path / "webcam" / "images")
    bundle = imagefolder(path=tmp_path, domain="amazon", image_size=8)
    assert bundle.domain == "amazon" and list(bundle.class_names) == ["cat", "dog", "fox"]


@pytest.mark.parametrize("test_name", ["test", "val"])
def test_existing_train_and_test_folders_are_kept(tmp_path: Path, test_name: str) -> None:
    _write_class_tree(tmp_path / "train", per_class=4)
    _write_class_tree(tmp_path / test_name, per_class=2)
    bundle = imagefolder(path=tmp_path, image_size=8)
    assert (len(bundle.train), len(bundle.test)) == (12, 6)
    assert bundle.info["split"] == f"folders train/ and {test_name}/"
    _assert_labels_match_colours(bundle.test, list(bundle.class_names))


def test_test_folder_with_a_class_train_lacks(tmp_path: Path) -> None:
    _write_class_tree(tmp_path / "train")
    _write_class_tree(tmp_path / "test", classes={**COLOURS, "owl": (9, 9, 9)})
    with pytest.raises(robench.UsageError, match="owl"):
        imagefolder(path=tmp_path)


def test_missing_and_unusable_paths(tmp_path: Path) -> None:
    with pytest.raises(robench.UsageError, match="does not exist"):
        imagefolder(path=tmp_path / "nowhere")
    with pytest.raises(robench.UsageError, match="needs path="):
        imagefolder()
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(robench.UsageError, match="is a file, not a folder"):
        imagefolder(path=tmp_path / "file.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(robench.UsageError, match="found 0 class folder"):
        imagefolder(path=empty)


def test_single_class_and_broken_image(tmp_path: Path) -> None:
    _write_class_tree(tmp_path / "one", classes={"cat": COLOURS["cat"]})
    (tmp_path / "one" / "dog").mkdir()  # an empty class folder does not count
    with pytest.raises(robench.UsageError, match="found 1 class folder"):
        imagefolder(path=tmp_path / "one")

    _write_class_tree(tmp_path / "two")
    (tmp_path / "two" / "cat" / "broken.png").write_bytes(b"not a png")
    bundle = imagefolder(path=tmp_path / "two")  # lazy: listing the files decodes none
    split = next(s for s in (bundle.train, bundle.test) if any(
        f.endswith("broken.png") for f in s.files))
    broken = next(i for i, f in enumerate(split.files) if f.endswith("broken.png"))
    with pytest.raises(robench.UsageError, match="cannot read image .*broken.png"):
        split[broken]
    with pytest.raises(robench.UsageError, match="cannot read image .*broken.png"):
        robench.as_tensors(split)


def test_bad_params(tmp_path: Path) -> None:
    _write_class_tree(tmp_path)
    with pytest.raises(robench.UsageError, match="image_size"):
        imagefolder(path=tmp_path, image_size=-3)
    with pytest.raises(robench.UsageError, match="channels"):
        imagefolder(path=tmp_path, channels=4)
    with pytest.raises(robench.UsageError, match="test_fraction"):
        imagefolder(path=tmp_path, test_fraction=1.5)
