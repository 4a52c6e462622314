"""Lower-precision copies of an exported graph: fp16 for GPUs, static int8 QDQ for CPUs with Dice before/after.

The int8 copy records what was measured (int8_dice_delta, int8_speedup, int8_val_images) and the SHA-1 of the
fp32 file it came from (int8_source): inference.py --precision auto (runtime/precision.py) decides on them.
`--int8 auto` (the default) writes it only when a validation set is at hand (int8_plan).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import onnx

from exporting.checks import max_diff, parity_input, run_onnxruntime
from exporting.onnx_metadata import set_metadata
from runtime.metadata import read_metadata
from config import INT8_MODES
from utils import (
    LOG, UserError, atomic_write_bytes, dice_iou, file_sha1, index_masks, list_images, preprocess, read_image,
    read_mask, restore_size,
)


# ----------------------------------------------------------------------------- fp16


def to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """float16 weights and compute for GPUs; `image` and the output stay float32.

    Resize is kept in float32 entirely (its scales must be float32, and fp16 Resize has no CPU
    kernel), with casts inserted around it.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    metadata = read_metadata(proto)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(onnx.ModelProto.FromString(proto.SerializeToString()), keep_io_types=True,
                                        op_block_list=[*DEFAULT_OP_BLOCK_LIST, "Resize"])
    return set_metadata(half, {**metadata, "precision": "fp16"})


def write_fp16(proto: onnx.ModelProto, path: Path, metadata: dict, check: bool,
               side: int | None = None) -> Path:
    half = to_fp16(proto)
    atomic_write_bytes(path, half.SerializeToString())
    if check:
        x = parity_input(side or metadata["input_size"])
        try:
            diff = max_diff(run_onnxruntime(path, x), run_onnxruntime(proto.SerializeToString(), x), "fp16 vs fp32")
            LOG.info("fp16: max abs diff vs fp32 %.2e (onnxruntime CPU)", diff)
        except Exception as exc:  # CPU kernels for fp16 are incomplete; the GPU is the target
            LOG.warning("fp16: onnxruntime CPU cannot run it (%s); check it on the GPU", str(exc).splitlines()[0])
    LOG.info("exported %s (fp16, %.1f MB)", path, path.stat().st_size / 1e6)
    return path


# ----------------------------------------------------------------------------- int8


def load_pairs(image_dir: Path, mask_dir: Path, keys: list[str] | None = None) -> list[tuple[Path, Path]]:
    """(image, mask) paths paired by stem (a mask may be <stem>_mask.*), optionally only `keys`."""
    masks = index_masks(mask_dir)
    pairs = [(p, masks[p.stem]) for p in list_images(image_dir) if p.stem in masks]
    if keys is not None:
        wanted = set(keys)
        pairs = [pair for pair in pairs if pair[0].stem in wanted]
    if not pairs:
        raise UserError(f"no image/mask pairs in {image_dir} and {mask_dir} (masks are paired by file stem)")
    return pairs


def check_val_dir(val_dir: str | Path) -> list[tuple[Path, Path]]:
    """--val-dir's (image, mask) pairs; stops with one line on a missing folder or an image without a mask."""
    images_dir, masks_dir = Path(val_dir) / "images", Path(val_dir) / "masks"
    missing = [str(d) for d in (images_dir, masks_dir) if not d.is_dir()]
    if missing:
        raise UserError(f"--val-dir {val_dir}: {' and '.join(missing)} not found; it needs images/ and masks/")
    images, masks = list_images(images_dir), index_masks(masks_dir)
    unpaired = [p.name for p in images if p.stem not in masks]
    if unpaired:
        raise UserError(f"--val-dir {val_dir}: {len(unpaired)} of {len(images)} images have no mask in {masks_dir} "
                        f"(e.g. {', '.join(unpaired[:3])}); masks pair by file stem: a.jpg with a.png or a_mask.png")
    return load_pairs(images_dir, masks_dir)


def validation_pairs(work_dir: Path, folds: list[int], val_dir: str | Path | None) -> list[tuple[Path, Path]]:
    """--val-dir (images/ + masks/), else the cached validation images of the exported folds."""
    if val_dir is not None:
        return check_val_dir(val_dir)
    split_file = work_dir / "folds.json"
    keys = None
    if split_file.is_file():
        split = json.loads(split_file.read_text())
        keys = [key for fold in folds for key in split.get(str(fold), [])]
    return load_pairs(work_dir / "images", work_dir / "masks", keys)


def evaluate(model: Path | bytes, pairs: list[tuple[Path, Path]], meta: dict) -> tuple[float, float]:
    """(mean per-image Dice at the metadata threshold, median ms per image) with onnxruntime on CPU; `model` is
    a file or the serialized graph."""
    import onnxruntime as ort

    session = ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                   providers=["CPUExecutionProvider"])
    scores, times = [], []
    for image_path, mask_path in pairs:
        image, mask = read_image(image_path), read_mask(mask_path, meta["num_classes"])
        chw, valid_hw = preprocess(image, meta)
        start = time.perf_counter()
        out = session.run(None, {"image": chw[None]})[0][0]  # (C, H', W')
        times.append(time.perf_counter() - start)
        probs = restore_size(out, valid_hw, image.shape[:2], meta["stride"])
        if meta["num_classes"] == 1:
            cut = meta["threshold"] if meta.get("output") == "probs" else 0.0
            scores.append(dice_iou(probs[0] > cut, mask)[0])
        else:
            pred = probs.argmax(0)
            scores.append(float(np.mean([dice_iou(pred == c, mask == c)[0] for c in range(1, meta["num_classes"])])))
    return float(np.mean(scores)), 1000 * float(np.median(times))


