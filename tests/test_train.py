"""d2l_utils.train, plot, results, measure: train_ch6 on tiny synthetic problems, checked by hand.

A learning rate of 0 (given through ``optimizer=``) freezes the weights, so every number train_ch6
reports can be recomputed here from the same net: the mean loss, both accuracies, the throughput.
"""

from __future__ import annotations

import json
import math
import re
import time

import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torch.testing import assert_close

import d2l_utils as d2l
import d2l_utils.train
from d2l_utils.data import BatchLoader, FashionMNIST
from d2l_utils.measure import count_flops, count_params
from d2l_utils.plot import Animator

matplotlib.use("Agg")  # conftest.py sets it too; figures are only inspected

CLASSES, SIDE = 4, 8
LOSS_LINE = re.compile(r"^loss \d\.\d{3}, train acc \d\.\d{3}, test acc \d\.\d{3}$")
SPEED_LINE = re.compile(r"^[\d.]+ examples/sec on cpu$")
EPOCH_LINE = re.compile(
    r"^epoch (\d+)/(\d+): loss \d\.\d{3}, train acc \d\.\d{3}, test acc \d\.\d{3} \([\d.]+ s\)$"
)


def synthetic(n: int, seed: int, train: bool = True) -> FashionMNIST:
    """``n`` noisy 8x8 images of 4 classes; class ``c`` has a bright row ``2c``."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    images = torch.randint(0, 64, (n, SIDE, SIDE), dtype=torch.uint8, generator=g)
    images[torch.arange(n), 2 * labels] = 255
    return FashionMNIST(images, labels, torch.arange(n), train=train)


def loaders(n_train: int = 64, n_test: int = 40, batch_size: int = 16):
    train = BatchLoader(synthetic(n_train, 0), batch_size, shuffle=True, seed=0)
    return train, BatchLoader(synthetic(n_test, 1, train=False), batch_size)


def linear_net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, CLASSES))


def conv_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * SIDE * SIDE, CLASSES),
    )


def frozen(params) -> torch.optim.Optimizer:
    """SGD with learning rate 0: training steps that change nothing."""
    return torch.optim.SGD(params, lr=0.0)


def whole(data_iter) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(data_iter)
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def hand_loss(net: nn.Module, data_iter, loss=F.cross_entropy) -> float:
    X, y = whole(data_iter)
    with torch.no_grad():
        return float(loss(net(X), y))


def hand_accuracy(net: nn.Module, data_iter) -> float:
    X, y = whole(data_iter)
    with torch.no_grad():
        scores = net(X).tolist()
    correct = sum(
        row.index(max(row)) == label for row, label in zip(scores, y.tolist(), strict=True)
    )
    return correct / len(scores)


def snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


# --- train_ch6 -----------------------------------------------------------------------------------


def test_train_ch6_lowers_the_loss(capsys):
    torch.manual_seed(0)
    net = conv_net()
    net.apply(d2l.init_weights)
    train_iter, test_iter = loaders()
    before = hand_loss(net, train_iter)
    history = d2l.train_ch6(
        net, train_iter, test_iter, 4, 0.2, "cpu", init=False, profile="full", seed=0
    )
    after = hand_loss(net, train_iter)
    assert after < before / 2
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.test_acc[-1] >= 0.9
    assert history.test_acc[-1] == d2l.evaluate_accuracy_gpu(net, test_iter)


def test_history_and_printed_lines_match_a_hand_computation(capsys):
    torch.manual_seed(0)
    net = linear_net()
    train_iter, test_iter = loaders()
    history = d2l.train_ch6(
        net, train_iter, test_iter, 2, 0.1, d2l.cpu(), optimizer=frozen, profile="full"
    )
    loss, train_acc, test_acc = (
        hand_loss(net, train_iter),
        hand_accuracy(net, train_iter),
        hand_accuracy(net, test_iter),
    )
    assert_close(history.train_loss, [loss, loss])
    assert history.train_acc == [train_acc, train_acc]
    assert history.test_acc == [test_acc, test_acc]
    assert history.num_epochs == 2 and len(history.epoch_time) == 2
    assert all(t > 0 for t in history.epoch_time)
    assert history.total_time >= sum(history.epoch_time)
    assert_close(history.examples_per_sec, 2 * 64 / sum(history.epoch_time))
    assert (history.device, history.profile) == ("cpu", "full")
    assert [row["epoch"] for row in history.as_rows()] == [1, 2]
    assert history.as_rows()[1]["test_acc"] == test_acc

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "training on cpu"
    assert [int(m.group(1)) for m in map(EPOCH_LINE.match, lines) if m] == [1, 2]
    assert LOSS_LINE.match(lines[-2]) and SPEED_LINE.match(lines[-1])
    assert lines[-2] == f"loss {loss:.3f}, train acc {train_acc:.3f}, test acc {test_acc:.3f}"
    assert lines[-1] == f"{history.examples_per_sec:.1f} examples/sec on cpu"


@pytest.mark.parametrize("n_train, num_batches", [(10, 1), (20, 2)])
def test_one_or_two_batches_per_epoch(capsys, n_train, num_batches):
    train_iter, test_iter = loaders(n_train=n_train, n_test=8)
    assert len(train_iter) == num_batches
    history = d2l.train_ch6(linear_net(), train_iter, test_iter, 3, 0.1, "cpu", profile="full")
    assert history.num_epochs == 3 and len(history.train_loss) == len(history.test_acc) == 3
    assert all(math.isfinite(x) for x in history.train_loss)
    assert_close(history.examples_per_sec, 3 * n_train / sum(history.epoch_time))
    lines = capsys.readouterr().out.splitlines()
    assert sum(bool(EPOCH_LINE.match(x)) for x in lines) == 3
    assert LOSS_LINE.match(lines[-2]) and SPEED_LINE.match(lines[-1])


def test_plain_torch_dataloaders_work_like_the_books(capsys):
    # The book passes torch DataLoaders; they have no .to() and shuffle with torch's global RNG.
    ds = synthetic(48, 0)
    X, y = ds.images.unsqueeze(1).float() / 255, ds.labels
    data = torch.utils.data.TensorDataset(X, y)
    train_iter = torch.utils.data.DataLoader(data, batch_size=16, shuffle=True)
    test_iter = torch.utils.data.DataLoader(data, batch_size=16)
    torch.manual_seed(0)
    net = linear_net()
    history = d2l.train_ch6(net, train_iter, test_iter, 2, 0.1, "cpu", profile="full")
    assert history.num_epochs == 2
    assert history.test_acc[-1] == hand_accuracy(net, test_iter)
    assert_close(history.examples_per_sec, 2 * 48 / sum(history.epoch_time))


class RecordingAnimator(Animator):
    """The package's Animator, keeping every point it is given."""

    instances: list[RecordingAnimator] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[float, tuple]] = []
        RecordingAnimator.instances.append(self)

    def add(self, x, y):
        self.calls.append((x, tuple(y)))
        super().add(x, y)


