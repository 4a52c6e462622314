"""Batch runs over image items: decode in background threads, batched model, write in background threads.

The model never waits on disk: `prefetch` keeps decoded images ahead of it, and masks, overlays
and probability maps are written by a second pool while the next batch runs. Rows still reach
summary.csv in input order, flushed one by one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path

import numpy as np

from runtime.postprocess import class_palette, colorize, draw_legend, make_overlay, parse_color
from runtime.report import CsvLog, csv_columns, error_row, fill_row, find_gt, new_row, score, write_metrics
from runtime.sources import ZIP_MAX_BYTES, ZIP_MAX_ENTRIES, ZIP_MAX_RATIO, Item, extract_zip, pack_outputs
from utils import IGNORE_INDEX, LOG, MAX_IMAGE_PIXELS, UserError, interrupts_deferred, read_image, write_png

LOCK_NAME = ".lock"
GATED_OVERLAYS = ("png", "fast", "skip")

@dataclass(frozen=True)
class RunOptions:
    """Output and source settings of one run (the model-side settings live in the Segmenter)."""

    alpha: float = 0.5  # overlay opacity
    color: tuple = (255, 0, 0)  # overlay colour of binary masks (RGB)
    gt_dir: str | None = None  # ground-truth folder: adds dice/iou and metrics.json
    ignore_index: int | None = IGNORE_INDEX  # the void label of the ground truth: left out of dice/iou
    save_probs: bool = False  # OUT/probs/<name>.npy, float16 (C, H, W)
    batch_size: int = 1  # images per session.run (folders, lists, ZIPs)
    io_threads: int = 2  # background threads decoding and, separately, writing
    zip_max_mb: float = ZIP_MAX_BYTES / 2**20
    zip_max_ratio: float = ZIP_MAX_RATIO
    zip_max_entries: int = ZIP_MAX_ENTRIES
    video_max_side: int = 0  # downscale frames so the long side fits (0: as is)
    vid_stride: int = 1  # infer every Nth frame, reuse the last mask between
    max_frames: int = 0  # 0: all
    view_img: bool = False
    max_pixels: int = MAX_IMAGE_PIXELS  # images claiming more (in their header) are refused undecoded
    follow_symlinks: bool = False  # folders: read symlinks that lead outside the folder
    gated_overlay: str = "fast"  # overlay of an image the gate judged clean: fast (uncompressed PNG), png or skip
    class_names: tuple = ()  # the model's classes (class 0 first); filled from its metadata by run_items
    background: bool = True  # False: class 0 is a real class (scored, drawn, counted); from the model's metadata

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise UserError(f"--alpha {self.alpha} is not valid; use a number from 0 (invisible) to 1 (opaque), e.g. 0.5")
        object.__setattr__(self, "color", parse_color(self.color))
        for name in ("batch_size", "io_threads", "vid_stride"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)} is not valid; use 1 or more")
        if int(self.max_pixels) < 1:
            raise UserError(f"--max-pixels {self.max_pixels} is not valid; use a positive pixel count, e.g. 100000000")
        for name in ("video_max_side", "max_frames"):
            if int(getattr(self, name)) < 0:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)} is not valid; use 0 (off) or more")
        if self.gated_overlay not in GATED_OVERLAYS:
            raise UserError(f"--gated-overlay {self.gated_overlay!r} is not valid; use one of: "
                            f"{', '.join(GATED_OVERLAYS)}")
        if self.zip_max_mb <= 0 or self.zip_max_ratio <= 1:
            raise UserError("--zip-max-mb must be > 0 and --zip-max-ratio > 1")


def run_zip(segmenter, zip_path: Path, output: Path, options: RunOptions, gt_index: dict, progress,
            writers=None) -> dict:
    """Extract safely into a temporary folder, segment, and pack OUT/predictions.zip."""
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".unzipped-", dir=output) as tmp:
        try:
            items = extract_zip(zip_path, Path(tmp), int(options.zip_max_mb * 2**20), options.zip_max_ratio,
                                options.zip_max_entries)
        except UserError as exc:  # refused before anything was written: one error row
            LOG.warning("%s: %s", zip_path.name, exc)
            with CsvLog(output / "summary.csv") as log:
                log.write(error_row(zip_path.name, str(exc)))
            result = summarize([error_row(zip_path.name, str(exc))], [], output)
        else:
            result = run_items(segmenter, items, output, options, gt_index, progress, writers)
    result["predictions_zip"] = pack_outputs(output, output / "predictions.zip")
    return result


# ----------------------------------------------------------------------------- output lock


def lock_owner(lock: Path) -> tuple[int, str] | None:
    """(pid, host) recorded in a lock file, or None when it is unreadable."""
    try:
        pid, host = lock.read_text(encoding="utf-8").split("\n")[:2]
        return int(pid), host
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    except OSError:
        return False
    return True


def check_output_folder(output: Path) -> None:
    """An output path that is a file, or lies under one, is a one-line UserError (checked before any work)."""
    blocker = next((p for p in (output, *output.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(f"--output {output} cannot be a folder: {blocker} is a file; give a folder name "
                        "(it is created), e.g. preds/")


def make_output_folder(output: Path) -> None:
    check_output_folder(output)
    output.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def output_lock(output: Path):
    """Hold OUT/.lock (pid and host) for one run: a second live run on the same folder is refused.

    The lock is created complete and atomically (hard link of a written temp file), so a reader
    never sees it half written. A lock left by a dead process on this host is taken over.
    """
    make_output_folder(output)
    lock, me = output / LOCK_NAME, f"{os.getpid()}\n{socket.gethostname()}\n"
    fd, tmp = tempfile.mkstemp(prefix=".lock.", dir=output)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(me)
    try:
        for _ in range(3):
            try:
                os.link(tmp, lock)
                break
            except FileExistsError:
                owner = lock_owner(lock)
                if owner is None or owner[1] != socket.gethostname() or pid_alive(owner[0]):
                    who = f"pid {owner[0]} on {owner[1]}" if owner else "an unknown process"
                    raise UserError(
                        f"output folder {output} is in use by another run ({who}; lock file {lock}). Wait for it "
                        "to finish or choose another --output; delete the lock file only if that run is gone"
                    ) from None
                LOG.warning("taking over %s left by pid %d, which is no longer running", lock, owner[0])
                lock.unlink(missing_ok=True)
        else:
            raise UserError(f"could not take the lock {lock}: other runs keep taking it; choose another --output")
    finally:
        os.unlink(tmp)
    try:
        yield lock
    finally:
        if lock_owner(lock) == (os.getpid(), socket.gethostname()):
            lock.unlink(missing_ok=True)


def load_item(item: Item, max_pixels: int = MAX_IMAGE_PIXELS):
    """(item, RGB image or None, error or '') - runs in a reader thread, never raises."""
    if item.error:
        return item, None, item.error
    try:
        return item, read_image(item.path, max_pixels), ""
    except Exception as exc:  # noqa: BLE001 - a bad file is a row, not a crash
        return item, None, str(exc).replace(str(item.path), item.name)  # no temp/extraction paths in the CSV


def prefetch(pool: ThreadPoolExecutor, fn, items, ahead: int):
    """Like map(fn, items) in order, with up to `ahead` calls running in `pool` in advance."""
    queue, items = deque(), iter(items)
    for item in islice(items, ahead):
        queue.append(pool.submit(fn, item))
    while queue:
        yield queue.popleft().result()
        for item in islice(items, 1):
            queue.append(pool.submit(fn, item))


def predict_loaded(segmenter, batch: list) -> list:
    """Results (or error strings) for loaded (item, image, error) triples: one batched call, per-item on failure."""
    good = [image for _, image, error in batch if not error]
    try:
        results = iter(segmenter.predict_batch(good) if good else [])
        return [error or next(results) for _, _, error in batch]
    except Exception:  # noqa: BLE001 - find the culprit: one image at a time
        LOG.debug("batched prediction failed; retrying one by one", exc_info=True)
        out = []
        for _, image, error in batch:
            if error:
                out.append(error)
                continue
            try:
                out.append(segmenter.predict(image))
            except Exception as exc:  # noqa: BLE001
                out.append(f"prediction failed: {exc}")
        return out


def model_class_names(meta: dict) -> tuple[str, ...]:
    """Class names of a multi-class model (background first), from its metadata or numbered; () for binary."""
    classes = int(meta.get("num_classes", 1))
    if classes < 2:
        return ()
    names = list(meta.get("class_names") or [])
    return tuple(names) if len(names) == classes else tuple(str(c) for c in range(classes))


def with_model_classes(options: RunOptions, meta: dict) -> RunOptions:
    """`options` with the model's class names (unless given) and whether its class 0 is the background."""
    return dataclasses.replace(options, class_names=options.class_names or model_class_names(meta),
                               background=bool(meta.get("background", True)))


