"""Training on several GPUs: one process per GPU, started by ``torchrun``, with DistributedDataParallel.

    torchrun --nproc_per_node 8 -m diffedu.train --dataset cifar10 --preset ddpm_cifar10 --flip \
        --batch-size 512 --minutes 120 --out runs/cifar10.pt

torchrun starts W copies of the command and gives each one its place in the environment (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``). ``init_distributed`` reads them and
joins the process group: NCCL on CUDA GPUs, Gloo on the CPU. Then one step of data parallelism is

    every rank r:  the same global batch of B indices, t and eps (one generator, seeded alike everywhere)
                   keeps its slice of B / W rows (``diffedu.device_data.rank_slice``)
                   g_r = grad of its mean loss on that slice
    all-reduce:    g = (g_0 + ... + g_{W-1}) / W      the gradient of the mean loss over all B rows
    every rank:    the same clipped AdamW step, so the weights stay identical everywhere

which is exactly the step one process would take on the whole batch (up to float rounding).
``DistributedDataParallel`` does the all-reduce during the backward pass, bucket by bucket, so the
communication overlaps the computation. The EMA, checkpoints, progress bar and previews live on rank 0
only; all ranks read a checkpoint when they resume (so it must be on a file system they share).
Without torchrun (``WORLD_SIZE`` unset or 1) nothing here does anything, and the loop is the one-GPU loop.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["DistributedInfo", "all_reduce_mean", "any_rank", "barrier", "cleanup", "current", "init_distributed", "wrap_model"]

ENV_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistributedInfo:
    """Where this process stands: its ``rank`` of ``world_size``, and the device it trains on."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that keeps the EMA, writes checkpoints and prints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def backend_for(device: torch.device) -> str:
    """The collective backend: "nccl" for CUDA GPUs, "gloo" for the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(device: torch.device | str | None = None, *, timeout_minutes: float = 30.0) -> DistributedInfo:
    """Join the process group that torchrun set up, from its environment variables; return this process's place.

    ``device``: None picks ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU. Without torchrun
    (``WORLD_SIZE`` unset or 1) returns the one-process info and initialises nothing. Calling it again
    once initialised returns the current info.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if world_size <= 1:
        return DistributedInfo(0, 0, 1, device)
    missing = [k for k in ENV_VARS if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world_size} but {', '.join(missing)} not set: start the command with "
                           "torchrun (e.g. torchrun --nproc_per_node 2 -m diffedu.train ...), which sets them all")
    if device.type == "cuda":
        if device.index >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local_rank} needs GPU {device.index}, but only "
                               f"{torch.cuda.device_count()} are visible; use --nproc_per_node <= the GPU count")
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend_for(device), init_method="env://",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return DistributedInfo(dist.get_rank(), local_rank, dist.get_world_size(), device)


def current(device: torch.device | str | None = None) -> DistributedInfo:
    """This process's place in an initialised process group, or the one-process info when there is none."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if not (dist.is_available() and dist.is_initialized()):
        return DistributedInfo(0, 0, 1, device)
    return DistributedInfo(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size(), device)


def wrap_model(model: nn.Module, info: DistributedInfo) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel (gradients averaged over ranks), or itself alone.

    DDP broadcasts rank 0's weights to every rank when it wraps, so all ranks start the same.
    """
    if not info.enabled:
        return model

    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def all_reduce_mean(x: Tensor, info: DistributedInfo) -> Tensor:
    """The mean of ``x`` over all ranks (a new tensor; ``x`` itself when there is one rank)."""
    if not info.enabled:
        return x
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)  # Gloo has no AVG
    return out / info.world_size


def any_rank(flags: list[bool], info: DistributedInfo) -> list[bool]:
    """For each flag, whether it is true on any rank (one all-reduce): how ranks agree to stop together."""
    if not info.enabled:
        return list(flags)
    t = torch.tensor([float(f) for f in flags], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def barrier(info: DistributedInfo) -> None:
    """Wait until every rank gets here (e.g. until rank 0 has written a checkpoint that all will read)."""
    if info.enabled:
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (at the end of a torchrun command); nothing without one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
