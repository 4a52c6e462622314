"""The model metadata contract, in one place: every key, its default, its check, who writes and who reads it.

An exported ONNX file carries one JSON document under `metadata_props["segmentation"]`, so the file
describes itself: how to preprocess an image for it, what its output means, how to threshold it.
Export writes it (`build_metadata`, `build_gate_metadata`), training's out-of-fold scoring uses the
same preprocessing fields (`preprocess_metadata`), and the runtime reads and validates it
(`decode_metadata`, `check_metadata`, `read_metadata`). JSON only: metadata is data, never code.

`docs/metadata.md` is generated from `KEYS` (`python -m runtime.metadata --write-docs`); a test
keeps the two in sync. No torch or onnx here: the runtime side imports this module.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from runtime.rule import make_rule, rule_problem
from utils import IMAGENET_MEAN, IMAGENET_STD, LOG, UserError, is_int, is_number

METADATA_KEY = "segmentation"  # the ONNX metadata_props key holding the JSON document
METADATA_VERSION = 1
STRIDE = 32  # every smp encoder downsamples 32x: inputs are padded to a multiple of it
TILE_OVERLAP = 0.5  # neighbouring tiles share half a tile (nnU-Net's step of half a patch)
DEFAULT_INPUT_SIZE = 512  # the long side images are resized to (INPUT_SIZE's default; a model without the key)
CROP_MODES = ("off", "person")  # smart crop (runtime/crop.py): the metadata's crop_mode values and CROP's choices
TTA_MODES = ("none", "hflip", "flips")  # flip test-time augmentation (export.py --tta, inference.py --tta)
SEGMENT, GATE = "segment", "gate"
BOTH = (SEGMENT, GATE)

# How multi-class masks are scored, the same on both sides (train.py's out-of-fold scores and inference.py --gt).
MULTICLASS_RULE = ("per (image, class) Dice/IoU of the class-id masks, a class absent from both the truth and the "
                   "prediction scoring 1 (the Kaggle Severstal rule); an image's dice is the mean over its foreground "
                   "classes 1..C-1; a class's dice is the mean over all images")

EXPORT, EXPORT_GATE = "export.py", "export.py (gate)"
INT8 = "export.py (int8 copy, exporting/quantize.py)"
DERIVED = "export.py / exporting.e2e / exporting.triton (every file made from another file)"
E2E = "exporting/e2e.py"
RUNTIME = "runtime (Segmenter)"


def _unit(value) -> bool:
    return is_number(value) and 0 < value < 1


def _crop_ok(v) -> bool:
    return v is None or (isinstance(v, dict) and is_number(v.get("conf")) and 0 <= v["conf"] < 1
                         and is_number(v.get("roi_factor")) and v["roi_factor"] > 0
                         and is_int(v.get("min_size")) and v["min_size"] >= 1
                         and is_int(v.get("pad_value")) and 0 <= v["pad_value"] <= 255
                         and is_int(v.get("input_size")) and 32 <= v["input_size"] <= 16384)


def _tile_ok(v) -> bool:
    return v is None or (isinstance(v, dict) and isinstance(v.get("size"), list) and len(v["size"]) == 2
                         and all(is_int(x) and x >= 32 and x % 32 == 0 for x in v["size"])
                         and is_number(v.get("overlap")) and 0 <= v["overlap"] <= 0.9)


def _any(_value) -> bool:
    return True


def _sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _source_ok(value) -> bool:
    return (isinstance(value, dict) and isinstance(value.get("file"), str) and _sha256(value.get("sha256"))
            and value.get("made") in SOURCE_KINDS)


SOURCE_KINDS = ("int8", "fp16", "e2e", "triton")  # what a derived file is (its `source.made`)


@dataclass(frozen=True)
class Key:
    """One metadata key. `tasks`: the model kinds that carry it; `check`/`must`: what a valid value is
    (checked at load, naming the key, instead of failing deep inside preprocessing)."""

    name: str
    default: Any
    doc: str
    writer: str
    readers: str
    tasks: tuple[str, ...] = BOTH
    check: Callable[[Any], bool] = _any
    must: str = "anything"
    gate_check: Callable[[Any], bool] | None = None  # a gate's own rule, where it differs
    gate_must: str = ""

    def rule(self, task: str) -> tuple[Callable[[Any], bool], str]:
        if task == GATE and self.gate_check is not None:
            return self.gate_check, self.gate_must
        return self.check, self.must


KEYS: tuple[Key, ...] = (
    Key("format_version", METADATA_VERSION, "version of this contract", "export.py", "runtime: refuses newer ones",
        check=lambda v: is_int(v) and 1 <= v <= METADATA_VERSION,
        must=f"an integer from 1 to {METADATA_VERSION} (a newer export needs a newer runtime)"),
    Key("task", SEGMENT, "'segment' (a segmenter) or 'gate' (the clean/defect classifier, TASK=classify)",
        "export.py", "runtime: a gate given as --model, or a segmenter as --gate, is refused",
        check=lambda v: v in BOTH, must="'segment' or 'gate'"),
    Key("name", "model", "the run's NAME", "export.py", "Triton model name, logs"),
    Key("arch", "unknown", "architecture (ARCH)", "export.py", "logs, app"),
    Key("encoder", "unknown", "encoder (ENCODER)", "export.py", "logs, app"),
    Key("num_classes", 1, "output channels: 1 = binary (sigmoid), >1 = classes with background 0 (softmax)",
        "export.py", "runtime: thresholding vs argmax, legend, per-class scores",
        check=lambda v: is_int(v) and 1 <= v <= 255, must="an integer from 1 to 255"),
    Key("class_names", ["foreground"], "one name per output channel (CLASS_NAMES / CLASSES_FILE)",
        "export.py", "runtime: legend, CSV columns, metrics.json",
        check=lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v), must="a list of strings"),
    Key("input_size", DEFAULT_INPUT_SIZE, "long side an image is resized to (0: no resize)", "export.py (INPUT_SIZE)",
        "runtime preprocess; training's out-of-fold scoring",
        check=lambda v: is_int(v) and 0 <= v <= 16384, must="an integer from 0 (no resize) to 16384"),
    Key("resize", "long_side", "'long_side' (keep aspect, long side = input_size) or 'none'", "export.py",
        "runtime preprocess", check=lambda v: v in ("long_side", "none"), must="'long_side' or 'none'"),
    Key("mean", list(IMAGENET_MEAN), "RGB mean on a 0..1 scale", "export.py", "runtime preprocess",
        check=lambda v: isinstance(v, list) and len(v) == 3 and all(is_number(x) for x in v), must="3 numbers"),
    Key("std", list(IMAGENET_STD), "RGB std on a 0..1 scale", "export.py", "runtime preprocess",
        check=lambda v: isinstance(v, list) and len(v) == 3 and all(is_number(x) and x > 0 for x in v),
        must="3 positive numbers"),
    Key("stride", STRIDE, "inputs are padded bottom/right to a multiple of this", "export.py", "runtime preprocess",
        check=lambda v: is_int(v) and 1 <= v <= 1024, must="a positive integer"),
    Key("output", "probs", "what the graph returns: 'probs' (sigmoid/softmax inside) or 'logits' (--logits)",
        "export.py", "runtime: applies sigmoid/softmax to logits", check=lambda v: v in ("probs", "logits"),
        must="'probs' or 'logits'"),
    Key("threshold", 0.5, "segmenter: the out-of-fold best threshold (--threshold model; the `cv` rule's value) or "
        "the number given to export.py --threshold; gate: segment images whose defect probability is >= this",
        "export.py (cv_summary.json best_threshold / gate OOF threshold)",
        "runtime thresholding, runtime/gate.py", check=_unit, must="a number in (0, 1)",
        gate_check=lambda v: is_number(v) and 0 <= v <= 1, gate_must="a number in [0, 1]"),
    Key("thresholds", [0.5, 0.3, 0.15], "the adaptive cascade, tried in order until a mask holds min_area pixels",
        "export.py", "runtime postprocess (--threshold adaptive)", tasks=(SEGMENT,),
        check=lambda v: isinstance(v, list) and len(v) > 0 and all(_unit(t) for t in v),
        must="a non-empty list of numbers in (0, 1)"),
    Key("min_area", 64, "foreground pixels (in all) a mask needs to count as a detection", "export.py (MIN_AREA, "
        "--min-area)", "runtime postprocess", tasks=(SEGMENT,), check=lambda v: is_int(v) and v >= 0,
        must="an integer >= 0"),
    Key("rule", None, "the post-processing rule every runtime applies unless the user overrides it "
        "(runtime/rule.py): mode cv (the cross-validated threshold), fixed or adaptive, threshold or cascade, "
        "min_area, close, open, fill_holes, min_component_area, keep_largest; a file without it gets its cv "
        "threshold", "export.py (--threshold, --min-area, --close, --open, --fill-holes, ...), exporting.e2e",
        "inference.py, Segmenter, app, Ray engine, the end-to-end graph (baked in), examples (printed)",
        tasks=(SEGMENT,), check=lambda v: v is None or rule_problem(v) is None,
        must="null or a rule (runtime/rule.py): mode cv/fixed/adaptive with a threshold in (0, 1) or a cascade, "
        "integer sizes >= 0"),
    Key("tta", "none", "flip TTA baked into the graph (none, hflip, flips)", "export.py --tta",
        "runtime: does not repeat baked flips", tasks=(SEGMENT,), check=lambda v: v is None or v in TTA_MODES,
        must=f"one of {', '.join(TTA_MODES)}"),
    Key("crop_mode", "off", "'person': smart crop with the detector below", "export.py (CROP)",
        "runtime/crop.py", tasks=(SEGMENT,), check=lambda v: v in CROP_MODES, must=f"one of {', '.join(CROP_MODES)}"),
    Key("detector", None, "file name of the YOLO detector ONNX beside the model", "export.py", "runtime/crop.py",
        tasks=(SEGMENT,), check=lambda v: v is None or (isinstance(v, str) and v.strip() != ""),
        must="null or a file name"),
    Key("crop", None, "the ROI settings: conf, roi_factor, min_size, pad_value, input_size", "export.py",
        "runtime/crop.py", tasks=(SEGMENT,), check=_crop_ok,
        must="null or {conf in [0, 1), roi_factor > 0, min_size >= 1, pad_value 0-255, input_size 32-16384}"),
    Key("background", True, "class 0 means nothing found (binary models, and our multi-class ones); false: every "
        "class is a real class, e.g. ADE20k's 0 = wall (--no-background)", "export.py --describe / --hf",
        "runtime: empty status, legend, per-class scores", tasks=(SEGMENT,), check=lambda v: isinstance(v, bool),
        must="true or false"),
    Key("described", None, "true when export.py --describe / --hf wrote this metadata for a model trained elsewhere",
        "export.py --describe / --hf", "export.py --describe (may rewrite it)", tasks=(SEGMENT,)),
    Key("folds", [], "the fold ids averaged inside the graph", "export.py", "logs, app"),
    Key("precision", "fp32", "fp32, fp16 or int8", "export.py (--fp16 / --int8)", "logs, runtime/precision.py"),
    Key("int8_dice_delta", None, "int8 file: its mean per-image Dice minus the fp32 file's, on the validation images",
        INT8, "runtime/precision.py: --precision auto runs int8 only when it loses at most MAX_DICE_LOSS",
        tasks=(SEGMENT,),
        check=lambda v: is_number(v) and -1 <= v <= 1, must="a number from -1 to 1"),
    Key("int8_speedup", None, "int8 file: fp32 median ms / int8 median ms per image (onnxruntime CPU, at export)",
        INT8, "logs", tasks=(SEGMENT,), check=lambda v: is_number(v) and v > 0, must="a positive number"),
    Key("int8_val_images", None, "int8 file: how many validation images the two were measured on", INT8, "logs",
        tasks=(SEGMENT,), check=lambda v: is_int(v) and v >= 1, must="an integer >= 1"),
    Key("int8_source", None, "int8 files exported before `source` existed: the SHA-1 of the fp32 file's bytes "
        "(read, no longer written)", "older exports", "runtime/lineage.py: a stale int8 file is named and skipped",
        tasks=(SEGMENT,), check=lambda v: isinstance(v, str) and len(v) == 40, must="40 hex digits"),
    Key("int8_min_iou", None, "int8 file: the lowest per-image IoU between its masks and the fp32 file's, both "
        "under the rule, on the held-back images", INT8, "logs, docs/deploy.md", tasks=(SEGMENT,),
        check=lambda v: is_number(v) and 0 <= v <= 1, must="a number from 0 to 1"),
    Key("int8_val_set", None, "int8 file: which images it was measured on (a fold's held-back images, the test "
        "split, or --val-dir)", INT8, "logs", tasks=(SEGMENT,)),
    Key("int8_timing", None, "int8 file: how int8_speedup was measured: median ms of fp32 and int8 over "
        "alternating rounds, the rounds, the 1-minute load average before and after, the cores; or why no speed-up "
        "was stored (the load was above the cores)", INT8, "runtime/precision.py (auto needs a stored speed-up), "
        "bench/int8_speedup.py", tasks=(SEGMENT,), check=lambda v: isinstance(v, dict), must="an object"),
    Key("source", None, "a derived file (int8, fp16, e2e, Triton copy): the file it was made from, "
        "{file, sha256, made}; a runtime that sees both warns when the source's bytes no longer match", DERIVED,
        "runtime/lineage.py (inference.py, app; --strict refuses), examples/node, examples/web (printed)",
        tasks=(SEGMENT,), check=lambda v: v is None or _source_ok(v),
        must=f"null or {{file, sha256 (64 hex digits), made: one of {', '.join(SOURCE_KINDS)}}}"),
    Key("weights_sha256", None, "every export from checkpoints: SHA-256 of each checkpoint file by name; two "
        "exports beside each other with another digest for the same name came from different trainings",
        "export.py", "runtime/lineage.py", tasks=(SEGMENT,),
        check=lambda v: v is None or (isinstance(v, dict) and all(_sha256(d) for d in v.values())),
        must="null or {checkpoint name: 64 hex digits}"),
    Key("end_to_end", None, "true in an end-to-end graph (uint8 image in, mask and probs out)", E2E,
        "runtime/e2e.py, exporting/e2e.py (refuses to wrap it twice)", tasks=(SEGMENT,)),
    Key("e2e_tta", None, "end-to-end graph: the flip views averaged inside it", E2E, "logs", tasks=(SEGMENT,)),
    Key("inner_output", None, "end-to-end graph: what the wrapped model returned (probs or logits)", E2E,
        "documentation only", tasks=(SEGMENT,)),
    Key("io", None, "end-to-end graph: its inputs and outputs in words", E2E, "documentation only",
        tasks=(SEGMENT,)),
    Key("e2e_mask", None, "end-to-end graphs exported before `rule` existed: their mask rule (read as their rule, "
        "no longer written)", "older exports", "runtime/rule.py", tasks=(SEGMENT,)),
    Key("train_patch", None, "TRAIN_PATCH (HxW) when training used random crops; absent otherwise", "export.py",
        "documentation only", tasks=(SEGMENT,)),
    Key("batch_shape", None, "how whole training images were batched (BATCH_SHAPE): 'square' (padded to an "
        "input_size square) or 'rect' (padded to a multiple of stride, as the runtime pads); absent with "
        "train_patch and in models exported before it existed", "export.py", "documentation only",
        tasks=(SEGMENT,), check=lambda v: v is None or v in ("square", "rect"), must="'square' or 'rect'"),
    Key("train_flips", None, "the flips the training augmentation made: 'h' (horizontal; AUGMENT full or flip) or "
        "'none'; absent for models trained elsewhere and exported before it existed", "export.py (AUGMENT)",
        "export.py and runtime: a warning when --tta adds a flip training never made", tasks=(SEGMENT,),
        check=lambda v: v is None or v in ("h", "hv", "none"), must="'h', 'hv' or 'none'"),
    Key("tile", None, "large images run as overlapping tiles of this size at the model's scale, Gaussian-blended: "
        "{size: [H, W], overlap}; absent: whole images", "export.py (TILE)", "runtime/tiling.py via Segmenter "
        "(--tile overrides); exporting.e2e refuses such a model", tasks=(SEGMENT,), check=_tile_ok,
        must="null or {size: [H, W] multiples of 32, overlap in [0, 0.9]}"),
    Key("recipe", None, "RECIPE=auto's plan: each setting it chose, one line with its reason, the trial's AUGMENT "
        "included (WORK_DIR/config.json recipe_plan); absent when nothing was planned", "export.py (train.py's plan)",
        "provenance", check=lambda v: v is None or (isinstance(v, list) and all(
            isinstance(line, str) for line in v)), must="null or a list of strings"),
    Key("config_hash", None, "hash of the training settings that shaped the weights", "export.py", "provenance"),
    Key("created", None, "UTC export time", "export.py", "provenance"),
    Key("versions", None, "torch, smp, onnx, onnxruntime versions at export", "export.py", "provenance"),
    Key("checks", None, "export-time parity results (onnxruntime vs torch, OpenCV DNN)", "export.py", "provenance"),
    Key("pool", "avg", "the gate's pooling of its deepest features (GATE_POOL)", EXPORT_GATE, "provenance",
        tasks=(GATE,)),
    Key("threshold_source", None, "'oof' (out-of-fold, keeping GATE_RECALL), 'given' or 'default'", EXPORT_GATE,
        "logs", tasks=(GATE,)),
    Key("recall_target", None, "GATE_RECALL the threshold was chosen for", EXPORT_GATE, "logs", tasks=(GATE,)),
    Key("oof", None, "the gate's out-of-fold accuracy, AUC, recall, specificity at its threshold", EXPORT_GATE,
        "app, logs", tasks=(GATE,)),
)
KEY_BY_NAME = {k.name: k for k in KEYS}

# What the runtime assumes for a segmenter without our metadata (with a warning).
DEFAULT_METADATA = {name: KEY_BY_NAME[name].default for name in (
    "format_version", "task", "name", "arch", "encoder", "num_classes", "class_names", "input_size", "resize", "mean",
    "std", "stride", "output", "threshold", "thresholds", "min_area", "folds", "crop_mode", "detector", "crop")}
PREPROCESS_KEYS = ("input_size", "resize", "mean", "std", "stride")


def preprocess_metadata(input_size: int) -> dict:
    """The preprocessing fields for a model trained at `input_size`: what export writes and what
    training's out-of-fold scoring uses, so the two cannot drift."""
    return {"input_size": int(input_size), "resize": "long_side", "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "stride": STRIDE}


# ----------------------------------------------------------------------------- build (export)


def crop_metadata(cfg: dict, detector_name: str) -> dict:
    """The smart-crop fields: mode, the ROI settings and the detector file beside the model."""
    if cfg.get("crop", "off") != "person":
        return {"crop_mode": "off", "detector": None}
    settings = {"conf": cfg["crop_conf"], "roi_factor": cfg["crop_roi_factor"], "min_size": cfg["crop_min_size"],
                "pad_value": cfg["crop_pad_value"], "input_size": cfg["input_size"]}
    return {"crop_mode": "person", "detector": detector_name, "crop": settings}


AUGMENT_FLIPS = {"full": "h", "flip": "h", "none": "none"}  # AUGMENT (dataset.augmentations) -> train_flips
TTA_FLIP_AXES = {"none": "", "hflip": "h", "flips": "hv"}  # the flips each TTA mode adds
FLIP_NAMES = {"h": "horizontal", "v": "vertical"}


def untrained_flips(meta: dict, tta: str | None) -> str | None:
    """The warning for flip TTA that shows a model views its training never made (metadata train_flips: a model
    trained upright, then shown upside down, scores lower: Weizmann horses -0.022 Dice with --tta flips, +0.001
    with hflip). None when every flip was trained, no TTA is asked for, or the training flips are unknown."""
    trained = meta.get("train_flips")
    if trained is None or not tta:
        return None
    unseen = [axis for axis in TTA_FLIP_AXES.get(tta, "") if axis not in trained.replace("none", "")]
    if not unseen:
        return None
    better = "hflip" if "h" in trained else "none"
    return (f"--tta {tta} adds {' and '.join(FLIP_NAMES[a] for a in unseen)} flips that this model never saw in "
            f"training (train_flips={trained!r}): on images with an up and a down this lowers the score (horse: "
            f"-0.022 Dice with flips); use --tta {better} unless your images have no up")


def build_metadata(ckpt: dict, folds: list[int], threshold: float | None, min_area: int | None,
                   tta: str = "none", output: str = "probs", detector_name: str = "",
                   versions: dict | None = None, rule: dict | None = None) -> dict:
    """A segmenter's metadata from a checkpoint ({"config": ..., "model_args": ...}). `threshold`: the number
    recorded as `threshold` (the CV one, or one given); `rule`: make_rule's settings (threshold None or
    'adaptive', morphology), the threshold and min_area filled in here: by default the cv rule at `threshold`."""
    cfg = ckpt.get("config", {})
    args = ckpt["model_args"]
    classes = args["classes"]
    default_names = ["foreground"] if classes == 1 else [f"class_{i}" for i in range(classes)]
    rule = dict(rule or {})
    mode = rule.pop("threshold", None)
    if threshold is None and mode is None:
        mode = 0.5  # no cross-validated threshold (no cv_summary.json, a checkpoint from elsewhere): a fixed 0.5
    threshold = 0.5 if threshold is None else float(threshold)
    min_area = int(cfg.get("min_area", 64) if min_area is None else min_area)
    rule = make_rule(mode, threshold, KEY_BY_NAME["thresholds"].default, min_area, **rule)
    return {
        **DEFAULT_METADATA,
        "name": cfg.get("name") or "model",
        "arch": args["arch"], "encoder": args["encoder"], "num_classes": classes,
        "class_names": list(cfg.get("class_names") or default_names),
        **preprocess_metadata(cfg.get("input_size", DEFAULT_METADATA["input_size"])),
        "task": SEGMENT, "output": output, "tta": tta, "precision": "fp32",
        "threshold": threshold, "min_area": min_area, "rule": rule,
        "folds": folds, **crop_metadata(cfg, detector_name),
        **({"train_patch": cfg["train_patch"]} if cfg.get("train_patch") else
           {"batch_shape": cfg.get("batch_shape", "square")} if cfg else {}),
        **({"train_flips": AUGMENT_FLIPS.get(cfg.get("augment", "full"), "h")} if cfg else {}),
        **({"tile": {"size": [int(x) for x in cfg["tile"].split("x")], "overlap": TILE_OVERLAP}} if cfg.get("tile")
           else {}),
        **({"recipe": list(ckpt["recipe"])} if ckpt.get("recipe") else {}),
        "config_hash": ckpt.get("config_hash"),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions or {},
    }


GATE_OOF_KEYS = ("images", "defective", "clean", "accuracy", "auc", "threshold", "recall", "specificity",
                 "precision", "skipped_fraction")


def build_gate_metadata(ckpt: dict, folds: list[int], summary: dict | None, threshold: float | None,
                        versions: dict | None = None) -> dict:
    """The gate's metadata: task 'gate', the threshold (the out-of-fold one unless given) and the
    out-of-fold metrics it came with, plus the shared preprocessing keys."""
    meta = build_metadata(ckpt, folds, None, None, versions=versions)
    for key in (k.name for k in KEYS if GATE not in k.tasks):
        meta.pop(key, None)
    oof = dict((summary or {}).get("oof") or {})
    source = "oof" if threshold is None else "given"
    threshold = oof.get("threshold") if threshold is None else float(threshold)
    if threshold is None:
        LOG.warning("no gate cv_summary.json in the run folder: gate threshold 0.5 (pass --threshold to choose)")
        threshold, source = 0.5, "default"
    meta.update(task=GATE, num_classes=1, class_names=["defective"], output="probs", threshold=float(threshold),
                pool=ckpt["model_args"].get("pool", "avg"), threshold_source=source,
                recall_target=oof.get("recall_target"), oof={k: oof.get(k) for k in GATE_OOF_KEYS if k in oof})
    return meta


# ----------------------------------------------------------------------------- read and check (runtime)


def encode_metadata(meta: dict) -> str:
    return json.dumps(meta, sort_keys=True)


def decode_metadata(props: dict) -> tuple[dict, bool]:
    """Our metadata from an ONNX `metadata_props` dict -> (metadata with defaults filled, found)."""
    raw = props.get(METADATA_KEY)
    meta = dict(DEFAULT_METADATA)
    if raw is None:
        return meta, False
    try:
        loaded = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"model metadata '{METADATA_KEY}' is not valid JSON ({exc}); re-export the model")
    if not isinstance(loaded, dict):
        raise UserError(f"model metadata '{METADATA_KEY}' must be a JSON object; re-export the model")
    meta.update(loaded)
    return meta, True