@pytest.mark.parametrize("num_batches", [1, 12])  # below 5 batches the book divides by 0
def test_live_plot_gets_the_books_points(monkeypatch, capsys, num_batches):
    monkeypatch.setattr(d2l_utils.train, "in_notebook", lambda: True)
    monkeypatch.setattr(d2l_utils.train, "Animator", RecordingAnimator)
    RecordingAnimator.instances.clear()
    train_iter, test_iter = loaders(n_train=4 * num_batches, n_test=8, batch_size=4)
    history = d2l.train_ch6(linear_net(), train_iter, test_iter, 2, 0.1, "cpu", profile="full")
    (animator,) = RecordingAnimator.instances
    # The book adds a point after every (num_batches // 5)-th batch and after the last one; with
    # fewer than 5 batches (where the book's rule divides by zero) after every batch.
    step = max(num_batches // 5, 1)
    batches = sorted({i for i in range(num_batches) if (i + 1) % step == 0} | {num_batches - 1})
    expected_x = []
    for epoch in range(2):
        expected_x += [epoch + (i + 1) / num_batches for i in batches] + [epoch + 1]
    assert_close([x for x, _ in animator.calls], expected_x)
    test_points = [y[2] for _, y in animator.calls if y[2] is not None]
    assert test_points == history.test_acc
    last_losses = [animator.calls[k * (len(batches) + 1) + len(batches) - 1][1][0] for k in (0, 1)]
    assert_close(last_losses, history.train_loss)
    lines = capsys.readouterr().out.splitlines()
    assert not any(EPOCH_LINE.match(x) for x in lines)  # the plot replaces the per-epoch lines
    assert LOSS_LINE.match(lines[-2]) and SPEED_LINE.match(lines[-1])
    for a in RecordingAnimator.instances:
        plt.close(a.fig)


def test_plot_false_prints_lines_even_in_a_notebook(monkeypatch, capsys):
    monkeypatch.setattr(d2l_utils.train, "in_notebook", lambda: True)
    monkeypatch.setattr(d2l_utils.train, "Animator", RecordingAnimator)
    RecordingAnimator.instances.clear()
    train_iter, test_iter = loaders()
    d2l.train_ch6(linear_net(), train_iter, test_iter, 2, 0.1, "cpu", profile="full", plot=False)
    assert RecordingAnimator.instances == []
    assert sum(bool(EPOCH_LINE.match(x)) for x in capsys.readouterr().out.splitlines()) == 2


class SubLinear(nn.Linear):
    pass


class SubConv2d(nn.Conv2d):
    pass


def mixed_net() -> nn.Sequential:
    net = nn.Sequential(
        nn.Conv2d(1, 2, kernel_size=3, padding=1),
        SubConv2d(2, 2, kernel_size=3, padding=1),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.Flatten(),
        SubLinear(2 * SIDE * SIDE, 8),
        nn.Linear(8, CLASSES),
    )
    nn.init.zeros_(net[2].weight)  # a model's own init (as zero-gamma residual blocks do)
    return net


def _xavier_bound(w: torch.Tensor) -> float:
    receptive = w[0, 0].numel()
    return math.sqrt(6 / (w.shape[1] * receptive + w.shape[0] * receptive))


@pytest.mark.parametrize("init, seed", [(True, None), (True, 0), (False, None), (False, 0)])
def test_xavier_init_of_exactly_linear_and_conv2d(monkeypatch, capsys, init, seed):
    """The book's init replaces the weights of exactly nn.Linear and nn.Conv2d and nothing else;
    whatever else the model initialised itself (here a zero BN scale and two subclassed layers)
    is kept, with or without a seed."""
    initialised = []
    xavier = nn.init.xavier_uniform_

    def recording_xavier(tensor, *args, **kwargs):
        initialised.append(tensor)
        return xavier(tensor, *args, **kwargs)

    monkeypatch.setattr(nn.init, "xavier_uniform_", recording_xavier)
    torch.manual_seed(0)
    net = mixed_net()
    before = snapshot(net)
    train_iter, test_iter = loaders()
    d2l.train_ch6(
        net, train_iter, test_iter, 1, 0.1, "cpu",
        optimizer=frozen, init=init, seed=seed, profile="full",
    )  # fmt: skip
    after = snapshot(net)
    targets = {"0.weight", "6.weight"}  # the exact nn.Conv2d and nn.Linear
    # A seed may re-draw the biases of those layers too (so that a seeded start is repeatable).
    redrawn = {"0.bias", "6.bias"} if init and seed is not None else set()
    if init:
        assert sorted(map(id, initialised)) == sorted(map(id, (net[0].weight, net[6].weight)))
        for name in targets:
            assert not torch.equal(after[name], before[name])
            assert after[name].abs().max() <= _xavier_bound(after[name])
    else:
        assert initialised == []
    for name, _ in net.named_parameters():
        if not (init and name in targets) and name not in redrawn:
            assert torch.equal(after[name], before[name]), name


def test_init_weights_is_the_books_rule():
    torch.manual_seed(0)
    for layer in (nn.Linear(30, 20), nn.Conv2d(3, 5, 3)):
        layer.weight.data.fill_(100.0)
        d2l.init_weights(layer)
        assert layer.weight.abs().max() <= _xavier_bound(layer.weight)
    for layer in (SubLinear(30, 20), nn.Conv1d(3, 5, 3), nn.ConvTranspose2d(3, 5, 3)):
        layer.weight.data.fill_(100.0)
        d2l.init_weights(layer)  # not exactly nn.Linear / nn.Conv2d: left alone
        assert torch.all(layer.weight == 100.0)


def test_same_seed_same_run(capsys):
    train_iter, test_iter = loaders()  # reused: the seed restarts their shuffle
    runs = []
    for build_seed, seed in ((1, 0), (2, 0), (1, 5)):
        torch.manual_seed(build_seed)  # the nets start from different random numbers
        net = conv_net()
        history = d2l.train_ch6(
            net, train_iter, test_iter, 2, 0.1, "cpu", seed=seed, profile="full"
        )
        runs.append((history.train_loss, history.test_acc, snapshot(net)))
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    for k, v in runs[0][2].items():
        assert torch.equal(v, runs[1][2][k]), k
    assert runs[2][0] != runs[0][0]
    # A net of only nn.Conv2d and nn.Linear layers restarts whole: again on the trained net.
    history = d2l.train_ch6(net, train_iter, test_iter, 2, 0.1, "cpu", seed=0, profile="full")
    assert history.train_loss == runs[0][0] and history.test_acc == runs[0][1]


def test_optimizer_scheduler_loss_and_augment_options(capsys):
    torch.manual_seed(0)
    net, (train_iter, test_iter) = linear_net(), loaders()
    made = []

    def make_optimizer(params):
        made.append(torch.optim.SGD(params, lr=0.0))
        return made[-1]

    calls = {"loss": 0, "augment": 0}

    class CountingLoss(nn.CrossEntropyLoss):
        def forward(self, y_hat, y):
            calls["loss"] += 1
            return super().forward(y_hat, y)

    def blank(X):
        calls["augment"] += 1
        assert X.shape[1:] == (1, SIDE, SIDE) and X.device.type == "cpu"
        return torch.zeros_like(X)

    history = d2l.train_ch6(
        net, train_iter, test_iter, 2, 0.4, "cpu", profile="full",
        optimizer=make_optimizer,
        loss=CountingLoss(label_smoothing=0.2),
        augment=blank,
    )  # fmt: skip
    steps = 2 * len(train_iter)
    assert calls == {"loss": steps, "augment": steps}
    assert len(made) == 1 and made[0].param_groups[0]["params"] == list(net.parameters())
    # Training batches went through augment (all zeros), the test batches did not.
    X, y = whole(train_iter)
    zeros = torch.zeros_like(X)
    with torch.no_grad():
        smoothed = float(F.cross_entropy(net(zeros), y, label_smoothing=0.2))
        zero_acc = float((net(zeros).argmax(1) == y).float().mean())
    assert_close(history.train_loss, [smoothed, smoothed])
    assert history.train_acc == [zero_acc, zero_acc]
    assert history.test_acc[-1] == hand_accuracy(net, test_iter)


def test_scheduler_is_stepped_once_per_batch(capsys):
    train_iter, test_iter = loaders()
    opt_holder = []

    def sgd(params):
        opt_holder.append(torch.optim.SGD(params, lr=0.4))
        return opt_holder[-1]

    d2l.train_ch6(
        linear_net(), train_iter, test_iter, 2, 0.4, "cpu", profile="full", optimizer=sgd,
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
    )  # fmt: skip
    assert_close(opt_holder[0].param_groups[0]["lr"], 0.4 * 0.5 ** (2 * len(train_iter)))


def test_optimizer_instance_is_used(capsys):
    net, (train_iter, test_iter) = linear_net(), loaders()
    adam = torch.optim.Adam(net.parameters(), lr=0.01)
    d2l.train_ch6(net, train_iter, test_iter, 1, 0.1, "cpu", profile="full", optimizer=adam)
    assert all(adam.state[p]["step"] == len(train_iter) for p in net.parameters())


# --- evaluation and the book's small helpers -----------------------------------------------------


def test_evaluate_accuracy_gpu_against_a_hand_count():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(SIDE * SIDE, 16), nn.BatchNorm1d(16), nn.Dropout(0.5),
        nn.Linear(16, CLASSES),
    )  # fmt: skip
    net(torch.randn(32, 1, SIDE, SIDE))  # give BN running statistics that differ from a batch's
    _, test_iter = loaders(n_test=50)
    batches = list(test_iter)  # a plain list of (X, y) works as well as a loader
    net.eval()
    expected = hand_accuracy(net, test_iter)
    net.train()
    stats = snapshot(net)
    assert d2l.evaluate_accuracy_gpu(net, batches) == expected
    assert d2l.evaluate_accuracy_gpu(net, test_iter, "cpu") == expected
    assert net.training  # restored
    for k, v in snapshot(net).items():
        assert torch.equal(v, stats[k]), k  # eval mode: running statistics untouched
    net.eval()
    assert d2l.evaluate_accuracy_gpu(net, test_iter) == expected and not net.training


