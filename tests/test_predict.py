"""The prediction command on a transfer-learning model: image file, model file, class_indices.json.

(The command on a Fashion-MNIST model is tested in test_analysis.py.)
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest
import torch
import torchvision
from PIL import Image

from d2l_utils import predict, transfer
from d2l_utils.resnet import resnet18

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
    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(model), str(png), str(short)])
    assert exit_info.value.code == 2
    assert "2 class names for a model with 5 outputs" in capsys.readouterr().err


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


def test_extra_may_not_replace_what_loading_needs(tmp_path):
    with pytest.raises(ValueError, match="state_dict"):
        predict.save_model(
            resnet18(num_classes=2, in_channels=3), tmp_path / "m.pt", arch="resnet18",
            extra={"state_dict": {}},
        )  # fmt: skip
