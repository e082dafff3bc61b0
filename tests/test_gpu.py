"""train_ch6 and evaluate_accuracy_gpu on a CUDA GPU: every precision, parity with fp32, layouts.

Marked ``gpu``: they run wherever CUDA is present (``make test-gpu``) and are deselected, and
counted as not run, elsewhere.  Each trains a small net for a few steps on a slice of the bundled
sample, so the whole file takes seconds on any GPU.

Tolerances, and why:

* mixed-precision evaluation against fp32: bf16 keeps 8 bits of mantissa, fp16 11, so logits
  differ in their third significant digit and an image whose two best classes are that close
  can flip.  We require the predictions to agree on at least 98 % of the test images and the
  accuracies to differ by at most 0.02;
* fp32 on the GPU against fp32 on the CPU: cuDNN may run convolutions in TF32 (10-bit mantissa)
  on Ampere and newer, and sums in another order: the same 98 % / 0.02 bound;
* channels_last against the default layout: the same arithmetic in other kernels (other
  summation orders, possibly TF32): training losses within 1 % after a few steps.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import d2l_utils.train
from d2l_utils.data import BatchLoader, load_sample
from d2l_utils.device import grad_scaler
from d2l_utils.train import DivergenceError, evaluate_accuracy_gpu, train_ch6

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")
BATCH = 50


def loaders(seed: int = 1) -> tuple[BatchLoader, BatchLoader]:
    train = load_sample(train=True).subset(torch.arange(0, 2000, 8))  # 250 images, 5 batches
    test = load_sample(train=False).subset(torch.arange(0, 1000, 1))  # 1000 images
    return BatchLoader(train, BATCH, shuffle=True, seed=seed), BatchLoader(test, 250)


class Net(nn.Module):
    """A small conv net with batch norm, wide enough (32 channels) for channels_last; records
    the autocast dtype of every batch it sees in training and in evaluation."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(4),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
        )  # fmt: skip
        self.seen: set[tuple[bool, torch.dtype | None]] = set()

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if X.shape[0] > 2:  # not train_ch6's check of two test images before training
            amp = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
            self.seen.add((self.training, amp))
        return self.body(X)


def native_amp() -> torch.dtype:
    """The precision this GPU computes fastest in: bf16 from Ampere (capability 8.0) on."""
    return torch.bfloat16 if torch.cuda.get_device_capability() >= (8, 0) else torch.float16


@pytest.mark.parametrize(
    "amp", [None, torch.float16, False], ids=["device-choice", "fp16+GradScaler", "fp32"]
)
def test_training_step_under_each_amp_mode(monkeypatch, capsys, amp):
    scaled = []

    def counting_scaler(device, dtype):
        scaler = grad_scaler(device, dtype)
        scale = scaler.scale
        scaler.scale = lambda loss: scaled.append(loss.item()) or scale(loss)
        return scaler

    monkeypatch.setattr(d2l_utils.train, "grad_scaler", counting_scaler)
    net = Net()
    history = train_ch6(net, *loaders(), 2, 0.1, CUDA, seed=0, profile="full", amp=amp)
    expected = {None: native_amp(), False: None}.get(amp, amp)
    assert net.seen == {(True, expected), (False, expected)}  # evaluation in the same precision
    assert len(scaled) == 2 * 5 and all(math.isfinite(v) for v in scaled)
    if expected == torch.float16:  # scaled: the loss times 2**16 before backward
        assert history.train_loss[0] < 1e3  # the unscaled mean (2**16 times more if scaled)
    assert history.train_loss[1] < history.train_loss[0]
    assert history.device.startswith("cuda")


def test_fp16_steps_with_an_enabled_gradient_scaler():
    scaler = grad_scaler(CUDA, torch.float16)
    assert scaler.is_enabled()
    net = Net().to(CUDA)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    for step, (X, y) in enumerate(loaders()[0].to(CUDA)):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = nn.functional.cross_entropy(net(X), y)
        scaled = scaler.scale(loss)
        if step == 0:
            assert_close(scaled.float(), loss.float() * scaler.get_scale())
        scaled.backward()
        scaler.step(opt)  # skipped when the scaled gradients overflowed; the scale then halves
        scaler.update()
        opt.zero_grad()
    assert scaler.get_scale() <= 2.0**16
    changed = [not torch.equal(p, b) for p, b in zip(net.parameters(), before, strict=True)]
    assert all(changed) and all(torch.isfinite(p).all() for p in net.parameters())


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.argmax(1) == b.argmax(1)).float().mean().item()


@pytest.mark.parametrize("amp", [torch.float16, "native"])
def test_mixed_precision_evaluation_matches_fp32(capsys, amp):
    amp = native_amp() if amp == "native" else amp
    net = Net()
    train_ch6(net, *loaders(), 1, 0.1, CUDA, seed=0, profile="full", amp=False)
    _, test_iter = loaders()
    X = torch.cat([X for X, _ in test_iter]).to(CUDA)
    net.eval()
    with torch.no_grad():
        fp32 = net(X).float()
        with torch.autocast("cuda", dtype=amp):
            mixed = net(X).float()
    assert agreement(fp32, mixed) >= 0.98
    acc32 = evaluate_accuracy_gpu(net, test_iter, CUDA, amp=False)
    acc_mixed = evaluate_accuracy_gpu(net, test_iter, CUDA, amp=amp)
    assert abs(acc32 - acc_mixed) <= 0.02


def test_gpu_fp32_matches_the_cpu(capsys):
    net = Net()
    train_ch6(net, *loaders(), 1, 0.1, CUDA, seed=0, profile="full", amp=False)
    _, test_iter = loaders()
    on_gpu = evaluate_accuracy_gpu(net, test_iter, CUDA, amp=False)
    on_cpu = evaluate_accuracy_gpu(net.cpu(), test_iter, "cpu", amp=False)
    assert abs(on_gpu - on_cpu) <= 0.02


def test_channels_last_training_on_cuda(capsys):
    histories, layouts = [], []
    for channels_last in (True, False):
        torch.manual_seed(0)
        net = Net()
        seen: set[tuple[bool, bool, bool]] = set()

        def record(module, args, seen=seen):
            # The convolution's output (32 channels): its strides show the layout it ran in.
            x = args[0]
            if x.shape[0] > 2:  # not the check of two test images before training
                seen.add((x.is_cuda, module.training, x.is_contiguous()))

        net.body[1].register_forward_pre_hook(record)
        history = train_ch6(net, *loaders(), 2, 0.1, CUDA, seed=0, profile="full",
                            amp=False, channels_last=channels_last)  # fmt: skip
        histories.append(history)
        layouts.append(seen)
    # On the GPU, in training and in evaluation: channels_last, or the default layout.
    assert layouts[0] == {(True, True, False), (True, False, False)}
    assert layouts[1] == {(True, True, True), (True, False, True)}
    assert_close(histories[0].train_loss, histories[1].train_loss, rtol=0.01, atol=0)


def test_divergence_is_caught_on_the_gpu(capsys):
    net = Net()
    with pytest.raises(DivergenceError, match=r"in epoch 1/2, step \d/5 with lr=1e\+30") as info:
        train_ch6(net, *loaders(), 2, 1e30, CUDA, seed=0, profile="full")
    assert info.value.step is not None
    assert all(torch.isfinite(v).all() for v in net.state_dict().values() if v.is_floating_point())
