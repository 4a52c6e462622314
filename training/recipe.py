"""RECIPE=auto: the settings a run leaves unset, planned from the data check's report and the budget. No torch here.

    python train.py --raw-img-dir data/images --raw-mask-dir data/masks --time-budget 15m   # the plan decides the rest

Every setting given by flag or env var stays as given; each one the plan sets is logged with its reason, saved in
WORK_DIR/config.json ("recipe") and carried into the model's metadata. The rules, in the spirit of nnU-Net's
fingerprint-then-plan, but for a time budget on the machine at hand instead of days of GPU:

- INPUT_SIZE: the images' own size (their median long side) where the budget leaves enough epochs (TARGET_EPOCHS),
  else the largest size that does, never so small that the thinnest structures (the data check's 10th-percentile
  region width, background included: the gaps between objects count) fall under MIN_WIDTH_PX pixels. A cost model
  (seconds per image at a size, measured on this machine by the caller) turns sizes into epochs. Without a budget,
  the native size (at most MAX_NATIVE).
- TRAIN_PATCH and TILE: images larger than MAX_NATIVE whose thin structures would vanish when shrunk train on
  native-resolution patches, and are scored out of fold and served as tiles of that size (runtime/tiling.py).
  A TRAIN_PATCH given by hand gets the rest: INPUT_SIZE the images' own size, PATCHES_PER_IMAGE to cover an image,
  and TILE for images over MAX_NATIVE squared pixels.
- AUGMENT: full (flips, affine, colour) for a few hundred images or fewer, flip alone for more (MANY_IMAGES): with
  many photos the extra distortions cost epochs and, on street scenes with a horizon, mislead. From a 30-minute budget
  on, training/trial.py then tries both briefly and may overturn the rule.
- FOLDS / FOLD_IDS: under a budget too short to give every fold TARGET_EPOCHS at the images' own size, one model
  with a tenth of the images held back (FOLDS=10, FOLD_IDS=0) instead of five undertrained ones. An epoch counts
  as at least MIN_EPOCH_STEPS batches, so a tiny set's epochs of one step do not pass for training.
- EMA 0.999 (the average of the weights): it never lost in the equal-budget comparisons.
- Under a budget: EPOCHS 1000 (the budget decides), SCHEDULER onecycle (the budget fixes the steps, so one cycle
  anneals exactly by the end) and, from scratch, LR 1e-3, its peak.
- CLASS_WEIGHTS auto when one class has a tenth of another's pixels.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

TARGET_EPOCHS = 40  # epochs a from-scratch model needs before resolution pays more than more epochs
# ... and each of those epochs at least this many optimizer steps: 40 epochs of a 6-image fold are 40 steps, so a tiny
# set's epoch counts as MIN_EPOCH_STEPS batches (8 mosaics, explicit --input-size: 5 folds of 1-step epochs before)
MIN_EPOCH_STEPS = 10
# The thinnest structures (10th percentile of region widths) keep at least this many pixels. At 3 px CamVid's cars
# (6.1 px) planned 256 px and 18-20 epochs in 10 minutes, and trailed the plain script pooled over pixels on both
# seeds, missing a third of the largest cars' pixels; at 4 px (320 px, 11-12 epochs) the results suite's two seeds
# moved +0.039 and -0.032 per image, +0.048 and -0.003 pooled (means +0.003 and +0.022, within the seed noise).
MIN_WIDTH_PX = 4.0
MAX_NATIVE = 1024  # the largest long side trained as whole images; larger images train on patches
MIN_SIZE = 128
STEP = 32  # sizes are multiples of the models' stride
PATCH = 384  # the side of native-resolution training patches
MANY_IMAGES = 300  # from this many training images on, AUGMENT=flip
BUDGET_SHARE = 0.8  # of TIME_BUDGET, what the plan counts as training time (the rest: start-up, scoring, export)
HOLD_OUT = 10  # under a short budget: one model, FOLDS=10 FOLD_IDS=0 (a tenth held back)
RECIPE_NAME = "recipe.json"  # in WORK_DIR: the plan, reused by a resumed run so its settings (and hash) hold


@dataclass(frozen=True)
class Decision:
    setting: str  # a Config field name
    value: Any
    reason: str

    def line(self) -> str:
        return f"recipe: {self.setting.upper()}={self.value}: {self.reason}"


def round_size(size: float) -> int:
    return max(STEP, int(math.ceil(size / STEP)) * STEP)


def native_side(report: dict) -> int:
    """The images' own long side (median of width and height's larger), rounded up to the stride."""
    sizes = report["sizes"]
    return round_size(max(sizes["width"]["median"], sizes["height"]["median"]))


def thinnest(report: dict) -> float | None:
    """The 10th-percentile region width in pixels over every class (background included), or None."""
    widths = [o["thickness_px"]["p10"] for o in report.get("objects", {}).values()
              if o.get("thickness_px", {}).get("p10")]
    return min(widths) if widths else None


def smallest_size(report: dict, native: int) -> int:
    """The smallest long side that keeps the thinnest structures at MIN_WIDTH_PX pixels or more."""
    width = thinnest(report)
    if not width:
        return MIN_SIZE
    return min(native, max(MIN_SIZE, round_size(native * MIN_WIDTH_PX / width)))


def epochs_at(size: int, native: int, images: int, seconds: float, image_s: Callable[[int], float]) -> float:
    """Epochs of `images` training images that fit in `seconds` at long side `size`."""
    return seconds / max(images * image_s(min(size, native)), 1e-9)


def plan_size(report: dict, images: int, budget_s: float, image_s: Callable[[int], float] | None,
              real_images: int | None = None) -> tuple[int, str, str]:
    """(INPUT_SIZE, TRAIN_PATCH or '', why). `images`: the training images of every fold the run trains, together
    (an epoch of each fold, counted as at least MIN_EPOCH_STEPS batches); `real_images`: the same without that floor,
    for the epochs the reason names (default `images`)."""
    native = native_side(report)
    floor = smallest_size(report, native)
    width = thinnest(report)
    thin = f"the thinnest structures ({width:.1f} px wide at native size)" if width else "no thin structures"
    if native > MAX_NATIVE and floor > MAX_NATIVE:
        return native, f"{PATCH}x{PATCH}", (f"images are {native} px and {thin} vanish below {floor} px: native-size "
                                            f"{PATCH} px patches, tiled at inference")
    top = min(native, MAX_NATIVE)
    if not budget_s or image_s is None:
        return top, "", f"the images' own size ({native} px)" + ("" if top == native else f", at most {MAX_NATIVE}")
    seconds = budget_s * BUDGET_SHARE
    padded = images / max(real_images or images, 1)

    def room(epochs: float) -> str:  # the epochs a reason names: of the set's own length too, when padded
        return f"~{epochs:.0f} epochs" + (f" counted as {MIN_EPOCH_STEPS} steps each, ~{epochs * padded:.0f} of the "
                                          "set's own shorter ones" if padded > 1 else "")

    for size in range(top, floor - 1, -STEP):
        epochs = epochs_at(size, native, images, seconds, image_s)
        if epochs >= TARGET_EPOCHS:
            said = "the images' own size" if size == native else f"the largest size under {native} px native"
            return size, "", f"{said} with room for {TARGET_EPOCHS} epochs in the budget ({room(epochs)})"
    epochs = epochs_at(floor, native, images, seconds, image_s)
    kept = (f"need the images' own size ({floor} px)" if floor == native else
            f"keep {MIN_WIDTH_PX:g} px at {floor} px")
    return floor, "", (f"{thin} {kept}; the budget has room for {room(epochs)} there, fewer than the "
                       f"{TARGET_EPOCHS} wanted: a longer budget would help")


def trained_images(images: int, folds: int, fold_ids: list[int], batch_size: int = 1) -> int:
    """The images an epoch of every fold the run trains goes through, together, each fold's epoch counted as at least
    MIN_EPOCH_STEPS batches of `batch_size`."""
    per_fold = images * (folds - 1) // folds if folds > 1 else images
    return len(fold_ids) * max(per_fold, MIN_EPOCH_STEPS * batch_size)


def plan_folds(report: dict, cfg, explicit: set[str], images: int, budget_s: float,
               image_s: Callable[[int], float]) -> tuple[int, list[int]]:
    """(FOLDS, the folds to train): every fold when the budget gives each TARGET_EPOCHS at the size the plan would
    take (the images' own, or INPUT_SIZE when given), else one fold of HOLD_OUT (a tenth held back)."""
    native = native_side(report)
    size = cfg.input_size if "input_size" in explicit else min(native, MAX_NATIVE)
    every = trained_images(images, cfg.folds, cfg.selected_folds(), cfg.batch_size)
    if epochs_at(size, native, every, budget_s * BUDGET_SHARE, image_s) >= TARGET_EPOCHS:
        return cfg.folds, cfg.selected_folds()
    return held_out_folds(images, cfg.folds), [0]


def held_out_folds(images: int, folds: int) -> int:
    """FOLDS for one model with a tenth of `images` held back (fold 0); few images hold back a bigger share."""
    return HOLD_OUT if images >= 2 * HOLD_OUT else max(2, min(folds, images))


def class_balance(report: dict) -> float | None:
    """The rarest foreground class's pixels over the most common's (multi-class), or None."""
    fractions = list(report.get("class_fractions", {}).values())[1:]
    present = [f for f in fractions if f > 0]
    if len(present) < 2:
        return None
    return min(present) / max(present)


def plan_recipe(report: dict, cfg, explicit: set[str], image_s: Callable[[int], float] | None = None,
                budget_s: float | None = None) -> list[Decision]:
    """The decisions for every setting in the plan that `explicit` does not name (module docstring). `image_s(size)`
    gives the seconds one training image costs at a long side of `size` (only called under TIME_BUDGET); `budget_s`
    is what is left of TIME_BUDGET (default: all of it)."""
    images = int(report["images"])
    decisions: list[Decision] = []

    def decide(setting: str, value: Any, reason: str) -> None:
        if setting not in explicit and getattr(cfg, setting) != value:
            decisions.append(Decision(setting, value, reason))

    left = (cfg.time_budget if budget_s is None else budget_s) if cfg.time_budget else 0
    folds, fold_ids = cfg.folds, cfg.selected_folds()
    if left and image_s is not None and cfg.task == "segment" and not {"folds", "fold_ids"} & explicit:
        folds, fold_ids = plan_folds(report, cfg, explicit, images, left, image_s)
        if fold_ids != cfg.selected_folds():
            why = (f"the budget cannot train {cfg.folds} folds for {TARGET_EPOCHS} epochs each at the images' own "
                   f"size: one model, with a tenth of the images held back to choose its threshold and checkpoint")
            decide("folds", folds, why)
            decide("fold_ids", ",".join(map(str, fold_ids)), why)
    if "input_size" not in explicit and "train_patch" not in explicit and cfg.task == "segment":
        size, patch, why = plan_size(report, trained_images(images, folds, fold_ids, cfg.batch_size), left, image_s,
                                     trained_images(images, folds, fold_ids, 0))
        decide("input_size", size, why)
        decide("train_patch", patch, why)
        if patch:
            plan_patches(report, explicit, size, patch, decide, planned=True)
    elif "train_patch" in explicit and cfg.train_patch and cfg.task == "segment":
        # patches chosen by hand: the rest of the patch plan follows them, as it would the plan's own patches (a
        # 512x512 patch of images shrunk to the default INPUT_SIZE would be the whole image, and no tiles at serving)
        size = cfg.input_size
        if "input_size" not in explicit:
            size = native_side(report)
            decide("input_size", size, f"TRAIN_PATCH={cfg.train_patch} given: patches are cut at the images' own "
                                       f"size ({size} px)")
        plan_patches(report, explicit, size, cfg.train_patch, decide)
    if "augment" not in explicit:
        if images >= MANY_IMAGES:
            decide("augment", "flip", f"{images} images: enough variety that flips alone keep the epochs for learning")
        else:
            decide("augment", "full", f"{images} images: flips, affine and colour jitter stretch a small set")
    decide("ema", 0.999, "an average of the weights: steadier than the last step, never worse in the comparisons")
    if cfg.time_budget:
        decide("epochs", 1000, "the time budget decides how many")
        if "scheduler" not in explicit:
            decide("scheduler", "onecycle", "the budget fixes the steps: one cycle warms up and anneals exactly by the end")
            if "lr" not in explicit and cfg.encoder_weights in (None, "", "none"):
                decide("lr", 1e-3, "one cycle's peak for a model trained from scratch")
            if "patience" not in explicit:
                decide("patience", 1000, "no early stop under a budget: a few noisy val epochs would cut the cycle "
                       "before its low learning rates")
    balance = class_balance(report)
    if cfg.classes > 1 and balance is not None and balance < 0.1:
        decide("class_weights", "auto", f"the rarest class has {balance:.1%} of the commonest one's pixels")
    return decisions


def plan_patches(report: dict, explicit: set[str], size: int, patch: str, decide: Callable[[str, Any, str], None],
                 planned: bool = False) -> None:
    """TILE and PATCHES_PER_IMAGE for training on `patch` (HxW) crops of images resized to long side `size`: tiles
    of the patch's size where the plan chose the patches (`planned`), or where the images keep their own size
    (tiles are cut at the served image's size) and are larger than MAX_NATIVE squared (smaller ones run whole: more
    context, fewer passes); and enough patches per image for an epoch to cover about one image's area."""
    h, w = (int(side) for side in patch.split("x"))
    sizes = report["sizes"]
    large = sizes["width"]["median"] * sizes["height"]["median"] > MAX_NATIVE**2
    if "tile" not in explicit and (planned or size >= native_side(report) and large):
        decide("tile", patch, "the model sees native-size patches, so large images are scored and served as tiles")
    if "patches_per_image" not in explicit:
        scale = min(1.0, size / max(sizes["width"]["median"], sizes["height"]["median"]))
        count = max(1, math.ceil(sizes["width"]["median"] * sizes["height"]["median"] * scale**2 / (h * w)))
        decide("patches_per_image", count, f"an epoch's patches cover about one image's area ({count} of "
                                           f"{patch} px per image)")


def apply_recipe(cfg, decisions: list[Decision]):
    """A copy of `cfg` with the decisions applied."""
    import dataclasses

    return dataclasses.replace(cfg, **{d.setting: d.value for d in decisions})


def load_saved(work_dir: str | Path, key: dict | None) -> list[Decision] | None:
    """The decisions WORK_DIR/recipe.json holds for this `key` (data report and settings; None: whatever it holds,
    as the DDP ranks read what rank 0 has just planned), else None."""
    path = Path(work_dir) / RECIPE_NAME
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if key is not None and saved.get("key") != key:
        return None
    return [Decision(**d) for d in saved.get("decisions", [])]


def save(work_dir: str | Path, key: dict, decisions: list[Decision]) -> None:
    from utils import atomic_write_json

    atomic_write_json(Path(work_dir) / RECIPE_NAME,
                      {"key": key, "decisions": [d.__dict__ for d in decisions]})
