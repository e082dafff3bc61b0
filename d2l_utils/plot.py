"""Plotting: the book's ``Animator`` and ``show_images``, drawn with matplotlib, and the epoch log
of :func:`d2l_utils.train.train_ch6` (the live plot in Jupyter, one line per epoch elsewhere)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["Animator", "EpochLog", "in_notebook", "set_axes", "show_images"]


def in_notebook() -> bool:
    """Whether code runs in a Jupyter kernel (where figures can be shown and updated)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def set_axes(axes, xlabel, ylabel, xlim, ylim, xscale, yscale, legend) -> None:
    """Set the labels, limits, scales and legend of matplotlib axes."""
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_xscale(xscale)
    axes.set_yscale(yscale)
    if xlim is not None:
        axes.set_xlim(xlim)
    if ylim is not None:
        axes.set_ylim(ylim)
    if legend:
        axes.legend(legend)
    axes.grid()


class Animator:
    """Plot data incrementally; in Jupyter the figure updates in place as points arrive.

    The figure is shown through a display handle, so lines printed in the same cell stay
    visible (the book clears the whole cell output on every update instead).
    """

    def __init__(
        self,
        xlabel: str | None = None,
        ylabel: str | None = None,
        legend: Sequence[str] | None = None,
        xlim: Sequence[float] | None = None,
        ylim: Sequence[float] | None = None,
        xscale: str = "linear",
        yscale: str = "linear",
        fmts: Sequence[str] = ("-", "m--", "g-.", "r:"),
        nrows: int = 1,
        ncols: int = 1,
        figsize: tuple[float, float] = (3.5, 2.5),
    ) -> None:
        import matplotlib.pyplot as plt

        self.fig, axes = plt.subplots(nrows, ncols, figsize=figsize)
        plt.close(self.fig)  # shown through the handle below, not again at the end of the cell
        self.axes = np.atleast_1d(axes).ravel()
        self.config_axes = lambda: set_axes(
            self.axes[0], xlabel, ylabel, xlim, ylim, xscale, yscale, legend
        )
        self.X: list[list[float]] | None = None
        self.Y: list[list[float]] | None = None
        self.fmts = fmts
        self._handle: Any = None

    def add(self, x: float | Sequence[float], y: float | Sequence[float | None]) -> None:
        """Add one point per line (``None`` skips a line) and redraw."""
        if not hasattr(y, "__len__"):
            y = [y]
        n = len(y)
        if not hasattr(x, "__len__"):
            x = [x] * n
        if self.X is None:
            self.X = [[] for _ in range(n)]
        if self.Y is None:
            self.Y = [[] for _ in range(n)]
        for i, (a, b) in enumerate(zip(x, y, strict=True)):
            if a is not None and b is not None:
                self.X[i].append(a)
                self.Y[i].append(b)
        self.axes[0].cla()
        for xs, ys, fmt in zip(self.X, self.Y, self.fmts, strict=False):
            self.axes[0].plot(xs, ys, fmt)
        self.config_axes()
        if in_notebook():
            from IPython.display import display

            if self._handle is None:
                self._handle = display(self.fig, display_id=True)
            else:
                self._handle.update(self.fig)


def show_images(imgs, num_rows: int, num_cols: int, titles=None, scale: float = 1.5):
    """Show a grid of images (tensors or arrays ``(H, W)``); returns the axes."""
    import matplotlib.pyplot as plt

    figsize = (num_cols * scale, num_rows * scale)
    _, axes = plt.subplots(num_rows, num_cols, figsize=figsize)
    axes = np.atleast_1d(axes).flatten()
    for i, (ax, img) in enumerate(zip(axes, imgs, strict=False)):
        if hasattr(img, "detach"):
            img = img.detach().cpu().numpy()
        ax.imshow(
            np.asarray(img).squeeze(), cmap="gray" if np.asarray(img).squeeze().ndim == 2 else None
        )
        ax.axes.get_xaxis().set_visible(False)
        ax.axes.get_yaxis().set_visible(False)
        if titles:
            ax.set_title(titles[i])
    return axes


class EpochLog:
    """What :func:`~d2l_utils.train.train_ch6` shows while it trains.

    With an ``animator`` (in Jupyter): the book's live plot, train loss and accuracy at five
    points per epoch and test accuracy at the end of each.  Without one: a line per epoch,
    ``epoch 2/10: loss 0.412, train acc 0.851, test acc 0.842 (12.3 s)``, and a progress bar
    while an epoch runs when the output is a terminal.
    """

    def __init__(self, num_epochs: int, animator: Animator | None) -> None:
        self.num_epochs = num_epochs
        self.animator = animator
        self.progress: Any = None

    def points(self, num_batches: int) -> set[int]:
        """Batch indices after which the book adds a plot point: every ``num_batches // 5``-th
        and the last (after every batch when there are fewer than 5, where the book's rule
        would divide by zero)."""
        if self.animator is None:
            return set()
        step = max(num_batches // 5, 1)
        return {i for i in range(num_batches) if (i + 1) % step == 0} | {num_batches - 1}

    def replay(self, train_loss: list, train_acc: list, test_acc: list) -> None:
        """Draw the epochs a resumed run restored from its checkpoint."""
        if self.animator is not None:
            for e, values in enumerate(zip(train_loss, train_acc, test_acc, strict=True)):
                self.animator.add(e + 1, values)

    def start_epoch(self, epoch: int, num_batches: int) -> None:
        """Open a progress bar for epoch ``epoch`` (0-based) when printing to a terminal."""
        if self.animator is None and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.progress = tqdm(
                total=num_batches, desc=f"epoch {epoch + 1}/{self.num_epochs}", leave=False
            )

    def step(self) -> None:
        """One batch done."""
        if self.progress is not None:
            self.progress.update()

    def batch(self, x: float, loss: float, acc: float) -> None:
        """A plot point of the running train loss and accuracy at epoch ``x`` (fractional)."""
        if self.animator is not None:
            self.animator.add(x, (loss, acc, None))

    def end_epoch(self, epoch: int, loss: float, train_acc: float, test_acc: float, t: float):
        """Epoch ``epoch`` (0-based) done: its test accuracy on the plot, or its line."""
        self.close()
        if self.animator is not None:
            self.animator.add(epoch + 1, (None, None, test_acc))
        else:
            print(
                f"epoch {epoch + 1}/{self.num_epochs}: loss {loss:.3f}, train acc {train_acc:.3f}, "
                f"test acc {test_acc:.3f} ({t:.1f} s)",
                flush=True,
            )

    def close(self) -> None:
        """Close the progress bar (also when the run stops early)."""
        if self.progress is not None:
            self.progress.close()
            self.progress = None
