"""Training data resident on the device, or streamed through (pinned) host buffers.

Both ways must feed exactly the same batches: the tests force the streamed path on the CPU
(the pinned buffers and CUDA events need a GPU and are exercised when there is one) and
compare every weight after training, with an adaptor that draws target batches too.
"""

from __future__ import annotations

import pytest
import torch
from robench_grl.plugin import DANN, DigitsCNN
from robench_heads.plugin import linear

import robench.placement as placement
from robench.models import RobenchModel
from robench.placement import BatchSource
from robench.training import TrainSettings, train_model


def _digits(n: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images[:n], dtype=torch.float32)[:, None] / 16.0
    x = torch.nn.functional.interpolate(x, size=(32, 32)).repeat(1, 3, 1, 1)
    return x.contiguous(), torch.tensor(data.target[:n])


def _train(streamed: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, object]:
    with monkeypatch.context() as patch:
        if streamed:
            patch.setattr(placement, "resident_budget", lambda device: 0)
        torch.manual_seed(0)
        model = RobenchModel(DigitsCNN(image_size=32, in_chans=3),
                             linear(num_features=1200, num_classes=10), in_chans=3)
        dann = DANN(1200)
        x, y = _digits()
        report = train_model(model, (x, y), settings=TrainSettings(epochs=2, batch_size=16),
                             adaptor=dann, target_images=1 - x)
    return model.state_dict(), report


def test_streamed_training_equals_resident_training(monkeypatch: pytest.MonkeyPatch) -> None:
    resident_state, resident_report = _train(False, monkeypatch)
    streamed_state, streamed_report = _train(True, monkeypatch)
    assert resident_state.keys() == streamed_state.keys()
    for key, value in resident_state.items():
        assert torch.equal(value, streamed_state[key]), key
    assert resident_report.final_loss == streamed_report.final_loss
    assert resident_report.train_acc == streamed_report.train_acc


def test_placement_follows_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _digits(10)
    assert BatchSource([x, y], "cpu").resident  # the CPU has no budget
    monkeypatch.setattr(placement, "resident_budget", lambda device: placement.nbytes([x, y]))
    assert BatchSource([x, y], "cpu").resident  # exactly at the budget still fits
    monkeypatch.setattr(placement, "resident_budget", lambda device: placement.nbytes([x]))
    streamed = BatchSource([x, y], "cpu")
    assert not streamed.resident and streamed.index_device == torch.device("cpu")
    xs, ys = streamed.take(torch.tensor([3, 1, 3]))
    assert torch.equal(xs, x[[3, 1, 3]]) and torch.equal(ys, y[[3, 1, 3]])


CUDA_DEVICES = [f"cuda:{i}" for i in range(torch.cuda.device_count())]


@pytest.mark.skipif(not CUDA_DEVICES, reason="needs a CUDA device")
@pytest.mark.parametrize("device", CUDA_DEVICES or ["cuda:0"])
def test_pinned_streaming_on_cuda(monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    """Every batch arrives intact although the copy stream is held back (``_sleep``), so a
    pinned buffer reused before its copy finished would show; on every GPU, since the event
    must be recorded on the data's own device."""
    x, y = _digits(64)
    monkeypatch.setattr(placement, "resident_budget", lambda device: 0)
    source = BatchSource([x, y], device)
    assert source.pinned
    batches = [source.take(torch.arange(0, 8))]
    with torch.cuda.stream(source._copy_stream):
        torch.cuda._sleep(10**8)  # about 0.1 s of GPU time before the next copies may run
    batches += [source.take(torch.arange(i, i + 8)) for i in range(8, 64, 8)]
    for i, (xs, ys) in enumerate(batches):
        assert str(xs.device) == device
        assert torch.equal(xs.cpu(), x[i * 8:(i + 1) * 8])
        assert torch.equal(ys.cpu(), y[i * 8:(i + 1) * 8])


def test_training_reads_the_device_once_not_per_step() -> None:
    """Loss, accuracy and DANN's domain accuracy stay on the device during training: 1 epoch
    and 3 epochs make the same number of host reads.  AdamW's own ``.item()`` calls are not
    counted: without ``capturable`` it keeps its step counters on the CPU, so they never wait
    for a GPU."""
    from robench.testing import HostReads

    counts = []
    for epochs in (1, 3):
        torch.manual_seed(0)
        model = RobenchModel(DigitsCNN(image_size=32, in_chans=3),
                             linear(num_features=1200, num_classes=10), in_chans=3)
        x, y = _digits(64)
        with HostReads(ignore=("torch/optim/",)) as reads:
            train_model(model, (x, y), settings=TrainSettings(epochs=epochs, batch_size=16),
                        adaptor=DANN(1200), target_images=1 - x)
        counts.append((reads.count, sorted(set(reads.names))))
    assert counts[0][0] == counts[1][0], counts
