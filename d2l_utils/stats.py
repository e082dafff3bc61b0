"""Seed noise: summarize repeated runs and compare two settings without overclaiming.

A single training run is one draw: the initial weights, the shuffle and (on a CPU) the order in
which the vector kernels add numbers all move the final accuracy by a point or more.  The course
therefore runs every comparison that decides something with several seeds and reports the mean and
the sample standard deviation.  Two settings are called different only when their means differ by
more than twice the standard error of that difference,
``2 * sqrt(sd_a**2 / n_a + sd_b**2 / n_b)`` (Welch's standard error; with 3 seeds each this is a
rough, deliberately cautious rule, not a significance test).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["Comparison", "compare", "format_mean_sd", "mean_sd", "noise_band"]


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``n - 1`` in the denominator) of ``values``.

    One value has no spread to measure: its standard deviation is ``nan``.
    """
    n = len(values)
    if n == 0:
        raise ValueError("mean_sd needs at least one value")
    mean = math.fsum(values) / n
    if n == 1:
        return mean, math.nan
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def format_mean_sd(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> str:
    """``"0.871 ± 0.004"``: mean ± sd of ``values`` times ``scale``, ``digits`` decimals."""
    mean, sd = mean_sd([scale * v for v in values])
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def noise_band(a: Sequence[float], b: Sequence[float]) -> float:
    """Twice the standard error of ``mean(a) - mean(b)``: differences below it are noise."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("a noise band needs at least two runs per setting")
    sd_a, sd_b = mean_sd(a)[1], mean_sd(b)[1]
    return 2 * math.sqrt(sd_a**2 / len(a) + sd_b**2 / len(b))


class Comparison(NamedTuple):
    """``difference = mean(a) - mean(b)``; ``verdict`` is ``"higher"``, ``"lower"`` or ``"tie"``."""

    difference: float
    band: float
    verdict: str

    def __str__(self) -> str:
        if self.verdict == "tie":
            return f"within noise ({self.difference:+.3g}, noise band ±{self.band:.2g})"
        return f"{self.verdict} by {abs(self.difference):.3g} (noise band ±{self.band:.2g})"


def compare(a: Sequence[float], b: Sequence[float]) -> Comparison:
    """Compare the runs ``a`` with the runs ``b`` (e.g. test accuracies over seeds).

    Returns:
        a :class:`Comparison`: ``"higher"`` when mean(a) exceeds mean(b) by more than
        :func:`noise_band`, ``"lower"`` when it falls short by more, else ``"tie"``.
    """
    band = noise_band(a, b)
    difference = mean_sd(a)[0] - mean_sd(b)[0]
    if difference > band:
        verdict = "higher"
    elif difference < -band:
        verdict = "lower"
    else:
        verdict = "tie"
    return Comparison(difference, band, verdict)
