"""Transfer learning from a robench checkpoint, and DANN on an image-folder domain pair."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import robench


def _checkpoint(run_dir, model: str):
    for meta_path in (run_dir / "models").glob("*.json"):
        meta = json.loads(meta_path.read_text())
        if meta["plan"]["name"] == model:
            return run_dir / "models" / f"{meta['key']}.safetensors"
    raise AssertionError(f"no checkpoint for {model}")


def test_transfer_from_an_earlier_run_with_a_frozen_probe(small_run, tmp_path):
    run_dir, _ = small_run
    checkpoint = _checkpoint(run_dir, "digits-cnn+linear+none")
    results = robench.run_grid({
        "name": "transfer", "dataset": "digits-m", "target": "none",
        "backbones": ["digits-cnn"], "heads": ["linear-probe"], "adaptors": ["none"],
        "attacks": ["fgsm"], "eps": {"linf": ["2/255"]}, "limit": 100, "epochs": 2,
        "out": str(tmp_path), "reporters": ["csv"],
        "backbone": {"digits-cnn": {"pretrained_file": str(checkpoint)}},
    })
    model = robench.load_model(tmp_path / "transfer", "digits-cnn+linear-probe+none")
    source = load_file(str(checkpoint))
    for name, tensor in model.backbone.state_dict().items():
        assert torch.equal(tensor, source[f"backbone.{name}"]), name  # frozen: bit-identical
    assert results.clean_acc.iloc[0] > 0.2  # well above chance (0.1) on the new domain


def test_a_checkpoint_of_another_architecture_is_refused(small_run, tmp_path):
    run_dir, _ = small_run
    checkpoint = _checkpoint(run_dir, "timm:test_resnet+linear+none")
    with pytest.raises(robench.UsageError, match="matches only"):
        robench.PluginHost.create().build("backbone", "digits-cnn", image_size=32, in_chans=3,
                                          pretrained_file=str(checkpoint))


def _write_domain_pair(root, per_class: int = 40) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in (0, 1, 7):
        images = digits.images[digits.target == label][:per_class] / 16.0
        for i, image in enumerate(images):
            big = np.kron(image, np.ones((4, 4)))
            for domain, pixels in (("photo", big), ("sketch", 1.0 - big)):
                folder = root / domain / str(label)
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray((pixels * 255).astype(np.uint8)).save(folder / f"{i}.png")


def test_dann_on_an_imagefolder_domain_pair(tmp_path):
    root = tmp_path / "pair"
    _write_domain_pair(root)
    results = robench.run_grid({
        "name": "pair", "dataset": "imagefolder:photo", "target": "imagefolder:sketch",
        "backbones": ["digits-cnn"], "heads": ["linear"], "adaptors": ["none", "dann"],
        "attacks": ["fgsm"], "eps": {"linf": ["4/255"]}, "limit": 30, "epochs": 3,
        "out": str(tmp_path), "reporters": ["csv"],
        "data": {"imagefolder:photo": {"path": str(root)},
                 "imagefolder:sketch": {"path": str(root)}},
    })
    assert set(results.status) == {"ok"}
    assert set(results.dataset) == {"imagefolder:photo", "imagefolder:sketch"}
    assert set(results.adaptor) == {"none", "dann"}
    board = pd.read_csv(tmp_path / "pair" / "leaderboard.csv")
    target = board[(board.domain == "target") & (board.adaptor == "dann")]
    assert len(target) == 1 and "adapt_gain_clean" in board.columns
    expected = target.clean_acc.iloc[0] - board[(board.domain == "target") & (
        board.adaptor == "none")].clean_acc.iloc[0]
    assert target.adapt_gain_clean.iloc[0] == pytest.approx(expected)
