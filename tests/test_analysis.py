"""Tests of d2l_utils.analysis and d2l_utils.predict against independent references."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from d2l_utils import analysis, models, predict
from d2l_utils.analysis import (
    classify,
    confusion_matrix,
    load_png,
    misclassified,
    per_class_accuracy,
    plot_confusion_matrix,
    preprocess,
    save_png,
    show_misclassified,
)
from d2l_utils.checkpoint import CheckpointError
from d2l_utils.data import TEXT_LABELS, Profile, load_data_fashion_mnist
from d2l_utils.models import resnet

matplotlib.use("Agg")


def _tiny_net(num_classes: int = 10) -> nn.Module:
    # Batch norm makes train and eval mode give different outputs, so the tests can tell them apart.
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


def _random_pairs(n: int = 500, k: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n,), generator=g)
    # Mostly right, sometimes wrong, so the matrix has both a diagonal and off-diagonal mass.
    noise = torch.randint(0, k, (n,), generator=g)
    preds = torch.where(torch.rand(n, generator=g) < 0.7, labels, noise)
    return preds, labels


def _trained_batchnorm_stats(net: nn.Module, steps: int = 3, side: int = 28) -> None:
    # Give batch norm running statistics that differ from a fresh layer's (0 mean, 1 variance).
    torch.manual_seed(1)
    net.train()
    with torch.no_grad():
        for _ in range(steps):
            net(torch.rand(16, 1, side, side) * 3 + 1)


def test_confusion_matrix_matches_numpy_histogram2d():
    preds, labels = _random_pairs()
    expected, _, _ = np.histogram2d(
        labels.numpy(), preds.numpy(), bins=10, range=[[0, 10], [0, 10]]
    )
    cm = confusion_matrix(preds, labels, 10)
    assert cm.dtype == torch.int64
    torch.testing.assert_close(cm, torch.from_numpy(expected).long())
    assert cm.sum() == len(labels)


def test_confusion_matrix_orientation_rows_are_true_classes():
    cm = confusion_matrix(torch.tensor([2]), torch.tensor([0]), 3)  # a class-0 image called 2
    assert cm.tolist() == [[0, 0, 1], [0, 0, 0], [0, 0, 0]]


def test_confusion_matrix_rejects_bad_input():
    with pytest.raises(ValueError):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]), 3)
    with pytest.raises(ValueError):
        confusion_matrix(torch.tensor([3]), torch.tensor([0]), 3)


def test_per_class_accuracy_matches_masked_means():
    preds, labels = _random_pairs(seed=3)
    acc = per_class_accuracy(preds, labels, 10)
    expected = torch.stack([(preds[labels == c] == c).double().mean() for c in range(10)])
    torch.testing.assert_close(acc, expected)
    # The example-weighted mean of the per-class accuracies is the overall accuracy.
    counts = torch.bincount(labels, minlength=10).double()
    overall = (preds == labels).double().mean()
    torch.testing.assert_close((acc * counts).sum() / counts.sum(), overall)


def test_per_class_accuracy_is_nan_for_an_absent_class():
    acc = per_class_accuracy(torch.tensor([0, 1]), torch.tensor([0, 0]), 3)
    assert acc[0] == 0.5 and torch.isnan(acc[1]) and torch.isnan(acc[2])


def test_misclassified_matches_a_python_loop():
    preds, labels = _random_pairs(seed=5)
    pairs = zip(preds.tolist(), labels.tolist(), strict=True)
    expected = [i for i, (p, y) in enumerate(pairs) if p != y]
    assert misclassified(preds, labels).tolist() == expected


def test_predict_uses_eval_mode_and_restores_the_mode():
    torch.manual_seed(0)
    net = _tiny_net()
    _trained_batchnorm_stats(net)
    X = torch.rand(70, 1, 28, 28)
    y = torch.randint(0, 10, (70,))
    batches = [(X[i : i + 32], y[i : i + 32]) for i in range(0, 70, 32)]  # uneven last batch
    net.train()
    preds, labels = analysis.predict(net, batches)
    assert net.training  # the caller's mode is restored
    net.eval()
    with torch.no_grad():
        expected = net(X).argmax(dim=1)
    assert preds.dtype == torch.int64 and preds.shape == (70,)
    torch.testing.assert_close(preds, expected)
    torch.testing.assert_close(labels, y)
    # ... and eval mode matters here: train-mode predictions are not the same.
    net.train()
    with torch.no_grad():
        assert not torch.equal(net(X).argmax(dim=1), expected)


def test_png_round_trip_is_exact(tmp_path):
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (28, 28), dtype=torch.uint8, generator=g)
    path = save_png(image, tmp_path / "x.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as pil:
        assert (pil.format, pil.mode, pil.size) == ("PNG", "L", (28, 28))
    torch.testing.assert_close(load_png(path), image)
    # A float image in [0, 1] is stored as its nearest grey levels.
    save_png(image.float() / 255, tmp_path / "f.png")
    torch.testing.assert_close(load_png(tmp_path / "f.png"), image)


def test_load_png_converts_colour_to_grey_with_the_itu_r_601_weights(tmp_path):
    g = torch.Generator().manual_seed(1)
    rgb = torch.randint(0, 256, (5, 7, 3), dtype=torch.uint8, generator=g)
    Image.fromarray(rgb.numpy()).save(tmp_path / "c.png")
    grey = load_png(tmp_path / "c.png")
    expected = rgb.double() @ torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
    assert grey.shape == (5, 7) and grey.dtype == torch.uint8
    assert (grey.double() - expected).abs().max() <= 1  # integer rounding only


def test_preprocess_matches_the_data_loader():
    # The bundled sample with no cap on the image size; the test loader is not shuffled, so its
    # first batch holds the first test images in order.
    sample = Profile("sample", None, None, None, None, use_sample=True)
    for resize in (None, 32, 96):
        _, test_iter = load_data_fashion_mnist(4, resize=resize, profile=sample)
        X, _ = next(iter(test_iter))
        for i in range(4):
            x = preprocess(test_iter.dataset.images[i], resize)
            assert x.shape == (1, *X.shape[1:]) and x.dtype == torch.float32
            torch.testing.assert_close(x[0], X[i], rtol=0, atol=0)


def test_preprocess_rejects_float_images():
    with pytest.raises(ValueError, match="uint8"):
        preprocess(torch.rand(28, 28))


def test_classify_matches_softmax_of_the_eval_mode_net():
    torch.manual_seed(0)
    net = _tiny_net()
    _trained_batchnorm_stats(net)
    image = torch.randint(0, 256, (28, 28), dtype=torch.uint8)
    result = classify(net.train(), image, resize=32)
    assert net.training
    net.eval()
    with torch.no_grad():
        probs = torch.softmax(net(preprocess(image, 32)), dim=1)[0]
    assert result.label == int(probs.argmax())
    assert result.name == TEXT_LABELS[result.label]
    assert result.prob == pytest.approx(float(probs.max()), rel=1e-6)


def test_plot_confusion_matrix_draws_row_fractions():
    preds, labels = _random_pairs(seed=7)
    cm = confusion_matrix(preds, labels)
    ax = plot_confusion_matrix(cm)
    shown = torch.from_numpy(np.asarray(ax.get_images()[0].get_array()))
    expected = cm.double() / cm.sum(dim=1, keepdim=True)
    torch.testing.assert_close(shown, expected)
    assert [t.get_text() for t in ax.get_xticklabels()] == list(TEXT_LABELS)
    matplotlib.pyplot.close(ax.figure)


def test_show_misclassified_titles_name_predicted_and_true_classes():
    preds = torch.tensor([0, 1, 2, 9, 4])
    labels = torch.tensor([0, 5, 2, 8, 4])
    images = torch.rand(5, 28, 28)
    axes = show_misclassified(images, preds, labels, num_rows=1, num_cols=2)
    titles = [ax.get_title() for ax in np.ravel(axes)]
    assert titles == ["trouser\n(sandal)", "ankle boot\n(bag)"]
    matplotlib.pyplot.close("all")


@pytest.fixture
def tiny_arch(monkeypatch):
    monkeypatch.setitem(models.MODELS, "tiny", _tiny_net)
    return "tiny"


def test_checkpoint_round_trip_gives_the_same_outputs(tmp_path, tiny_arch):
    torch.manual_seed(0)
    net = _tiny_net(num_classes=10)
    _trained_batchnorm_stats(net)
    path = predict.save_model(
        net, tmp_path / "m.pt", arch=tiny_arch, arch_kwargs={"num_classes": 10}, resize=32
    )
    loaded, checkpoint = predict.load_model(path)
    assert not loaded.training
    assert checkpoint["resize"] == 32 and checkpoint["class_names"] == list(TEXT_LABELS)
    X = torch.rand(8, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), net.eval()(X))


def test_load_model_refuses_pickled_code(tmp_path):
    # weights_only=True must reject anything but plain data, e.g. an arbitrary class instance.
    torch.save({"arch": "tiny", "payload": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not plain data"):
        predict.load_model(tmp_path / "evil.pt")


class _Payload:
    pass


def test_main_prints_the_class_name(tmp_path, tiny_arch, capsys):
    torch.manual_seed(0)
    net = _tiny_net()
    _trained_batchnorm_stats(net)
    model = predict.save_model(net, tmp_path / "m.pt", arch=tiny_arch, resize=32)
    image = torch.randint(0, 256, (28, 28), dtype=torch.uint8)
    png = save_png(image, tmp_path / "x.png")
    assert predict.main([str(model), str(png), "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = classify(net, image, resize=32)
    assert lines[0] == expected.name
    assert len(lines) == 4 and lines[1].split()[-1] == f"{expected.prob:.3f}"


def test_unknown_architecture_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown architecture"):
        predict.save_model(_tiny_net(), tmp_path / "m.pt", arch="no-such-net")


@pytest.mark.parametrize("arch", ["d2l_resnet18", "resnet18"])
def test_course_models_survive_save_and_load(tmp_path, arch):
    torch.manual_seed(0)
    kwargs = {"num_classes": 10, "in_channels": 1}
    net = getattr(resnet, arch)(**kwargs)
    _trained_batchnorm_stats(net, steps=1, side=16)
    path = predict.save_model(net, tmp_path / "m.pt", arch=arch, arch_kwargs=kwargs, resize=32)
    loaded, _ = predict.load_model(path)
    assert type(loaded) is type(net)
    X = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), net.eval()(X), rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["d2l_resnet18", "resnet18", "resnet34", "resnet50"])
def test_every_registered_architecture_builds_the_resnet_module_model(arch):
    kwargs = {"num_classes": 10, "in_channels": 1}
    with torch.device("meta"):  # shapes only, no weights to initialize
        built, reference = models.get_model(arch, **kwargs), getattr(resnet, arch)(**kwargs)
    assert type(built) is type(reference)
    assert [(k, v.shape) for k, v in built.state_dict().items()] == [
        (k, v.shape) for k, v in reference.state_dict().items()
    ]