def run_items(segmenter, items: list[Item], output: Path, options: RunOptions, gt_index: dict, progress,
              writers=None) -> dict:
    """Decode (background threads) -> batched model -> write (background threads) -> summary.csv, in order.

    `writers` (runtime/writers.PredictionWriters) get each image's Result in input order."""
    output.mkdir(parents=True, exist_ok=True)
    options = with_model_classes(options, segmenter.meta)
    if options.class_names:
        legend = draw_legend(list(options.class_names), palette=class_palette(options.background))
        write_png(output / "legend.png", legend)
    rows, counts, timings = [], [], []
    with CsvLog(output / "summary.csv", csv_columns(options.class_names, options.background)) as log, \
            ThreadPoolExecutor(options.io_threads) as readers, \
            ThreadPoolExecutor(options.io_threads) as pool:
        pending: deque = deque()

        def emit():
            future, item, outcome = pending[0]
            row, count, timing = future.result()
            with interrupts_deferred():  # a stop lands before or after an image's row, never between mask and row
                pending.popleft()
                if writers is not None and row["status"] != "error":
                    writers.add(item, outcome)
                log.write(row)
                rows.append(row)
            if count is not None:
                counts.append(count)
            if timing:
                timings.append(timing)
            if progress is not None:
                progress(len(rows), len(items))

        loaded = prefetch(readers, partial(load_item, max_pixels=options.max_pixels), items, ahead=2 * options.batch_size + 2)
        try:
            while batch := list(islice(loaded, options.batch_size)):
                start = time.perf_counter()
                outcomes = predict_loaded(segmenter, batch)
                share = (time.perf_counter() - start) * 1e3 / len(batch)
                for (item, image, _), outcome in zip(batch, outcomes):
                    pending.append((pool.submit(finish_item, item, image, outcome, share, output, options, gt_index),
                                    item, outcome))
                while pending and (len(pending) > 2 * options.batch_size or pending[0][0].done()):
                    emit()
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the images already being written get their summary.csv rows
            while pending:
                emit()
            raise
        while pending:
            emit()
    result = summarize(rows, timings, output)
    if gt_index:
        result["metrics"] = write_metrics(output / "metrics.json", rows, counts, options.class_names,
                                          options.background, segmenter.run_info())
        result["metrics_json"] = output / "metrics.json"
    return result