def test_accuracy_counts_correct_predictions():
    y_hat = torch.tensor([[0.1, 0.7, 0.2], [0.9, 0.0, 0.1], [0.2, 0.3, 0.5], [0.3, 0.3, 0.4]])
    y = torch.tensor([1, 2, 2, 0])
    expected = sum(
        row.index(max(row)) == t for row, t in zip(y_hat.tolist(), y.tolist(), strict=True)
    )
    assert expected == 2
    assert d2l.accuracy(y_hat, y) == 2.0 and isinstance(d2l.accuracy(y_hat, y), float)
    assert d2l.accuracy(torch.tensor([1, 2, 0, 0]), y) == 3.0  # predicted labels, not scores


def test_accumulator():
    acc = d2l.Accumulator(3)
    acc.add(1, 2.5, torch.tensor(3))
    acc.add(4, 0.5, 1)
    assert (acc[0], acc[1], acc[2]) == (5.0, 3.0, 4.0)
    acc.reset()
    assert (acc[0], acc[1], acc[2]) == (0.0, 0.0, 0.0)


def test_timer(monkeypatch):
    clock = iter([10.0, 11.5, 20.0, 23.0])
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    timer = d2l.Timer()  # starts at 10.0
    assert timer.stop() == 1.5
    timer.start()
    assert timer.stop() == 3.0
    assert timer.times == [1.5, 3.0]
    assert (timer.sum(), timer.avg(), timer.cumsum()) == (4.5, 2.25, [1.5, 4.5])


