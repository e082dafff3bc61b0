"""Data parallelism on CPUs: 2-process Gloo jobs against one process with the whole batch.

* synchronized batch norm (``d2l_utils.models.batchnorm`` with a process group) on shards of a batch
  equals ``nn.BatchNorm`` on the whole batch: outputs, input and parameter gradients, running
  statistics;
* ``d2l_utils.distributed`` with 2 processes and synchronized batch norm takes the steps one
  process takes with the global batch; without synchronization it does not;
* a rank killed mid-epoch under ``torchrun --max-restarts=1`` resumes from the checkpoint and
  ends with the weights of an uninterrupted run; a checkpoint of 2 processes refuses 1; a damaged
  or foreign checkpoint ends the script with one line naming it.

The worker functions live at module level so that ``torch.multiprocessing.spawn`` can import them.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.testing import assert_close

from d2l_utils import distributed, predict
from d2l_utils.checkpoint import CheckpointError, save_checkpoint
from d2l_utils.data import BatchLoader, load_sample
from d2l_utils.models.batchnorm import BatchNorm, convert_sync_batchnorm

WORLD = 2
ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world: int, port: int) -> None:
    """Set the variables torchrun would set, for ``init_process_group`` and for the script."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )


def _spawn(fn, *args) -> None:
    mp.spawn(fn, args=(WORLD, *args), nprocs=WORLD, join=True)


# ---------------------------------------------------------------- sharding


@pytest.mark.parametrize("world", [2, 3])
def test_shards_concatenate_to_the_single_process_batches(world):
    data = load_sample(train=True).subset(torch.arange(100))
    single = BatchLoader(data, batch_size=32, shuffle=True, seed=7)  # last batch: 4 images
    shards = [
        distributed.ShardedLoader(BatchLoader(data, 32, shuffle=True, seed=7), r, world)
        for r in range(world)
    ]
    for _ in range(2):  # two epochs: the permutation sequence is the single process's
        per_rank = [list(s) for s in shards]
        batches = list(single)
        assert len(batches) == len(shards[0]) == 4
        for k, (X, y) in enumerate(batches):
            assert_close(torch.cat([per_rank[r][k][0] for r in range(world)]), X)
            assert torch.equal(torch.cat([per_rank[r][k][1] for r in range(world)]), y)
            assert {per_rank[r][k][2] for r in range(world)} == {len(y)}
            sizes = [len(per_rank[r][k][1]) for r in range(world)]
            assert max(sizes) - min(sizes) <= 1


def test_sharded_loader_skips_batches_and_refuses_tiny_batches():
    data = load_sample(train=True).subset(torch.arange(64))
    loader = distributed.ShardedLoader(BatchLoader(data, 16, shuffle=True, seed=0), 0, 2)
    state = loader.loader.generator.get_state()
    full = list(loader.epoch())
    loader.loader.generator.set_state(state)
    rest = list(loader.epoch(skip=2))
    assert len(rest) == 2
    for (X, y, _), (X2, y2, _) in zip(full[2:], rest, strict=True):
        assert torch.equal(X, X2) and torch.equal(y, y2)
    with pytest.raises(ValueError, match="cannot be split over 4 processes"):
        distributed.ShardedLoader(BatchLoader(data, 3), 0, 4)


# ---------------------------------------------------------------- synchronized batch norm


