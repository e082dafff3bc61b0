"""Transfer learning (迁移学习): an image folder on disk, a pretrained ResNet, fine-tuning it.

The workflow most projects start from: one folder of images per class, read with
``torchvision.datasets.ImageFolder``; a ResNet pre-trained on other data whose last layer ``fc``
is replaced for the new classes; training that keeps the epoch with the best validation
accuracy; and a ``class_indices.json`` that tells a prediction script what each output means.

* :func:`write_image_folder` writes uint8 images as ``root/<class>/<n>.png``;
  :func:`save_class_indices` keeps the index -> name table for the prediction command.
* :func:`train_transform` and :func:`eval_transform`: grey to 3 channels, crop, normalize.
* :func:`hub_weights_file`, :func:`load_hub_state_dict` (torchvision's files in the torch hub
  cache, never downloaded here) and :func:`resnet_from_state_dict` (a torchvision-layout
  ``state_dict`` in the course's ResNet, with a new head).
* :func:`freeze`, :func:`set_batchnorm_eval`, :func:`parameter_groups` and :func:`fine_tune`,
  which can keep the best weights in a :class:`BestCheckpoint`.

What the prediction command reads lives in :mod:`d2l_utils.predict`, which this module builds on
(never the other way round): the model file the best checkpoint is, the validation view
:func:`eval_transform` and ``class_indices.json``; the last two are importable from here too.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
from torch import Tensor, nn

from d2l_utils.analysis import save_png
from d2l_utils.device import device_of, in_layout, prefers_channels_last
from d2l_utils.models import get_model
from d2l_utils.predict import eval_transform, save_class_indices, save_model, to_normalized_tensor
from d2l_utils.train import evaluate_accuracy_gpu, train_step

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BestCheckpoint",
    "FitResult",
    "NormalizedLoader",
    "eval_transform",
    "fine_tune",
    "freeze",
    "hub_weights_file",
    "load_hub_state_dict",
    "parameter_groups",
    "resnet_from_state_dict",
    "save_class_indices",
    "set_batchnorm_eval",
    "train_transform",
    "write_image_folder",
]

# The per-channel (R, G, B) mean and standard deviation of ImageNet's training images, which
# torchvision's ImageNet weights expect their inputs to be normalized with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --- the image folder -------------------------------------------------------------------------


def write_image_folder(
    root: str | os.PathLike[str], images: Tensor, labels: Tensor, class_names: Sequence[str]
) -> list[Path]:
    """Write grey images as PNG files ``root/<class name>/<n>.png``, the ``ImageFolder`` layout.

    Args:
        images: uint8 ``(N, H, W)``.
        labels: ``(N,)``, indices into ``class_names``.
        class_names: the folder name of each label.

    Returns:
        The ``N`` paths written, in the order of ``images``.  Files are numbered per class with
        five digits, so sorting the names (as ``ImageFolder`` does) keeps this order.
    """
    if images.dim() != 3 or images.dtype != torch.uint8 or labels.shape != images.shape[:1]:
        raise ValueError(
            f"expected uint8 images (N, H, W) and labels (N,), got {tuple(images.shape)} "
            f"{images.dtype} and {tuple(labels.shape)}"
        )
    root = Path(root)
    counts = dict.fromkeys(range(len(class_names)), 0)
    paths = []
    for image, label in zip(images, labels.tolist(), strict=True):
        folder = root / class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        paths.append(save_png(image, folder / f"{counts[label]:05d}.png"))
        counts[label] += 1
    return paths


# --- transforms -------------------------------------------------------------------------------


def train_transform(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    scale: tuple[float, float] = (0.5, 1.0),
):
    """Training augmentation for a PIL image: 3 grey channels, random crop and flip, normalize.

    ``RandomResizedCrop`` takes a random part covering ``scale`` of the area (at an aspect
    ratio in 3/4..4/3) and resizes it to ``size x size``; returns float ``(3, size, size)``.
    """
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.Grayscale(num_output_channels=3),
            v2.RandomResizedCrop(size, scale=scale, antialias=True),
            v2.RandomHorizontalFlip(),
            *to_normalized_tensor(mean, std),
        ]
    )


class NormalizedLoader:
    """A loader of grey batches ``(B, 1, H, W)`` in ``[0, 1]`` seen as normalized ``(B, C, H, W)``.

    ``(X - mean) / std``, repeated to ``channels`` channels, so a 3-channel (ImageNet-shaped)
    network can be trained on :class:`d2l_utils.data.BatchLoader` batches.  It iterates like
    the loader it wraps (``len``, ``dataset``, ``to``).
    """

    def __init__(self, loader: Any, mean: float, std: float, channels: int = 3) -> None:
        self.loader, self.mean, self.std, self.channels = loader, mean, std, channels

    @property
    def dataset(self) -> Any:
        return self.loader.dataset

    @property
    def generator(self) -> torch.Generator | None:
        """The wrapped loader's shuffling generator (``train_ch6(seed=...)`` restarts it)."""
        return getattr(self.loader, "generator", None)

    def to(self, device: torch.device | str) -> NormalizedLoader:
        mover = getattr(self.loader, "to", None)
        if callable(mover):
            mover(device)
        return self

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for X, y in self.loader:
            yield ((X - self.mean) / self.std).expand(-1, self.channels, -1, -1), y


