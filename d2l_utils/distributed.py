"""Data-parallel training of a ResNet on Fashion-MNIST with ``DistributedDataParallel``.

Run it on one machine with every GPU (or two CPU processes), or on several machines::

    torchrun --nproc_per_node=2 -m d2l_utils.distributed --epochs 10
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        -m d2l_utils.distributed --epochs 10
    python -m d2l_utils.distributed          # one process, no torchrun: the same code path

``torchrun`` starts one process (*rank*) per device and tells each, through environment
variables, its rank, the number of processes (*world size*) and where to meet.  Every rank holds
a full replica of the model; :class:`ShardedLoader` gives each rank its own slice of every global
batch, in the shuffled order one process would see for the same seed; ``DistributedDataParallel``
averages the gradients over the ranks during the backward pass (an all-reduce), so every replica
takes the same optimizer step and the weights stay identical everywhere.  The backend is NCCL on
CUDA and Gloo on CPUs.

``--sync-bn`` swaps every batch norm for the synchronized one of
:func:`d2l_utils.models.batchnorm.convert_sync_batchnorm`, which normalizes with the statistics
of the global batch.

Rank 0 writes a checkpoint (``--checkpoint``, the package's one file format, kind
``"distributed"``, written atomically) after every epoch and every ``--checkpoint-every`` steps;
a restarted job (``torchrun --max-restarts=N``) resumes from it, down to the position in the
epoch, and ends with the same weights as a run that was never interrupted.  For tests,
``D2L_FAULT=RANK:EPOCH:STEP`` makes that rank exit before that step (1-based epoch, 0-based step)
in the first attempt only.  Rank 0 writes the results as JSON (``--out``) and the final weights
(``--weights``) as a model file of :func:`d2l_utils.predict.save_model`, which ``d2l-predict`` and
:func:`~d2l_utils.predict.load_model` read.  A checkpoint file that cannot be used ends the script
with one line naming it, before any work.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from d2l_utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from d2l_utils.data import (
    BatchLoader,
    capped_epochs,
    get_profile,
    load_data,
    stratified_indices,
)
from d2l_utils.models import get_model
from d2l_utils.models.batchnorm import convert_sync_batchnorm
from d2l_utils.predict import save_model
from d2l_utils.train import train_step

__all__ = [
    "ShardedLoader",
    "Trainer",
    "destroy_on_exit",
    "init_distributed",
    "load_state",
    "main",
    "make_model",
    "parse_args",
]

# get_model's keyword arguments for Fashion-MNIST: grey images, 10 classes.
FASHION_MNIST = {"num_classes": 10, "in_channels": 1}
# What a checkpoint's state holds.
STATE_KEYS = (
    "world_size", "settings", "epoch", "step", "steps_done", "epoch_rng", "partial", "history",
    "model", "optimizer",
)  # fmt: skip
# Settings a resumed run must share with the run that wrote the checkpoint.
SAME_ON_RESUME = (
    "model", "batch_size", "sync_bn", "lr", "momentum", "weight_decay", "seed", "dtype"
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``--batch-size`` is the *global* batch, split over the ranks."""
    p = argparse.ArgumentParser(prog="d2l_utils.distributed", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="resnet18 (96 px) or resnetN, N = 6n+2 (28 px)")
    p.add_argument("--epochs", type=int, default=10, help="capped by the run profile")
    p.add_argument("--batch-size", type=int, default=256, help="global: summed over all ranks")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0, help="weights and shuffle order")
    p.add_argument("--sync-bn", action="store_true", help="synchronized batch norm")
    p.add_argument("--train-images", type=int, default=None, help="a stratified subset")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="float64 for exact comparisons between runs")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch threads per process")
    p.add_argument("--checkpoint", type=Path, default=None, help="resume from / save to")
    p.add_argument("--checkpoint-every", type=int, default=0, help="steps; 0: epochs only")
    p.add_argument("--out", type=Path, default=None, help="results as JSON (rank 0)")
    p.add_argument("--weights", type=Path, default=None, help="final model file (rank 0)")
    args = p.parse_args(argv)
    if args.model is None:
        args.model = "resnet18" if get_profile().name == "full" else "resnet20"
    try:
        with torch.device("meta"):  # checks the name only: no memory, no initialisation
            make_model(args.model, sync_bn=False)
    except (ValueError, TypeError) as exc:
        p.error(f"--model {args.model}: {exc}")
    return args


