"""Tests of d2l_utils.transfer: the image folder, hub weights, freezing, parameter groups."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import ResNet18_Weights
from torchvision.transforms import v2

from d2l_utils import predict, transfer
from d2l_utils.models.resnet import resnet18
from d2l_utils.predict import load_model

NAMES = ["sandal", "shirt", "ankle boot"]


def _images(n: int = 12, side: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, side, side), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % len(NAMES)
    return images, labels


# --- the image folder --------------------------------------------------------------------------


def test_image_folder_layout_and_class_indices(tmp_path):
    images, labels = _images()
    paths = transfer.write_image_folder(tmp_path / "train", images, labels, NAMES)
    assert len(paths) == len(images)
    for name in NAMES:
        files = sorted(p.name for p in (tmp_path / "train" / name).iterdir())
        assert files == [f"{i:05d}.png" for i in range(4)]
    for path, label in zip(paths, labels.tolist(), strict=True):
        assert path.parent.name == NAMES[label]

    folder = torchvision.datasets.ImageFolder(tmp_path / "train")
    # ImageFolder numbers the classes in sorted folder-name order, not in the order we used.
    assert folder.class_to_idx == {"ankle boot": 0, "sandal": 1, "shirt": 2}
    assert folder.classes == sorted(NAMES)
    indices = transfer.save_class_indices(tmp_path / "class_indices.json", folder.class_to_idx)
    assert json.loads(indices.read_text()) == {"0": "ankle boot", "1": "sandal", "2": "shirt"}
    assert predict.load_class_indices(indices) == folder.classes


def test_png_round_trip_gives_back_the_tensors(tmp_path):
    images, labels = _images()
    paths = transfer.write_image_folder(tmp_path, images, labels, NAMES)
    folder = torchvision.datasets.ImageFolder(tmp_path, transform=v2.PILToTensor())
    by_path = {str(p): i for i, p in enumerate(paths)}
    assert sorted(by_path) == sorted(path for path, _ in folder.samples)
    for (path, target), (x, y) in zip(folder.samples, folder, strict=True):
        i = by_path[path]
        assert folder.classes[y] == NAMES[int(labels[i])] and y == target
        # The default loader converts grey to RGB: three identical channels, each the image.
        assert x.shape == (3, 28, 28) and x.dtype == torch.uint8
        for channel in x:
            assert torch.equal(channel, images[i])


def test_write_image_folder_rejects_float_images(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        transfer.write_image_folder(tmp_path, torch.rand(2, 8, 8), torch.zeros(2), NAMES)


@pytest.mark.parametrize(
    "table", [{"1": "a", "2": "b"}, ["a", "b"], {"0": "a", "2": "b"}], ids=["from 1", "list", "gap"]
)
def test_load_class_indices_rejects_tables_that_are_not_0_to_k(tmp_path, table):
    path = tmp_path / "class_indices.json"
    path.write_text(json.dumps(table))
    with pytest.raises(ValueError, match="'0'..'K-1'"):
        predict.load_class_indices(path)


def test_save_class_indices_rejects_gaps(tmp_path):
    with pytest.raises(ValueError, match="0..K-1"):
        transfer.save_class_indices(tmp_path / "c.json", {"a": 0, "b": 2})


# --- transforms -------------------------------------------------------------------------------


def test_eval_transform_matches_torchvision_v1_pipeline():
    from PIL import Image

    images, _ = _images(1)
    pil = Image.fromarray(images[0].numpy()).convert("RGB")
    mean, std = (0.3, 0.3, 0.3), (0.35, 0.35, 0.35)
    ours = transfer.eval_transform(32, mean, std)(pil)
    reference = torchvision.transforms.Compose(
        [
            torchvision.transforms.Resize(37),  # round(32 / 0.875)
            torchvision.transforms.CenterCrop(32),
            torchvision.transforms.ToTensor(),
            torchvision.transforms.Normalize(mean, std),
        ]
    )(pil)
    assert ours.shape == (3, 32, 32)
    torch.testing.assert_close(ours, reference)


def test_train_transform_gives_three_equal_normalized_channels():
    from PIL import Image

    torch.manual_seed(0)
    pil = Image.fromarray(torch.full((28, 28), 51, dtype=torch.uint8).numpy())  # 0.2 everywhere
    x = transfer.train_transform(16, (0.1, 0.1, 0.1), (0.5, 0.5, 0.5))(pil)
    assert x.shape == (3, 16, 16)
    torch.testing.assert_close(x, torch.full((3, 16, 16), (0.2 - 0.1) / 0.5))


def test_normalized_loader_repeats_and_normalizes():
    batches = [(torch.rand(4, 1, 8, 8), torch.arange(4))]
    loader = transfer.NormalizedLoader(batches, mean=0.25, std=0.5)
    assert len(loader) == 1
    (X, y), (X0, y0) = next(iter(loader)), batches[0]
    assert X.shape == (4, 3, 8, 8) and torch.equal(y, y0)
    for c in range(3):
        torch.testing.assert_close(X[:, c], (X0[:, 0] - 0.25) / 0.5)


# --- pretrained weights from the torch hub cache ----------------------------------------------


def _synthetic_imagenet_state_dict() -> dict[str, torch.Tensor]:
    """A torchvision ResNet-18's state_dict with random weights and non-trivial BN statistics."""
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None)
    for m in tv.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.2, 0.2)
    return tv.state_dict()


