"""The prediction command on a transfer-learning model: image file, model file, class_indices.json.

Every bad input file ends the command with exit status 2 and one line on stderr that names the
file: never a traceback.  (The command on a Fashion-MNIST model is tested in test_analysis.py.)
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import pickle
import struct
import subprocess
import sys
import zlib

import pytest
import torch
import torchvision
from PIL import Image

from d2l_utils import predict, transfer
from d2l_utils.checkpoint import save_checkpoint
from d2l_utils.models.resnet import resnet18

MEAN, STD = [0.3, 0.3, 0.3], [0.35, 0.35, 0.35]
CLASSES = {"ankle boot": 0, "bag": 1, "sandal": 2, "shirt": 3, "sneaker": 4}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A ResNet-18 with trained-looking BN statistics, its model file, a PNG, class indices."""
    folder = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    net = resnet18(num_classes=5, in_channels=3)
    net.train()
    with torch.no_grad():
        for _ in range(3):  # move the running statistics away from their initial 0 and 1
            net(torch.randn(16, 3, 32, 32) * 0.8 + 0.1)
        net.fc.weight.mul_(30)  # spread the probabilities so the ranking is clear
    net.eval()
    model = predict.save_model(
        net,
        folder / "best.pt",
        arch="resnet18",
        arch_kwargs={"num_classes": 5, "in_channels": 3},
        class_names=[f"class {i}" for i in range(5)],
        transform={"size": 32, "mean": MEAN, "std": STD},
    )
    image = torch.randint(0, 256, (28, 28), dtype=torch.uint8, generator=torch.Generator())
    png = transfer.write_image_folder(folder / "val", image[None], torch.tensor([0]), ["bag"])[0]
    indices = transfer.save_class_indices(folder / "class_indices.json", CLASSES)
    return net, model, png, indices


def _reference_probabilities(net, png) -> torch.Tensor:
    """The classic torchvision (v1) validation pipeline, written out independently."""
    view = torchvision.transforms.Compose(
        [
            torchvision.transforms.Resize(37),  # 32 / 0.875
            torchvision.transforms.CenterCrop(32),
            torchvision.transforms.ToTensor(),
            torchvision.transforms.Normalize(MEAN, STD),
        ]
    )
    with Image.open(png) as image, torch.no_grad():
        return net.eval()(view(image.convert("RGB"))[None])[0].softmax(0)


