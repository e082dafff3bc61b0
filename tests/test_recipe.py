"""The modern recipe in the package is notebook 03's, and each piece does what it says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from d2l_utils.models.densenet import densenet
from d2l_utils.models.resnet import BasicBlock, d2l_resnet18, resnet50
from d2l_utils.recipe import modern_init_, modern_recipe, random_crop_flip, sgd_with_decay

NB03 = Path(__file__).resolve().parent.parent / "notebooks" / "03_resnet18_fashion_mnist.ipynb"


def notebook_function(name: str, **namespace):
    """The function ``name`` as notebook 03 defines it, executed from its cell."""
    for cell in json.loads(NB03.read_text())["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and f"def {name}(" in source:
            exec(source.split("\n\n\ntorch.manual_seed")[0], namespace)  # the definitions only
            return namespace[name]
    raise LookupError(name)


def test_random_crop_flip_is_notebook_03s():
    theirs = notebook_function("random_crop_flip", torch=torch, F=F)
    X = torch.rand(64, 1, 28, 28)
    torch.manual_seed(0)
    expected = theirs(X, 2)
    torch.manual_seed(0)
    torch.testing.assert_close(random_crop_flip(X, 2), expected, rtol=0, atol=0)


def test_every_augmented_image_is_a_crop_of_its_padded_possibly_mirrored_original():
    torch.manual_seed(0)
    p, X = 1, torch.rand(256, 2, 6, 6)
    Y = random_crop_flip(X, p)
    seen = set()
    for x, y in zip(X, Y, strict=True):
        matches = {
            (flip, i, j)
            for flip in (False, True)
            for i in range(2 * p + 1)
            for j in range(2 * p + 1)
            if torch.equal(F.pad(x.flip(-1) if flip else x, (p,) * 4)[:, i : i + 6, j : j + 6], y)
        }
        assert matches
        seen |= matches
    assert len(seen) == 2 * (2 * p + 1) ** 2


def test_sgd_with_decay_is_notebook_03s_optimizer():
    net = d2l_resnet18()
    opt = sgd_with_decay(net.parameters(), 0.1, 5e-4)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() > 1 for p in decay["params"])
    assert all(p.dim() <= 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(net.parameters()))
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["nesterov"]
    assert opt.defaults["lr"] == 0.1


def test_modern_init_starts_every_residual_block_at_relu_of_its_shortcut():
    torch.manual_seed(0)
    for net in (modern_init_(d2l_resnet18()), modern_init_(resnet50(num_classes=10))):
        blocks = [m for m in net.modules() if isinstance(m, BasicBlock) or hasattr(m, "bn3")]
        assert blocks
        for m in blocks:
            last = m.bn3 if hasattr(m, "bn3") else m.bn2
            assert torch.count_nonzero(last.weight) == 0
    dense = modern_init_(densenet())  # no residual blocks: He init only
    norms = [m for m in dense.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(torch.count_nonzero(m.weight) > 0 for m in norms)


def test_the_recipe_trains_as_notebook_03_sets_it_up():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    recipe = modern_recipe(10, 0.2, padding=1)
    assert recipe["init"] is False
    opt = recipe["optimizer"](net.parameters())
    sched = recipe["scheduler"](opt)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(lrs) == pytest.approx(0.2) and lrs[0] < 0.02 and lrs[-1] < 0.01  # one cycle
    assert recipe["loss"].label_smoothing == 0.1
    assert recipe["augment"](torch.rand(3, 1, 8, 8)).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="total_steps"):
        modern_recipe(0)
