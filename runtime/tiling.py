"""Sliding-window inference for images larger than the model's working size: overlapping tiles, Gaussian-blended.

    probs = predict_tiled(x, valid_hw, (512, 512), run=run_tiles, overlap=0.5, batch=4)

A model trained on native-resolution patches sees a large image the way it was trained: as windows of the patch
size at full resolution, instead of the whole image shrunk until small structures vanish. As in nnU-Net, each
tile's probabilities are weighted by a Gaussian centred on the tile (sigma = 1/8 of its size), so the borders of a
tile, where the network saw the least context, count least, and the weighted sum is divided by the summed weights.
Tiles go through the model `batch` at a time: the memory held is the output canvas plus one batch of tiles,
whatever the image size. Pure numpy; the model call is injected. No torch.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

SIGMA_SCALE = 1 / 8  # nnU-Net's Gaussian: sigma = tile size / 8
MIN_WEIGHT = 1e-3  # a tile's corner weight floor (relative to its centre), so every pixel has some weight


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of size `tile` covering [0, length): evenly spaced, the last one flush with the end,
    neighbours sharing at least `overlap` of a tile. One tile (at 0) when `length` <= `tile`."""
    if length <= tile:
        return [0]
    step = max(1, int(tile * (1 - overlap)))
    count = -(-(length - tile) // step) + 1  # ceil
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def tile_boxes(hw: tuple[int, int], tile_hw: tuple[int, int], overlap: float) -> list[tuple[int, int]]:
    """(y0, x0) of every tile over an (h, w) image, row by row."""
    return [(y, x) for y in tile_starts(hw[0], tile_hw[0], overlap) for x in tile_starts(hw[1], tile_hw[1], overlap)]


def gaussian_weights(tile_hw: tuple[int, int], sigma_scale: float = SIGMA_SCALE) -> np.ndarray:
    """(th, tw) float32 Gaussian centred on the tile, 1 at the centre, at least MIN_WEIGHT at the corners."""
    axes = []
    for size in tile_hw:
        coords = np.arange(size, dtype=np.float64) - (size - 1) / 2
        axes.append(np.exp(-0.5 * (coords / max(size * sigma_scale, 1e-6)) ** 2))
    weights = np.outer(axes[0], axes[1])
    return np.maximum(weights / weights.max(), MIN_WEIGHT).astype(np.float32)


def predict_tiled(x: np.ndarray, valid_hw: tuple[int, int], tile_hw: tuple[int, int],
                  run: Callable[[list[np.ndarray]], list[np.ndarray]], overlap: float = 0.5,
                  batch: int = 4) -> np.ndarray:
    """Gaussian-blended (C, h, w) probabilities of the valid (h, w) region of `x` (3, H', W'), from tiles of
    `tile_hw` run through `run` (a list of (3, th, tw) tensors -> the same number of (C, th, tw) probabilities).

    The tile is clipped to the valid region where the image is smaller than it in one direction (that side is then
    one tile, padded as `x` is); tiles never reach into `x`'s padding otherwise."""
    h, w = valid_hw
    th, tw = min(tile_hw[0], x.shape[1]), min(tile_hw[1], x.shape[2])
    region = (max(h, th), max(w, tw))  # where tiles may lie: the valid region, or the padded tensor when smaller
    boxes = tile_boxes(region, (th, tw), overlap)
    weights = gaussian_weights((th, tw))
    total, norm = None, np.zeros(region, np.float32)
    for start in range(0, len(boxes), max(1, batch)):
        chunk = boxes[start:start + batch]
        outputs = run([np.ascontiguousarray(x[:, y:y + th, z:z + tw]) for y, z in chunk])
        for (y, z), probs in zip(chunk, outputs):
            if total is None:
                total = np.zeros((probs.shape[0], *region), np.float32)
            total[:, y:y + th, z:z + tw] += probs * weights
            norm[y:y + th, z:z + tw] += weights
    return (total / norm)[:, :h, :w]
