"""Plotting: the book's ``Animator`` (the live plot of :func:`d2l_utils.train.train_ch6` in
Jupyter), ``set_axes`` and ``show_images``, drawn with matplotlib."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from d2l_utils.device import in_notebook

__all__ = ["Animator", "set_axes", "show_images"]


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