def init_distributed() -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes; without torchrun, a group of one.

    Returns ``(rank, world_size, device)``: ``cuda:LOCAL_RANK`` with NCCL where CUDA is present,
    else the CPU with Gloo.
    """
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    if "RANK" in os.environ:  # set by torchrun (and by the tests' launcher)
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(device)
        timeout = datetime.timedelta(minutes=5)
        store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
        # After a restart, torchrun's store may still hold the addresses the failed attempt's
        # processes published; a key prefix per attempt keeps the new processes from dialling them.
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"d2l_utils/attempt_{attempt}", store)
        dist.init_process_group(
            backend, store=store, rank=rank, world_size=world_size, timeout=timeout
        )
    else:  # one process: an in-memory store, nothing to meet
        device = torch.device("cuda:0" if cuda else "cpu")
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return dist.get_rank(), dist.get_world_size(), device


@contextlib.contextmanager
def destroy_on_exit(device: torch.device) -> Iterator[None]:
    """Destroys the default process group (initialized already) when the block ends.

    Its backend goes last, after the group: the backend's destructor joins Gloo's worker threads,
    and a worker may still be freeing the last collective's tensor, which takes the GIL.  Run
    from the destructor of the group, or of DDP or a module holding it (all of which hold the
    GIL), that deadlocks (torch 2.4, the floor); the backend's own destructor releases the GIL
    first.  So let what holds the group go inside the block: build it in a function called there.
    """
    backend = dist.group.WORLD._get_backend(device)
    try:
        yield
    finally:
        dist.destroy_process_group()
        del backend


class ShardedLoader:
    """This rank's slice of every batch of a :class:`~d2l_utils.data.BatchLoader`.

    Every rank draws the same permutation from the loader's generator (the one a single process
    would use), cuts it into global batches of ``loader.batch_size`` and keeps the ``rank``-th of
    ``world_size`` contiguous pieces of each.  Concatenating the pieces in rank order gives the
    single-process batch exactly; a short last batch is split as evenly as possible.

    Yields ``(X, y, n)``: this rank's images ``(b, 1, H, W)`` and labels ``(b,)`` and the size
    ``n`` of the whole global batch.
    """

    def __init__(self, loader: BatchLoader, rank: int, world_size: int) -> None:
        if loader.batch_size < world_size:
            raise ValueError(
                f"batch_size={loader.batch_size} cannot be split over {world_size} processes"
            )
        self.loader, self.rank, self.world_size = loader, rank, world_size

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """One epoch (draws its permutation now), leaving out the first ``skip`` batches."""
        order, size = self.loader.order(), self.loader.batch_size  # the single process's order
        for start in range(skip * size, len(order), size):
            batch = order[start : start + size]
            X, y = self.loader.batch(batch.tensor_split(self.world_size)[self.rank])
            yield X, y, len(batch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        return self.epoch()


def make_model(name: str, sync_bn: bool) -> nn.Module:
    """:func:`~d2l_utils.models.get_model`'s ``name`` for Fashion-MNIST (1 channel, 10 classes).

    E.g. ``resnet18`` (torchvision's shape) or ``resnetN`` (CIFAR-style, ``N = 6n + 2``);
    ``sync_bn`` swaps its batch norms for ones synchronized over the process group.
    """
    net = get_model(name, **FASHION_MNIST)
    if sync_bn:
        net = convert_sync_batchnorm(net, dist.group.WORLD)
    return net


def load_state(path: Path | None) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or ``None`` where there is none (a run that starts afresh).

    Raises:
        CheckpointError: naming the file, if it is not a checkpoint of this script.
    """
    if path is None or not path.exists():
        return None
    return load_checkpoint(path, "distributed", required=STATE_KEYS)


def _check_resume(state: dict[str, Any], args: argparse.Namespace, world_size: int) -> None:
    """A clear error when the checkpoint cannot continue this run."""
    path = args.checkpoint
    if state["world_size"] != world_size:
        raise CheckpointError(
            f"checkpoint {path} was written by {state['world_size']} processes, this run has "
            f"{world_size}: each rank's shard of the data and its batch-norm statistics depend on "
            f"the number of processes. Restart with --nproc_per_node={state['world_size']} "
            "(times the nodes), or delete the checkpoint to start over."
        )
    for key in SAME_ON_RESUME:
        if state["settings"].get(key) != getattr(args, key):
            raise CheckpointError(
                f"checkpoint {path} was written with --{key.replace('_', '-')}="
                f"{state['settings'][key]}, this run has {getattr(args, key)}; use the same "
                "settings, or delete the checkpoint to start over."
            )


class _Fault:
    """``D2L_FAULT=RANK:EPOCH:STEP``: that rank dies before that step, in the first attempt."""

    def __init__(self, rank: int) -> None:
        spec = os.environ.get("D2L_FAULT", "")
        first_attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0
        self.at = None
        if spec and first_attempt:
            fault_rank, epoch, step = (int(v) for v in spec.split(":"))
            self.at = (epoch - 1, step) if fault_rank == rank else None

    def check(self, epoch: int, step: int) -> None:
        if self.at == (epoch, step):
            print(f"simulated failure: rank {dist.get_rank()} exits before step {step} of "
                  f"epoch {epoch + 1}", file=sys.stderr, flush=True)  # fmt: skip
            os._exit(1)  # as a crash does: no clean-up, no goodbye to the other ranks


class Trainer:
    """The state of one training run on one rank, and the loop over its epochs."""

    def __init__(self, args: argparse.Namespace, rank: int, world: int, device: torch.device):
        self.args, self.rank, self.world, self.device = args, rank, world, device
        self.train_iter, self.test_iter = self._data()
        torch.manual_seed(args.seed)  # the same initial weights on every rank
        self.dtype = getattr(torch, args.dtype)
        net = make_model(args.model, args.sync_bn).to(device, self.dtype)
        self.net = net
        self.ddp = DistributedDataParallel(
            net, device_ids=[device] if device.type == "cuda" else None
        )
        self.optimizer = torch.optim.SGD(
            net.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
        )
        self.epoch, self.step, self.steps_done = 0, 0, 0
        self.epoch_rng = self.train_iter.loader.generator.get_state()
        self.partial = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count so far
        self.history: list[dict[str, float]] = []
        self.resumed_from: list[int] | None = None
        self.fault = _Fault(rank)

    def _data(self) -> tuple[ShardedLoader, ShardedLoader]:
        args = self.args
        resize = 96 if args.model == "resnet18" else None  # the book's size for ResNet-18
        if args.batch_size % self.world:
            raise ValueError(
                f"--batch-size={args.batch_size} must be a multiple of the {self.world} processes"
            )
        # Every rank reads the data; only rank 0 says what the profile changed.
        with contextlib.redirect_stdout(sys.stdout if self.rank == 0 else io.StringIO()):
            train, test = load_data(args.batch_size, resize, shuffle_seed=args.seed)
        if args.train_images is not None and args.train_images < len(train.dataset):
            keep = stratified_indices(train.dataset.labels, args.train_images)
            if self.rank == 0:
                print(f"--train-images: {args.train_images:,} of {len(train.dataset):,} images")
            train = BatchLoader(
                train.dataset.subset(keep), args.batch_size, True, train.resize, args.seed
            )
        return ShardedLoader(train, self.rank, self.world), ShardedLoader(
            test, self.rank, self.world
        )

    def resume(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's ``state``, checked by :func:`_check_resume`."""
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step, self.steps_done = state["epoch"], state["step"], state["steps_done"]
        self.epoch_rng, self.history = state["epoch_rng"], state["history"]
        self.partial = state["partial"] if self.rank == 0 else torch.zeros(3, dtype=torch.float64)
        self.resumed_from = [self.epoch + 1, self.step]
        if self.rank == 0:
            print(f"resumed from the checkpoint at epoch {self.epoch + 1}, step {self.step}")

    def save(self, totals: torch.Tensor) -> None:
        """Rank 0 writes the checkpoint; ``totals`` are this rank's epoch metrics so far."""
        if self.args.checkpoint is None:
            return
        totals = totals.clone()
        dist.all_reduce(totals)  # the epoch's metrics over all ranks, so far
        if self.rank != 0:
            return
        settings = {key: getattr(self.args, key) for key in SAME_ON_RESUME}
        state = {
            "world_size": self.world, "settings": settings, "epoch": self.epoch,
            "step": self.step, "steps_done": self.steps_done, "epoch_rng": self.epoch_rng,
            "partial": totals, "history": self.history,
            "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
        }  # fmt: skip
        save_checkpoint(self.args.checkpoint, state, "distributed")

    def train_batch(self, X: torch.Tensor, y: torch.Tensor, n: int) -> torch.Tensor:
        """One SGD step on this rank's slice of a global batch of ``n``; returns its metrics."""
        X, y = X.to(self.device, self.dtype), y.to(self.device)
        # train_ch6's step with another loss: DDP averages the ranks' gradients (divides by the
        # world size), so scaling each rank's sum by world / n makes the update the gradient of
        # the mean loss over the global batch, even when the last batch splits unevenly.
        scale = self.world / n

        def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits, y, reduction="sum") * scale

        loss, logits = train_step(self.ddp, X, y, loss_fn, self.optimizer)
        correct = (logits.argmax(dim=1) == y).sum()
        return torch.stack([loss.double() / scale, correct.double(), torch.tensor(len(y))])

    def run_epoch(self) -> bool:
        """Train the rest of the current epoch; ``False`` if ``--max-steps`` stopped it early."""
        every, max_steps = self.args.checkpoint_every, self.args.max_steps
        self.train_iter.loader.generator.set_state(self.epoch_rng)  # this epoch's permutation
        totals, seen = self.partial.clone(), 0
        self.ddp.train()
        dist.barrier()
        start = time.perf_counter()
        for X, y, n in self.train_iter.epoch(skip=self.step):
            self.fault.check(self.epoch, self.step)
            totals += self.train_batch(X, y, n).cpu()
            self.step, self.steps_done, seen = self.step + 1, self.steps_done + 1, seen + len(y)
            if max_steps is not None and self.steps_done >= max_steps:
                return False
            if every and self.step % every == 0 and self.step < len(self.train_iter):
                self.save(totals)
        dist.barrier()
        self._end_epoch(totals, seen, time.perf_counter() - start)
        return True

    def _end_epoch(self, totals: torch.Tensor, seen: int, seconds: float) -> None:
        summed = torch.cat([totals, torch.tensor([seen], dtype=torch.float64)])
        dist.all_reduce(summed)
        loss_sum, correct, count, images = summed.tolist()
        record = {
            "epoch": self.epoch + 1,
            "train_loss": loss_sum / count,
            "train_acc": correct / count,
            "test_acc": self.evaluate(),
            "seconds": seconds,
            "images_per_sec": images / seconds,  # trained in this attempt, all ranks
        }
        self.history.append(record)
        if self.rank == 0:
            print(f"epoch {record['epoch']}: loss {record['train_loss']:.3f}, train acc "
                  f"{record['train_acc']:.3f}, test acc {record['test_acc']:.3f} "
                  f"({seconds:.1f} s, {images / seconds:,.0f} images/s)", flush=True)  # fmt: skip
        self.epoch, self.step = self.epoch + 1, 0
        self.epoch_rng = self.train_iter.loader.generator.get_state()  # next epoch's start
        self.partial = torch.zeros(3, dtype=torch.float64)
        self.save(self.partial)

    def sync_buffers(self) -> None:
        """Give every rank rank 0's running statistics.

        DDP copies them from rank 0 before each training forward, so after the last step each
        rank still holds its own update; unsynchronized batch norms differ there.
        """
        for buffer in self.net.buffers():
            dist.broadcast(buffer, src=0)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Test accuracy: each rank scores its shard, the counts are summed over the ranks."""
        self.sync_buffers()
        self.net.eval()
        counts = torch.zeros(2, dtype=torch.float64)
        for X, y, _ in self.test_iter:
            pred = self.net(X.to(self.device, self.dtype)).argmax(dim=1).cpu()
            counts += torch.tensor([(pred == y).sum().item(), len(y)], dtype=torch.float64)
        dist.all_reduce(counts)
        self.net.train()
        return counts[0].item() / counts[1].item()

    def finish(self) -> dict[str, Any]:
        """The run's results; rank 0 writes them (``--out``) and the weights (``--weights``)."""
        self.sync_buffers()
        flat = torch.cat([p.detach().reshape(-1) for p in self.net.parameters()])
        reference = flat.clone()
        dist.broadcast(reference, src=0)
        spread = (flat - reference).abs().max()
        dist.all_reduce(spread, op=dist.ReduceOp.MAX)  # the largest difference to rank 0's
        args = self.args
        results = {
            "world_size": self.world, "backend": dist.get_backend(), "device": self.device.type,
            "threads": torch.get_num_threads(), "profile": get_profile().name,
            "model": args.model, "sync_bn": args.sync_bn, "batch_size": args.batch_size,
            "per_rank_batch": args.batch_size // self.world, "lr": args.lr, "dtype": args.dtype,
            "train_images": len(self.train_iter.loader.dataset),
            "test_images": len(self.test_iter.loader.dataset), "steps": self.steps_done,
            "restarts": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
            "resumed_from": self.resumed_from, "max_weight_diff_between_ranks": spread.item(),
            "history": self.history,
        }  # fmt: skip
        if self.rank == 0 and args.weights is not None:
            args.weights.parent.mkdir(parents=True, exist_ok=True)
            # Sync BN keeps batch norm's names: the file rebuilds as plain get_model(args.model).
            # The size trained on is the loader's: the run profile may have made it smaller.
            size = self.train_iter.loader.resize
            save_model(self.net, args.weights, arch=args.model, arch_kwargs=FASHION_MNIST,
                       resize=None if size is None else size[0])  # fmt: skip
        if self.rank == 0 and args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train with the command line ``argv`` on this rank; returns the run's results."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rank, world, device = init_distributed()
    with destroy_on_exit(device):
        return _train(args, rank, world, device)  # the trainer is gone when it returns


def _train(args: argparse.Namespace, rank: int, world: int, device: torch.device) -> dict[str, Any]:
    """:func:`main` within the process group: its trainer is gone when this returns."""
    state = load_state(args.checkpoint)  # every rank reads it; a bad file stops all, now
    if state is not None:
        _check_resume(state, args, world)
    trainer = Trainer(args, rank, world, device)
    if state is not None:
        trainer.resume(state)
    quiet = contextlib.redirect_stdout(io.StringIO()) if rank else contextlib.nullcontext()
    with quiet:  # the profile's epoch cap, said once (on rank 0)
        num_epochs = capped_epochs(args.epochs, get_profile())
    if rank == 0:
        print(f"{world} process{'es' if world > 1 else ''} ({dist.get_backend()}, "
              f"{device.type}), {args.model}, global batch {args.batch_size} = {world} x "
              f"{args.batch_size // world}, sync BN {'on' if args.sync_bn else 'off'}",
              flush=True)  # fmt: skip
    while trainer.epoch < num_epochs and trainer.run_epoch():
        pass
    return trainer.finish()


if __name__ == "__main__":
    try:
        main()
    except CheckpointError as exc:  # a bad --checkpoint file: one line, no traceback
        sys.exit(f"d2l_utils.distributed: error: {exc}")
