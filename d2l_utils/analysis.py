"""Looking at a trained classifier: predictions, per-class accuracy, confusion, mistakes, one image.

Everything here works on plain tensors so it can be checked against independent references: the
predictions come out of :func:`predict` as two int64 vectors, and every other function takes those.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from d2l_utils.data import TEXT_LABELS, resize_batch
from d2l_utils.device import device_of, eval_mode, in_layout, prefers_channels_last
from d2l_utils.plot import show_images

__all__ = [
    "Prediction",
    "class_probabilities",
    "classify",
    "confusion_matrix",
    "load_png",
    "misclassified",
    "per_class_accuracy",
    "plot_confusion_matrix",
    "predict",
    "preprocess",
    "save_png",
    "show_misclassified",
]


@torch.no_grad()
def predict(
    net: nn.Module, data_iter: Iterable[tuple[Tensor, Tensor]], device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """Run ``net`` in eval mode over ``data_iter`` of ``(X (B, C, H, W), y (B,))`` batches.

    Returns:
        ``(preds, labels)``: two int64 CPU tensors of shape ``(N,)``, in the iterator's order.
    """
    device = device_of(net) if device is None else torch.device(device)
    # Convolutional nets get channels-last batches, as in train_ch6's evaluation, so that both
    # run the same float32 kernels and agree to the last prediction on a CPU.
    channels_last = prefers_channels_last(net)  # as train_ch6 runs it
    preds, labels = [], []
    with eval_mode(net):  # batch norm must use its running statistics, as at test time
        for X, y in data_iter:
            X = in_layout(X.to(device), channels_last)
            preds.append(net(X).argmax(dim=1).cpu())
            labels.append(y.cpu())
    if not preds:
        empty = torch.empty(0, dtype=torch.int64)
        return empty, empty.clone()
    return torch.cat(preds).long(), torch.cat(labels).long()


def _check_pair(preds: Tensor, labels: Tensor, num_classes: int) -> None:
    if preds.shape != labels.shape or preds.dim() != 1:
        raise ValueError(
            f"preds and labels must be vectors of one shape, got {tuple(preds.shape)} "
            f"and {tuple(labels.shape)}"
        )
    for name, t in (("preds", preds), ("labels", labels)):
        if t.numel() and (t.min() < 0 or t.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}), got {t.min()}..{t.max()}")


def confusion_matrix(preds: Tensor, labels: Tensor, num_classes: int = 10) -> Tensor:
    """Counts of (true class, predicted class) pairs.

    Args:
        preds, labels: int tensors of shape ``(N,)`` with values in ``[0, num_classes)``.

    Returns:
        int64 tensor ``(num_classes, num_classes)``; row ``i`` = true class ``i``, column ``j`` =
        predicted class ``j``, so the diagonal holds the correct predictions.
    """
    _check_pair(preds, labels, num_classes)
    # One bincount over the flattened (row, column) index instead of a Python loop over pairs.
    flat = labels.long().cpu() * num_classes + preds.long().cpu()
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_accuracy(preds: Tensor, labels: Tensor, num_classes: int = 10) -> Tensor:
    """Fraction of each true class predicted correctly (the recall per class).

    Returns:
        float64 tensor ``(num_classes,)``; ``nan`` for a class with no example.
    """
    cm = confusion_matrix(preds, labels, num_classes).double()
    return cm.diagonal() / cm.sum(dim=1)


def misclassified(preds: Tensor, labels: Tensor) -> Tensor:
    """Indices (int64, ascending) of the examples where ``preds != labels``."""
    if preds.shape != labels.shape:
        raise ValueError(f"shape mismatch: {tuple(preds.shape)} vs {tuple(labels.shape)}")
    return torch.nonzero(preds.cpu() != labels.cpu()).flatten()


def plot_confusion_matrix(
    cm: Tensor,
    class_names: Sequence[str] = TEXT_LABELS,
    *,
    normalize: bool = True,
    ax=None,
):
    """Draw a confusion matrix as a heat map with the numbers written in the cells.

    Args:
        cm: ``(K, K)`` counts from :func:`confusion_matrix` (rows true, columns predicted).
        normalize: show each row as fractions of its class (rows then sum to 1), which keeps the
            colours comparable when classes have different sizes.

    Returns:
        The matplotlib ``Axes``.
    """
    import matplotlib.pyplot as plt

    cm = cm.detach().cpu().double()
    values = cm / cm.sum(dim=1, keepdim=True).clamp_min(1) if normalize else cm
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(values.numpy(), cmap="Blues", vmin=0)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    k = cm.shape[0]
    ax.set_xticks(range(k), labels=class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), labels=class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    threshold = values.max().item() / 2
    for i in range(k):
        for j in range(k):
            v = values[i, j].item()
            text = f"{v:.2f}" if normalize else f"{int(v)}"
            if float(text) == 0:
                continue  # cells that read as 0 stay blank, so the real mistakes stand out
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if v > threshold else "black")  # fmt: skip
    return ax


def show_misclassified(
    images: Tensor,
    preds: Tensor,
    labels: Tensor,
    num_rows: int = 3,
    num_cols: int = 8,
    class_names: Sequence[str] = TEXT_LABELS,
    scale: float = 1.5,
):
    """Grid of the first ``num_rows * num_cols`` misclassified images, titled ``pred / true``.

    Args:
        images: ``(N, H, W)`` or ``(N, 1, H, W)`` images aligned with ``preds`` and ``labels (N,)``.

    Returns:
        The axes from :func:`d2l_utils.plot.show_images`.
    """
    idx = misclassified(preds, labels)[: num_rows * num_cols]
    imgs = images[idx]
    if imgs.dim() == 4:
        imgs = imgs[:, 0]
    titles = [f"{class_names[int(preds[i])]}\n({class_names[int(labels[i])]})" for i in idx]
    axes = show_images(imgs.cpu(), num_rows, num_cols, titles=titles, scale=scale)
    for ax in axes:
        ax.title.set_fontsize(9)
    axes[0].figure.tight_layout()  # room for the two-line titles between the rows
    return axes


def save_png(image: Tensor, path: str | Path) -> Path:
    """Write a grey-scale image to a PNG file.

    Args:
        image: uint8 ``(H, W)`` or ``(1, H, W)``, or float in ``[0, 1]`` of those shapes.
    """
    from PIL import Image

    image = image.detach().cpu()
    if image.dtype.is_floating_point:
        image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    if image.dim() == 2:
        image = image.unsqueeze(0)
    if image.dim() != 3 or image.shape[0] != 1 or image.dtype != torch.uint8:
        raise ValueError(f"expected a grey-scale (H, W) or (1, H, W) image, got {image.shape}")
    path = Path(path)
    Image.fromarray(image[0].numpy()).save(path, format="PNG")
    return path


def load_png(path: str | Path) -> Tensor:
    """Read an image file as grey-scale uint8 ``(H, W)`` (colour images are converted)."""
    from PIL import Image

    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("L")))


def preprocess(image: Tensor, resize: int | None = None) -> Tensor:
    """Turn one grey-scale image into a batch of one, exactly as the Fashion-MNIST loader does.

    Args:
        image: uint8 ``(H, W)`` or ``(1, H, W)``.
        resize: side in pixels of the model's training images (``None``: keep the size).

    Returns:
        float32 ``(1, 1, resize, resize)`` in ``[0, 1]``.
    """
    if image.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 image (0-255), got {image.dtype}")
    # The loader's own function, so a file is seen exactly as the test images were in training.
    size = None if resize is None else (resize, resize)
    return resize_batch(image.reshape(1, *image.shape[-2:]), size)


class Prediction(NamedTuple):
    """One classified image: class index, class name, and the softmax probability of that class."""

    label: int
    name: str
    prob: float


@torch.no_grad()
def class_probabilities(net: nn.Module, image: Tensor, *, resize: int | None = None) -> Tensor:
    """Softmax probabilities ``(num_classes,)`` of one uint8 image ``(H, W)``, in eval mode.

    ``resize`` is the side of the images the net was trained on (see :func:`preprocess`).
    """
    with eval_mode(net):  # one image is no batch: batch norm must use its running statistics
        logits = net(preprocess(image, resize).to(device_of(net)))[0]
    return logits.float().softmax(dim=0).cpu()


def classify(
    net: nn.Module,
    image: Tensor,
    *,
    resize: int | None = None,
    class_names: Sequence[str] = TEXT_LABELS,
) -> Prediction:
    """Classify one uint8 image ``(H, W)``: the most likely class and its probability."""
    probs = class_probabilities(net, image, resize=resize)
    label = int(probs.argmax())
    return Prediction(label, class_names[label], float(probs[label]))
