"""Data-parallel training on PyTorch's own engine: ``torchrun``, ``torch.distributed`` and
``DistributedDataParallel`` (NCCL on GPUs, Gloo on CPUs).

``torchrun --nproc-per-node N -m pyrovae train ...`` starts N processes (ranks) with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in their environment;
:func:`from_environment` reads them and :func:`init` joins the process group (``env://``).

How a step matches the single-process step of the full batch. With W ranks and a global
batch of B data (``--batch-size``), each rank draws B / W data from its own shard of the
training set and computes the loss L_r = -sum over its B / W data of the per-datum bound.
DDP averages gradients over ranks, so each rank back-propagates W * L_r: the all-reduced
gradient is (1/W) sum_r W grad L_r = grad sum_r L_r, the gradient of the summed loss of the
B data, exactly what one process computes for that batch. Adam then takes the same step on
every rank (same gradient, same state), so the parameters stay identical; DDP also
broadcasts rank 0's parameters once at the start.

Shards: rank r holds training images r, r + W, r + 2W, ... cut to floor(N / W) each, so
every rank takes the same number of steps per epoch (a rank with one batch more would wait
forever in the all-reduce); test images are split the same way without the cut, and test
metrics are reduced as sums over all of them. Each rank draws its own noise and batch order:
its RNG is reseeded at every epoch from (seed, epoch, rank), so ranks never share draws and a
resumed run continues with the streams it would have had.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from pyrovae.inference.estimators import Estimator
from pyrovae.inference.evaluation import LogLikelihood
from pyrovae.inference.pair import ModelGuidePair

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Distributed:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its node;
    ``seed`` is the base of the per-rank, per-epoch RNG streams (:func:`rank_seed`)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    seed: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that writes files and logs progress."""
        return self.rank == 0


SINGLE = Distributed()


class RankFailure(RuntimeError):
    """Training on one rank failed, typically because another rank died or stalled past the
    timeout (the message says which rank saw what; the other ranks' logs say why)."""

    def __init__(self, ctx: Distributed, timeout_s: float, error: BaseException):
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        super().__init__(
            f"rank {ctx.rank} of {ctx.world_size} stopped: {first_line} (when another rank "
            f"dies or stalls for {timeout_s:g} s, the others stop like this; see that "
            "rank's log)")


def from_environment(environ=os.environ) -> Distributed:
    """The ranks ``torchrun`` set; a single process when ``WORLD_SIZE`` is unset or 1."""
    if "WORLD_SIZE" not in environ:
        return SINGLE
    if environ["WORLD_SIZE"] != "1" and "RANK" not in environ:
        raise ValueError("WORLD_SIZE is set but RANK is not: launch with torchrun (or set "
                         "RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/MASTER_PORT)")
    try:
        values = {name: int(environ.get(name, "0")) for name in ENV_VARS}
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers, got "
                         + ", ".join(f"{n}={environ.get(n)!r}" for n in ENV_VARS)) from None
    ctx = Distributed(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
    if ctx.world_size < 1 or not 0 <= ctx.rank < ctx.world_size:
        raise ValueError(f"RANK={ctx.rank} is not in [0, WORLD_SIZE={ctx.world_size})")
    return ctx


def device_for(ctx: Distributed, device: torch.device) -> torch.device:
    """One GPU per rank on its node (``cuda:LOCAL_RANK``); the CPU stays the CPU."""
    if device.type != "cuda" or not ctx.enabled:
        return device
    if torch.cuda.device_count() == 1:  # e.g. CUDA_VISIBLE_DEVICES gives each rank one GPU
        return torch.device("cuda", 0)
    if ctx.local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK {ctx.local_rank} has no GPU: this node has "
                         f"{torch.cuda.device_count()}; start at most that many processes "
                         "per node")
    return torch.device("cuda", ctx.local_rank)


