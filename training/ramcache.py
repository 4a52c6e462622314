"""CACHE=auto|ram|disk: where training reads the cached images from.

- disk: every sample is decoded from its PNG in WORK_DIR/images and WORK_DIR/masks when it is drawn, by the
  DataLoader workers. RAM stays flat however large the set.
- ram: the whole cache is decoded once, before the first fold, into one buffer. Every CacheEntry then carries
  read-only views of its image and mask (CacheEntry.pixels), which SegDataset.read returns. Under the fork start
  method (Linux) the DataLoader workers share the buffer's pages, which nothing writes; under spawn or
  forkserver each worker gets its own copy of its loader's share.
- auto (the default): ram when the buffer, times the copies the processes will hold, takes at most half of the
  memory available now; otherwise disk, with the reason in the log.

This is Ultralytics' `cache=ram` for a segmentation cache: it matters where the model steps faster than a few
workers decode PNGs (a GPU). The pixels are those the PNGs decode to, so it changes nothing that is trained, and
the config hash leaves it out. `python bench/train_speed.py --variants loader,loader+ram` measures the loader.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Callable, Iterable

import cv2
import numpy as np

from dataset import CacheEntry, png_hw
from utils import LOG, UserError, read_image

HEADROOM = 0.5  # auto: the decoded cache may take at most this share of the available memory
DECODE_THREADS = 8  # cv2 decodes with the GIL released


def available_memory() -> int | None:
    """Bytes the OS can hand out without swapping (Linux MemAvailable; elsewhere the free pages), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def copies(workers: int, local_world: int = 1, start_method: str | None = None) -> int:
    """How many copies of the buffer this machine's processes hold: one per DDP rank, and under a start method
    other than fork, one more per DataLoader worker (the train and val workers each unpickle their share)."""
    start_method = start_method or multiprocessing.get_start_method()
    return local_world * (1 if start_method == "fork" or workers == 0 else 1 + workers)


def gigabytes(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GB"


def choose(mode: str, need: int, available: int | None, n_copies: int = 1) -> tuple[str, str]:
    """('ram' or 'disk', the reason). `need`: the decoded cache's bytes. CACHE=ram that cannot fit in the available
    memory stops here, before anything is allocated, rather than swapping or being killed halfway."""
    total = need * n_copies
    held = gigabytes(total) + (f" ({n_copies} copies)" if n_copies > 1 else "")
    if mode == "disk":
        return "disk", "CACHE=disk"
    if mode == "ram":
        if available is not None and total > available:
            raise UserError(f"CACHE=ram: the decoded cache needs {held} but only {gigabytes(available)} of memory "
                            "is available; use CACHE=disk (or auto), fewer WORKERS, or a smaller INPUT_SIZE")
        return "ram", f"CACHE=ram, {held}"
    if available is None:
        return "disk", "CACHE=auto and the available memory is unknown"
    if total <= HEADROOM * available:
        return "ram", f"CACHE=auto: {held} is within half of the {gigabytes(available)} available"
    return "disk", f"CACHE=auto: {held} is more than half of the {gigabytes(available)} available"


def decoded_bytes(shapes: list[tuple[int, int]]) -> int:
    """RGB image plus mask, one byte per value."""
    return sum(h * w * 4 for h, w in shapes)


def load(entries: list[CacheEntry], max_pixels: int | None = None,
         progress: Callable[[Iterable], Iterable] = lambda it: it,
         shapes: list[tuple[int, int]] | None = None) -> list[CacheEntry]:
    """The entries, each with `pixels`: read-only (H, W, 3) RGB and (H, W) mask views of one uint8 buffer, decoded
    by a thread pool (`shapes`: the PNGs' (H, W), read from their headers if not given). A cached image or mask
    whose size differs from its PNG header's stops with the file's name."""
    shapes = shapes or [png_hw(e.image) for e in entries]
    starts = np.concatenate([[0], np.cumsum([h * w * 4 for h, w in shapes], dtype=np.int64)])
    buffer = np.empty(int(starts[-1]), np.uint8)

    def views(i: int, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        (h, w), start = shapes[i], int(starts[i])
        return (base[start:start + h * w * 3].reshape(h, w, 3),
                base[start + h * w * 3:start + h * w * 4].reshape(h, w))

    def fill(i: int) -> None:
        entry, (image_view, mask_view) = entries[i], views(i, buffer)
        image = read_image(entry.image, max_pixels)
        mask = cv2.imread(str(entry.mask), cv2.IMREAD_GRAYSCALE)
        if image.shape != image_view.shape or mask is None or mask.shape != mask_view.shape:
            raise UserError(f"cache entry {entry.key}: {entry.image.name} and {entry.mask.name} do not match their "
                            "headers' size; delete WORK_DIR/images, WORK_DIR/masks and the manifest to rebuild")
        image_view[...] = image
        mask_view[...] = mask

    with ThreadPoolExecutor(min(DECODE_THREADS, os.cpu_count() or 1)) as pool:
        for _ in progress(pool.map(fill, range(len(entries)))):
            pass
    buffer.flags.writeable = False  # views taken from here on are read-only: an in-place transform raises
    return [replace(entry, pixels=views(i, buffer)) for i, entry in enumerate(entries)]


def apply(entries: list[CacheEntry], mode: str, workers: int, max_pixels: int | None = None,
          progress: Callable[[Iterable], Iterable] = lambda it: it) -> list[CacheEntry]:
    """The entries as training should read them under CACHE=`mode` (module docstring); logs the choice."""
    shapes = [png_hw(e.image) for e in entries]
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    chosen, why = choose(mode, decoded_bytes(shapes), available_memory(), copies(workers, local_world))
    if chosen == "disk":
        LOG.info("cache: images decoded from disk per sample (%s)", why)
        return entries
    start = time.monotonic()
    loaded = load(entries, max_pixels, progress, shapes)
    LOG.info("cache: %d images decoded into memory in %.1f s (%s)", len(loaded), time.monotonic() - start, why)
    return loaded
