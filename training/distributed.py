"""torchrun (DDP) helpers. Without torchrun (no WORLD_SIZE > 1) every helper is the single-process identity."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from config import Config


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the only process that logs, writes checkpoints, metrics, the cache and the export."""
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a float64 CPU tensor over all ranks (gloo and NCCL both accept it on its device)."""
    if not dist.is_initialized():
        return values
    backend_device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    summed = values.to(backend_device)
    dist.all_reduce(summed)
    return summed.cpu()


def broadcast(obj):
    """Rank 0's obj on every rank (a decision only rank 0 makes, such as a TIME_BUDGET plan); obj in one process."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] under torchrun; [obj] in a single process."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shard(items: list) -> list:
    """This rank's contiguous slice of an evaluation list, unpadded, so the summed metrics count
    every sample exactly once (DistributedSampler would pad with repeats)."""
    return [items[i] for i in np.array_split(np.arange(len(items)), world_size())[rank()]]


@contextlib.contextmanager
def distributed(cfg: Config, environ=os.environ):
    """Join the torchrun process group (RANK/WORLD_SIZE/MASTER_ADDR from the launcher) for the run."""
    if int(environ.get("WORLD_SIZE", "1")) <= 1:
        yield
        return
    cuda = cfg.device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
        dist.barrier()  # every rank done before any tears down: gloo aborts a rank whose peer left first
    finally:
        dist.destroy_process_group()


def ddp_device(device: torch.device) -> torch.device:
    """One GPU per process under torchrun: cuda:LOCAL_RANK (torch.cuda.set_device in distributed())."""
    if dist.is_initialized() and device.type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return device


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if not dist.is_initialized():
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def sync_buffers(model: torch.nn.Module) -> None:
    """BatchNorm running stats drift apart per rank during training; evaluate and save rank 0's."""
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
