"""Lower-precision copies of an exported graph: fp16 for GPUs, static int8 QDQ for CPUs with Dice before/after."""

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
from utils import (
    LOG, UserError, atomic_write_bytes, dice_iou, index_masks, list_images, preprocess, read_image, read_mask,
    restore_size,
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


def validation_pairs(work_dir: Path, folds: list[int], val_dir: str | Path | None) -> list[tuple[Path, Path]]:
    """--val-dir (images/ + masks/), else the cached validation images of the exported folds."""
    if val_dir is not None:
        return load_pairs(Path(val_dir) / "images", Path(val_dir) / "masks")
    split_file = work_dir / "folds.json"
    keys = None
    if split_file.is_file():
        split = json.loads(split_file.read_text())
        keys = [key for fold in folds for key in split.get(str(fold), [])]
    return load_pairs(work_dir / "images", work_dir / "masks", keys)


def evaluate(model_path: Path, pairs: list[tuple[Path, Path]], meta: dict) -> tuple[float, float]:
    """(mean per-image Dice at the metadata threshold, median ms per image) with onnxruntime on CPU."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
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


def calibration_images(work_dir: Path, count: int) -> list[Path]:
    images = list_images(work_dir / "images") if (work_dir / "images").is_dir() else []
    if not images:
        raise UserError(f"--int8 calibrates on the training cache {work_dir / 'images'}, which is empty or missing; "
                        "run train.py on this WORK_DIR first")
    step = max(1, len(images) // count)
    return images[::step][:count]


def quantize_int8(fp32_path: Path, output: Path, images: list[Path], meta: dict) -> Path:
    """Static QDQ int8 (per-channel weights, uint8 activations), calibrated on `images`."""
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        except Exception as exc:  # the optimiser is optional: quantize the plain graph then
            LOG.warning("quantization pre-processing skipped (%s: %s)", type(exc).__name__, exc)
            prepared = fp32_path
        quantize_static(str(prepared), str(Path(tmp) / "int8.onnx"), CacheReader(images, meta),
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True, calibrate_method=CalibrationMethod.MinMax)
        proto = onnx.load(str(Path(tmp) / "int8.onnx"))
    atomic_write_bytes(output, set_metadata(proto, {**meta, "precision": "int8"}).SerializeToString())
    return output


def write_int8(work_dir: Path, fp32_path: Path, metadata: dict, val_dir, calib_count: int) -> Path:
    images = calibration_images(work_dir, calib_count)
    root_handlers = list(logging.root.handlers)
    try:
        path = quantize_int8(fp32_path, fp32_path.with_suffix(".int8.onnx"), images, metadata)
    finally:  # onnxruntime.quantization calls logging.basicConfig: undo it, or every line prints twice
        for handler in set(logging.root.handlers) - set(root_handlers):
            logging.root.removeHandler(handler)
    LOG.info("exported %s (int8 QDQ, calibrated on %d cached images, %.1f MB)", path, len(images),
             path.stat().st_size / 1e6)
    pairs = validation_pairs(work_dir, metadata["folds"], val_dir)
    dice32, ms32 = evaluate(fp32_path, pairs, metadata)
    dice8, ms8 = evaluate(path, pairs, metadata)
    LOG.info("int8: Dice %.4f -> %.4f (%+.4f) on %d validation images; median latency %.1f -> %.1f ms (%.2fx)",
             dice32, dice8, dice8 - dice32, len(pairs), ms32, ms8, ms32 / max(ms8, 1e-9))
    return path
