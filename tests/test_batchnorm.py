"""d2l_utils.models.batchnorm against PyTorch's own nn.BatchNorm1d / nn.BatchNorm2d."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from d2l_utils.models.batchnorm import BatchNorm, batch_norm

# (num_dims, input shape, PyTorch's layer): fully connected (B, C) and convolutional (B, C, H, W).
CASES = [(2, (16, 5), nn.BatchNorm1d), (4, (6, 3, 7, 5), nn.BatchNorm2d)]
IDS = ["1d", "2d"]


def _batch(shape: tuple[int, ...], gen: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    # Far from mean 0 / variance 1, so a wrong normalization cannot pass by luck.
    return 3.0 + 2.5 * torch.randn(shape, generator=gen, dtype=dtype)


def _pair(num_dims, shape, ref_cls, momentum=0.1, dtype=torch.float32):
    """PyTorch's layer with random γ, β, running stats, and ours loaded from its state_dict."""
    gen = torch.Generator().manual_seed(0)
    C = shape[1]
    ref = ref_cls(C, momentum=momentum).to(dtype)
    with torch.no_grad():
        ref.weight.copy_(torch.rand(C, generator=gen) + 0.5)
        ref.bias.copy_(torch.randn(C, generator=gen))
        ref.running_mean.copy_(torch.randn(C, generator=gen))
        ref.running_var.copy_(torch.rand(C, generator=gen) + 0.5)
    ours = BatchNorm(C, num_dims, momentum=momentum).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours, gen


