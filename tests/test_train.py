"""d2l_utils.train: train_ch6 and evaluate_accuracy_gpu, checked by hand on tiny problems.

A learning rate of 0 (given through ``optimizer=``) freezes the weights, so every number train_ch6
reports can be recomputed here from the same net: the mean loss, both accuracies, the throughput.
"""

from __future__ import annotations

import math
import re
import time

import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch
from tiny import BATCH, N_BATCHES, mlp, sample_loaders
from torch import nn
from torch.nn import functional as F
from torch.testing import assert_close

import d2l_utils as d2l
import d2l_utils.robust
import d2l_utils.train
from d2l_utils.checkpoint import load_checkpoint
from d2l_utils.data import BatchLoader, FashionMNIST, load_sample
from d2l_utils.models.lenet import lenet, lenet_bn
from d2l_utils.plot import Animator
from d2l_utils.results import record_result

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
    # New loader objects (a new session), whose own shuffle seed differs: the same run again.
    fresh = BatchLoader(synthetic(64, 0), 16, shuffle=True, seed=42), loaders()[1]
    history = d2l.train_ch6(conv_net(), *fresh, 2, 0.1, "cpu", seed=0, profile="full")
    assert history.train_loss == runs[0][0] and history.test_acc == runs[0][1]


def test_same_seed_repeats_a_net_with_batch_norm_and_dropout_in_channels_last(capsys):
    def net() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Dropout(0.2),
            nn.Flatten(), nn.Linear(32 * SIDE * SIDE, CLASSES),
        )  # fmt: skip

    assert d2l.device.prefers_channels_last(net())
    runs = [d2l.train_ch6(net(), *loaders(), 2, 0.1, "cpu", seed=5, profile="full") for _ in "ab"]
    assert runs[0].train_loss == runs[1].train_loss and runs[0].test_acc == runs[1].test_acc


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


# --- runs on a slice of the bundled sample (10 classes): interrupts, divergence, arguments -------


def train(net: nn.Module, loaders, num_epochs: int = 3, lr: float = 0.1, **kwargs):
    kwargs = {"seed": 0, "profile": "full", **kwargs}
    return d2l.train_ch6(net, *loaders, num_epochs, lr, "cpu", **kwargs)


def assert_equal_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert_close(a[k], b[k], rtol=0, atol=0, msg=lambda m, k=k: f"{k}: {m}")


def interrupt_at(net: nn.Module, n: int, training: bool = True):
    """Raise KeyboardInterrupt (as Ctrl-C would) inside the ``n``-th forward pass of a full batch
    in training mode (or in eval mode: during evaluation)."""
    calls = [0]

    def hook(module: nn.Module, args: tuple) -> None:
        if module.training == training and args[0].shape[0] == BATCH:
            calls[0] += 1
            if calls[0] == n:
                raise KeyboardInterrupt

    return net.register_forward_pre_hook(hook)


def seeded_start(net: nn.Module, seed: int) -> None:
    """The start ``train_ch6(seed=...)`` documents: linear and convolutional layers re-drawn
    whole from the seeded generator (PyTorch's init), then the book's xavier init."""
    torch.manual_seed(seed)
    for m in net.modules():
        if type(m) in (nn.Linear, nn.Conv2d):
            m.reset_parameters()
    net.apply(d2l.init_weights)


def book_losses(net: nn.Module, train_iter: BatchLoader, lr: float, seed: int, steps: int):
    """The book's training loop written out plainly: the losses of the first ``steps`` batches."""
    seeded_start(net, seed)
    train_iter.generator.manual_seed(seed)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    losses: list[float] = []
    while len(losses) < steps:
        net.train()
        for X, y in train_iter:
            loss = F.cross_entropy(net(X), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if len(losses) == steps:
                break
    return losses


def test_interrupt_inside_a_batch_finishes_the_bookkeeping_then_stops_the_cell(
    capsys, tmp_path, monkeypatch
):
    results = tmp_path / "results.jsonl"
    monkeypatch.setenv("D2L_RESULTS", str(results))
    net, loaders = mlp(), sample_loaders()
    handle = interrupt_at(net, N_BATCHES + 3)  # the 3rd batch of epoch 2
    started = []

    def cell():  # notebook 01's cells train and record twice: the second run must not start
        for name in ("first", "second"):
            started.append(name)
            history = train(net, loaders, num_epochs=3)
            record_result(name, net, history)

    with pytest.raises(KeyboardInterrupt) as info:
        cell()
    handle.remove()
    assert started == ["first"] and not results.exists()

    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "interrupt" in line] == [
        "interrupted in epoch 2/3 after step 2/5: net keeps its current weights; the history of "
        "1 completed epoch is the exception's .history; pass checkpoint=PATH to make a run "
        "resumable"
    ]
    history = info.value.history
    assert history.interrupted and history.num_epochs == 1
    assert len(history.train_loss) == len(history.test_acc) == len(history.epoch_time) == 1
    assert history.examples_per_sec > 0 and history.total_time > 0
    with pytest.raises(ValueError, match="interrupted"):
        record_result("first", net, history)

    # The weights are those after exactly N_BATCHES + 2 steps of the book's plain loop.
    reference = mlp()
    book_losses(reference, sample_loaders()[0], lr=0.1, seed=0, steps=N_BATCHES + 2)
    assert_equal_states(snapshot(net), snapshot(reference))
    assert net.training


