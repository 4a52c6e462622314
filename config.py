"""Training configuration: one frozen object, resolved as default < environment < CLI flag.

Every setting is declared once in `FIELDS` (name, type, default, env var, flags, help, and whether
it changes what is trained). From that table come the dataclass, the env-var reader, the argparse
flags and `config_hash`, so a new setting is one line. Values are type-checked: a bad value names
the variable, the value and what is allowed. No torch here, so `--help` answers at once; the runtime never imports this module (it is training's).

    EPOCHS=20 python train.py --encoder resnet18 --lr 1e-3
    python train.py --help            # every setting, its env var and its default
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from runtime.metadata import CROP_MODES, DEFAULT_INPUT_SIZE, TTA_MODES  # noqa: F401  (TTA_MODES: export's)
from training.budget import parse_duration
from training.values import (  # the value parsers the FIELDS table uses
    INT8_MODES, byte_value, ema_decay, fraction, ignore_value, non_negative, parse_amp, parse_bool, parse_optional_path,
    parse_patch, pos_weight_value, positive, recall_value,
)
from utils import IGNORE_INDEX, MAX_IMAGE_PIXELS, UserError, atomic_write_json

# The smp architectures (segmentation_models_pytorch 0.6); test_config checks this list against
# smp's registry so the two cannot drift. Plus our own HRNet backbone with a light head.
SMP_ARCHITECTURES = (
    "Unet", "UnetPlusPlus", "MAnet", "Linknet", "FPN", "PSPNet", "DeepLabV3", "DeepLabV3Plus",
    "PAN", "UPerNet", "Segformer", "DPT",
)
ARCHITECTURES = SMP_ARCHITECTURES + ("HRNetLite",)
SCHEDULERS = ("cosine", "onecycle")
TASKS = ("segment", "classify")  # classify: the clean/defect gate in front of the segmenter (README "Gate")
# The gate's pooling of its deepest feature map: avg + max concatenated (a small defect is a local
# peak that an average over a whole strip dilutes), or either alone.
GATE_POOLS = ("avgmax", "avg", "max")
TRACKERS = ("none", "tensorboard", "wandb")
AUGMENTS = ("full", "flip", "none")  # AUGMENT: the training augmentation (dataset.augmentations)
RECIPES = ("auto", "off")  # RECIPE: plan the settings left unset from the data and the budget (training/recipe.py)
TRIALS = ("auto", "on", "off")  # TRIAL: try both AUGMENT candidates before a budgeted run (training/trial.py)
CACHE_MODES = ("auto", "ram", "disk")  # CACHE: where training reads the cached images (training/ramcache.py)
BATCH_SHAPES = ("square", "rect")  # BATCH_SHAPE: how whole-image batches are shaped (dataset.AspectBatchSampler)


UNSET = object()  # Field.legacy_default of a setting every run already had


@dataclass(frozen=True)
class Field:
    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    flags: tuple[str, ...] = ()
    choices: tuple[str, ...] | None = None
    # What config_hash sees (a fold checkpoint with another hash is trained again, not resumed):
    trains: bool = True  # False: changing it leaves finished folds valid (paths, workers, export, ...)
    only_task: str | None = None  # shapes only this TASK's model: another task's hash leaves it out
    # Added after runs existed: the value those runs had in effect. At it the setting hashes as absent,
    # so they still resume.
    legacy_default: Any = UNSET

    def hashed(self, task: str, value: Any) -> bool:
        """Whether this setting, at `value`, enters config_hash of a TASK=`task` run."""
        return self.trains and self.only_task in (None, task) and value != self.legacy_default

    @property
    def env(self) -> str:
        return self.name.upper()

    @property
    def all_flags(self) -> tuple[str, ...]:
        return ("--" + self.name.replace("_", "-"),) + self.flags


FIELDS: tuple[Field, ...] = (
    # Data in
    Field("raw_img_dir", parse_optional_path, None, "folder of training images"),
    Field("raw_mask_dir", parse_optional_path, None, "folder of masks, paired to images by file stem"),
    Field("raw_json_path", parse_optional_path, None, "Label Studio JSON export (instead of RAW_MASK_DIR)"),
    Field("raw_rle_csv", parse_optional_path, None, "Kaggle/Severstal RLE CSV (ImageId,ClassId,EncodedPixels) of the "
          "masks of RAW_IMG_DIR's images (instead of RAW_MASK_DIR); an image without rows is clean", legacy_default=None),
    Field("raw_coco_json", parse_optional_path, None, "COCO JSON (polygons, RLE) of RAW_IMG_DIR's images (instead of "
          "RAW_MASK_DIR); categories map to classes by CLASS_NAMES, else in id order", legacy_default=None),
    Field("raw_yolo_yaml", parse_optional_path, None, "Ultralytics YOLO-seg data.yaml (its train and val images with "
          "their polygon labels, pooled for CV; instead of RAW_IMG_DIR and RAW_MASK_DIR)", legacy_default=None),
    Field("ignore_index", ignore_value, IGNORE_INDEX, "the void label: mask pixels of this value are left out of the "
          "loss, the metrics, the threshold and the class weights (VOC's 255 border; COCO crowd regions); none = no "
          "void", legacy_default=IGNORE_INDEX),
    Field("check_data", parse_bool, False, "check the data only: write WORK_DIR/data_report.json, print the table "
          "and exit without training (the check also runs before every training)", trains=False),
    Field("search_files", parse_bool, False,
          "use the split lists training_dataset.txt / validation_dataset.txt / test_dataset.txt"),
    Field("split_dir", parse_optional_path, None, "folder of the split lists (default: RAW_IMG_DIR, then its parent)"),
    Field("groups", parse_optional_path, None, "CSV of <image stem>,<group>: a group never spans two folds"),
    Field("work_dir", str, "work", "run folder: cache, models, logs, ONNX", trains=False),
    Field("name", str, "model", "name of the exported <name>.onnx", trains=False),
    # Smart crop (README "Smart cropping"): a square around the largest person, found by YOLO11-seg
    Field("crop", str, "off", "smart crop: off, or person (crop around the largest person)", choices=CROP_MODES),
    Field("crop_model", str, "weights/yolo11n-seg.pt", "local YOLO11-seg weights (.pt or .onnx); never downloaded"),
    Field("crop_conf", fraction, 0.25, "person detection confidence threshold"),
    Field("crop_roi_factor", positive(float), 2.5, "ROI side = this x torso size (source pixels)"),
    Field("crop_min_size", positive(int), 256, "smallest ROI side in source pixels"),
    Field("crop_pad_value", byte_value, 114, "grey level (0-255) where the ROI leaves the image"),
    # Task: segment (the segmenter) or classify (the image-level clean/defect gate, README "Gate"). Gate settings,
    # TASK included, stay out of a segmenter's hash: segmenter runs from before the gate existed still resume.
    Field("task", str, "segment", "segment: train the segmenter; classify: train the clean/defect gate "
          "(encoder + pooling head, 1 logit: any mask pixel > 0)", choices=TASKS, only_task="classify"),
    Field("gate_input_size", non_negative(int), 0,
          "classify: long side of the gate's input (multiple of 32); 0 = INPUT_SIZE / 2", only_task="classify"),
    Field("gate_recall", recall_value, 0.99,
          "classify: recall of defective images the gate threshold must keep out of fold (highest such threshold)",
          trains=False, only_task="classify"),
    Field("gate_pos_weight", pos_weight_value, "",
          "classify: BCE pos_weight: empty (none), 'auto' (clean/defective ratio of the training fold) or a number",
          only_task="classify"),
    Field("gate_pool", str, "avgmax", "classify: pooling of the gate's deepest features: avgmax (average and max, "
          "concatenated), avg or max", choices=GATE_POOLS, only_task="classify", legacy_default="avg"),
    # Model
    Field("arch", str, "UnetPlusPlus", "architecture", flags=("--model",), choices=ARCHITECTURES),
    Field("encoder", str, "resnet34", "smp encoder name, or tu-<timm name>"),
    Field("encoder_weights", parse_optional_path, "imagenet",
          "encoder weights: imagenet (needs internet once), none, or a local .pth file"),
    Field("classes", positive(int), 1, "number of classes; 1 = binary foreground, >1 = class ids in the masks"),
    Field("class_names", str, "", "comma list of class names (multi-class: one per class, background first)"),
    Field("classes_file", parse_optional_path, None, "text file with one class name per line (instead of CLASS_NAMES)"),
    Field("class_weights", str, "", "multi-class CE weights: empty, 'auto' (from pixel counts) or a comma list"),
    Field("input_size", positive(int), DEFAULT_INPUT_SIZE, "long side the images are resized to (multiple of 32)",
          flags=("--patch-size",)),
    # Patch training (README "Steel-like defects"): random HxW crops for training, whole images for validation
    Field("train_patch", parse_patch, "", "train on random HxW crops (e.g. 256x320, multiples of 32) of the "
          "cached images, 1/3 of them centred on a defect; validate on whole images padded to /32 only. "
          "Empty: every image is padded to an INPUT_SIZE square", legacy_default=""),
    Field("patches_per_image", positive(int), 1, "TRAIN_PATCH: random crops drawn from each training image per epoch",
          legacy_default=1),
    Field("tile", parse_patch, "", "HxW: score out of fold, and serve (the exported model's metadata), images larger "
          "than it as overlapping HxW tiles at their size, Gaussian-blended (runtime/tiling.py); empty: whole images",
          trains=False),
    Field("batch_shape", str, "rect", "whole-image training batches: rect = images of one aspect batched together, "
          "padded to a multiple of 32 only, as the runtime pads; square = each image padded to an INPUT_SIZE square "
          "(the rule before rect; ignored with TRAIN_PATCH; the gate always batches as rect)", choices=BATCH_SHAPES,
          only_task="segment", legacy_default="square"),
    Field("augment", str, "full", "training augmentation: full = flip, affine (scale 0.85-1.15, shift 0.05, "
          "rotation 15 degrees), brightness/contrast, hue/saturation; flip = horizontal flip only; none",
          choices=AUGMENTS, legacy_default="full"),
    # Optimisation
    Field("batch_size", positive(int), 8, "batch size"),
    Field("epochs", positive(int), 50, "maximum epochs per fold"),
    # It sets the epochs and the schedule, so it trains: a fold's checkpoint resumes only under the same budget.
    Field("time_budget", parse_duration, 0, "wall-clock budget of the whole run (90s, 20m, 1h30m or seconds; 0 = "
          "off): measures the first steps, plans the epochs per fold (at most EPOCHS) and the schedule to fit, "
          "reserves time for out-of-fold scoring and export, stops by the clock", legacy_default=0),
    Field("recipe", str, "auto", "auto = plan every setting left unset among INPUT_SIZE, TRAIN_PATCH, AUGMENT, EMA, "
          "EPOCHS (under a budget) and CLASS_WEIGHTS from the data check and TIME_BUDGET, each logged with its "
          "reason (training/recipe.py); off = their defaults", choices=RECIPES, trains=False),
    Field("trial", str, "auto", "RECIPE=auto under TIME_BUDGET, AUGMENT unset: train both AUGMENT candidates (full, "
          "flip) for a tenth of the budget each on a tenth of the images held back, and keep the rule's choice unless "
          "the other leads by over 0.01 Dice (training/trial.py); auto = from a 30-minute budget on, on, off",
          choices=TRIALS, trains=False),
    Field("lr", positive(float), 3e-4, "AdamW learning rate"),
    Field("weight_decay", non_negative(float), 1e-4, "AdamW weight decay"),
    Field("adam_eps", positive(float), 1e-8, "AdamW epsilon"),
    Field("scheduler", str, "cosine", "cosine = CosineAnnealingWarmRestarts, onecycle = OneCycleLR",
          choices=SCHEDULERS),
    Field("restart_epochs", positive(int), 10, "epochs in the first cosine cycle (T_0)"),
    Field("grad_clip", non_negative(float), 1.0, "max gradient norm; 0 disables clipping"),
    Field("dice_weight", non_negative(float), 0.5, "weight of the Dice term in ComboLoss"),
    Field("bce_weight", non_negative(float), 0.5, "weight of the BCE term in ComboLoss"),
    Field("patience", positive(int), 10, "early stopping: epochs without val Dice improvement"),
    Field("cooldown", non_negative(int), 0, "epochs before 'best' is tracked"),
    Field("ema", ema_decay, 0.0, "exponential moving average of the weights: its decay per optimizer step (e.g. "
          "0.999; warmed up as min(EMA, (1+n)/(10+n))), or 0 = off. The average is evaluated, kept and exported",
          legacy_default=0.0),
    Field("eval_step", non_negative(int), 0, "also evaluate every N optimizer steps; 0 = once per epoch", trains=False),
    Field("eval_every", positive(int), 1, "evaluate (and write the last checkpoint and the preview) every N epochs; a "
          "fold's last epoch, and the one the time budget stops it after, are always evaluated", legacy_default=1),
    Field("use_amp", parse_amp, "auto", "mixed precision: true = fp16 + GradScaler on CUDA, bf16 autocast on CPU; "
          "auto = on CUDA and on a CPU with native bf16 (AVX-512 BF16 or AMX), fp32 elsewhere; false = fp32"),
    Field("load_model", parse_optional_path, None, "checkpoint to fine-tune from (strict load)"),
    Field("save_checkpoints", parse_bool, False, "also keep models/fold<K>_epoch<E>.pt for every epoch", trains=False),
    Field("resume", parse_bool, True, "continue unfinished folds from models/fold<K>_last.pt; false = start over",
          trains=False),
    Field("tracker", str, "none", "optional experiment tracker", choices=TRACKERS, trains=False),
    Field("log_every", non_negative(float), 30.0, "seconds between progress lines in the log when stderr is not a "
          "terminal (a bar is drawn on one); 0 = a line every step", trains=False),
    # Cross-validation
    Field("folds", positive(int), 5, "number of cross-validation folds"),
    Field("fold_ids", str, "all", "folds to train: 'all' or a comma list such as 0,2", trains=False),
    Field("seed", non_negative(int), 42, "random seed for splits, init and augmentation"),
    # Runtime of the trainer: none of these changes what is trained
    Field("workers", non_negative(int), 2, "DataLoader worker processes", trains=False),
    Field("pin_memory", parse_bool, True, "pin DataLoader memory (CUDA only)", trains=False),
    Field("cache", str, "auto", "where training reads the cached images: ram = decoded once into memory the "
          "DataLoader workers share, disk = each sample decoded from its PNG, auto = ram when that takes at most "
          "half of the available memory", choices=CACHE_MODES, trains=False),
    Field("device", str, "auto", "auto, cpu or cuda", choices=("auto", "cpu", "cuda"), trains=False),
    Field("threads", non_negative(int), 0, "torch CPU threads; 0 = torch's default", trains=False),
    Field("channels_last", parse_bool, True, "train in channels-last memory format (NHWC convolutions; every "
          "architecture gives the same outputs in it); false = the default NCHW layout",
          trains=False),
    Field("min_area", non_negative(int), 64, "min region area (px) for the adaptive threshold at inference",
          trains=False),
    Field("export", parse_bool, True, "export <name>.onnx after training", trains=False),
    Field("int8", str, "auto", "also write <name>.int8.onnx, measured on the held-back images (export.py --int8): "
          "auto = when they are in the cache, on = or stop, off = never", choices=INT8_MODES, trains=False),
    Field("max_image_pixels", positive(int), MAX_IMAGE_PIXELS,
          "images or masks claiming more pixels are refused from their header (decompression bombs)",
          flags=("--max-pixels",), trains=False),
)
FIELD_BY_NAME = {f.name: f for f in FIELDS}

# The sections of `--help`, in order; test_train_inputs checks that every field is in exactly one.
HELP_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("data", ("raw_img_dir", "raw_mask_dir", "raw_json_path", "raw_rle_csv", "raw_coco_json", "raw_yolo_yaml",
              "ignore_index", "check_data", "search_files", "split_dir", "groups", "max_image_pixels")),
    ("model", ("arch", "encoder", "encoder_weights", "classes", "class_names", "classes_file", "class_weights",
               "input_size", "train_patch", "patches_per_image", "tile", "batch_shape", "augment")),
    ("optimisation", ("batch_size", "epochs", "time_budget", "recipe", "trial", "lr", "weight_decay", "adam_eps",
                      "scheduler", "restart_epochs", "grad_clip", "dice_weight", "bce_weight", "patience", "cooldown", "ema",
                      "eval_step", "eval_every", "use_amp", "load_model")),
    ("cross-validation", ("folds", "fold_ids", "seed")),
    ("smart crop", ("crop", "crop_model", "crop_conf", "crop_roi_factor", "crop_min_size", "crop_pad_value")),
    ("gate (TASK=classify)", ("task", "gate_input_size", "gate_recall", "gate_pos_weight", "gate_pool")),
    ("run", ("work_dir", "name", "save_checkpoints", "resume", "tracker", "log_every", "workers", "pin_memory", "cache", "device",
             "threads", "channels_last", "min_area", "export", "int8")),
)


@dataclass(frozen=True)
class Config:
    raw_img_dir: str | None
    raw_mask_dir: str | None
    raw_json_path: str | None
    raw_rle_csv: str | None
    raw_coco_json: str | None
    raw_yolo_yaml: str | None
    ignore_index: int | None
    check_data: bool
    search_files: bool
    split_dir: str | None
    groups: str | None
    work_dir: str
    name: str
    crop: str
    crop_model: str
    crop_conf: float
    crop_roi_factor: float
    crop_min_size: int
    crop_pad_value: int
    task: str
    gate_input_size: int
    gate_recall: float
    gate_pos_weight: str
    gate_pool: str
    arch: str
    encoder: str
    encoder_weights: str | None
    classes: int
    class_names: str
    classes_file: str | None
    class_weights: str
    input_size: int
    train_patch: str
    patches_per_image: int
    tile: str
    batch_shape: str
    augment: str
    batch_size: int
    epochs: int
    time_budget: int
    recipe: str
    trial: str
    lr: float
    weight_decay: float
    adam_eps: float
    scheduler: str
    restart_epochs: int
    grad_clip: float
    dice_weight: float
    bce_weight: float
    patience: int
    cooldown: int
    ema: float
    eval_step: int
    eval_every: int
    use_amp: bool | str  # True, False or 'auto' (training/precision.amp_dtype resolves it)
    load_model: str | None
    save_checkpoints: bool
    resume: bool
    tracker: str
    log_every: float
    folds: int
    fold_ids: str
    seed: int
    workers: int
    pin_memory: bool
    cache: str
    device: str
    threads: int
    channels_last: bool
    min_area: int
    export: bool
    int8: str
    max_image_pixels: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def tile_hw(self) -> tuple[int, int] | None:
        """(H, W) of the tiles large images are scored in, or None (whole images)."""
        if not self.tile:
            return None
        h, w = self.tile.split("x")
        return int(h), int(w)

    def patch_hw(self) -> tuple[int, int] | None:
        """(H, W) of the training crops, or None without TRAIN_PATCH."""
        if not self.train_patch:
            return None
        h, w = self.train_patch.split("x")
        return int(h), int(w)

    def selected_folds(self) -> list[int]:
        if self.fold_ids.strip().lower() == "all":
            return list(range(self.folds))
        return parse_fold_ids(self.fold_ids, self.folds)

    def names(self) -> list[str]:
        """Class names: CLASS_NAMES, else CLASSES_FILE, else defaults."""
        if self.class_names.strip():
            return [n.strip() for n in self.class_names.split(",")]
        if self.classes_file:  # utf-8-sig: a BOM (Notepad) is no part of the first name
            lines = Path(self.classes_file).read_text(encoding="utf-8-sig").splitlines()
            return [line.strip() for line in lines if line.strip()]
        return ["foreground"] if self.classes == 1 else ["background"] + [f"class_{i}" for i in range(1, self.classes)]

    @classmethod
    def load(cls, path: str | os.PathLike) -> Config:
        """A run's config.json back (its settings; `recipe_plan` and other notes beside them are left out)."""
        saved = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(**{name: saved[name] for name in FIELD_BY_NAME if name in saved})

    def save(self, path: str | os.PathLike | None = None, extra: dict | None = None) -> Path:
        """WORK_DIR/config.json: every setting, plus `extra` (RECIPE=auto's plan: `recipe_plan`)."""
        path = Path(path) if path else Path(self.work_dir) / "config.json"
        atomic_write_json(path, {**self.to_dict(), **(extra or {})})
        return path


