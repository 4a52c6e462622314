"""What the int8 copy is decided from: held-back images, the masks of both files under the model's rule, and a
speed-up from alternating rounds on a machine that was not busy. The int8 metadata keeps all of it.

Held-back images are images no exported fold trained on: for one fold its own held-back images (folds.json), for
an ensemble only the run's test split (folds.json "test"; an image one fold held back, another fold trained on).
`--val-dir DIR` gives image/mask pairs instead: DIR/images and DIR/masks, their top level only (a folder of
train/ and val/ is refused, never searched into), without the run's training images.

The speed-up: fp32 and int8 sessions on the same images, warmed up, then ROUNDS rounds alternating which goes
first; each model's median ms per image over the rounds. The 1-minute load average is read before and after; a
measurement with it above the cores is taken again after a pause, LOAD_TRIES times at most, and otherwise not
stored (`int8_timing.not_stored` says why; --precision auto then keeps fp32).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from utils import (
    LOG, UserError, index_masks, list_images, mask_dice, mask_iou, preprocess, read_image, read_mask,
)

ROUNDS = 5  # alternating timed rounds
SPEED_IMAGES = 4  # images per round
LOAD_TRIES = 3  # measurements under load before giving up
LOAD_PAUSE_S = 20.0  # pause between them


# ----------------------------------------------------------------------------- which images


def read_split(work_dir: Path) -> dict:
    path = Path(work_dir) / "folds.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def held_back_keys(work_dir: Path, folds: list[int]) -> tuple[list[str], str]:
    """(cache keys no fold in `folds` trained on, where they come from). Empty without folds.json."""
    split = read_split(work_dir)
    if not split or not folds:
        return [], "no folds.json"
    held = set.intersection(*(set(split.get(str(fold), [])) for fold in folds)) | set(split.get("test", []))
    parts = ([f"fold {folds[0]}'s held-back images"] if len(folds) == 1 else []) + (["the test split"]
                                                                                   if split.get("test") else [])
    return sorted(held), " and ".join(parts) or f"none (folds {folds} each trained on the others' held-back images)"


def training_keys(work_dir: Path, folds: list[int]) -> set[str]:
    """Cache keys some fold in `folds` trained on (every cached image without folds.json)."""
    split = read_split(work_dir)
    cached = {p.stem for p in list_images(Path(work_dir) / "images")} if (Path(work_dir) / "images").is_dir() else set()
    if not split:
        return cached
    test = set(split.get("test", []))
    return set().union(*(cached - set(split.get(str(fold), [])) - test for fold in folds)) if folds else cached


def pairs_in(image_dir: Path, mask_dir: Path, keys=None) -> list[tuple[Path, Path]]:
    """(image, mask) paths paired by stem, the folders' top level only, optionally only `keys`."""
    masks = {stem: path for stem, path in index_masks(mask_dir).items() if path.parent == mask_dir}
    pairs = [(p, masks[p.stem]) for p in list_images(image_dir, recursive=False) if p.stem in masks]
    return [pair for pair in pairs if pair[0].stem in set(keys)] if keys is not None else pairs


def check_val_dir(val_dir: str | Path, trained: set[str] = frozenset()) -> list[tuple[Path, Path]]:
    """--val-dir's (image, mask) pairs, top level only; stops with one line on a missing folder, a folder of
    subfolders, an image without a mask, or nothing held back; drops (one warning) the run's training images."""
    images_dir, masks_dir = Path(val_dir) / "images", Path(val_dir) / "masks"
    missing = [str(d) for d in (images_dir, masks_dir) if not d.is_dir()]
    if missing:
        raise UserError(f"--val-dir {val_dir}: {' and '.join(missing)} not found; it needs images/ and masks/")
    images = list_images(images_dir, recursive=False)
    if not images:
        below = sorted(p.name for p in images_dir.iterdir() if p.is_dir())
        raise UserError(f"--val-dir {val_dir}: {images_dir} has no images at its top level" + (
            f", only folders ({', '.join(below[:4])})" if below else "") + "; --val-dir is never searched into "
            "subfolders (a train split would count as held back): give a folder whose images/ and masks/ hold "
            "the held-back pairs themselves")
    masks = index_masks(masks_dir)
    unpaired = [p.name for p in images if p.stem not in masks]
    if unpaired:
        raise UserError(f"--val-dir {val_dir}: {len(unpaired)} of {len(images)} images have no mask in {masks_dir} "
                        f"(e.g. {', '.join(unpaired[:3])}); masks pair by file stem: a.jpg with a.png or a_mask.png")
    seen = [p.stem for p in images if p.stem in trained]
    if seen:
        LOG.warning("--val-dir %s: %d of %d images are training images of this run (e.g. %s); they are left out",
                    val_dir, len(seen), len(images), ", ".join(seen[:3]))
    pairs = [(p, masks[p.stem]) for p in images if p.stem not in trained]
    if not pairs:
        raise UserError(f"--val-dir {val_dir}: every image is a training image of this run; give held-back ones")
    return pairs