def test_interrupt_during_evaluation_leaves_the_net_in_training_mode(capsys):
    net, loaders = mlp(), sample_loaders()
    handle = interrupt_at(net, 1, training=False)  # the first full test batch of epoch 1
    with pytest.raises(KeyboardInterrupt) as info:
        train(net, loaders, num_epochs=2)
    handle.remove()
    assert "interrupted in epoch 1/2 while evaluating" in capsys.readouterr().out
    history = info.value.history
    assert history.interrupted and history.num_epochs == 0 and history.test_acc == []
    assert net.training


# --- divergence ---------------------------------------------------------------------------------


def test_loss_limit_is_for_mean_cross_entropy_only():
    limit = d2l_utils.robust.loss_limit
    assert limit(nn.CrossEntropyLoss(), 10) == pytest.approx(1000 * math.log(10))
    assert limit(nn.CrossEntropyLoss(label_smoothing=0.1), 4) == pytest.approx(1000 * math.log(4))
    assert limit(nn.CrossEntropyLoss(reduction="sum"), 10) == math.inf
    assert limit(nn.MSELoss(), 10) == math.inf
    assert limit(nn.CrossEntropyLoss(), None) == math.inf  # outputs that are not (B, C) logits


def test_huge_learning_rate_stops_where_the_loss_exploded_and_restores_the_weights(capsys):
    lr = 1e30
    losses = book_losses(mlp(), sample_loaders()[0], lr=lr, seed=0, steps=N_BATCHES)
    # All batches hold 50 images: the running loss is the mean of the batch losses so far.
    limit = 1000 * math.log(10)
    running = [sum(losses[: i + 1]) / (i + 1) for i in range(len(losses))]
    first_bad = next(i + 1 for i, v in enumerate(running) if not v <= limit)

    net = mlp()
    start = mlp()  # the weights train_ch6 starts from
    seeded_start(start, 0)
    with pytest.raises(d2l.DivergenceError) as info:
        train(net, sample_loaders(), num_epochs=3, lr=lr)
    err = info.value
    assert (err.epoch, err.step) == (1, first_bad)
    assert "training diverged: the loss became " in str(err)
    assert f"in epoch 1/3, step {first_bad}/{N_BATCHES} with lr=1e+30" in str(err)
    assert "lower learning rate, e.g. lr=1e+29" in str(err)
    assert err.history.num_epochs == 0
    assert_equal_states(snapshot(net), snapshot(start))


def test_exploding_loss_is_divergence_though_it_stays_finite(capsys):
    """The issue's example: an MLP at lr=1e7 used to end with a loss of 7e25 and no error."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    train_iter, test_iter = d2l.load_data_fashion_mnist(256, profile="smoke")
    with pytest.raises(d2l.DivergenceError, match=r"over 2303, 1000 times .* step \d+/8") as info:
        d2l.train_ch6(net, train_iter, test_iter, 10, 1e7, "cpu", profile="smoke")
    assert info.value.epoch == 1


class Amplify(nn.Module):
    """Multiplies the logits by 1e5 from its ``n``-th training call on: a finite, huge loss."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.calls = n, 0

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if self.training and X.shape[0] == BATCH:
            self.calls += 1
            return X * 1e5 if self.calls >= self.n else X
        return X


