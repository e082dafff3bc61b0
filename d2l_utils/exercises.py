"""Checks for the notebooks' exercises whose answer is a value: ``check("03.1", answer)``.

The student edition (``make student``) ends each notebook with cells like::

    answer = ...  # your answer: the parameters of Residual(64, 128, use_1x1conv=True, strides=2)
    check("03.1", answer)

``check`` prints one line: ``Exercise 03.1: right``, or what is wrong, with a hint that does not
give the solution away.  While the answer is still ``...`` it raises :class:`YourTurn`, which
Jupyter shows as that one line instead of a traceback.  The full edition calls the same checks on
its solutions, so running its notebooks proves every check accepts the right answer.

The expected values are computed from the course's models (counting their parameters and FLOPs,
running them), not typed in, so they cannot drift from the package.  Two are not the package's:
exercise 02.1's Inception block (summed over its convolutions) and exercise 07.1's count of images
(from its probability), each written as its formula.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from d2l_utils.measure import count_flops, count_params
from d2l_utils.memory import saved_tensor_bytes
from d2l_utils.models.cifar_resnet import resnet20
from d2l_utils.models.densenet import densenet
from d2l_utils.models.lenet import lenet_bn
from d2l_utils.models.resnet import Residual, d2l_resnet18, resnet18, resnet50

__all__ = ["CHECKS", "YourTurn", "check", "verdict"]


class YourTurn(Exception):
    """Raised by :func:`check` while the answer is still the placeholder ``...``.

    IPython shows the lines of ``_render_traceback_`` in place of a traceback, so the learner sees
    one line, not the package's internals.
    """

    def __init__(self, exercise: str) -> None:
        super().__init__(f"Exercise {exercise}: your turn — replace the ... with your answer")
        self.exercise = exercise

    def _render_traceback_(self) -> list[str]:
        return [str(self)]


@dataclass(frozen=True)
class Check:
    """One exercise's check.

    Attributes:
        kind: ``"count"`` (a whole number, exact), ``"number"`` (within ``tolerance``) or
            ``"shape"`` (a tuple of whole numbers or a ``torch.Size``, exact).
        expected: computes the right answer (called once, then cached).
        tolerance: for ``"number"``: how far from the expected value an answer may be.
        hint: ``hint(answer, expected)``: a message for a known mistake, or ``None``.
    """

    kind: str
    expected: Callable[[], Any]
    tolerance: float = 0.0
    hint: Callable[[Any, Any], str | None] | None = None


# --- The expected values: computed from the course's models. ---------------------------------


def _lenet_bias_saving() -> int:
    return count_params(lenet_bn()) - count_params(lenet_bn(bias=False))


def _inception_params() -> int:
    # GoogLeNet's block 3a on 192 channels: a convolution has in * out * k * k weights + out biases.
    def conv(cin: int, cout: int, k: int) -> int:
        return cin * cout * k * k + cout

    return (conv(192, 64, 1) + conv(192, 96, 1) + conv(96, 128, 3) + conv(192, 16, 1)
            + conv(16, 32, 5) + conv(192, 32, 1))  # fmt: skip


def _stage2_block_params() -> int:
    return count_params(Residual(64, 128, use_1x1conv=True, strides=2))


def _book_minus_torchvision() -> int:
    with torch.device("meta"):  # shapes only: no memory, no initialization
        book, tv_style = d2l_resnet18(), resnet18(num_classes=10, in_channels=1)
    return count_params(book) - count_params(tv_style)


def _last_stage_shape_33px() -> tuple[int, ...]:
    with torch.device("meta"), torch.no_grad():
        return tuple(d2l_resnet18().eval()[:5](torch.zeros(1, 1, 33, 33)).shape)


def _flops_96px(make: Callable[..., Any]) -> int:
    with torch.device("meta"):
        return count_flops(make(), (1, 1, 96, 96))


def _resnet50_flops_ratio() -> float:
    small = functools.partial(resnet18, num_classes=10, in_channels=1)
    large = functools.partial(resnet50, num_classes=10, in_channels=1)
    return _flops_96px(large) / _flops_96px(small)


def _pool_first_saving() -> float:
    conv = nn.Conv2d(224, 112, kernel_size=1)  # the book's first transition layer, on 12x12 maps
    conv_then_pool = count_flops(nn.Sequential(conv, nn.AvgPool2d(2)), (1, 224, 12, 12))
    pool_then_conv = count_flops(nn.Sequential(nn.AvgPool2d(2), conv), (1, 224, 12, 12))
    return conv_then_pool / pool_then_conv


def _resnet_over_densenet_flops() -> float:
    return _flops_96px(d2l_resnet18) / _flops_96px(densenet)


def _densenet_over_resnet_activations() -> float:
    shape = (1, 1, 224, 224)
    return saved_tensor_bytes(densenet(), shape) / saved_tensor_bytes(d2l_resnet18(), shape)


def _option_b_extra_params() -> int:
    return count_params(resnet20(shortcut="B")) - count_params(resnet20())


# Exercise 07.1: 2 ranks, each with its own permutation of 2,000 images, take their half of every
# batch.  An image is in a given rank's half with probability 1/2, independently for the two ranks,
# so it is never seen with probability 1/4.  The count varies with the seeds: a tolerance of three
# binomial standard deviations.
_IMAGES, _P_NEVER = 2000, 0.25
_NEVER_SEEN_SD = math.sqrt(_IMAGES * _P_NEVER * (1 - _P_NEVER))


def _never_seen_mean() -> float:
    return _IMAGES * _P_NEVER


# --- Hints for known mistakes (they never state the expected value). --------------------------


def _hint_lenet(answer: Any, expected: int) -> str | None:
    if answer == expected + 10:
        return "one too many: the output layer feeds the loss, not a BN layer; it keeps its bias"
    if answer == 6 + 16:
        return "the fully connected layers before BN have biases too"
    return None


def _hint_stage2(answer: Any, expected: int) -> str | None:
    if answer == expected - 2 * 2 * 128:
        return "did you count the two batch norms (a scale and a shift per channel)?"
    if answer == expected - (64 * 128 + 128):
        return "did you count the 1x1 convolution on the shortcut?"
    return None


def _hint_difference(answer: Any, expected: int) -> str | None:
    if answer == -expected:
        return "wrong sign: give the book's count minus the torchvision-style count"
    return None


def _hint_ratio(answer: Any, expected: float) -> str | None:
    if answer and abs(1 / answer - expected) <= 0.02 * expected:
        return "upside down: divide the other way round"
    if abs(answer / 100 - expected) <= 0.02 * expected:
        return "give a ratio (how many times), not a percentage"
    return None


def _hint_resnet50(answer: Any, expected: float) -> str | None:
    with torch.device("meta"):
        large, small = (
            resnet50(num_classes=10, in_channels=1),
            resnet18(num_classes=10, in_channels=1),
        )
    params = count_params(large) / count_params(small)
    if abs(answer - params) <= 0.01:
        return "that is the ratio of the parameters; the question is about FLOPs"
    return _hint_ratio(answer, expected)


def _hint_never_seen(answer: Any, expected: float) -> str | None:
    if abs(answer - _IMAGES * 0.5) <= 3 * _NEVER_SEEN_SD:
        return "an image is missed only if it is in neither rank's half: both must miss it"
    if 0 < answer < 1:
        return "give a number of images, not a fraction"
    return None


CHECKS: dict[str, Check] = {
    "01.1": Check("count", _lenet_bias_saving, hint=_hint_lenet),
    "02.1": Check("count", _inception_params),
    "03.1": Check("count", _stage2_block_params, hint=_hint_stage2),
    "03.2": Check("count", _book_minus_torchvision, hint=_hint_difference),
    "03.3": Check("shape", _last_stage_shape_33px),
    "03.4": Check("number", _resnet50_flops_ratio, tolerance=0.01, hint=_hint_resnet50),
    "04.1": Check("number", _pool_first_saving, tolerance=0.01, hint=_hint_ratio),
    "04.2": Check("number", _resnet_over_densenet_flops, tolerance=0.02, hint=_hint_ratio),
    "04.3": Check("number", _densenet_over_resnet_activations, tolerance=0.01, hint=_hint_ratio),
    "05.3": Check("count", _option_b_extra_params),
    "07.1": Check("number", _never_seen_mean, tolerance=3 * _NEVER_SEEN_SD, hint=_hint_never_seen),
}


@functools.cache
def expected(exercise: str) -> Any:
    """The right answer of ``exercise`` (for the tests; a learner calls :func:`check`)."""
    return CHECKS[exercise].expected()


def _as_count(answer: Any) -> int | None:
    if isinstance(answer, bool) or not isinstance(answer, numbers.Integral):
        return None
    return int(answer)


def _as_number(answer: Any) -> float | None:
    if isinstance(answer, bool) or not isinstance(answer, numbers.Real):
        return None
    return float(answer)


def _as_shape(answer: Any) -> tuple[int, ...] | None:
    if not isinstance(answer, tuple):  # torch.Size is a tuple
        return None
    dims = tuple(_as_count(d) for d in answer)
    return None if None in dims else dims  # type: ignore[return-value]


def _what_is_wrong(c: Check, answer: Any, right: Any) -> str:
    """The message for an answer of the right type that is not right."""
    if c.hint is not None and (message := c.hint(answer, right)) is not None:
        return message
    if c.kind == "shape":
        if len(answer) != len(right):
            return f"the shape should have {len(right)} dimensions, not {len(answer)}"
        wrong = [i for i, (a, r) in enumerate(zip(answer, right, strict=True)) if a != r]
        return f"dimension {', '.join(map(str, wrong))} {'is' if len(wrong) == 1 else 'are'} wrong"
    if answer and right and answer * right > 0:
        factor = max(answer / right, right / answer)
        if factor >= 1.5 and math.isclose(factor, round(factor), rel_tol=1e-9):
            return f"off by a factor of {round(factor)}"
    if c.kind == "count" and answer == -right:
        return "wrong sign"
    return "too high" if answer > right else "too low"


def verdict(exercise: str, answer: Any) -> tuple[bool, str]:
    """``(right, line)``: whether ``answer`` is right and the line :func:`check` prints.

    Raises:
        YourTurn: while ``answer`` is ``...``.
        KeyError: for an exercise without a check.
    """
    if exercise not in CHECKS:
        raise KeyError(f"no check for exercise {exercise!r}; checked: {', '.join(CHECKS)}")
    if answer is Ellipsis:
        raise YourTurn(exercise)
    c = CHECKS[exercise]
    convert, wanted = {
        "count": (_as_count, "a whole number (an int)"),
        "number": (_as_number, "a number"),
        "shape": (_as_shape, "a shape (a tuple of ints or a torch.Size)"),
    }[c.kind]
    value, start = convert(answer), f"Exercise {exercise}: "
    if value is None:
        return False, f"{start}not yet: the answer should be {wanted}, not {type(answer).__name__}"
    right = expected(exercise)
    ok = abs(value - right) <= c.tolerance if c.kind == "number" else value == right
    if ok:
        return True, f"{start}right"
    return False, f"{start}not yet: {_what_is_wrong(c, value, right)}"


def check(exercise: str, answer: Any) -> None:
    """Print whether ``answer`` to ``exercise`` (e.g. ``"03.1"``) is right, or a hint if not.

    Raises :class:`YourTurn` (shown as one line) while ``answer`` is still ``...``.
    """
    print(verdict(exercise, answer)[1])