def init(ctx: Distributed, device: torch.device, timeout_s: float) -> bool:
    """Join the process group (NCCL for CUDA, else Gloo); ``True`` if this call created it
    (a group the caller already made is used as it is). With Gloo, a rank that stops
    answering makes the others' next collective fail after ``timeout_s`` seconds instead of
    hanging; with NCCL, PyTorch's watchdog aborts the processes after it."""
    if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
        raise ValueError(f"the distributed timeout must be > 0 seconds, got {timeout_s!r}")
    if not ctx.enabled or dist.is_initialized():
        return False
    options = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        options["device_id"] = device  # NCCL's barrier on this rank's GPU
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            rank=ctx.rank, world_size=ctx.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s), **options)
    return True


def shutdown(created: bool) -> None:
    """Leave the process group if :func:`init` created it."""
    if created and dist.is_initialized():
        dist.destroy_process_group()


def check_shardable(n: int, ctx: Distributed, what: str) -> None:
    """``ValueError`` (on every rank alike) unless each of the W ranks gets >= 1 of n data."""
    if n < ctx.world_size:
        raise ValueError(f"{what} has {n} images, fewer than the {ctx.world_size} ranks: "
                         "every rank needs at least one")


def barrier(ctx: Distributed) -> None:
    if ctx.enabled:
        dist.barrier()


def shard(x: torch.Tensor, ctx: Distributed, equal: bool) -> torch.Tensor:
    """Rank ``r``'s data ``x[r::W]``; with ``equal``, cut to ``len(x) // W`` on every rank."""
    if not ctx.enabled:
        return x
    part = x[ctx.rank::ctx.world_size]
    return part[:len(x) // ctx.world_size] if equal else part


def local_batch_size(batch_size: int, ctx: Distributed) -> int:
    """Each rank's share of the global batch; ``ValueError`` unless W divides it."""
    if batch_size % ctx.world_size:
        raise ValueError(f"batch size {batch_size} is not divisible by the {ctx.world_size} "
                         "ranks; the global batch is split evenly over them")
    return batch_size // ctx.world_size


def all_reduce(tensor: torch.Tensor, ctx: Distributed, op: str = "sum") -> torch.Tensor:
    """In place over ranks (``"sum"``, ``"max"`` or ``"min"``); a no-op in one process."""
    if ctx.enabled:
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        dist.all_reduce(tensor, op=ops[op])
    return tensor


def reduce_mean(mean: float, count: int, ctx: Distributed, device: torch.device) -> float:
    """The mean over all ranks' data of per-rank means over ``count`` data each."""
    if not ctx.enabled:
        return mean
    total = torch.tensor([mean * count, count], dtype=torch.float64, device=device)
    value_sum, n = all_reduce(total, ctx, "sum").tolist()
    return value_sum / n


def gather_log_likelihood(estimate: LogLikelihood, ctx: Distributed) -> LogLikelihood:
    """Every rank's per-datum estimates joined (rank by rank), on every rank."""
    if not ctx.enabled:
        return estimate
    fields = ("per_datum", "per_datum_mc_se", "per_datum_ess")
    mine = {name: getattr(estimate, name).cpu() for name in fields}
    parts: list[dict | None] = [None] * ctx.world_size
    dist.all_gather_object(parts, mine)
    return dataclasses.replace(estimate, **{name: torch.cat([p[name] for p in parts])
                                            for name in fields})


def rank_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of rank ``rank``'s RNG in epoch ``epoch`` (1-based), in [0, 2^32): distinct for
    every (epoch, rank) pair with rank < 4,096 and epoch < 1,000,000."""
    return ((seed * 1_000_003 + epoch) * 4_096 + rank) % 2 ** 32


class LossModule(nn.Module):
    """The estimator's loss as a module, so DDP can hook its parameters' gradients."""

    def __init__(self, vae: ModelGuidePair, estimator: Estimator):
        super().__init__()
        self.vae = vae
        self.estimator = estimator

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.estimator.differentiable_loss(self.vae.model, self.vae.guide, *args)


def ddp_loss(vae: ModelGuidePair, estimator: Estimator, device: torch.device):
    """``loss(x)`` through ``DistributedDataParallel``: backward all-reduces (averages) the
    gradients. Call only after :func:`init`."""
    return nn.parallel.DistributedDataParallel(
        LossModule(vae, estimator), device_ids=[device.index] if device.type == "cuda"
        else None)