def parse_fold_ids(text: str, folds: int) -> list[int]:
    try:
        ids = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        ids = []
    if not ids or any(not 0 <= i < folds for i in ids):
        raise UserError(f"FOLD_IDS={text!r} is invalid: use 'all' or a comma list of folds in 0..{folds - 1}")
    return ids


def _convert(field: Field, raw: str, source: str):
    """Parse one raw string; `source` names where it came from (env var or the flag typed)."""
    try:
        value = field.parse(raw)
    except (ValueError, TypeError) as exc:
        kind = getattr(field.parse, "__name__", "value")
        raise UserError(f"{source}={raw!r} is not a valid {kind} ({exc}); default is {field.default!r}") from None
    if field.choices is not None and value not in field.choices:
        # names are matched case-insensitively (--model unet -> Unet)
        value = {c.lower(): c for c in field.choices}.get(str(value).lower())
        if value is None:
            raise UserError(f"{source}={raw!r} is not allowed; choose one of: {', '.join(field.choices)}")
    return value


def typed_flag(field: Field, argv: Sequence[str]) -> str:
    """The flag of `field` the user typed last (--model, not --arch); its first flag if none matches exactly."""
    typed = [a.split("=", 1)[0] for a in argv if a.split("=", 1)[0] in field.all_flags]
    return typed[-1] if typed else field.all_flags[0]