class CacheReader:
    """onnxruntime CalibrationDataReader over cached training images, one (1, 3, H, W) at a time."""

    def __init__(self, images: list[Path], meta: dict):
        self.images, self.meta, self.index = images, meta, 0

    def get_next(self) -> dict | None:
        if self.index >= len(self.images):
            return None
        chw, _ = preprocess(read_image(self.images[self.index]), self.meta)
        self.index += 1
        return {"image": chw[None]}

    def rewind(self) -> None:
        self.index = 0


def spread(items: list, count: int) -> list:
    """At most `count` items, evenly spread over the list."""
    return items[::max(1, len(items) // count)][:count]


def calibration_images(work_dir: Path, count: int) -> list[Path]:
    images = list_images(work_dir / "images") if (work_dir / "images").is_dir() else []
    if not images:
        raise UserError(f"--int8 calibrates on the training cache {work_dir / 'images'}, which is empty or missing; "
                        "run train.py on this WORK_DIR first")
    return spread(images, count)


def int8_inputs(work_dir: Path | None, folds: list[int], val_dir, count: int) -> tuple[list[Path], list]:
    """(calibration images, validation pairs) for --int8, checked before anything is exported. Without a training
    run (export.py --checkpoint) both come from --val-dir."""
    if work_dir is None:
        if val_dir is None:
            raise UserError("--int8 with --checkpoint needs --val-dir DIR (DIR/images + DIR/masks): there is no "
                            "training cache to calibrate on")
        pairs = check_val_dir(val_dir)
        return spread([image for image, _ in pairs], count), pairs
    return calibration_images(work_dir, count), validation_pairs(work_dir, folds, val_dir)


def int8_mode(value: str | bool | None) -> str:
    """auto, on or off (True/False: the old on/off switch)."""
    if isinstance(value, bool) or value is None:
        return "on" if value else "off"
    mode = str(value).strip().lower()
    if mode not in INT8_MODES:
        raise UserError(f"--int8 {value!r} is not valid; use one of: {', '.join(INT8_MODES)}")
    return mode


def no_validation_set(work_dir: Path | None, folds: list[int], val_dir) -> str | None:
    """Why --int8 auto writes no int8 copy (no validation set at hand), or None when it can measure one."""
    if val_dir is not None and work_dir is None:
        return None
    if work_dir is None:
        return "--checkpoint without --val-dir"
    if not (work_dir / "images").is_dir() or not list_images(work_dir / "images"):
        return f"no training cache in {work_dir / 'images'} to calibrate on"
    if val_dir is not None:
        return None
    if not (work_dir / "folds.json").is_file():
        return f"no {work_dir / 'folds.json'} naming the held-back images of the exported folds"
    try:
        validation_pairs(work_dir, folds, None)
    except UserError:
        return f"the held-back images of folds {folds} are not in the training cache"
    return None


def int8_plan(mode: str | bool | None, work_dir: Path | None, folds: list[int], val_dir, count: int) -> tuple | None:
    """int8_inputs for --int8 on, or auto with a validation set at hand; None (off, or auto without one: one line
    says why) means no int8 copy."""
    mode = int8_mode(mode)
    if mode == "auto":
        reason = no_validation_set(work_dir, folds, val_dir)
        if reason is not None:
            LOG.info("no int8 copy: %s (--val-dir DIR measures one; --int8 off silences this)", reason)
            return None
    return int8_inputs(work_dir, folds, val_dir, count) if mode != "off" else None


def quantize_int8(fp32_path: Path, images: list[Path], meta: dict) -> onnx.ModelProto:
    """Static QDQ int8 (per-channel weights, uint8 activations), calibrated on `images`."""
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    root_handlers = list(logging.root.handlers)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        except Exception as exc:  # the optimiser is optional: quantize the plain graph then
            LOG.warning("quantization pre-processing skipped (%s: %s)", type(exc).__name__, exc)
            prepared = fp32_path
        try:
            quantize_static(str(prepared), str(Path(tmp) / "int8.onnx"), CacheReader(images, meta),
                            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, per_channel=True, calibrate_method=CalibrationMethod.MinMax)
        finally:  # onnxruntime.quantization calls logging.basicConfig: undo it, or every line prints twice
            for handler in set(logging.root.handlers) - set(root_handlers):
                logging.root.removeHandler(handler)
        return onnx.load(str(Path(tmp) / "int8.onnx"))


def write_int8(fp32_path: Path, metadata: dict, images: list[Path], pairs: list[tuple[Path, Path]]) -> Path:
    """<name>.int8.onnx calibrated on `images` and measured against the fp32 file on `pairs` (int8_inputs) before it
    is written, so it records its Dice change, speed-up and source (what runtime/precision.py decides on)."""
    proto = quantize_int8(fp32_path, images, metadata)
    dice32, ms32 = evaluate(fp32_path, pairs, metadata)
    dice8, ms8 = evaluate(proto.SerializeToString(), pairs, metadata)
    measured = {"int8_dice_delta": round(dice8 - dice32, 6), "int8_speedup": round(ms32 / max(ms8, 1e-9), 3),
                "int8_val_images": len(pairs), "int8_source": file_sha1(fp32_path)}
    path = fp32_path.with_suffix(".int8.onnx")
    atomic_write_bytes(path, set_metadata(proto, {**metadata, "precision": "int8", **measured}).SerializeToString())
    LOG.info("exported %s (int8 QDQ, calibrated on %d images, %.1f MB)", path, len(images), path.stat().st_size / 1e6)
    LOG.info("int8: Dice %.4f -> %.4f (%+.4f) on %d validation images; median latency %.1f -> %.1f ms (%.2fx)",
             dice32, dice8, dice8 - dice32, len(pairs), ms32, ms8, measured["int8_speedup"])
    return path