def _bn_case(num_dims: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The whole batch (13 examples: shards of 7 and 6), γ, β, running stats, loss weights."""
    gen = torch.Generator().manual_seed(num_dims)
    shape = (13, 3) if num_dims == 2 else (13, 3, 4, 5)
    return {
        "X": 3.0 + 2.5 * torch.randn(shape, generator=gen, dtype=dtype),
        "X2": 1.0 + 0.5 * torch.randn(shape, generator=gen, dtype=dtype),
        "W": torch.randn(shape, generator=gen, dtype=dtype),  # loss = sum(W * Y)
        "gamma": torch.rand(3, generator=gen, dtype=dtype) + 0.5,
        "beta": torch.randn(3, generator=gen, dtype=dtype),
        "mean": torch.randn(3, generator=gen, dtype=dtype),
        "var": torch.rand(3, generator=gen, dtype=dtype) + 0.5,
    }


def _small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 5),
        nn.BatchNorm1d(5),
    ).double()


def _sync_bn_worker(rank: int, world: int, port: int, out: Path) -> None:
    _join(rank, world, port)
    dist.init_process_group("gloo")
    with distributed.destroy_on_exit(torch.device("cpu")):
        torch.save(_sync_bn_shard_results(rank, world), out / f"rank{rank}.pt")


def _sync_bn_shard_results(rank: int, world: int) -> dict:
    """This rank's outputs, gradients and statistics; its synchronized models are gone after."""
    results = {}
    for num_dims in (2, 4):
        for dtype in (torch.float32, torch.float64):
            case = _bn_case(num_dims, dtype)
            bn = BatchNorm(3, num_dims, group=dist.group.WORLD).to(dtype)
            with torch.no_grad():
                bn.weight.copy_(case["gamma"]), bn.bias.copy_(case["beta"])
                bn.running_mean.copy_(case["mean"]), bn.running_var.copy_(case["var"])
            X = case["X"].tensor_split(world)[rank].clone().requires_grad_()
            Y = bn(X)
            (Y * case["W"].tensor_split(world)[rank]).sum().backward()
            bn(case["X2"].tensor_split(world)[rank])  # a second step for the running stats
            results[num_dims, dtype] = {
                "Y": Y.detach(),
                "X.grad": X.grad,
                "weight.grad": bn.weight.grad,
                "bias.grad": bn.bias.grad,
                "running_mean": bn.running_mean.clone(),
                "running_var": bn.running_var.clone(),
                "count": bn.num_batches_tracked.clone(),
            }
    net = convert_sync_batchnorm(_small_net(), dist.group.WORLD)
    X = torch.randn(13, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    Y = net(X.tensor_split(world)[rank])
    Y.square().sum().backward()
    results["net"] = {
        "Y": Y.detach(),
        "grads": [p.grad for p in net.parameters()],
        "buffers": [b.clone() for b in net.buffers()],
    }
    return results


@pytest.fixture(scope="module")
def sync_bn_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("sync_bn")
    _spawn(_sync_bn_worker, _free_port(), out)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    "num_dims, ref_cls", [(2, nn.BatchNorm1d), (4, nn.BatchNorm2d)], ids=["1d", "2d"]
)
def test_sync_batch_norm_equals_batch_norm_on_the_whole_batch(
    sync_bn_results, num_dims, ref_cls, dtype
):
    case = _bn_case(num_dims, dtype)
    ref = ref_cls(3).to(dtype)
    with torch.no_grad():
        ref.weight.copy_(case["gamma"]), ref.bias.copy_(case["beta"])
        ref.running_mean.copy_(case["mean"]), ref.running_var.copy_(case["var"])
    X = case["X"].clone().requires_grad_()
    Y = ref(X)
    (Y * case["W"]).sum().backward()
    ref(case["X2"])
    shards = [r[num_dims, dtype] for r in sync_bn_results]
    assert_close(torch.cat([s["Y"] for s in shards]), Y.detach())
    assert_close(torch.cat([s["X.grad"] for s in shards]), X.grad)
    # Each rank holds the gradient of its own part of the loss; DDP would sum (average) them.
    assert_close(sum(s["weight.grad"] for s in shards), ref.weight.grad)
    assert_close(sum(s["bias.grad"] for s in shards), ref.bias.grad)
    for s in shards:  # the same global statistics on every rank, unbiased with the global count
        assert_close(s["running_mean"], ref.running_mean)
        assert_close(s["running_var"], ref.running_var)
        assert s["count"].item() == ref.num_batches_tracked.item() == 2


def test_converted_model_equals_the_model_on_the_whole_batch(sync_bn_results):
    net = _small_net()
    X = torch.randn(13, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    Y = net(X)
    Y.square().sum().backward()
    shards = [r["net"] for r in sync_bn_results]
    assert_close(torch.cat([s["Y"] for s in shards]), Y.detach())
    for i, p in enumerate(net.parameters()):
        assert_close(sum(s["grads"][i] for s in shards), p.grad)
    for s in shards:
        for b, ref in zip(s["buffers"], net.buffers(), strict=True):
            assert_close(b, ref)


def test_convert_sync_batchnorm_shares_parameters_and_buffers():
    net = _small_net()
    params = {id(p) for p in net.parameters()}
    buffers = {id(b) for b in net.buffers()}
    group = object()  # any object: converting does not communicate
    converted = convert_sync_batchnorm(net, group)
    assert converted is net
    bns = [m for m in net.modules() if isinstance(m, BatchNorm)]
    assert [b.num_dims for b in bns] == [4, 2] and all(b.group is group for b in bns)
    assert {id(p) for p in net.parameters()} == params
    assert {id(b) for b in net.buffers()} == buffers
    assert "synchronized" in repr(bns[0])
    with pytest.raises(ValueError, match="no affine parameters"):
        convert_sync_batchnorm(nn.BatchNorm2d(3, affine=False), group)


# ---------------------------------------------------------------- DDP training


def _args(out: Path, name: str, *extra: str) -> list[str]:
    # float64: in float32 the rounding differences of two ways of summing the same gradient grow
    # to ~1e-4 within two steps (batch norm's backward cancels large terms at initialization).
    return [
        "--model",
        "resnet8",
        "--train-images",
        "512",
        "--max-steps",
        "2",
        "--threads",
        "1",
        "--dtype",
        "float64",
        "--weights",
        str(out / f"{name}.pt"),
        "--out",
        str(out / f"{name}.json"),
        *extra,
    ]


def _ddp_worker(rank: int, world: int, ports: list[int], out: Path) -> None:
    for port, (name, extra) in zip(ports, [("sync", ["--sync-bn"]), ("local", [])], strict=True):
        _join(rank, world, port)
        distributed.main(_args(out, name, *extra))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    """The final weights a run wrote (--weights): a model file that load_model rebuilds."""
    net, saved = predict.load_model(path)
    assert saved["arch"] == "resnet8" and saved["arch_kwargs"] == distributed.FASHION_MNIST
    assert net.state_dict().keys() == saved["state_dict"].keys()
    return saved["state_dict"]  # as written: in the run's dtype (load_model's net is float32)


def test_ddp_with_sync_bn_takes_the_single_process_steps(tmp_path, monkeypatch):
    _spawn(_ddp_worker, [_free_port(), _free_port()], tmp_path)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    threads = torch.get_num_threads()
    one = distributed.main(_args(tmp_path, "one"))  # no torchrun: a group of one, global batch
    torch.set_num_threads(threads)
    assert one["world_size"] == 1 and one["steps"] == 2
    single, sync, local = (_weights(tmp_path / f"{name}.pt") for name in ("one", "sync", "local"))
    for key, value in single.items():  # weights, running statistics, batch counters
        assert_close(sync[key], value, msg=lambda m, k=key: f"{k}: {m}")
    report = json.loads((tmp_path / "sync.json").read_text())
    assert report["world_size"] == 2 and report["per_rank_batch"] == 128
    assert report["max_weight_diff_between_ranks"] == 0.0  # DDP: the same weights everywhere
    # Without synchronization each replica normalizes with its own half of the batch.
    diff = max(
        (local[k] - v).abs().max().item() for k, v in single.items() if v.is_floating_point()
    )
    assert diff > 1e-3
    with pytest.raises(AssertionError):
        assert_close(local["conv1.weight"], single["conv1.weight"])


# ---------------------------------------------------------------- faults and resume


def _torchrun(tmp: Path, name: str, env: dict[str, str] | None = None) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={WORLD}",
        "--max-restarts=1",
        "--monitor-interval=0.2",
        "-m",
        "d2l_utils.distributed",
        "--model",
        "resnet8",
        "--train-images",
        "1024",
        "--threads",
        "1",
        "--sync-bn",
        "--checkpoint",
        str(tmp / f"{name}.ckpt"),
        "--checkpoint-every",
        "2",
        "--weights",
        str(tmp / f"{name}.pt"),
        "--out",
        str(tmp / f"{name}.json"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"log": proc.stdout + proc.stderr, **json.loads((tmp / f"{name}.json").read_text())}


def test_killed_rank_resumes_from_the_checkpoint_with_the_same_weights(tmp_path, monkeypatch):
    whole = _torchrun(tmp_path, "whole")
    # Rank 1 dies before step 3 of epoch 1; the last checkpoint is from after step 2.
    faulty = _torchrun(tmp_path, "faulty", {"D2L_FAULT": "1:1:3"})
    assert "simulated failure: rank 1 exits before step 3 of epoch 1" in faulty["log"]
    assert whole["restarts"] == 0 and whole["resumed_from"] is None
    assert faulty["restarts"] == 1 and faulty["resumed_from"] == [1, 2]
    assert faulty["steps"] == whole["steps"] == 4
    a, b = _weights(tmp_path / "whole.pt"), _weights(tmp_path / "faulty.pt")
    for key, value in a.items():
        assert torch.equal(b[key], value), key
    assert faulty["history"][0]["train_loss"] == pytest.approx(whole["history"][0]["train_loss"])
    assert faulty["history"][0]["test_acc"] == whole["history"][0]["test_acc"]

    # The checkpoint of 2 processes, resumed by one: a clear error, nothing trained.
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(CheckpointError, match="written by 2 processes, this run has 1"):
        distributed.main(
            [
                "--model",
                "resnet8",
                "--train-images",
                "1024",
                "--sync-bn",
                "--checkpoint",
                str(tmp_path / "whole.ckpt"),
            ]
        )
    assert not dist.is_initialized()  # the group is torn down on the error too


def test_resume_with_other_settings_is_refused(tmp_path, monkeypatch):
    state = {
        **dict.fromkeys(distributed.STATE_KEYS),  # refused before any of these is used
        "world_size": 1,
        "settings": {
            "model": "resnet8",
            "batch_size": 128,
            "sync_bn": False,
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 1e-4,
            "seed": 0,
            "dtype": "float32",
        },
    }
    save_checkpoint(tmp_path / "c.ckpt", state, "distributed")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(CheckpointError, match="--batch-size=128, this run has 256"):
        distributed.main(["--model", "resnet8", "--checkpoint", str(tmp_path / "c.ckpt")])
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a file written by torch.save"):
        distributed.load_state(tmp_path / "bad.ckpt")
    assert distributed.load_state(tmp_path / "none.ckpt") is None  # a run that starts afresh


BAD_CHECKPOINTS = {  # name: (how to write it, what the error says)
    "damaged": (lambda p: p.write_bytes(b"PK\x03\x04 cut short"),
                "is not a file written by torch.save"),
    "foreign": (lambda p: save_checkpoint(p, {"arch": "resnet8"}, "model"),
                "is a model file (d2l_utils.predict.save_model), "
                "not a d2l_utils.distributed checkpoint"),
    "incomplete": (lambda p: save_checkpoint(p, {"epoch": 1}, "distributed"),
                   "lacks epoch_rng, history"),
}  # fmt: skip


@pytest.mark.parametrize("name", BAD_CHECKPOINTS)
def test_a_bad_checkpoint_stops_the_run_before_it_trains(tmp_path, monkeypatch, name):
    write, message = BAD_CHECKPOINTS[name]
    write(path := tmp_path / "run.ckpt")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    threads = torch.get_num_threads()
    with pytest.raises(CheckpointError) as err:
        distributed.main(["--model", "resnet8", "--threads", "1", "--checkpoint", str(path)])
    torch.set_num_threads(threads)
    assert str(err.value).startswith(f"checkpoint {path} ") and message in str(err.value)
    assert str(err.value).endswith("delete it to start over, or pass another --checkpoint path")
    assert "\n" not in str(err.value) and not dist.is_initialized()


def test_the_script_answers_a_bad_checkpoint_in_one_line(tmp_path):
    # The command line around main(): any CheckpointError (all three above) becomes one line.
    write, message = BAD_CHECKPOINTS["damaged"]
    write(path := tmp_path / "run.ckpt")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cmd = [sys.executable, "-m", "d2l_utils.distributed", "--model", "resnet8",
           "--threads", "1", "--checkpoint", str(path)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f"d2l_utils.distributed: error: checkpoint {path} ")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert message in proc.stderr
    assert proc.stderr.rstrip().endswith(
        "delete it to start over, or pass another --checkpoint path"
    )


def test_the_weights_file_records_the_size_the_run_trained_at(tmp_path, monkeypatch):
    # ResNet-18's 96 px, made 32 by the smoke profile: d2l-predict must feed it 32 px images.
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    threads = torch.get_num_threads()
    weights = tmp_path / "r18.pt"
    args = ["--model", "resnet18", "--max-steps", "1", "--train-images", "64", "--batch-size", "32"]
    distributed.main([*args, "--threads", "1", "--weights", str(weights)])
    torch.set_num_threads(threads)
    _, saved = predict.load_model(weights)
    assert saved["arch"] == "resnet18" and saved["resize"] == 32


def test_bad_model_names_and_batch_sizes_are_refused(capsys):
    with pytest.raises(ValueError, match="unknown architecture 'vgg11'"):
        distributed.make_model("vgg11", sync_bn=False)
    with pytest.raises(SystemExit):
        distributed.parse_args(["--model", "vgg11"])
    assert "--model vgg11: unknown architecture 'vgg11'" in capsys.readouterr().err
    args = distributed.parse_args(["--batch-size", "64", "--model", "resnet8"])
    assert (args.batch_size, args.model) == (64, "resnet8")


# ---------------------------------------------------------------- against nn.SyncBatchNorm (CUDA)


def _cuda_worker(rank: int, world: int, port: int) -> None:
    _join(rank, world, port)
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl")
    device = torch.device("cuda", rank)
    base = _small_net().to(device)
    ours = convert_sync_batchnorm(copy.deepcopy(base), dist.group.WORLD)
    ref = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(base))
    gen = torch.Generator().manual_seed(3)
    X = torch.randn(13, 1, 8, 8, generator=gen, dtype=torch.float64).tensor_split(world)[rank]
    results = []
    for net in (ours, ref):
        X_net = X.to(device).requires_grad_()
        Y = net(X_net)
        Y.square().sum().backward()
        results.append((Y, X_net.grad, [p.grad for p in net.parameters()], list(net.buffers())))
    (Y, gX, grads, buffers), (Y_ref, gX_ref, grads_ref, buffers_ref) = results
    assert_close(Y, Y_ref)
    assert_close(gX, gX_ref)
    for a, b in zip(grads + buffers, grads_ref + buffers_ref, strict=True):
        assert_close(a, b)
    dist.destroy_process_group()


@pytest.mark.gpu
def test_sync_batch_norm_equals_nn_sync_batch_norm_on_cuda():
    # One process per GPU (NCCL allows no two ranks on one device): 2 where there are 2.
    world = min(2, torch.cuda.device_count())
    mp.spawn(_cuda_worker, args=(world, _free_port()), nprocs=world, join=True)