def test_explosion_is_reported_at_its_step_for_cross_entropy_only(capsys):
    net = nn.Sequential(*mlp(), Amplify(3))
    with pytest.raises(d2l.DivergenceError, match="the loss became") as info:
        train(net, sample_loaders(), num_epochs=1, init=False)
    assert info.value.step == 3  # (2 * ~2.3 + ~1e5) / 3 is above 1000 * log 10 from step 3 on

    class ScaledLoss(nn.Module):  # not cross-entropy: no chance level, only NaN/inf diverge
        def forward(self, y_hat, y):
            return F.cross_entropy(y_hat, y) * 1e6

    history = train(nn.Sequential(*mlp(), Amplify(3)), sample_loaders(), 1, 0.1, init=False,
                    optimizer=frozen, loss=ScaledLoss())  # fmt: skip
    assert history.train_loss[0] > 1e9


@pytest.mark.parametrize("factory", [lenet, lenet_bn])
def test_the_notebooks_high_learning_rate_runs_do_not_trip_the_guard(capsys, factory):
    # Notebook 01 trains LeNet with and without batch norm at lr 1.0, full batches of 256.
    train_iter, test_iter = d2l.load_data_fashion_mnist(256, profile="smoke", shuffle_seed=0)
    torch.manual_seed(0)
    history = d2l.train_ch6(factory(), train_iter, test_iter, 10, 1.0, "cpu", seed=0)
    assert history.num_epochs == 1 and math.isfinite(history.train_loss[0])


def test_divergence_in_a_later_epoch_keeps_the_last_completed_epoch(tmp_path, capsys):
    path = tmp_path / "run.pt"

    def explode(opt):  # the learning rate jumps by 1e30 at the first step of epoch 2
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < N_BATCHES else 1e30)

    net = mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(d2l.DivergenceError, match=r"in epoch 2/3, step \d/5") as info:
        train(net, sample_loaders(), num_epochs=3, optimizer=opt, scheduler=explode,
              checkpoint=path)  # fmt: skip
    assert info.value.epoch == 2 and info.value.history.num_epochs == 1
    assert "reset to the end of epoch 1" in str(info.value)
    # Written after epoch 1, never with the diverged state:
    saved = load_checkpoint(path, "train_ch6", required=d2l_utils.robust.KEYS)
    assert saved["epoch"] == 1
    assert_equal_states(snapshot(net), saved["model"])
    momentum = [opt.state[p]["momentum_buffer"] for p in net.parameters()]
    assert all(torch.isfinite(m).all() for m in momentum)
    assert_close(momentum, [saved["optimizer"]["state"][i]["momentum_buffer"] for i in range(4)])


class PoisonedBuffer(nn.Module):
    """Passes its input through; its buffer becomes inf in its ``n``-th training call."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.calls = n, 0
        self.register_buffer("stat", torch.zeros(()))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if self.training and X.shape[0] == BATCH:
            self.calls += 1
            if self.calls == self.n:
                self.stat.fill_(math.inf)
        return X


def test_non_finite_weights_with_a_finite_loss_are_divergence_too(capsys):
    # Batch norm can hide exploding weights from the loss; the end-of-epoch check finds them.
    net = nn.Sequential(PoisonedBuffer(N_BATCHES + 2), *mlp())
    with pytest.raises(d2l.DivergenceError, match="weights became non-finite") as info:
        train(net, sample_loaders(), num_epochs=3)
    assert (info.value.epoch, info.value.step) == (2, None)
    assert info.value.history.num_epochs == 1
    assert all(torch.isfinite(v).all() for v in net.state_dict().values())


# --- mixed precision and memory format -----------------------------------------------------------


def fake_cuda(monkeypatch, capabilities: dict[int, tuple[int, int]], current: int = 0) -> None:
    """Pretend CUDA devices of the given compute capabilities exist (nothing runs on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(capabilities))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    monkeypatch.setattr(
        torch.cuda,
        "get_device_capability",
        lambda i=None: capabilities[current if i is None else i],
    )


def test_amp_option_means_by_device(monkeypatch):
    fake_cuda(monkeypatch, {0: (7, 5), 1: (8, 0)}, current=1)

    def dtype(amp, device):  # the dtype train_ch6 trains in for its amp= option
        return d2l.device.amp_dtype(device, amp)

    cuda0, cuda1, cpu = torch.device("cuda:0"), torch.device("cuda:1"), torch.device("cpu")
    assert dtype(None, cuda0) == torch.float16  # a T4: no native bf16
    assert dtype(None, cuda1) == torch.bfloat16  # an A100
    assert dtype(None, torch.device("cuda")) == torch.bfloat16  # the current device: cuda:1
    assert dtype(None, cpu) is None and dtype(None, torch.device("mps")) is None
    assert dtype(False, cuda1) is None
    assert dtype(True, cuda0) == torch.float16 and dtype(True, cpu) == torch.bfloat16
    assert dtype(True, torch.device("mps")) == torch.bfloat16
    assert dtype(torch.float16, cpu) == torch.float16 and dtype(torch.float32, cuda1) is None
    assert dtype(torch.bfloat16, cuda0) == torch.bfloat16  # asked for: even where it is emulated