def test_hub_weights_file_is_torchvisions_cache_location(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = transfer.hub_weights_file(ResNet18_Weights.IMAGENET1K_V1)
    # The name torchvision gives the IMAGENET1K_V1 file (torchvision/models/resnet.py).
    assert path == tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert transfer.load_hub_state_dict(ResNet18_Weights.IMAGENET1K_V1) is None  # no download


def test_cached_state_dict_loads_into_the_course_resnet_with_a_new_head(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state = _synthetic_imagenet_state_dict()
    path = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(state, path)

    loaded = transfer.load_hub_state_dict(ResNet18_Weights.IMAGENET1K_V1)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)

    # torchvision's own loader finds the same file there (it would download only if absent).
    tv = torchvision.models.resnet18(weights=ResNet18_Weights.IMAGENET1K_V1).eval()

    torch.manual_seed(1)
    net = transfer.resnet_from_state_dict(loaded, num_classes=5).eval()
    assert isinstance(net.fc, nn.Linear) and net.fc.weight.shape == (5, 512)
    for k, v in net.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(v, state[k]), k
    # The backbone computes exactly torchvision's features; only the head is new.
    net.fc, tv.fc = nn.Identity(), nn.Identity()
    X = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(X), tv(X))


def test_resnet_from_state_dict_keeps_the_input_channels_and_copies_the_weights():
    source = resnet18(num_classes=7, in_channels=1)
    state = source.state_dict()
    kept = copy.deepcopy(state)
    net = transfer.resnet_from_state_dict(state, num_classes=2)
    assert net.conv1.in_channels == 1 and net.fc.out_features == 2
    assert all(p.requires_grad and not p.is_meta for p in net.parameters())
    assert all(not b.is_meta for b in net.buffers())
    torch.testing.assert_close(net.conv1.weight, source.conv1.weight, rtol=0, atol=0)
    # Training the new network must leave the state_dict it came from untouched.
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    transfer.fine_tune(net, _batches(1, side=16, k=2, c=1), opt, 1)
    assert not torch.equal(net.conv1.weight.detach(), kept["conv1.weight"])
    assert all(torch.equal(state[k], kept[k]) for k in kept)


# --- freezing and parameter groups -------------------------------------------------------------


def _batches(n: int = 2, side: int = 32, k: int = 5, c: int = 3):
    g = torch.Generator().manual_seed(0)
    return [
        (torch.rand(8, c, side, side, generator=g), torch.randint(0, k, (8,), generator=g))
        for _ in range(n)
    ]


def _linear_probe_net() -> nn.Module:
    torch.manual_seed(0)
    net = resnet18(num_classes=5, in_channels=3)
    transfer.freeze(net)
    net.fc.requires_grad_(True)
    return net


def test_frozen_backbone_and_frozen_bn_are_bit_identical_after_training():
    net = _linear_probe_net()
    before = copy.deepcopy(net.state_dict())
    groups = transfer.parameter_groups(net, lr=0.1, backbone_lr=0.01)
    assert len(groups) == 1 and groups[0]["params"] == [net.fc.weight, net.fc.bias]
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=1e-3)
    result = transfer.fine_tune(net, _batches(), opt, 2, frozen_bn=True)
    assert result.steps == 4
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # Only the head learned; every weight, running mean/var and batch count of the backbone
    # is exactly as it was.
    assert changed == {"fc.weight", "fc.bias"}


