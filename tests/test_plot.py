"""d2l_utils.plot: the book's Animator and show_images, and train_ch6's epoch log."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import matplotlib
import matplotlib.pyplot as plt
import torch
from torch.testing import assert_close

import d2l_utils as d2l
from d2l_utils.train import EpochLog

matplotlib.use("Agg")  # figures are only inspected


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


class _Points:
    """Stands in for an Animator: keeps the points it is given."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, tuple]] = []

    def add(self, x, y) -> None:
        self.calls.append((x, tuple(y)))


class _Metric:
    """Stands in for train_ch6's running metrics: a fixed mean loss and accuracy."""

    def mean(self):
        return 0.4, 0.8


def _plotted_batches(num_batches: int) -> list[int]:
    log = EpochLog(3, live_plot=False)
    log.animator = points = _Points()
    log.start_epoch(0, num_batches)
    for _ in range(num_batches):
        log.step(0, _Metric())
    return [round(x * num_batches) for x, _ in points.calls]  # 1-based batch numbers


def test_epoch_log_points_are_the_books_rule():
    # The book: after every (num_batches // 5)-th batch and after the last one.
    assert _plotted_batches(12) == [2, 4, 6, 8, 10, 12]
    assert _plotted_batches(23) == [4, 8, 12, 16, 20, 23]
    assert _plotted_batches(3) == [1, 2, 3]  # the book's rule would divide by zero


def test_epoch_log_plots_in_a_notebook_and_prints_lines_elsewhere():
    plotted, printed = EpochLog(2, live_plot=False), EpochLog(2, live_plot=False)
    plotted.animator = points = _Points()
    out = io.StringIO()
    with redirect_stdout(out):
        for log in (plotted, printed):
            log.start_epoch(1, 2)
            log.step(1, _Metric())
            log.end_epoch(1, 0.4, 0.8, 0.75, 1.25)
    assert points.calls == [(1.5, (0.4, 0.8, None)), (2, (None, None, 0.75))]
    assert out.getvalue() == "epoch 2/2: loss 0.400, train acc 0.800, test acc 0.750 (1.2 s)\n"