def validation_pairs(work_dir: Path | None, folds: list[int], val_dir) -> tuple[list[tuple[Path, Path]], str]:
    """(the held-back (image, mask) pairs the int8 copy is measured on, what they are); UserError when none."""
    if val_dir is not None:
        trained = training_keys(work_dir, folds) if work_dir is not None else set()
        return check_val_dir(val_dir, trained), f"--val-dir {Path(val_dir).name}"
    keys, what = held_back_keys(work_dir, folds)
    if not keys:
        raise UserError(f"no held-back images for folds {folds} in {work_dir}: {what}; give --val-dir DIR "
                        "(DIR/images + DIR/masks), or export one fold (--fold K)")
    pairs = pairs_in(Path(work_dir) / "images", Path(work_dir) / "masks", keys)
    if not pairs:
        raise UserError(f"the held-back images of folds {folds} ({what}) are not in the training cache "
                        f"{Path(work_dir) / 'images'}; run train.py on this WORK_DIR again, or give --val-dir DIR")
    return pairs, what


# ----------------------------------------------------------------------------- masks and Dice


def runtime_session(model: Path | bytes):
    """An onnxruntime CPU session of a file or serialized graph, with the runtime's own session options."""
    import onnxruntime as ort

    from runtime.session import CPU, session_options

    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), sess_options=session_options(0),
                                providers=[CPU])


def masks_under_rule(model: Path | bytes, pairs: list[tuple[Path, Path]]) -> list[np.ndarray]:
    """Each image's mask from `model` (a file or serialized graph) as the runtime makes it: Segmenter on the
    onnxruntime CPU provider, the model's recorded rule."""
    from runtime.segmenter import Segmenter

    from training.progress import progress

    segmenter = Segmenter(None, session=runtime_session(model))
    label = "int8: the int8 file's masks" if isinstance(model, bytes) else "int8: the fp32 file's masks"
    return [segmenter.predict(read_image(image)).mask for image, _ in progress(pairs, label, unit="image")]


def compare_masks(fp32: Path, int8: bytes, pairs: list[tuple[Path, Path]], classes: int) -> dict:
    """Mean per-image Dice of both against the truth, their difference, and the lowest per-image IoU between the
    two files' masks."""
    masks32, masks8 = masks_under_rule(fp32, pairs), masks_under_rule(int8, pairs)
    truths = [read_mask(mask, classes) for _, mask in pairs]
    dice32 = float(np.mean([mask_dice(m, t, classes) for m, t in zip(masks32, truths)]))
    dice8 = float(np.mean([mask_dice(m, t, classes) for m, t in zip(masks8, truths)]))
    ious = [mask_iou(a, b, classes) for a, b in zip(masks32, masks8)]
    return {"dice_fp32": dice32, "dice_int8": dice8, "int8_dice_delta": round(dice8 - dice32, 6),
            "int8_min_iou": round(float(min(ious)), 6)}


# ----------------------------------------------------------------------------- speed


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_1m() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return 0.0


def timed_rounds(sessions: dict, inputs: list[np.ndarray], rounds: int) -> dict[str, list[float]]:
    """ms per image of each session in each round; the order of the sessions alternates round by round."""
    names = list(sessions)
    for name in names:  # warm-up
        sessions[name].run(None, {"image": inputs[0]})
    times = {name: [] for name in names}
    for index in range(rounds):
        for name in (names if index % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            for x in inputs:
                sessions[name].run(None, {"image": x})
            times[name].append(1e3 * (time.perf_counter() - start) / len(inputs))
    return times


def measure_speedup(fp32: Path | bytes, int8: Path | bytes, images: list[Path], meta: dict,
                    rounds: int = ROUNDS, tries: int = LOAD_TRIES) -> dict:
    """{speedup, fp32_ms, int8_ms, rounds, images, load_1m (before, after), cores}, or {not_stored: why, ...} when
    every try ran with the 1-minute load above the cores."""
    sessions = {"fp32": runtime_session(fp32), "int8": runtime_session(int8)}
    inputs = [preprocess(read_image(path), meta)[0][None] for path in images[:SPEED_IMAGES]]  # (1, 3, H', W') each
    limit = cores()
    for attempt in range(1, tries + 1):
        before = load_1m()
        times = timed_rounds(sessions, inputs, rounds)
        after = load_1m()
        record = {"fp32_ms": round(statistics.median(times["fp32"]), 3),
                  "int8_ms": round(statistics.median(times["int8"]), 3), "rounds": rounds, "images": len(inputs),
                  "load_1m": [before, after], "cores": limit, "tries": attempt}
        if max(before, after) <= limit:
            return {"speedup": round(record["fp32_ms"] / max(record["int8_ms"], 1e-9), 3), **record}
        LOG.warning("int8 timing: 1-minute load %.2f above the %d cores (try %d of %d)%s", max(before, after), limit,
                    attempt, tries, f"; again in {LOAD_PAUSE_S:.0f} s" if attempt < tries else "")
        if attempt < tries:
            time.sleep(LOAD_PAUSE_S)
    return {"not_stored": f"the 1-minute load was above the {limit} cores in {tries} tries", **record}
