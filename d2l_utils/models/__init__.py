"""The networks the course builds, one module per family, named and shaped like torchvision's.

* :mod:`~d2l_utils.models.batchnorm`: batch normalization from scratch (notebook 01), and its
  synchronized form for data-parallel training (notebook 07);
* :mod:`~d2l_utils.models.lenet`: the book's LeNet, with and without batch norm (notebook 01);
* :mod:`~d2l_utils.models.resnet`: the residual blocks and ResNet-18 ... 152 (notebooks 02, 03);
* :mod:`~d2l_utils.models.cifar_resnet`: the CIFAR-style ResNet-20 ... 110 and their plain twins
  (notebook 05);
* :mod:`~d2l_utils.models.densenet`: the book's DenseNet and the DenseNet-BC family (notebook 04).

:func:`get_model` is the one place where a network is built from its name (a saved model file
names its architecture; the data-parallel script takes ``--model``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from torch import nn

from d2l_utils.models import cifar_resnet, densenet, lenet, resnet

__all__ = ["MODELS", "get_model", "list_models"]

# Every network the course builds by name; each factory takes keyword arguments only.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet": lenet.lenet,
    "lenet_bn": lenet.lenet_bn,
    "d2l_resnet18": resnet.d2l_resnet18,
    **{f"resnet{d}": getattr(resnet, f"resnet{d}") for d in (18, 34, 50, 101, 152)},
    **{f"resnet{d}": getattr(cifar_resnet, f"resnet{d}") for d in (20, 32, 44, 56, 110)},
    **{f"plain{d}": getattr(cifar_resnet, f"plain{d}") for d in (20, 32, 44, 56, 110)},
    "densenet": densenet.densenet,
    **{f"densenet{d}": getattr(densenet, f"densenet{d}") for d in (121, 161, 169, 201)},
}

# Any other CIFAR depth 6n + 2 (resnet26, plain38, ...): the paper's design has depth as its knob.
_CIFAR_DEPTH = re.compile(r"(resnet|plain)(\d+)")


def list_models() -> list[str]:
    """The names :func:`get_model` knows (besides the CIFAR depths ``resnetN``/``plainN``)."""
    return sorted(MODELS)


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """A freshly initialised network of architecture ``name``; ``kwargs`` go to its factory.

    Raises:
        ValueError: for a name that is neither in :data:`MODELS` nor ``resnetN``/``plainN``
            with ``N = 6n + 2``.
    """
    if name in MODELS:
        return MODELS[name](**kwargs)
    match = _CIFAR_DEPTH.fullmatch(name)
    if match and int(match[2]) >= 8 and (int(match[2]) - 2) % 6 == 0:
        residual = match[1] == "resnet"
        return cifar_resnet.CifarResNet(depth=int(match[2]), residual=residual, **kwargs)
    raise ValueError(
        f"unknown architecture {name!r}; known: {', '.join(list_models())}, "
        "or resnetN/plainN with N = 6n + 2"
    )