def test_without_frozen_bn_a_frozen_backbone_still_moves_its_statistics():
    net = _linear_probe_net()
    before = copy.deepcopy(net.state_dict())
    opt = torch.optim.SGD(transfer.parameter_groups(net, lr=0.1, backbone_lr=0.01), lr=0.1)
    transfer.fine_tune(net, _batches(), opt, 1, frozen_bn=False)
    after = net.state_dict()
    assert not torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])
    assert torch.equal(before["conv1.weight"], after["conv1.weight"])  # weights stay frozen


def test_set_batchnorm_eval_counts_and_switches_only_batch_norm():
    net = resnet18(num_classes=5, in_channels=3).train()
    assert transfer.set_batchnorm_eval(net) == 20  # 17 in the blocks and stem + 3 shortcuts
    assert all(
        m.training != isinstance(m, nn.BatchNorm2d) for m in net.modules() if not list(m.children())
    )


def test_parameter_groups_step_each_part_with_its_own_lr():
    torch.manual_seed(0)
    net = resnet18(num_classes=5, in_channels=3)
    groups = transfer.parameter_groups(net, lr=0.1, backbone_lr=0.001)
    head = {id(net.fc.weight), id(net.fc.bias)}
    assert [g["lr"] for g in groups] == [0.001, 0.1]
    assert {id(p) for p in groups[1]["params"]} == head
    assert len(groups[0]["params"]) + 2 == len(list(net.parameters()))

    X, y = _batches(1)[0]
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    nn.functional.cross_entropy(net(X), y).backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    torch.optim.SGD(groups, lr=123.0).step()  # the groups' own lr win over the default
    for n, p in net.named_parameters():
        lr = 0.1 if n.startswith("fc.") else 0.001
        torch.testing.assert_close(p.detach(), before[n] - lr * grads[n])


# --- the best checkpoint ----------------------------------------------------------------------


def test_best_checkpoint_keeps_the_best_epoch_only(tmp_path):
    torch.manual_seed(0)
    net = resnet18(num_classes=3, in_channels=3)
    best = transfer.BestCheckpoint(
        tmp_path / "best.pt",
        arch="resnet18",
        arch_kwargs={"num_classes": 3, "in_channels": 3},
        class_names=NAMES,
        transform={"size": 32, "mean": [0.5] * 3, "std": [0.25] * 3},
    )
    assert best.update(net, 0.5, 1)
    kept = copy.deepcopy(net.state_dict())
    with torch.no_grad():
        net.fc.weight.add_(1.0)
    assert not best.update(net, 0.5, 2)  # a tie is no improvement
    assert not best.update(net, 0.4, 3)
    loaded, saved = load_model(tmp_path / "best.pt")
    assert saved["epoch"] == 1 and saved["val_acc"] == 0.5 and best.best_epoch == 1
    assert saved["class_names"] == NAMES and saved["transform"]["size"] == 32
    assert all(torch.equal(v, kept[k]) for k, v in loaded.state_dict().items())
    assert best.update(net, 0.75, 4)
    _, saved = load_model(tmp_path / "best.pt")
    assert saved["epoch"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]  # no temporary files left


def test_fine_tune_with_best_evaluates_every_epoch(tmp_path):
    torch.manual_seed(0)
    net = resnet18(num_classes=5, in_channels=3)
    best = transfer.BestCheckpoint(tmp_path / "b.pt", arch="resnet18", class_names=list("abcde"),
                                   arch_kwargs={"num_classes": 5, "in_channels": 3})  # fmt: skip
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    result = transfer.fine_tune(net, _batches(1), opt, 3, val_iter=_batches(1), best=best)
    assert len(result.val_acc) == 3 and result.steps == 3
    assert best.best_acc == max(result.val_acc)
    assert best.best_epoch == result.val_acc.index(max(result.val_acc)) + 1
    with pytest.raises(ValueError, match="val_iter"):
        transfer.fine_tune(net, _batches(1), opt, 1, best=best)


# --- the modules ------------------------------------------------------------------------------


def test_transfer_builds_on_predict_and_never_the_other_way_round():
    # The prediction command loads without the training side; no import cycle.
    code = "import sys, d2l_utils.predict; print('d2l_utils.transfer' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout == "False\n", result.stderr
    assert transfer.eval_transform is predict.eval_transform  # still importable from here
    assert transfer.save_class_indices is predict.save_class_indices
