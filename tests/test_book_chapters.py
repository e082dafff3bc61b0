"""Code written against the book's helpers, for its batch-norm, ResNet and DenseNet chapters,
runs unchanged with ``import d2l_utils as d2l``.

Each chapter defines its own layers and calls only three helpers, always the same way:
``d2l.load_data_fashion_mnist(batch_size[, resize=96])``, ``d2l.train_ch6(net, train_iter,
test_iter, num_epochs, lr, d2l.try_gpu())`` and ``d2l.try_gpu()``, with the chapter's settings.
The nets below are our own compact builds of the chapters' architectures (the course's notebooks
build them step by step); what is tested is the calls: positional arguments, the book's values,
the printed closing lines, and a net that learned (training accuracy well above chance).  Under
the smoke profile (conftest.py) each run is one epoch on the bundled sample at 32 px.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import d2l_utils as d2l


class ScratchBatchNorm(nn.Module):
    """A batch-norm layer written the chapter's way: ``gamma``/``beta`` parameters and moving
    statistics kept as plain tensor attributes (not buffers), updated with momentum 0.9."""

    def __init__(self, num_features: int, num_dims: int) -> None:
        super().__init__()
        shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        self.moving_mean, self.moving_var = torch.zeros(shape), torch.ones(shape)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if self.moving_mean.device != X.device:
            self.moving_mean = self.moving_mean.to(X.device)
            self.moving_var = self.moving_var.to(X.device)
        if not torch.is_grad_enabled():
            X_hat = (X - self.moving_mean) / torch.sqrt(self.moving_var + 1e-5)
        else:
            dims = (0,) if X.dim() == 2 else (0, 2, 3)
            mean, var = (
                X.mean(dim=dims, keepdim=True),
                X.var(dim=dims, unbiased=False, keepdim=True),
            )
            X_hat = (X - mean) / torch.sqrt(var + 1e-5)
            self.moving_mean = 0.9 * self.moving_mean + 0.1 * mean.detach()
            self.moving_var = 0.9 * self.moving_var + 0.1 * var.detach()
        return self.gamma * X_hat + self.beta


def lenet_bn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5), ScratchBatchNorm(6, 4), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), ScratchBatchNorm(16, 4), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2), nn.Flatten(),
        nn.Linear(16 * 4 * 4, 120), ScratchBatchNorm(120, 2), nn.Sigmoid(),
        nn.Linear(120, 84), ScratchBatchNorm(84, 2), nn.Sigmoid(),
        nn.Linear(84, 10),
    )  # fmt: skip


def resnet18_book() -> nn.Sequential:
    """The chapter's ResNet-18: 7x7 stem with max pool, four stages of ``d2l.Residual``."""

    def stage(cin: int, cout: int, first: bool) -> list[nn.Module]:
        head = d2l.Residual(cin, cout) if first else d2l.Residual(cin, cout, True, 2)
        return [head, d2l.Residual(cout, cout)]

    stem = [nn.Conv2d(1, 64, 7, 2, 3), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    stages = [stage(64, 64, True), stage(64, 128, False)]
    stages += [stage(128, 256, False), stage(256, 512, False)]
    body = [nn.Sequential(*blocks) for blocks in stages]
    head = [nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(512, 10)]
    return nn.Sequential(*stem, *body, *head)


def densenet_book() -> nn.Sequential:
    """The chapter's DenseNet: four dense blocks of 4 convs (growth 32), halving transitions."""

    def bn_relu_conv(cin: int, cout: int, k: int) -> nn.Sequential:
        return nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, k, padding=k // 2)
        )

    class Dense(nn.Module):
        def __init__(self, num_convs: int, cin: int, growth: int) -> None:
            super().__init__()
            convs = [bn_relu_conv(cin + i * growth, growth, 3) for i in range(num_convs)]
            self.net = nn.Sequential(*convs)

        def forward(self, X: torch.Tensor) -> torch.Tensor:
            for blk in self.net:
                X = torch.cat((X, blk(X)), dim=1)
            return X

    layers: list[nn.Module] = [nn.Conv2d(1, 64, 7, 2, 3), nn.BatchNorm2d(64), nn.ReLU()]
    layers.append(nn.MaxPool2d(3, 2, 1))
    channels = 64
    for i in range(4):
        layers.append(Dense(4, channels, 32))
        channels += 4 * 32
        if i != 3:
            layers += [bn_relu_conv(channels, channels // 2, 1), nn.AvgPool2d(2, 2)]
            channels //= 2
    layers += [nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten()]
    return nn.Sequential(*layers, nn.Linear(channels, 10))


# The chapters' settings: lr, num_epochs, batch_size and resize.
CHAPTERS = {
    "batch norm": (lenet_bn, 1.0, 10, 256, None),
    "ResNet": (resnet18_book, 0.05, 10, 256, 96),
    "DenseNet": (densenet_book, 0.1, 10, 256, 96),
}


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_calls_run_unchanged(chapter, capsys):
    build, lr, num_epochs, batch_size, resize = CHAPTERS[chapter]
    torch.manual_seed(0)
    net = build()
    if resize is None:
        train_iter, test_iter = d2l.load_data_fashion_mnist(batch_size)
    else:
        train_iter, test_iter = d2l.load_data_fashion_mnist(batch_size, resize=resize)
    d2l.train_ch6(net, train_iter, test_iter, num_epochs, lr, d2l.try_gpu())
    out = capsys.readouterr().out
    closing = re.search(r"loss (\S+), train acc (\S+), test acc (\S+)\n", out)
    assert closing, out
    assert re.search(r"[\d.]+ examples/sec on cpu\n", out), out
    train_acc = float(closing[2])
    # One epoch of 8 batches: the running statistics that evaluation uses have not settled,
    # so the test accuracy says little; the training accuracy says the net learned.
    assert train_acc > 0.3, f"{chapter}: train accuracy {train_acc}, chance is 0.1"
    if chapter == "batch norm":  # the chapter then reads the learned scale and shift
        gamma, beta = net[1].gamma.reshape((-1,)), net[1].beta.reshape((-1,))
        assert gamma.shape == beta.shape == (6,)