def metadata_problems(meta: dict, task: str = SEGMENT, names: tuple[str, ...] | None = None) -> list[str]:
    """One line per invalid key among those a `task` model uses (or only `names`)."""
    problems = []
    for key in KEYS:
        if task in key.tasks and (names is None or key.name in names) and key.name in meta:
            ok, must = key.rule(task)
            if not ok(meta[key.name]):
                problems.append(f"'{key.name}' = {meta[key.name]!r} must be {must}")
    return problems


def check_metadata(meta: dict, task: str = SEGMENT, what: str = "model metadata") -> None:
    """Fail early and clearly on metadata that would break preprocessing later, naming each bad key."""
    problems = metadata_problems(meta, task)
    if task == SEGMENT and meta.get("task", SEGMENT) != SEGMENT:
        problems = [p for p in problems if not p.startswith("'task'")]
        problems.insert(0, f"'task' = {meta['task']!r} must be 'segment' (a gate is passed with --gate)")
    if problems:
        raise UserError(f"{what} is invalid: {'; '.join(problems)}. Re-export the model with export.py")


def read_props(model: Any) -> dict:
    """metadata_props of an ONNX file path, an onnx.ModelProto or an onnxruntime session, as a dict."""
    if hasattr(model, "get_modelmeta"):
        return dict(model.get_modelmeta().custom_metadata_map)
    if hasattr(model, "metadata_props"):
        return {p.key: p.value for p in model.metadata_props}
    import onnx  # an ONNX file on the training side; the runtime passes its session instead

    return {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}