def rgb_batches(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` batches of 16 random 3-channel 8x8 images of 4 classes (in a list: a loader too)."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(16, 3, SIDE, SIDE, generator=g), torch.arange(16) % CLASSES)] * n


class Probe(nn.Module):
    """A conv net wide enough to prefer channels_last that records how each batch arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 3 * 3, CLASSES)
        )
        self.seen: set[tuple[bool, bool, torch.dtype | None]] = set()

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if X.shape[0] > 2:  # not train_ch6's check of two test images before training
            amp = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
            self.seen.add((self.training, X.is_contiguous(memory_format=torch.channels_last), amp))
        return self.net(X)


def probe_run(net: Probe, **options) -> d2l.History:
    return d2l.train_ch6(
        net, rgb_batches(3, 0), rgb_batches(2, 1), 1, 0.1, "cpu", profile="full", **options
    )


@pytest.mark.parametrize(
    ("options", "layout", "amp"),
    [
        ({}, True, None),  # the defaults on a CPU: channels_last (32 channels), fp32
        ({"channels_last": False, "amp": False}, False, None),
        ({"channels_last": False, "amp": True}, False, torch.bfloat16),
    ],
)
def test_training_and_evaluation_run_in_the_same_layout_and_precision(capsys, options, layout, amp):
    net = Probe()
    assert d2l.device.prefers_channels_last(net)
    probe_run(net, **options)
    assert net.seen == {(True, layout, amp), (False, layout, amp)}


def _layout(net: nn.Module) -> set[bool]:
    """For each 4-d weight of ``net``: is it stored channels_last (and not also contiguous)?"""
    return {
        p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
        for p in net.parameters()
        if p.dim() == 4
    }


def test_the_net_comes_back_in_the_memory_format_it_came_in(capsys):
    net = Probe()
    probe_run(net)  # trains in channels_last (the defaults on a CPU, see above)
    assert (True, True, None) in net.seen and _layout(net) == {False}
    # A net the caller keeps in channels_last stays there.
    kept = Probe().to(memory_format=torch.channels_last)
    assert _layout(kept) == {True}
    probe_run(kept)
    assert _layout(kept) == {True}


def test_seed_restarts_the_training_loaders_shuffle_from_the_seed(capsys):
    train_iter, test_iter = loaders()
    state = train_iter.generator.get_state()
    d2l.train_ch6(linear_net(), train_iter, test_iter, 1, 0.1, "cpu", profile="full")
    drawn = train_iter.generator.get_state()
    assert not torch.equal(drawn, state)  # one epoch drew its permutation, as any loop would
    d2l.train_ch6(linear_net(), train_iter, test_iter, 1, 0.1, "cpu", seed=3, profile="full")
    expected = torch.Generator().manual_seed(3)
    torch.randperm(len(train_iter.dataset), generator=expected)  # the epoch's one draw
    assert torch.equal(train_iter.generator.get_state(), expected.get_state())


def test_evaluate_accuracy_gpu_options():
    net = Probe()
    d2l.evaluate_accuracy_gpu(net, rgb_batches(2, 1))
    assert net.seen == {(False, True, None)}
    net.seen.clear()
    d2l.evaluate_accuracy_gpu(net, rgb_batches(2, 1), channels_last=False, amp=True)
    assert net.seen == {(False, False, torch.bfloat16)}


def test_fp16_on_an_older_gpu_trains_with_the_gradient_scaler(monkeypatch, capsys):
    # What train_ch6 decides for a T4 (capability 7.5), carried out on the CPU: fp16 autocast
    # and an enabled GradScaler that scales every loss before backward.
    with monkeypatch.context() as m:  # only while deciding: torch itself must see the CPU
        fake_cuda(m, {0: (7, 5)})
        t4 = d2l.device.amp_dtype(torch.device("cuda:0"))
    monkeypatch.setattr(d2l_utils.train, "amp_dtype", lambda device, amp=None: t4)
    scalers = []

    def recording_scaler(device, dtype):
        scaler = torch.amp.GradScaler("cpu", enabled=dtype == torch.float16)
        scale = scaler.scale
        scaler.calls = 0

        def counting_scale(loss):
            scaler.calls += 1
            return scale(loss)

        scaler.scale = counting_scale
        scalers.append(scaler)
        return scaler

    monkeypatch.setattr(d2l_utils.train, "grad_scaler", recording_scaler)
    net = Probe()
    history = probe_run(net, channels_last=False)
    assert net.seen == {(True, False, torch.float16), (False, False, torch.float16)}
    (scaler,) = scalers
    assert scaler.is_enabled() and scaler.calls == 3
    assert math.isfinite(history.train_loss[0])


def test_unknown_option_is_named():
    with pytest.raises(TypeError, match="unexpected keyword argument 'chanels_last'"):
        d2l.train_ch6(mlp(), *sample_loaders(), 1, 0.1, "cpu", chanels_last=False)


# --- bad arguments -------------------------------------------------------------------------------


class NoStep(torch.optim.SGD):
    def step(self, closure=None):
        raise AssertionError("a training step ran")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_epochs": 0}, "num_epochs must be a positive int, got 0"),
        ({"num_epochs": -2}, "num_epochs must be a positive int"),
        ({"num_epochs": 2.5}, "num_epochs must be a positive int, got 2.5"),
        ({"num_epochs": True}, "num_epochs must be a positive int"),
        ({"num_epochs": "3"}, "num_epochs must be a positive int"),
        ({"lr": 0}, "lr must be a positive finite number, got 0"),
        ({"lr": -0.1}, "lr must be a positive finite number"),
        ({"lr": float("nan")}, "lr must be a positive finite number, got nan"),
        ({"lr": float("inf")}, "lr must be a positive finite number, got inf"),
        ({"lr": "0.1"}, "lr must be a positive finite number"),
        ({"lr": None}, "lr must be a positive finite number"),
        ({"seed": "0"}, "seed must be an int"),
    ],
)
def test_train_ch6_rejects_bad_arguments_before_training(kwargs, message):
    net = mlp()
    untouched = snapshot(net)
    args = {"num_epochs": 1, "lr": 0.1, **kwargs}
    opt = NoStep(net.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=message):
        d2l.train_ch6(net, *sample_loaders(), args["num_epochs"], args["lr"], "cpu",
                      optimizer=opt, seed=args.get("seed"))  # fmt: skip
    assert_equal_states(snapshot(net), untouched)


def empty() -> FashionMNIST:
    return load_sample(train=False).subset(torch.arange(0))


@pytest.mark.parametrize(
    ("which", "loader", "message"),
    [
        ("train", lambda: BatchLoader(empty(), 8), "train_iter is empty"),
        ("test", lambda: BatchLoader(empty(), 8), "test_iter is empty"),
        ("train", lambda: [], "train_iter is empty"),
    ],
)
def test_train_ch6_rejects_an_empty_loader(which, loader, message):
    train_iter, test_iter = sample_loaders()
    if which == "train":
        train_iter = loader()
    else:
        test_iter = loader()
    with pytest.raises(ValueError, match=message):
        d2l.train_ch6(mlp(), train_iter, test_iter, 1, 0.1, "cpu")


def test_train_ch6_rejects_labels_the_net_has_no_output_for():
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 5))  # 5 classes, Fashion-MNIST has 10
    untouched = snapshot(net)
    opt = NoStep(net.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"train_iter has labels 0..9, but net outputs 5 class"):
        d2l.train_ch6(net, *sample_loaders(), 1, 0.1, "cpu", optimizer=opt)
    assert_equal_states(snapshot(net), untouched)  # not even the init ran

    train_iter, test_iter = sample_loaders()
    test = test_iter.dataset
    negative = FashionMNIST(test.images, test.labels - 1, test.indices, train=False)
    with pytest.raises(ValueError, match=r"test_iter has labels -1..8"):
        d2l.train_ch6(mlp(), train_iter, BatchLoader(negative, BATCH), 1, 0.1, "cpu")


def test_train_ch6_reports_a_net_that_cannot_take_the_images():
    net = nn.Sequential(nn.Flatten(), nn.Linear(96 * 96, 10))  # built for 96 px, given 28 px
    with pytest.raises(RuntimeError, match=r"before training, net failed on a test batch X of"):
        d2l.train_ch6(net, *sample_loaders(), 1, 0.1, "cpu")


def test_unknown_profile_is_named_by_train_ch6():
    with pytest.raises(ValueError, match=r"profile='fast' is not a known run profile"):
        d2l.train_ch6(mlp(), *sample_loaders(), 1, 0.1, "cpu", profile="fast")
