"""Classify one image file with a saved model.

Usage::

    python -m d2l_utils.predict MODEL.pt IMAGE.png [--top K]

``MODEL.pt`` is a file written by :func:`save_model`: a plain dict of strings, numbers and tensors
(architecture name and arguments, training image size, class names, ``state_dict``).  It is read
with ``torch.load(..., weights_only=True)``, which unpickles only such plain data, so a file from
an untrusted source cannot run code while it is loaded (a full unpickler would run whatever the
file tells it to).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from d2l_utils.analysis import class_probabilities, load_png
from d2l_utils.data import TEXT_LABELS

__all__ = ["ARCHITECTURES", "build_model", "load_model", "main", "save_model"]


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
) -> Path:
    """Save ``net``'s weights with what is needed to rebuild it and feed it an image.

    Args:
        arch: a key of ``ARCHITECTURES``; ``arch_kwargs`` go to its factory when loading.
        resize: side in pixels of the images the net was trained on (``None``: 28, unchanged).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        )
    saved = {
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs or {}),
        "resize": resize,
        "class_names": list(class_names),
        # On the CPU, so the file loads on a machine without the training device.
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(saved, path)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Print the predicted class name of an image file (then the ``--top`` K classes)."""
    parser = argparse.ArgumentParser(
        prog="python -m d2l_utils.predict", description="Classify a grey-scale image file."
    )
    parser.add_argument("model", type=Path, help="a model file written by save_model")
    parser.add_argument("image", type=Path, help="an image file (PNG, JPEG, ...)")
    parser.add_argument("--top", type=int, default=1, metavar="K", help="list the K likeliest")
    args = parser.parse_args(argv)

    net, saved = load_model(args.model)
    names = saved["class_names"]
    probs = class_probabilities(net, load_png(args.image), resize=saved["resize"])
    print(names[int(probs.argmax())])
    if args.top > 1:
        top = probs.topk(min(args.top, len(names)))
        for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            print(f"  {names[i]:<12} {p:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