def _help(field: Field) -> str:
    choices = f"choices: {', '.join(field.choices)}; " if field.choices else ""
    return f"{field.help} ({choices}env {field.env}, default {field.default!r})"


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description or __doc__.split("\n")[0])
    for title, names in HELP_GROUPS:
        group = parser.add_argument_group(title)
        for field in (FIELD_BY_NAME[name] for name in names):
            # a boolean switch works bare (--use-amp) and with a value (--use-amp false)
            switch = {"nargs": "?", "const": "true"} if field.parse in (parse_bool, parse_amp) else {}
            group.add_argument(*field.all_flags, dest=field.name, default=None, metavar=field.env, **switch,
                               help=_help(field))
    return parser


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Resolve every setting: default, then the environment, then CLI flags."""
    environ = os.environ if environ is None else environ
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    values, explicit = {}, set()
    for field in FIELDS:
        value = field.default
        if field.env in environ and environ[field.env] != "":
            value = _convert(field, environ[field.env], field.env)
            explicit.add(field.name)
        flag_value = getattr(args, field.name)
        if flag_value is not None:
            value = _convert(field, flag_value, typed_flag(field, argv))
            explicit.add(field.name)
        values[field.name] = value
    cfg = Config(**values)
    validate(cfg)
    return with_explicit(resolve_task(cfg), explicit)


def with_explicit(cfg: Config, names) -> Config:
    """`cfg` remembering which settings the user gave (env var or flag): RECIPE=auto plans only the others. Kept
    beside the fields, so neither config.json nor config_hash sees it."""
    object.__setattr__(cfg, "_explicit", frozenset(names))
    return cfg


def explicit_settings(cfg: Config) -> frozenset[str]:
    """The settings the user gave; a Config built otherwise (tests, a replace) counts every setting as given."""
    return getattr(cfg, "_explicit", frozenset(FIELD_BY_NAME))


def gate_size(cfg: Config) -> int:
    """The gate's input long side: GATE_INPUT_SIZE, else half of INPUT_SIZE (a multiple of 32, at least 32)."""
    return cfg.gate_input_size or max(32, cfg.input_size // 2 // 32 * 32)


def resolve_task(cfg: Config) -> Config:
    """TASK=classify trains at the gate's own, smaller size: INPUT_SIZE becomes that size for the whole run
    (cache, loaders, export metadata), and NAME defaults to 'gate' (-> gate.onnx)."""
    if cfg.task != "classify":
        return cfg
    if cfg.train_patch:
        raise UserError(f"TRAIN_PATCH={cfg.train_patch!r} is for the segmenter; the gate (TASK=classify) judges whole "
                        "images at GATE_INPUT_SIZE: leave TRAIN_PATCH empty for the gate run")
    name = "gate" if cfg.name == FIELD_BY_NAME["name"].default else cfg.name
    return dataclasses.replace(cfg, input_size=gate_size(cfg), name=name)


def validate(cfg: Config) -> None:
    """Checks that span several settings."""
    if cfg.input_size % 32:
        raise UserError(f"INPUT_SIZE={cfg.input_size} must be a multiple of 32 (e.g. {cfg.input_size // 32 * 32 or 32})")
    patch = cfg.patch_hw()
    if patch and (any(side % 32 for side in patch) or max(patch) > cfg.input_size):
        raise UserError(f"TRAIN_PATCH={cfg.train_patch!r}: both sides must be multiples of 32 and at most "
                        f"INPUT_SIZE={cfg.input_size} (e.g. 256x320 for 1600x256 images at INPUT_SIZE=1600)")
    tile = cfg.tile_hw()
    if tile and any(side % 32 for side in tile):
        raise UserError(f"TILE={cfg.tile!r}: both sides must be multiples of 32 (the models' stride), e.g. 384x384")
    if cfg.folds < 2:
        raise UserError(f"FOLDS={cfg.folds} must be at least 2 for cross-validation")
    if cfg.dice_weight + cfg.bce_weight <= 0:
        raise UserError("DICE_WEIGHT and BCE_WEIGHT cannot both be 0")
    if cfg.fold_ids.strip().lower() != "all":
        parse_fold_ids(cfg.fold_ids, cfg.folds)
    for name in ("classes_file", "groups", "load_model"):
        value = getattr(cfg, name)
        if value and not Path(value).is_file():
            raise UserError(f"{name.upper()}={value!r}: file not found")
    if cfg.crop == "person":
        check_crop_model(cfg.crop_model)
    if cfg.task == "classify":
        validate_gate(cfg)
    validate_data(cfg)
    parse_class_weights(cfg.class_weights, cfg.classes)


def validate_data(cfg: Config) -> None:
    """WORK_DIR, the class names and the void label against CLASSES."""
    if Path(cfg.work_dir).exists() and not Path(cfg.work_dir).is_dir():
        raise UserError(f"WORK_DIR={cfg.work_dir!r} is a file, not a folder: give a folder for the run (it is "
                        "created if missing)")
    names = cfg.names()
    if cfg.classes > 1 and len(names) != cfg.classes:
        raise UserError(f"CLASS_NAMES/CLASSES_FILE give {len(names)} names ({', '.join(names)}) but CLASSES={cfg.classes}")
    if cfg.classes == 1 and len(names) > 2:
        raise UserError(f"CLASS_NAMES/CLASSES_FILE give {len(names)} names ({', '.join(names)}) but CLASSES=1 (binary): "
                        f"set --classes {len(names)} for class-id masks")
    repeated = sorted({n for n in names if names.count(n) > 1 or not n})
    if repeated:
        raise UserError(f"CLASS_NAMES/CLASSES_FILE repeat or leave blank {repeated} ({', '.join(names)}): give every "
                        "class its own name")
    if cfg.ignore_index is not None and cfg.ignore_index < max(cfg.classes, 2):
        raise UserError(f"IGNORE_INDEX={cfg.ignore_index} is a class id with CLASSES={cfg.classes}; the void label "
                        f"must be above the class ids (the default 255, or none)")


def validate_gate(cfg: Config) -> None:
    if cfg.gate_input_size % 32:
        raise UserError(f"GATE_INPUT_SIZE={cfg.gate_input_size} must be a multiple of 32 "
                        f"(e.g. {cfg.gate_input_size // 32 * 32 or 32}), or 0 for INPUT_SIZE / 2")
    if cfg.crop != "off":
        raise UserError(f"TASK=classify with CROP={cfg.crop} is not supported: the gate judges the whole image; "
                        "train the gate with CROP=off")


def check_crop_model(path: str) -> None:
    """CROP=person needs a local detector file; say where it goes (nothing is ever downloaded)."""
    if not Path(path).is_file():
        raise UserError(f"CROP=person needs YOLO11-seg weights at CROP_MODEL={path!r}, which does not exist: put a "
                        f"yolo11n-seg.pt (or an exported .onnx) file there, or set CROP_MODEL / --crop-model to its "
                        "path (nothing is downloaded)")
    if Path(path).suffix.lower() not in (".pt", ".onnx"):
        raise UserError(f"CROP_MODEL={path!r} must be a YOLO11-seg .pt or .onnx file")


def parse_class_weights(text: str, classes: int) -> list[float] | str | None:
    """None, 'auto' or one positive weight per class."""
    text = text.strip().lower()
    if not text:
        return None
    if text == "auto":
        return "auto"
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        weights = []
    if len(weights) != classes or any(w <= 0 for w in weights):
        raise UserError(f"CLASS_WEIGHTS={text!r} must be 'auto' or {classes} positive numbers, comma separated")
    return weights


def describe_config(cfg: Config, saved: str | os.PathLike | None = None) -> str:
    """One line for the log: what is trained, and every setting that differs from its default (by env var name).
    All settings, defaults included, are in `saved` (WORK_DIR/config.json)."""
    model = (f"gate {cfg.encoder} at {cfg.gate_input_size or cfg.input_size // 2} px" if cfg.task == "classify"
             else f"{cfg.arch}/{cfg.encoder} at {cfg.input_size} px")
    length = f"time budget {cfg.time_budget}" if cfg.time_budget else f"{cfg.epochs} epochs"
    changed = [f"{f.env}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for f in FIELDS
               if (v := getattr(cfg, f.name)) != f.default]
    where = f"; every setting: {saved}" if saved else ""
    return (f"config: {model}, {cfg.folds} folds, {length}, batch {cfg.batch_size}, lr {cfg.lr:g}"
            f"{where}; set: {', '.join(changed) or 'nothing (all defaults)'}")


def config_hash(cfg: Config) -> str:
    """16 hex digits over the settings that shape the trained weights (see Field.hashed). A fold checkpoint
    written under another hash is trained again instead of resumed."""
    relevant = {name: value for name, value in cfg.to_dict().items() if FIELD_BY_NAME[name].hashed(cfg.task, value)}
    if cfg.train_patch:  # patches replace whole-image batches: BATCH_SHAPE shapes nothing
        relevant.pop("batch_shape", None)
    if relevant.get("use_amp") == "auto":  # the machine decides the precision, not the run: a run resumes on
        relevant["use_amp"] = False  # either kind of CPU, and runs from before 'auto' (false) resume under it
    return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]