def read_metadata(model: Any) -> dict:
    """Our metadata from an ONNX file/proto/session (defaults filled in); UserError when it has none."""
    meta, found = decode_metadata(read_props(model))
    if not found:
        raise UserError(f"{model} has no '{METADATA_KEY}' metadata; it was not written by export.py")
    return meta


# ----------------------------------------------------------------------------- docs/metadata.md

DOCS_PATH = Path(__file__).resolve().parents[1] / "docs" / "metadata.md"


def docs_markdown() -> str:
    """docs/metadata.md, generated from KEYS."""
    lines = [
        "# Model metadata",
        "",
        "<!-- Generated by `python -m runtime.metadata --write-docs` from runtime/metadata.py; do not edit. -->",
        "",
        f"Every exported ONNX file carries one JSON document under `metadata_props[\"{METADATA_KEY}\"]` "
        f"(format version {METADATA_VERSION}). It makes the file self-describing: the runtime needs nothing "
        "else to preprocess an image, read the output and threshold it. A model without it runs with the "
        "defaults below and a warning. Read it with:",
        "",
        "```python",
        "from runtime.metadata import read_metadata",
        "meta = read_metadata(\"runs/exp1/model.onnx\")  # a path, an onnx.ModelProto or an onnxruntime session",
        "```",
        "",
        f"Multi-class scoring (out-of-fold in training and `inference.py --gt`): {MULTICLASS_RULE}.",
        "",
        "| key | models | default | valid values | what it is | written by | read by |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for k in KEYS:
        default = "-" if k.default is None else f"`{json.dumps(k.default)}`"
        must = f"{k.must}; a gate: {k.gate_must}" if k.gate_check else k.must
        lines.append(f"| `{k.name}` | {', '.join(k.tasks)} | {default} | {must} | {k.doc} | {k.writer} | "
                     f"{k.readers} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print a model's metadata, or regenerate docs/metadata.md.")
    parser.add_argument("model", nargs="?", help="an .onnx file: print its metadata as JSON")
    parser.add_argument("--write-docs", action="store_true", help=f"rewrite {DOCS_PATH.name} from KEYS")
    args = parser.parse_args(argv)
    if args.write_docs:
        DOCS_PATH.write_text(docs_markdown())
        print(f"wrote {DOCS_PATH}")
    if args.model:
        print(json.dumps(read_metadata(args.model), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
