"""d2l_utils.plot: the book's Animator and show_images, and train_ch6's epoch log."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import matplotlib
import matplotlib.pyplot as plt
import torch
from torch.testing import assert_close

import d2l_utils as d2l
from d2l_utils.plot import EpochLog

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


def test_epoch_log_points_are_the_books_rule():
    log = EpochLog(3, _Points())
    # The book: after every (num_batches // 5)-th batch and after the last one.
    assert sorted(log.points(12)) == [1, 3, 5, 7, 9, 11]
    assert sorted(log.points(23)) == [3, 7, 11, 15, 19, 22]
    assert sorted(log.points(3)) == [0, 1, 2]  # the book's rule would divide by zero
    assert EpochLog(3, None).points(12) == set()  # printing lines: no plot points to read


def test_epoch_log_plots_in_a_notebook_and_prints_lines_elsewhere():
    points = _Points()
    plotted, printed = EpochLog(2, points), EpochLog(2, None)
    out = io.StringIO()
    with redirect_stdout(out):
        for log in (plotted, printed):
            log.replay([0.9], [0.6], [0.5])
            log.batch(1.5, 0.4, 0.8)
            log.end_epoch(1, 0.4, 0.8, 0.75, 1.25)
    assert points.calls == [(1, (0.9, 0.6, 0.5)), (1.5, (0.4, 0.8, None)), (2, (None, None, 0.75))]
    assert out.getvalue() == "epoch 2/2: loss 0.400, train acc 0.800, test acc 0.750 (1.2 s)\n"
