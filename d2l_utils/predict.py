"""Classify one image file with a saved model.

Usage::

    python -m d2l_utils.predict MODEL.pt IMAGE.png [class_indices.json] [--top K]
    d2l-predict MODEL.pt IMAGE.png [class_indices.json] [--top K]

``MODEL.pt`` is a file written by :func:`save_model`, of kind ``"model"`` in the package's one
file format (:mod:`d2l_utils.checkpoint`): the architecture's name for
:func:`~d2l_utils.models.get_model` and its arguments, how to preprocess an image, the class
names and the ``state_dict``, all plain data.  It is written atomically and read with
``weights_only=True``, so a file from an untrusted source cannot run code while it is loaded.  A
``class_indices.json`` (index -> class name, see :func:`save_class_indices`) overrides the class
names saved in the model.

This module holds everything the command reads: the model file, the image (refused before it is
decoded when it is too large to be a photograph), the validation view :func:`eval_transform` a
model file may name, and ``class_indices.json``.  A bad file ends the command with one line that
names it and says what is wrong, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from d2l_utils.analysis import class_probabilities
from d2l_utils.checkpoint import KINDS, CheckpointError, load_checkpoint, save_checkpoint
from d2l_utils.data import TEXT_LABELS
from d2l_utils.device import device_of, eval_mode
from d2l_utils.models import get_model

__all__ = [
    "MAX_PIXELS",
    "InputError",
    "eval_transform",
    "image_probabilities",
    "load_class_indices",
    "load_model",
    "main",
    "read_image",
    "save_class_indices",
    "save_model",
    "to_normalized_tensor",
]

# What a model file's state holds besides save_model's extra=.
MODEL_KEYS = ("arch", "arch_kwargs", "resize", "class_names", "transform", "state_dict")
# More pixels than any camera takes (a 50-megapixel photograph is already rare): such a file is
# refused from the size in its header, before gigabytes are spent decoding it.
MAX_PIXELS = 50_000_000


class InputError(ValueError):
    """An image or ``class_indices.json`` that cannot be used; the message names the file."""


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- the model file ---------------------------------------------------------------------------


def _fitted(arch: str, arch_kwargs: dict[str, Any], state_dict: Any, meta: bool) -> nn.Module:
    """``get_model(arch, **arch_kwargs)`` with ``state_dict`` loaded strictly (names and shapes).

    ``meta=True`` builds on the meta device and assigns the tensors: a check that costs no
    memory and no initialisation.
    """
    with torch.device("meta") if meta else contextlib.nullcontext():
        net = get_model(arch, **arch_kwargs)
    net.load_state_dict(state_dict, assign=meta)
    return net


def save_model(
    net: nn.Module,
    path: str | os.PathLike[str],
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
        arch: a name :func:`d2l_utils.models.get_model` knows; ``arch_kwargs`` go to it when
            loading.  ``get_model(arch, **arch_kwargs)`` must have ``net``'s parameter names and
            shapes, so that the file can be loaded: it is checked before anything is written.
        resize: side in pixels of the grey images the net was trained on (``None``: 28,
            unchanged), for nets fed like the Fashion-MNIST loader feeds them.
        transform: instead, the keyword arguments of :func:`eval_transform` (``size``, ``mean``,
            ``std``, ``crop_ratio``): the validation view of an ``ImageFolder`` pipeline.
        extra: more plain data to keep in the file (e.g. the epoch and its accuracy).
    """
    clash = sorted(set(extra or {}) & set(MODEL_KEYS))
    if clash:
        raise ValueError(f"extra= may not replace {', '.join(clash)}")
    arch_kwargs = dict(arch_kwargs or {})
    # On the CPU, so the file loads on a machine without the training device.
    state_dict = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    try:
        _fitted(arch, arch_kwargs, state_dict, meta=True)  # unknown arch: get_model's ValueError
    except RuntimeError as exc:
        raise ValueError(
            f"net does not fit get_model({arch!r}, **{arch_kwargs}), so the file could not be "
            f"loaded: {_one_line(exc)}"
        ) from exc
    saved = {
        "arch": arch,
        "arch_kwargs": arch_kwargs,
        "resize": resize,
        "class_names": list(class_names),
        "transform": None if transform is None else dict(transform),
        **dict(extra or {}),
        "state_dict": state_dict,
    }
    return save_checkpoint(path, saved, "model")


def load_model(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model written by :func:`save_model`, on the CPU, in eval mode.

    Returns:
        ``(net, saved)``: ``saved`` is the whole state (``arch``, ``resize``, ``class_names``, ...).

    Raises:
        CheckpointError: one line naming the file, if it is not a model file of
            :func:`save_model` or its weights do not fit the architecture it names.
    """
    saved = load_checkpoint(path, "model", required=MODEL_KEYS)
    try:
        net = _fitted(saved["arch"], saved["arch_kwargs"], saved["state_dict"], meta=False)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(
            f"model file {path} cannot be rebuilt as {saved['arch']!r} ({_one_line(exc)}); "
            f"{KINDS['model'][2]}"
        ) from exc
    return net.eval(), saved


# --- the image --------------------------------------------------------------------------------


def read_image(path: str | os.PathLike[str], mode: str = "RGB") -> Image.Image:
    """An image file decoded and converted to PIL ``mode`` (``"RGB"``, or ``"L"`` for grey).

    Raises:
        InputError: one line naming the file, if it is missing, not an image, damaged, or has
            more than :data:`MAX_PIXELS` pixels (refused before decoding, from its header).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image {path} {'is a folder' if path.is_dir() else 'does not exist'}")
    too_large = f"image {path} has more than {MAX_PIXELS:,} pixels, too many for a photograph"
    try:
        with warnings.catch_warnings():
            # PIL only warns below twice its own limit; a warning is as much a refusal.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:  # reads the header only
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise InputError(f"{too_large} ({width} x {height}); not decoded")
                return image.convert(mode)  # decodes, into an image independent of the file
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"{too_large}; not decoded") from exc
    except Image.UnidentifiedImageError as exc:
        raise InputError(f"image {path} is not an image file PIL can read") from exc
    except InputError:
        raise
    except Exception as exc:  # a damaged file fails in many ways while it is decoded
        raise InputError(f"image {path} is damaged ({_one_line(exc)})") from exc


