"""Classify one image file with a saved model.

Usage::

    python -m d2l_utils.predict MODEL.pt IMAGE.png [class_indices.json] [--top K]
    d2l-predict MODEL.pt IMAGE.png [class_indices.json] [--top K]

``MODEL.pt`` is a file written by :func:`save_model`: a plain dict of strings, numbers and tensors
(architecture name and arguments, how to preprocess an image, class names, ``state_dict``).  It
is written atomically (a crash leaves the old file or the new one, never half of one) and read
with ``torch.load(..., weights_only=True)``, which unpickles only such plain data, so a file from
an untrusted source cannot run code while it is loaded (a full unpickler would run whatever the
file tells it to).  A ``class_indices.json`` (index -> class name, see
:func:`d2l_utils.transfer.save_class_indices`) overrides the class names saved in the model.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from d2l_utils.analysis import class_probabilities, load_png
from d2l_utils.checkpoint import save_checkpoint
from d2l_utils.data import TEXT_LABELS

__all__ = [
    "ARCHITECTURES",
    "build_model",
    "image_probabilities",
    "load_model",
    "main",
    "save_model",
]


def _resnet(name: str) -> Callable[..., nn.Module]:
    def factory(**kwargs: Any) -> nn.Module:
        # Imported on use, so the script starts without importing every model module.
        from d2l_utils import resnet

        return getattr(resnet, name)(**kwargs)

    return factory


# The architectures a saved model may name; each factory takes the saved keyword arguments.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    name: _resnet(name)
    for name in ("d2l_resnet18", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
}


def build_model(arch: str, **kwargs: Any) -> nn.Module:
    """A fresh model of a registered architecture (a key of ``ARCHITECTURES``)."""
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[arch](**kwargs)


def save_model(
    net: nn.Module,
    path: str | Path,
    *,
    arch: str,
    arch_kwargs: dict[str, Any] | None = None,
    resize: int | None = None,
    class_names: Sequence[str] = TEXT_LABELS,
    transform: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save ``net``'s weights with what is needed to rebuild it and feed it an image.

    Args:
        arch: a key of ``ARCHITECTURES``; ``arch_kwargs`` go to its factory when loading.
        resize: side in pixels of the grey images the net was trained on (``None``: 28,
            unchanged), for nets fed like the Fashion-MNIST loader feeds them.
        transform: instead, the keyword arguments of
            :func:`d2l_utils.transfer.eval_transform` (``size``, ``mean``, ``std``,
            ``crop_ratio``): the validation view of an ``ImageFolder`` pipeline.
        extra: more plain data to keep in the file (e.g. the epoch and its accuracy).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        )
    clash = sorted(set(extra or {}) & {"arch", "arch_kwargs", "resize", "class_names",
                                         "transform", "state_dict"})  # fmt: skip
    if clash:
        raise ValueError(f"extra= may not replace {', '.join(clash)}")
    saved = {
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs or {}),
        "resize": resize,
        "class_names": list(class_names),
        "transform": None if transform is None else dict(transform),
        **dict(extra or {}),
        # On the CPU, so the file loads on a machine without the training device.
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
    }
    path = Path(path)
    save_checkpoint(path, saved)  # atomic, and read back with weights_only=True before renaming
    return path


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model written by :func:`save_model`, on the CPU, in eval mode.

    Returns:
        ``(net, saved)``: ``saved`` is the whole dict (``arch``, ``resize``, ``class_names``, ...).
    """
    saved = torch.load(path, map_location="cpu", weights_only=True)
    net = build_model(saved["arch"], **saved["arch_kwargs"])
    net.load_state_dict(saved["state_dict"])  # strict: every key and every shape must match
    return net.eval(), saved


@torch.no_grad()
def image_probabilities(net: nn.Module, saved: dict[str, Any], image: str | Path) -> torch.Tensor:
    """Softmax probabilities ``(num_classes,)`` of one image file, preprocessed as ``saved`` says.

    With a saved ``transform`` the file is read as ``ImageFolder`` reads it (PIL, RGB) and goes
    through :func:`d2l_utils.transfer.eval_transform`; without one it is read as grey-scale and
    resized as the Fashion-MNIST loader resizes (:func:`d2l_utils.analysis.preprocess`).
    """
    if not saved.get("transform"):
        return class_probabilities(net, load_png(image), resize=saved["resize"])
    from PIL import Image

    from d2l_utils.transfer import eval_transform

    with Image.open(image) as pil:
        X = eval_transform(**saved["transform"])(pil.convert("RGB")).unsqueeze(0)
    was_training = net.training
    net.eval()  # one image is no batch: batch norm must use its running statistics
    try:
        return net(X)[0].float().softmax(dim=0)
    finally:
        net.train(was_training)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the predicted class name of an image file (then the ``--top`` K classes)."""
    parser = argparse.ArgumentParser(
        prog="python -m d2l_utils.predict", description="Classify an image file."
    )
    parser.add_argument("model", type=Path, help="a model file written by save_model")
    parser.add_argument("image", type=Path, help="an image file (PNG, JPEG, ...)")
    parser.add_argument(
        "class_indices", type=Path, nargs="?", help="class_indices.json (index -> class name)"
    )
    parser.add_argument("--top", type=int, default=1, metavar="K", help="list the K likeliest")
    args = parser.parse_args(argv)

    net, saved = load_model(args.model)
    names = saved["class_names"]
    if args.class_indices is not None:
        from d2l_utils.transfer import load_class_indices

        names = load_class_indices(args.class_indices)
    probs = image_probabilities(net, saved, args.image)
    if len(names) != len(probs):
        parser.error(f"{len(names)} class names for a model with {len(probs)} outputs")
    print(names[int(probs.argmax())])
    if args.top > 1:
        top = probs.topk(min(args.top, len(names)))
        for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            print(f"  {names[i]:<12} {p:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
