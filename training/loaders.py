"""The DataLoaders of a fold: whole images padded to a square (BATCH_SHAPE=square), batched by shape (rect), or
random patches (TRAIN_PATCH), with the samplers DDP and the rect batches need. training/loop.py builds a fold's
loaders here, and out-of-fold scoring builds its val loader here too."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from dataset import (
    AspectBatchSampler, CacheEntry, PatchDataset, SegDataset, get_transform, pad_collate, png_hw, seed_worker,
)
from training.distributed import rank, shard

if TYPE_CHECKING:
    from training.loop import Task


def batch_shape(task: Task) -> str | None:
    """BATCH_SHAPE where it applies: 'square' (whole images padded to an INPUT_SIZE square) or 'rect' (batched by
    shape, AspectBatchSampler); None with TRAIN_PATCH and for the gate. Outside 'square', batches are padded to a
    multiple of 32 by pad_collate, as the runtime pads."""
    return task.cfg.batch_shape if task.pads_to_square and not task.cfg.train_patch else None


def make_dataset(task: Task, entries: list[CacheEntry], train: bool) -> SegDataset:
    """Whole images padded to an INPUT_SIZE square (BATCH_SHAPE=square); with TRAIN_PATCH, random HxW crops for
    training; otherwise (rect, TRAIN_PATCH evaluation) whole images padded to /32. The gate keeps whole images as
    cached. Augmentation and crops are seeded per rank."""
    cfg = task.cfg
    patch = task.patch_hw()
    transform = get_transform(train, cfg.input_size, seed=cfg.seed + rank(),
                              patch=patch is not None or batch_shape(task) == "rect", square=task.pads_to_square,
                              augment=cfg.augment)
    if patch and train:
        return PatchDataset(entries, transform, cfg.classes, patch, cfg.patches_per_image, seed=cfg.seed + rank(),
                            max_pixels=cfg.max_image_pixels)
    return SegDataset(entries, transform, cfg.classes, max_pixels=cfg.max_image_pixels)


def make_loader(task: Task, entries: list[CacheEntry], indices: list[int], train: bool, device) -> DataLoader:
    """Under DDP: training through a DistributedSampler (set_epoch each epoch), evaluation on this
    rank's unpadded shard. TRAIN_PATCH evaluation and the gate batch whole images of different sizes
    (pad_collate)."""
    cfg = task.cfg
    dataset = make_dataset(task, [entries[i] for i in (indices if train else shard(indices))], train)
    common = dict(collate_fn=None if batch_shape(task) == "square" else pad_collate, num_workers=cfg.workers,
                  pin_memory=cfg.pin_memory and device.type == "cuda", persistent_workers=cfg.workers > 0,
                  worker_init_fn=seed_worker)
    if train and batch_shape(task) == "rect":
        world = dist.get_world_size() if dist.is_initialized() else 1
        batches = AspectBatchSampler([png_hw(e.image) for e in dataset.entries], cfg.batch_size, seed=cfg.seed,
                                     drop_last=len(dataset) > cfg.batch_size * world, rank=rank(), world=world)
        return DataLoader(dataset, batch_sampler=batches, **common)
    sampler = DistributedSampler(dataset, shuffle=True, seed=cfg.seed) if train and dist.is_initialized() else None
    return DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=train and sampler is None, sampler=sampler,
        generator=torch.Generator().manual_seed(cfg.seed) if train else None,
        drop_last=train and len(sampler or dataset) > cfg.batch_size, **common)
