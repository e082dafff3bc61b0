"""The models the benchmark times, with the book's settings for each."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn


def _lenet_bn() -> nn.Module:
    from d2l_utils.models.lenet import lenet_bn

    return lenet_bn()


def _resnet18() -> nn.Module:
    from d2l_utils.models.resnet import resnet18

    return resnet18(num_classes=10, in_channels=1)


def _densenet() -> nn.Module:
    from d2l_utils.models.densenet import densenet

    return densenet()


MODELS: dict[str, Callable[[], nn.Module]] = {
    "lenet_bn": _lenet_bn,
    "resnet18": _resnet18,
    "densenet": _densenet,
}
LABELS = {"lenet_bn": "LeNet-BN", "resnet18": "ResNet-18", "densenet": "DenseNet"}
# The book's settings: (resize, lr), with batch size 256.
BOOK_SETTINGS = {"lenet_bn": (None, 1.0), "resnet18": (96, 0.05), "densenet": (96, 0.1)}


@dataclass(frozen=True)
class Case:
    """One model to time, with the book's settings for it.

    ``batches=None`` times whole epochs: the full training set, then the test set is evaluated,
    so the end-to-end epoch time is measured.  An integer times that many training batches (drawn
    from the first ``batches * batch_size`` training images) and skips the evaluation; the
    textbook's one-off start of each epoch (forking its workers, waiting for the first batch),
    which a whole epoch amortises, is then left out of its time.  ``warmup`` batches are
    trained on each path, untimed, before the timed runs.
    """

    name: str
    build: Callable[[], nn.Module]
    resize: int | None  # image side in pixels; None keeps 28 px
    lr: float
    batch_size: int = 256
    batches: int | None = None
    warmup: int = 2

    @property
    def side(self) -> int:
        return 28 if self.resize is None else self.resize


def default_cases(
    quick: bool,
    device: torch.device,
    models: Sequence[str] = tuple(MODELS),
    batch_size: int | None = None,
    batches: int | None = None,
) -> list[Case]:
    """The models to time and for how long.

    LeNet-BN is always timed over whole epochs (its target is the end-to-end epoch).  ResNet-18
    and DenseNet at 96 px take minutes per epoch on a CPU, so there they are timed over a few
    batches; with ``quick``, one batch per run and no separate warm-up (the median of the runs
    leaves out the cold first one).  On a GPU every model is timed over whole epochs.
    """
    cases = []
    for key in models:
        resize, lr = BOOK_SETTINGS[key]
        whole_epochs = key == "lenet_bn" or device.type != "cpu"
        n = None if whole_epochs else (1 if quick else 4)
        n = n if batches is None else batches
        warmup = 0 if quick and n is not None else (2 if n is None else 1)
        cases.append(Case(LABELS[key], MODELS[key], resize, lr, batch_size or 256, n, warmup))
    return cases