# --- pretrained weights -----------------------------------------------------------------------


def hub_weights_file(weights: Any) -> Path:
    """Where torchvision keeps ``weights`` (e.g. ``ResNet18_Weights.IMAGENET1K_V1``) once fetched.

    ``$TORCH_HOME/hub/checkpoints/<file name of weights.url>`` (``TORCH_HOME`` defaults to
    ``~/.cache/torch``), e.g. ``resnet18-f37072fd.pth``; the file may not exist.
    """
    name = os.path.basename(urlsplit(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def load_hub_state_dict(weights: Any) -> dict[str, Tensor] | None:
    """The ``state_dict`` of ``weights`` from the torch hub cache, or ``None`` if it is not there.

    Never downloads: offline, a missing file is an answer, not an error.  Read with
    ``weights_only=True`` (tensors only) onto the CPU.
    """
    path = hub_weights_file(weights)
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def resnet_from_state_dict(
    state_dict: dict[str, Tensor], num_classes: int, *, arch: str = "resnet18"
) -> nn.Module:
    """The course's ResNet with a torchvision-layout ``state_dict`` and a new, untrained head.

    The network is built with the ``fc`` size and input channels the ``state_dict`` has, which
    then loads strictly (every tensor, every shape) as a copy: training the result never
    changes ``state_dict``.  Then ``fc`` is replaced by a fresh
    ``nn.Linear(in_features, num_classes)`` drawn from torch's global RNG.
    """
    # Built on the meta device: no memory and no random initialisation that the loaded weights
    # would overwrite anyway (that init costs more than the copy for ResNet-18's 11 M weights).
    with torch.device("meta"):
        net = get_model(
            arch,
            num_classes=state_dict["fc.weight"].shape[0],
            in_channels=state_dict["conv1.weight"].shape[1],
        )
    copies = {k: v.detach().clone() for k, v in state_dict.items()}
    net.load_state_dict(copies, assign=True)  # strict: every name and shape must match
    net.fc = nn.Linear(net.fc.in_features, num_classes, device=copies["fc.weight"].device)
    return net


# --- freezing and parameter groups -----------------------------------------------------------


def freeze(module: nn.Module) -> nn.Module:
    """Stop gradients for every parameter of ``module`` (``requires_grad = False``); returns it."""
    return module.requires_grad_(False)


def set_batchnorm_eval(net: nn.Module) -> int:
    """Put every batch-norm layer of ``net`` in eval mode; returns how many there are.

    In eval mode batch norm normalizes with its stored running statistics and leaves them
    unchanged; ``net.train()`` switches the layers back, so call this after it.
    """
    layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in layers:
        m.eval()
    return len(layers)


def parameter_groups(
    net: nn.Module, lr: float, backbone_lr: float, *, head: str = "fc"
) -> list[dict[str, Any]]:
    """Two optimizer parameter groups: the head's parameters at ``lr``, the rest at ``backbone_lr``.

    Only parameters with ``requires_grad`` are included, and an empty group is left out, so
    the result goes straight to ``torch.optim.SGD(groups, ...)``.
    """
    prefix = head + "."
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    head_params = [p for n, p in trainable if n.startswith(prefix)]
    backbone = [p for n, p in trainable if not n.startswith(prefix)]
    groups = [{"params": backbone, "lr": backbone_lr}, {"params": head_params, "lr": lr}]
    return [g for g in groups if g["params"]]


# --- training that keeps the best epoch -------------------------------------------------------


class BestCheckpoint:
    """Keep the weights of the epoch with the best validation accuracy in one model file.

    The file is :func:`d2l_utils.predict.save_model`'s (the package's one file format, written
    atomically, read with ``weights_only=True``), so ``d2l-predict`` can use it directly.
    ``model_info`` are ``save_model``'s keyword arguments (``arch``, ``arch_kwargs``,
    ``class_names``, ``transform``, ...).
    """

    def __init__(self, path: str | os.PathLike[str], **model_info: Any) -> None:
        self.path = Path(path)
        self.model_info = model_info
        self.best_acc = -math.inf
        self.best_epoch = 0

    def update(self, net: nn.Module, acc: float, epoch: int) -> bool:
        """Save ``net`` if ``acc`` beats every earlier epoch's; returns whether it did."""
        if not acc > self.best_acc:
            return False
        self.best_acc, self.best_epoch = acc, epoch
        save_model(net, self.path, **self.model_info, extra={"val_acc": acc, "epoch": epoch})
        return True


@dataclass
class FitResult:
    """What :func:`fine_tune` measured: validation accuracy per epoch (when evaluated), time."""

    val_acc: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


def _train_epoch(
    net: nn.Module, train_iter: Iterable, optimizer: torch.optim.Optimizer, loss: nn.Module
) -> int:
    device, channels_last = device_of(net), prefers_channels_last(net)
    steps = 0
    for X, y in train_iter:
        X, y = in_layout(X.to(device), channels_last), y.to(device)
        train_step(net, X, y, loss, optimizer)  # train_ch6's step, in fp32
        steps += 1
    return steps


def fine_tune(
    net: nn.Module,
    train_iter: Iterable,
    optimizer: torch.optim.Optimizer,
    num_epochs: int,
    *,
    val_iter: Iterable | None = None,
    frozen_bn: bool = False,
    best: BestCheckpoint | None = None,
) -> FitResult:
    """Train ``net`` for ``num_epochs`` with ``optimizer`` and cross-entropy; no printing.

    Args:
        train_iter: batches ``(X (B, C, H, W), y (B,))``, e.g. a ``DataLoader`` of an
            ``ImageFolder``.
        val_iter: evaluated after every epoch when given (accuracy, in eval mode).
        frozen_bn: keep every batch norm in eval mode while training: it then normalizes with
            the pretrained running statistics and never changes them.
        best: save the epoch with the best validation accuracy there (needs ``val_iter``).
    """
    if best is not None and val_iter is None:
        raise ValueError("best= needs val_iter= to know which epoch is best")
    result, start, loss = FitResult(), time.perf_counter(), nn.CrossEntropyLoss()
    if prefers_channels_last(net):
        net.to(memory_format=torch.channels_last)
    for epoch in range(1, num_epochs + 1):
        net.train()
        if frozen_bn:
            set_batchnorm_eval(net)
        result.steps += _train_epoch(net, train_iter, optimizer, loss)
        if val_iter is not None:
            result.val_acc.append(evaluate_accuracy_gpu(net, val_iter))
            if best is not None:
                best.update(net, result.val_acc[-1], epoch)
    net.eval()
    result.seconds = time.perf_counter() - start
    return result