def test_predict_prints_the_top_k_names_from_class_indices(files, capsys):
    net, model, png, indices = files
    assert predict.main([str(model), str(png), str(indices), "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = sorted(CLASSES, key=CLASSES.get)
    probs = _reference_probabilities(net, png)
    top = probs.topk(3)
    assert lines[0] == names[int(probs.argmax())]
    assert len(lines) == 4
    for line, p, i in zip(lines[1:], top.values.tolist(), top.indices.tolist(), strict=True):
        name, value = line.strip().rsplit(" ", 1)
        assert name.strip() == names[i] and value == f"{p:.3f}"


def test_without_class_indices_the_saved_names_are_used(files, capsys):
    net, model, png, _ = files
    assert predict.main([str(model), str(png)]) == 0
    probs = _reference_probabilities(net, png)
    assert capsys.readouterr().out == f"class {int(probs.argmax())}\n"


def test_image_probabilities_match_the_reference(files):
    net, model, png, _ = files
    loaded, saved = predict.load_model(model)
    torch.testing.assert_close(
        predict.image_probabilities(loaded, saved, png), _reference_probabilities(net, png)
    )


def test_class_indices_of_the_wrong_length_are_refused(files, tmp_path, capsys):
    _, model, png, _ = files
    short = transfer.save_class_indices(tmp_path / "c.json", {"a": 0, "b": 1})
    line = _refused([model, png, short], capsys)
    assert line.endswith(f"{short}: 2 class names for a model with 5 outputs")


def test_the_d2l_predict_entry_point_is_this_main():
    (script,) = [
        ep for ep in importlib.metadata.entry_points(group="console_scripts")
        if ep.name == "d2l-predict"
    ]  # fmt: skip
    assert script.load() is predict.main


def test_python_dash_m_runs_the_command(files):
    net, model, png, indices = files
    result = subprocess.run(
        [sys.executable, "-m", "d2l_utils.predict", str(model), str(png), str(indices)],
        capture_output=True,
        text=True,
        check=True,
    )
    names = sorted(CLASSES, key=CLASSES.get)
    assert result.stdout == names[int(_reference_probabilities(net, png).argmax())] + "\n"


def test_a_net_that_does_not_fit_its_architecture_is_not_saved(tmp_path):
    net = resnet18(num_classes=2, in_channels=3)
    with pytest.raises(ValueError, match=r"net does not fit get_model\('resnet18', \*\*\{\}\)"):
        predict.save_model(net, tmp_path / "m.pt", arch="resnet18")  # 1000 classes by default
    with pytest.raises(ValueError, match="unknown architecture 'vgg11'"):
        predict.save_model(net, tmp_path / "m.pt", arch="vgg11")
    assert not list(tmp_path.iterdir())


def test_extra_may_not_replace_what_loading_needs(tmp_path):
    with pytest.raises(ValueError, match="state_dict"):
        predict.save_model(
            resnet18(num_classes=2, in_channels=3), tmp_path / "m.pt", arch="resnet18",
            extra={"state_dict": {}},
        )  # fmt: skip


# --- bad input: one line naming the file, exit status 2 ----------------------------------------


def _refused(argv, capsys) -> str:
    """Run the command on ``argv``; assert it fails with one line on stderr and return it."""
    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("python -m d2l_utils.predict: error: ")
    return err.rstrip("\n")


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header says ``width x height`` grey pixels, with no pixel data at all."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8).numpy()).save(buffer, fmt)
    return buffer.getvalue()


class _Custom:
    """Any class of the caller's: weights_only loading refuses it."""


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("missing.png", None, "does not exist"),
        ("notes.txt", b"shopping list\n", "is not an image file PIL can read"),
        ("cut.png", "PNG", "is damaged (image file is truncated)"),
        ("cut.jpg", "JPEG", "is damaged ("),
        ("big.png", _png_claiming(8000, 8000), "pixels, too many for a photograph (8000 x 8000)"),
        ("bigger.png", _png_claiming(10_000, 10_000), "pixels, too many for a photograph"),
        ("bomb.png", _png_claiming(20_000, 20_000), "pixels, too many for a photograph"),
    ],
)
def test_a_bad_image_is_refused_in_one_line(files, tmp_path, capsys, name, data, message):
    _, model, _, _ = files
    image = tmp_path / name
    if isinstance(data, str):  # a real image of that format, cut in half
        whole = _encoded(data)
        data = whole[: len(whole) // 2]
    if data is not None:
        image.write_bytes(data)
    line = _refused([model, image], capsys)
    assert line.startswith(f"python -m d2l_utils.predict: error: image {image} ")
    assert message in line


def _bad_models() -> dict[str, tuple[object, str]]:
    net = resnet18(num_classes=5, in_channels=3)
    good = {"arch": "resnet18", "arch_kwargs": {"num_classes": 5, "in_channels": 3},
            "resize": None, "class_names": list("abcde"), "transform": None,
            "state_dict": net.state_dict()}  # fmt: skip
    return {
        "missing": (None, "does not exist"),
        "a folder": ("folder", "is a folder"),
        "text": (b"not a model\n", "is not a file written by torch.save"),
        "a train_ch6 checkpoint": (
            ("train_ch6", {"epoch": 1}),
            "is a train_ch6 checkpoint, not a model file",
        ),
        "a bare state_dict": (
            net.state_dict(),
            "not a d2l_utils file (it holds a bare state_dict)",
        ),
        "a custom object": (_Custom(), "test_predict._Custom, which is not plain data"),
        "a pickle": (pickle.dumps(_Custom()), "is not a file written by torch.save"),
        "keys missing": (("model", {"arch": "resnet18"}), "lacks arch_kwargs, class_names"),
        "unknown arch": (("model", {**good, "arch": "vgg11"}), "cannot be rebuilt as 'vgg11'"),
        "weights that do not fit": (
            ("model", {**good, "arch_kwargs": {"num_classes": 7, "in_channels": 3}}),
            "cannot be rebuilt as 'resnet18' (Error(s) in loading state_dict for ResNet: size "
            "mismatch for fc.weight",
        ),
    }


@pytest.mark.parametrize("case", list(_bad_models()))
def test_a_bad_model_file_is_refused_in_one_line(files, tmp_path, capsys, case):
    _, _, png, _ = files
    content, message = _bad_models()[case]
    model = tmp_path / "model.pt"
    if content == "folder":
        model.mkdir()
    elif isinstance(content, bytes):
        model.write_bytes(content)
    elif isinstance(content, tuple):
        save_checkpoint(model, content[1], content[0])
    elif content is not None:
        torch.save(content, model)
    line = _refused([model, png], capsys)
    assert line.startswith(f"python -m d2l_utils.predict: error: model file {model} ")
    assert message in line


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "cannot be read (No such file or directory)"),
        ('{"0": "bag", "1": ', "is not valid JSON (Expecting value: line 1 column 19"),
        (b"\xff\xfe\x00", "is not valid JSON"),
        ('["bag", "shirt"]', "must map the indices '0'..'K-1' to class names"),
        ("{}", "must map the indices '0'..'K-1' to class names"),
        ('{"bag": 0, "shirt": 1}', "must map the indices '0'..'K-1' to class names"),
        ('{"1": "bag", "2": "shirt"}', "must map the indices '0'..'K-1' to class names"),
        ('{"0": 3, "1": 4}', "must map each index to a class name (a string)"),
    ],
    ids=["missing", "cut", "binary", "list", "empty", "name to index", "from 1", "numbers"],
)
def test_a_bad_class_indices_file_is_refused_in_one_line(files, tmp_path, capsys, text, message):
    _, model, png, _ = files
    path = tmp_path / "class_indices.json"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    line = _refused([model, png, path], capsys)
    assert line.startswith(f"python -m d2l_utils.predict: error: class_indices {path} ")
    assert message in line


def test_class_indices_that_are_valid_json_are_read_in_index_order(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"1": "shirt", "0": "bag"}))
    assert predict.load_class_indices(path) == ["bag", "shirt"]


def test_the_command_line_answers_a_text_file_in_one_line(files, tmp_path):
    # The console script's way: a new interpreter, its exit status and stderr as a user sees them.
    _, model, _, _ = files
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    result = subprocess.run(
        [sys.executable, "-m", "d2l_utils.predict", str(model), str(notes)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (
        f"python -m d2l_utils.predict: error: image {notes} is not an image file PIL can read\n"
    )