def finish_item(item: Item, image, outcome, model_ms: float, output: Path, options: RunOptions, gt_index: dict):
    """Write one item's mask/overlay/probs and build its row -> (row, gt pixel counts, timing). Never raises."""
    start = time.perf_counter()
    if isinstance(outcome, str):
        LOG.warning("%s: %s", item.name, outcome)
        row = error_row(item.name, outcome)
        row["ms"] = round(model_ms, 1)
        return row, None, None
    row, count = new_row(item.name, csv_columns(options.class_names, options.background)), None
    try:
        mask, probs = outcome.mask, outcome.probs
        multi = probs.shape[0] > 1
        write_png(output / "masks" / item.out, mask if multi else mask * 255)
        palette = class_palette(options.background) if multi else None
        if multi:
            write_png(output / "masks_color" / item.out, colorize(mask, palette))
        gated = outcome.info.get("gated")  # judged clean by the gate: its mask is empty, the overlay is the image
        if not gated:
            overlay = make_overlay(image, mask, options.color, options.alpha, palette, options.background)
            write_png(output / "overlays" / item.out, overlay)
        elif options.gated_overlay != "skip":
            write_png(output / "overlays" / item.out, image, fast=options.gated_overlay == "fast")
        if options.save_probs:
            target = output / "probs" / item.out.with_suffix(".npy")
            target.parent.mkdir(parents=True, exist_ok=True)
            np.save(target, probs.astype(np.float16))
        fill_row(row, mask, outcome.info)
        count = score(row, mask, find_gt(gt_index, item.name), probs.shape[0], options.class_names,
                      options.background, options.ignore_index)
    except Exception as exc:  # noqa: BLE001 - a failed write is a row, not a crash
        LOG.warning("%s: %s", item.name, exc)
        row.update(status="error", error=str(exc))
    row["ms"] = round(model_ms + (time.perf_counter() - start) * 1e3, 1)
    return row, count, outcome.info.get("timing")


def summarize(rows: list[dict], timings: list[dict], output: Path) -> dict:
    statuses = [row["status"] for row in rows]
    scored = [row for row in rows if row["dice"] != ""]
    return {
        "images": len(rows),
        "ok": statuses.count("ok"),
        "no_detection": statuses.count("no_detection"),
        "errors": statuses.count("error"),
        "gated_clean": statuses.count("gated_clean"),
        "with_gt": len(scored),
        "mean_dice": float(np.mean([float(row["dice"]) for row in scored])) if scored else None,
        "mean_iou": float(np.mean([float(row["iou"]) for row in scored])) if scored else None,
        # per image over every timed image; a stage an image skipped (the segmenter, for gated ones) counts 0
        "timing_ms": {key: float(np.mean([t.get(key, 0.0) for t in timings]))
                      for key in dict.fromkeys(k for t in timings for k in t)},
        "masks": output / "masks",
        "overlays": output / "overlays",
        "summary_csv": output / "summary.csv",
    }