# --- plots ---------------------------------------------------------------------------------------


def test_animator_draws_the_points_it_is_given():
    animator = d2l.Animator(xlabel="epoch", xlim=[1, 3], legend=["loss", "acc"])
    animator.add(1, (0.9, None))
    animator.add(2, (0.5, 0.7))
    animator.add([3, 3], [0.2, 0.8])
    lines = animator.axes[0].get_lines()
    assert [list(line.get_xdata()) for line in lines] == [[1, 2, 3], [2, 3]]
    assert [list(line.get_ydata()) for line in lines] == [[0.9, 0.5, 0.2], [0.7, 0.8]]
    assert animator.axes[0].get_xlabel() == "epoch"
    assert [t.get_text() for t in animator.axes[0].get_legend().get_texts()] == ["loss", "acc"]
    plt.close(animator.fig)


def test_show_images_draws_a_titled_grid():
    imgs = torch.rand(5, 28, 28, generator=torch.Generator().manual_seed(0))
    titles = d2l.get_fashion_mnist_labels([0, 1, 2, 3, 4])
    axes = d2l.show_images(imgs, 2, 3, titles=titles)
    assert len(axes) == 6
    for ax, img, title in zip(axes, imgs, titles, strict=False):
        assert ax.get_title() == title
        assert_close(torch.as_tensor(ax.get_images()[0].get_array().data), img)
    assert axes[5].get_images() == []
    plt.close(axes[0].figure)