@pytest.mark.parametrize("num_dims, shape, ref_cls", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_train_and_eval_outputs_match_pytorch(num_dims, shape, ref_cls, dtype):
    ref, ours, gen = _pair(num_dims, shape, ref_cls, dtype=dtype)
    X = _batch(shape, gen, dtype)
    assert_close(ours(X), ref(X))  # train mode: batch statistics
    ref.eval(), ours.eval()
    X = _batch(shape, gen, dtype)
    assert_close(ours(X), ref(X))  # eval mode: running statistics


@pytest.mark.parametrize("num_dims, shape, ref_cls", CASES, ids=IDS)
@pytest.mark.parametrize("momentum", [0.1, 0.9, None])
def test_running_stats_after_several_steps(num_dims, shape, ref_cls, momentum):
    ref, ours, gen = _pair(num_dims, shape, ref_cls, momentum=momentum, dtype=torch.float64)
    for _ in range(5):
        X = _batch(shape, gen, torch.float64)
        assert_close(ours(X), ref(X))
    assert_close(ours.running_mean, ref.running_mean)
    assert_close(ours.running_var, ref.running_var)
    assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item() == 5
    ref.eval(), ours.eval()
    X = _batch(shape, gen, torch.float64)
    assert_close(ours(X), ref(X))


@pytest.mark.parametrize("num_dims, shape, ref_cls", CASES, ids=IDS)
def test_biased_variance_normalizes_unbiased_variance_is_tracked(num_dims, shape, ref_cls):
    gen = torch.Generator().manual_seed(1)
    X = _batch(shape, gen, torch.float64)
    C = shape[1]
    dims = [0, *range(2, X.dim())]
    ones, zeros = torch.ones(C, dtype=X.dtype), torch.zeros(C, dtype=X.dtype)
    Y, mean, var = batch_norm(X, ones, zeros, zeros, ones, eps=0.0, momentum=1.0, training=True)
    # momentum=1 keeps only this batch, so the running stats are the batch's own.
    assert_close(mean, X.mean(dim=dims))
    assert_close(var, X.var(dim=dims, correction=1))
    # The output is standardized with the biased variance: its own biased variance is exactly 1.
    assert_close(Y.var(dim=dims, correction=0), ones)
    assert_close(Y.mean(dim=dims), zeros)


@pytest.mark.parametrize("num_dims, shape, ref_cls", CASES, ids=IDS)
def test_momentum_is_the_weight_of_the_new_batch(num_dims, shape, ref_cls):
    gen = torch.Generator().manual_seed(2)
    X = _batch(shape, gen, torch.float64)
    dims = [0, *range(2, X.dim())]
    bn = BatchNorm(shape[1], num_dims, momentum=0.1).double()
    bn(X)
    # Starting from mean 0 / variance 1: new = 0.9 * old + 0.1 * batch.
    assert_close(bn.running_mean, 0.1 * X.mean(dim=dims))
    assert_close(bn.running_var, 0.9 + 0.1 * X.var(dim=dims, correction=1))


@pytest.mark.parametrize("num_dims, shape, ref_cls", CASES, ids=IDS)
@pytest.mark.parametrize("training", [True, False])
def test_gradients_match_pytorch(num_dims, shape, ref_cls, training):
    ref, ours, gen = _pair(num_dims, shape, ref_cls, dtype=torch.float64)
    ref.train(training), ours.train(training)
    X = _batch(shape, gen, torch.float64)
    upstream = torch.randn(shape, generator=gen, dtype=torch.float64)
    grads = []
    for layer in (ref, ours):
        x = X.clone().requires_grad_()
        (layer(x) * upstream).sum().backward()
        grads.append((x.grad, layer.weight.grad, layer.bias.grad))
    for g_ref, g_ours in zip(*grads, strict=True):
        assert_close(g_ours, g_ref)
    # The running statistics are estimates, outside the graph.
    assert not ours.running_mean.requires_grad and not ours.running_var.requires_grad


@pytest.mark.parametrize("num_dims, shape, ref_cls", CASES, ids=IDS)
def test_state_dict_round_trip_with_pytorch(num_dims, shape, ref_cls):
    ref, ours, gen = _pair(num_dims, shape, ref_cls)
    for _ in range(3):
        ours(_batch(shape, gen))
    # Same keys, same shapes and dtypes, so strict loading works both ways.
    ref_sd, ours_sd = ref.state_dict(), ours.state_dict()
    assert list(ours_sd) == list(ref_sd)
    for key in ref_sd:
        assert ours_sd[key].shape == ref_sd[key].shape, key
        assert ours_sd[key].dtype == ref_sd[key].dtype, key
    back = ref_cls(shape[1])
    back.load_state_dict(ours_sd)
    for key, value in back.state_dict().items():
        assert_close(value, ours_sd[key])
    back.eval(), ours.eval()
    X = _batch(shape, gen)
    assert_close(back(X), ours(X))


@pytest.mark.parametrize("num_dims, shape, ref_cls", CASES, ids=IDS)
def test_eval_switches_behaviour_and_no_grad_does_not(num_dims, shape, ref_cls):
    ref, ours, gen = _pair(num_dims, shape, ref_cls)
    X = _batch(shape, gen)
    before = ours.running_mean.clone()
    # no_grad in training mode: still batch statistics, still updates the running ones (as PyTorch).
    with torch.no_grad():
        assert_close(ours(X), ref(X))
    assert not torch.equal(ours.running_mean, before)
    assert_close(ours.running_mean, ref.running_mean)
    # eval(): running statistics, nothing updated, and the result does not depend on the batch.
    ours.eval(), ref.eval()
    frozen = ours.running_mean.clone()
    Y = ours(X)
    assert torch.equal(ours.running_mean, frozen)
    assert ours.num_batches_tracked.item() == 1
    assert_close(Y, ref(X))
    assert_close(ours(X[:1]), Y[:1])  # one example alone gives the same answer as in its batch
    ours.train()
    assert not torch.allclose(ours(X)[:2], Y[:2])


def test_buffers_follow_the_module():
    bn = BatchNorm(4, 2)
    assert {name for name, _ in bn.named_buffers()} == {
        "running_mean",
        "running_var",
        "num_batches_tracked",
    }
    assert {name for name, _ in bn.named_parameters()} == {"weight", "bias"}
    bn = bn.double()
    assert bn.running_mean.dtype == torch.float64
    assert bn.num_batches_tracked.dtype == torch.long


def test_one_value_per_channel_raises_like_pytorch():
    X = torch.randn(1, 4)
    with pytest.raises(ValueError):
        nn.BatchNorm1d(4)(X)
    with pytest.raises(ValueError):
        BatchNorm(4, 2)(X)
    # eval mode needs no batch statistics, so a single example is fine.
    assert_close(BatchNorm(4, 2).eval()(X), nn.BatchNorm1d(4).eval()(X))


def test_wrong_number_of_dims_raises():
    with pytest.raises(ValueError):
        BatchNorm(3, 4)(torch.randn(2, 3))
    with pytest.raises(ValueError):
        BatchNorm(3, 3)


def test_a_group_of_one_process_is_plain_batch_norm():
    import torch.distributed as dist

    from d2l_utils.distributed import destroy_on_exit

    def check(group: dist.ProcessGroup) -> None:  # the layers holding the group go on return
        for num_dims, shape, ref_cls in CASES:
            ref, ours, gen = _pair(num_dims, shape, ref_cls, dtype=torch.float64)
            ours.group = group
            for _ in range(2):
                X = _batch(shape, gen, torch.float64)
                assert_close(ours(X), ref(X))
            assert_close(ours.running_mean, ref.running_mean)
            assert_close(ours.running_var, ref.running_var)

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    with destroy_on_exit(torch.device("cpu")):
        check(dist.group.WORLD)


def test_a_synchronized_layer_deep_copies_with_the_same_group():
    import copy

    group = object()  # a stand-in: process groups can be neither copied nor pickled
    bn = BatchNorm(3, 4, group=group)
    twin = copy.deepcopy(bn)
    assert twin.group is group
    assert twin.weight is not bn.weight and torch.equal(twin.weight, bn.weight)
    assert twin.running_var is not bn.running_var
    assert "synchronized" in repr(twin) and "synchronized" not in repr(BatchNorm(3, 4))
