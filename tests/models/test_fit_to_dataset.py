"""robench.classifiers.fit_to_dataset / describe: a complete classifier fitted to a dataset."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import robench
from robench.classifiers import describe, fit_to_dataset


class Linear(nn.Module):
    """Logits from per-channel means: cheap, deterministic, sensitive to every channel."""

    def __init__(self, chans: int, classes: int) -> None:
        super().__init__()
        torch.manual_seed(classes)
        self.fc = nn.Linear(chans, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


def clf(classes=10, *, names=(), size=8, chans=3, mean=None, std=None):
    return robench.Classifier(Linear(chans, classes), classes, class_names=names,
                              image_size=size, in_chans=chans, mean=mean, std=std,
                              info={"weights": "test"})


def fit(c, *, classes=10, names=(), size=8, chans=3):
    return fit_to_dataset(c, model_name="my-model", dataset="my-data", num_classes=classes,
                          class_names=names, image_size=size, in_chans=chans)


def test_class_count_mismatch_names_model_dataset_and_both_counts():
    with pytest.raises(robench.UsageError) as info:
        fit(clf(10), classes=12)
    text = str(info.value)
    assert "'my-model' has 10 classes" in text and "'my-data' has 12" in text


def test_more_outputs_without_names_is_refused():
    with pytest.raises(robench.UsageError, match="100 classes and dataset 'my-data' has 10"):
        fit(clf(100), classes=10, names=[str(i) for i in range(10)])


def test_input_size_and_channel_mismatches_name_both_shapes():
    with pytest.raises(robench.UsageError) as info:
        fit(clf(size=224), size=28)
    assert "3-channel images of 224x224" in str(info.value)
    assert "3-channel images of 28x28" in str(info.value)
    with pytest.raises(robench.UsageError, match="needs 3-channel.*has 2-channel"):
        fit(clf(), chans=2)
    with pytest.raises(robench.UsageError, match="needs 1-channel.*has 3-channel"):
        fit(clf(chans=1), chans=3)
    assert fit(clf(size=None), size=13)(torch.rand(2, 3, 13, 13)).shape == (2, 10)


def test_grey_data_is_repeated_for_an_rgb_model_and_normalised_inside():
    c = clf(mean=[0.1, 0.2, 0.3], std=[0.5, 0.25, 2.0])
    model = fit(c, chans=1)
    x = torch.rand(3, 1, 8, 8)
    rgb = x.repeat(1, 3, 1, 1)
    expected = c.module((rgb - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1))
                        / torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1))
    torch.testing.assert_close(model(x), expected)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    # the attack's gradient is with respect to the one grey channel
    x.requires_grad_(True)
    model(x).sum().backward()
    assert x.grad.shape == (3, 1, 8, 8)
    with pytest.raises(robench.UsageError, match="repeat_grey"):
        fit_to_dataset(c, model_name="m", dataset="d", num_classes=10, class_names=(),
                       image_size=8, in_chans=1, repeat_grey=False)


def test_named_subset_and_reordering_select_logits_in_dataset_order():
    names = [f"class{i}" for i in range(20)]
    c = clf(20, names=names)
    x = torch.rand(2, 3, 8, 8)
    full = c.module(x)
    sub = fit(c, classes=3, names=["class7", "CLASS2 ", "class19"])  # case/space-insensitive
    torch.testing.assert_close(sub(x), full[:, [7, 2, 19]])
    same = fit(c, classes=20, names=list(reversed(names)))
    torch.testing.assert_close(same(x), full.flip(1))
    with pytest.raises(robench.UsageError, match=r"1 of the dataset's class names.*'zebra'"):
        fit(c, classes=2, names=["class1", "zebra"])


def test_equal_counts_with_other_names_warn_and_keep_the_model_order():
    c = clf(3, names=["a", "b", "c"])
    x = torch.rand(2, 3, 8, 8)
    with pytest.warns(UserWarning, match="name them differently"):
        model = fit(c, classes=3, names=["x", "y", "z"])
    torch.testing.assert_close(model(x), c.module(x))


def test_bad_classifier_fields_are_usage_errors():
    with pytest.raises(robench.UsageError, match="mean/std have 2/2 entries"):
        fit(clf(mean=[0.5, 0.5], std=[0.5, 0.5]))
    with pytest.raises(robench.UsageError, match="3 class names"):
        fit(clf(4, names=["a", "b", "c"]), classes=4)
    with pytest.raises(robench.UsageError, match="not a robench.Classifier"):
        fit(Linear(3, 10))


def test_describe_is_plain_json():
    out = describe(clf(names=[f"n{i}" for i in range(10)], mean=[0.5] * 3, std=[0.2] * 3))
    assert out["num_classes"] == 10 and out["input"]["image_size"] == 8
    assert out["parameters"] == 3 * 10 + 10 and out["info"] == {"weights": "test"}
    json.dumps(out)