# --- results and measurements --------------------------------------------------------------------


def test_record_result_appends_a_json_line(tmp_path, monkeypatch):
    net = nn.Linear(3, 2)  # 3 * 2 + 2 parameters
    history = d2l.History(
        train_loss=[0.5], train_acc=[0.81234], test_acc=[0.79876], epoch_time=[2.0],
        examples_per_sec=1234.56, total_time=2.54, device="cpu", profile="quick", num_epochs=1,
    )  # fmt: skip
    results = tmp_path / "results.jsonl"
    monkeypatch.setenv("D2L_RESULTS", str(results))
    monkeypatch.setenv("D2L_NOTEBOOK", "03_resnet18_fashion_mnist")
    row = d2l.record_result("tiny", net, history, note="x")
    d2l.record_result("tiny again", net, history)
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert rows[0] == row and rows[1]["model"] == "tiny again"
    assert row["notebook"] == "03_resnet18_fashion_mnist" and row["model"] == "tiny"
    assert row["parameters"] == 8 and row["epochs"] == 1
    assert (row["train_acc"], row["test_acc"]) == (0.8123, 0.7988)
    assert (row["examples_per_sec"], row["time_s"]) == (1234.6, 2.5)
    assert (row["device"], row["profile"], row["note"]) == ("cpu", "quick", "x")


