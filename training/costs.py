"""What a training image costs on this machine, for the recipe's plan (training/recipe.py): a few real optimizer steps
of the configured model on random data at one size, scaled to other sizes by their pixels.

    image_s = image_seconds(cfg, device, aspect=1.33)     # seconds per training image at a given long side
    image_s(256), image_s(384)

Convolutional networks cost in proportion to the pixels they see, so one measurement at SIZE covers the others
(the epoch-level plan in training/budget.py measures the real loader afterwards and corrects the epochs).
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from config import Config
from model import build_loss, build_model
from training.precision import autocast, memory_format
from utils import LOG

SIZE = 256
WARMUP, STEPS = 2, 3


def image_seconds(cfg: Config, device: torch.device, aspect: float = 1.0) -> Callable[[int], float]:
    """seconds(size): one training image of long side `size` and width/height ratio `aspect` (or its inverse), its
    forward, backward and optimizer step, as measured for a batch of BATCH_SIZE at SIZE x SIZE."""
    model = build_model(cfg.arch, cfg.encoder, None, cfg.classes).to(device).train()
    model = model.to(memory_format=torch.channels_last) if cfg.channels_last else model
    loss_fn = build_loss(cfg.classes, cfg.dice_weight, cfg.bce_weight)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(cfg.seed)
    images = torch.randn(cfg.batch_size, 3, SIZE, SIZE, generator=generator).to(device)
    masks = (torch.rand(cfg.batch_size, 1, SIZE, SIZE, generator=generator) > 0.5).float() if cfg.classes == 1 else \
        torch.randint(0, cfg.classes, (cfg.batch_size, SIZE, SIZE), generator=generator)
    masks = masks.to(device)
    marks = []
    for _ in range(WARMUP + STEPS):
        with autocast(cfg, device):
            logits = model(memory_format(cfg, images))
        loss = loss_fn(logits.float(), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # waits for the device
        marks.append(time.perf_counter())
    per_pixel = (marks[-1] - marks[WARMUP - 1]) / STEPS / (cfg.batch_size * SIZE * SIZE)
    ratio = max(aspect, 1 / aspect) if aspect > 0 else 1.0
    LOG.info("recipe: one %d px training image costs %.3f s on this machine (%s)", SIZE,
             per_pixel * SIZE * SIZE, device)
    del model, optimizer
    return lambda size: per_pixel * size * size / ratio
