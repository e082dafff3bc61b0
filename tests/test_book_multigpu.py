"""The book's concise multi-GPU chapter runs unchanged with ``import d2l_utils as d2l``.

The chapter ("Concise Implementation for Multiple GPUs") trains its slightly modified ResNet-18
(3x3 stem, no max pool) on Fashion-MNIST with ``nn.DataParallel`` over ``d2l.try_all_gpus()``.
Below is a program of ours that makes exactly the chapter's calls of the helpers, with the
import changed.  On a CPU every helper returns the one CPU device and ``nn.DataParallel`` runs the
module as it is.

The chapter's ``train`` runs 10 epochs over all of Fashion-MNIST at 28x28 (about 3 GFLOP per
image and step for this ResNet-18); to keep the test to seconds, the fixture hands it 8 training
and 8 test images of the bundled sample (the smoke profile's data) resized to 8x8, one batch per
epoch.  The program itself is not touched.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import d2l_utils as d2l


# ---- a program that uses the helpers as the chapter does ------------------------------------
# Our own code, not the chapter's text: the same architecture (a ResNet-18 with a 3x3 stem and no
# max pool, for 28x28 images) and exactly the chapter's calls of the helpers: d2l.Residual with
# positional and keyword arguments, d2l.try_gpu(i), d2l.Timer, d2l.Animator with its X/Y lists,
# d2l.evaluate_accuracy_gpu on an nn.DataParallel net, d2l.load_data_fashion_mnist(batch_size).
def resnet18(num_classes, in_channels=1):
    def stage(cin, cout, blocks, first=False):
        layers = [
            d2l.Residual(cout, cout)
            if i or first
            else d2l.Residual(cin, cout, use_1x1conv=True, strides=2)
            for i in range(blocks)
        ]
        return nn.Sequential(*layers)

    net = nn.Sequential(
        nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
    )
    widths = [(64, 64), (64, 128), (128, 256), (256, 512)]
    for k, (cin, cout) in enumerate(widths, 1):
        net.add_module(f"resnet_block{k}", stage(cin, cout, 2, first=k == 1))
    net.add_module("global_avg_pool", nn.AdaptiveAvgPool2d((1, 1)))
    net.add_module("fc", nn.Sequential(nn.Flatten(), nn.Linear(512, num_classes)))
    return net


def train(net, num_gpus, batch_size, lr):
    train_iter, test_iter = d2l.load_data_fashion_mnist(batch_size)
    devices = [d2l.try_gpu(i) for i in range(num_gpus)]
    for m in net.modules():
        if type(m) in (nn.Linear, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.01)
    net = nn.DataParallel(net, device_ids=devices)
    optimizer, loss = torch.optim.SGD(net.parameters(), lr), nn.CrossEntropyLoss()
    timer, num_epochs = d2l.Timer(), 10
    animator = d2l.Animator("epoch", "test acc", xlim=[1, num_epochs])
    for epoch in range(num_epochs):
        net.train()
        timer.start()
        for X, y in train_iter:
            optimizer.zero_grad()
            X, y = X.to(devices[0]), y.to(devices[0])
            loss(net(X), y).backward()
            optimizer.step()
        timer.stop()
        animator.add(epoch + 1, (d2l.evaluate_accuracy_gpu(net, test_iter),))
    print(f"test acc: {animator.Y[0][-1]:.2f}, {timer.avg():.1f} sec/epoch on {str(devices)}")


# ---- end of the program ----------------------------------------------------------------------


@pytest.fixture
def few_images(monkeypatch):
    """``load_data_fashion_mnist`` as the book calls it, on 8 + 8 images of 8x8."""
    load = d2l.load_data_fashion_mnist

    def small(batch_size, resize=None):
        train_iter, test_iter = load(batch_size, resize, profile="smoke", shuffle_seed=0)
        keep = torch.arange(8)
        return (
            d2l.BatchLoader(train_iter.dataset.subset(keep), batch_size, True, resize=8, seed=0),
            d2l.BatchLoader(test_iter.dataset.subset(keep), batch_size, resize=8),
        )

    monkeypatch.setattr(d2l, "load_data_fashion_mnist", small)
    # Tiny tensors: one thread, so no operation waits for a second one (on a busy machine such
    # waits, not arithmetic, would take most of the time).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_chapter_runs_unchanged(few_images, capsys, monkeypatch):
    animators = []

    class RecordingAnimator(d2l.Animator):  # the book's Animator, remembered for the checks
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            animators.append(self)

    monkeypatch.setattr(d2l, "Animator", RecordingAnimator)
    net = resnet18(10)
    devices = d2l.try_all_gpus()
    assert devices == [torch.device("cpu")] or all(d.type != "cpu" for d in devices)
    X = torch.rand(size=(1, 1, 28, 28))
    assert net(X).shape == (1, 10)
    torch.manual_seed(0)
    train(net, num_gpus=1, batch_size=256, lr=0.1)
    before = net.fc[1].weight.detach().clone()
    train(net, num_gpus=2, batch_size=512, lr=0.2)
    assert not torch.equal(net.fc[1].weight, before)  # re-initialized and trained again

    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("test acc")]
    assert len(lines) == 2
    assert lines[1].endswith(f"sec/epoch on {[d2l.try_gpu(i) for i in range(2)]}")
    assert [len(a.X[0]) for a in animators] == [10, 10]  # one test accuracy per epoch
    # The last point is the accuracy of the trained net on the test images, as printed.
    _, test_iter = d2l.load_data_fashion_mnist(512)
    acc = d2l.evaluate_accuracy_gpu(net, test_iter)
    assert animators[1].Y[0][-1] == acc
    assert lines[1].startswith(f"test acc: {acc:.2f}, ")