def test_record_result_without_d2l_results_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("D2L_RESULTS", raising=False)
    monkeypatch.chdir(tmp_path)
    history = d2l.History(train_acc=[0.5], test_acc=[0.5], examples_per_sec=1.0, num_epochs=1)
    assert d2l.record_result("m", nn.Linear(2, 2), history)["parameters"] == 6
    assert list(tmp_path.iterdir()) == []


def test_count_params_and_flops_by_hand():
    c_in, c_out, k, h, w = 3, 8, 3, 16, 16
    net = nn.Sequential(
        nn.Conv2d(c_in, c_out, k, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(c_out * h * w, 10),
    )
    conv_params = c_out * c_in * k * k + c_out
    bn_params = 2 * c_out
    linear_params = c_out * h * w * 10 + 10
    assert count_params(net) == conv_params + bn_params + linear_params
    net[0].requires_grad_(False)
    assert count_params(net, trainable_only=True) == bn_params + linear_params
    assert count_params(net) == conv_params + bn_params + linear_params
    conv_flops = 2 * c_in * c_out * k * k * h * w  # one multiply-add = 2 FLOPs
    linear_flops = 2 * c_out * h * w * 10
    stats = snapshot(net)
    assert count_flops(net, (1, c_in, h, w)) == conv_flops + linear_flops
    assert count_flops(net, (2, c_in, h, w)) == 2 * (conv_flops + linear_flops)
    assert net.training  # restored, and BN's statistics untouched (counted in eval mode)
    for key, value in snapshot(net).items():
        assert torch.equal(value, stats[key]), key


def test_count_params_and_flops_match_torchvision_resnet18():
    meta = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta  # no download: metadata only
    net = torchvision.models.resnet18()
    assert count_params(net) == meta["num_params"]
    # torchvision lists GFLOPS counting one multiply-add as one operation, to 3 decimals.
    assert round(count_flops(net, (1, 3, 224, 224)) / 2 / 1e9, 3) == meta["_ops"]