def to_normalized_tensor(mean: Sequence[float], std: Sequence[float]) -> list[Any]:
    """The last steps of every view: PIL image -> float ``[0, 1]`` -> ``(x - mean) / std``."""
    from torchvision.transforms import v2  # torchvision loads slowly; only the views need it

    return [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),  # uint8 0..255 -> float 0..1, as ToTensor
        v2.Normalize(list(mean), list(std)),
    ]


def eval_transform(
    size: int, mean: Sequence[float], std: Sequence[float], *, crop_ratio: float = 0.875
):
    """Deterministic validation view: 3 grey channels, resize, centre crop, normalize.

    The image is resized to ``round(size / crop_ratio)`` and its centre ``size x size`` is kept
    (ImageNet's 256 -> 224 is ``crop_ratio = 0.875``); returns float ``(3, size, size)``.  A model
    file's ``transform`` holds these arguments (see :mod:`d2l_utils.transfer`).
    """
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.Grayscale(num_output_channels=3),
            v2.Resize(round(size / crop_ratio), antialias=True),
            v2.CenterCrop(size),
            *to_normalized_tensor(mean, std),
        ]
    )


@torch.no_grad()
def image_probabilities(
    net: nn.Module, saved: dict[str, Any], image: str | os.PathLike[str]
) -> torch.Tensor:
    """Softmax probabilities ``(num_classes,)`` of one image file, preprocessed as ``saved`` says.

    With a saved ``transform`` the file is read as ``ImageFolder`` reads it (RGB) and goes
    through :func:`eval_transform`; without one it is read as grey-scale and resized as the
    Fashion-MNIST loader resizes (:func:`d2l_utils.analysis.preprocess`).
    """
    if not saved.get("transform"):
        grey = torch.from_numpy(np.array(read_image(image, "L")))
        return class_probabilities(net, grey, resize=saved["resize"])
    X = eval_transform(**saved["transform"])(read_image(image, "RGB")).unsqueeze(0)
    with eval_mode(net):  # one image is no batch: batch norm must use its running statistics
        return net(X.to(device_of(net)))[0].float().softmax(dim=0).cpu()


# --- class_indices.json -----------------------------------------------------------------------


def save_class_indices(path: str | os.PathLike[str], class_to_idx: dict[str, int]) -> Path:
    """Write ``{"0": name, "1": name, ...}`` (index -> class name) as JSON.

    ``class_to_idx`` is ``ImageFolder``'s map (class name -> index); the file holds it the
    other way round, since a prediction script needs the name of output ``i``.
    """
    indices = sorted(class_to_idx.values())
    if indices != list(range(len(indices))):
        raise ValueError(f"class indices must be 0..K-1 once each, got {indices}")
    table = {str(i): name for name, i in sorted(class_to_idx.items(), key=lambda kv: kv[1])}
    path = Path(path)
    path.write_text(json.dumps(table, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def load_class_indices(path: str | os.PathLike[str]) -> list[str]:
    """The class names of a ``class_indices.json``, in index order (name of output ``i``).

    Raises:
        InputError: one line naming the file, if it cannot be read, is not JSON, or does not
            map the indices ``"0"``..``"K-1"`` to class names (strings).
    """
    where = f"class_indices {path}"
    try:
        table = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{where} cannot be read ({exc.strerror or exc})") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise InputError(f"{where} is not valid JSON ({_one_line(exc)})") from exc
    keys = [str(i) for i in range(len(table))] if isinstance(table, dict) else None
    if not table or keys is None or sorted(table) != sorted(keys):
        raise InputError(f"{where} must map the indices '0'..'K-1' to class names")
    names = [table[k] for k in keys]
    if not all(isinstance(name, str) for name in names):
        raise InputError(f"{where} must map each index to a class name (a string)")
    return names


# --- the command ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Print the predicted class name of an image file (then the ``--top`` K classes).

    A bad file ends it with exit status 2 and one line on stderr naming the file.
    """
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

    try:
        net, saved = load_model(args.model)
        names, source = saved["class_names"], f"model file {args.model}"
        if args.class_indices is not None:
            names, source = load_class_indices(args.class_indices), str(args.class_indices)
        probs = image_probabilities(net, saved, args.image)
        if len(names) != len(probs):
            raise InputError(
                f"{source}: {len(names)} class names for a model with {len(probs)} outputs"
            )
    except (CheckpointError, InputError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    print(names[int(probs.argmax())])
    if args.top > 1:
        top = probs.topk(min(args.top, len(names)))
        for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            print(f"  {names[i]:<12} {p:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
