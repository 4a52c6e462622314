"""Lower-precision copies of an exported graph: fp16 for GPUs, static int8 QDQ for CPUs with Dice before/after.

The int8 copy records what was measured on held-back images (exporting/evidence.py: int8_dice_delta, int8_min_iou,
int8_speedup and how it was timed, int8_val_images, int8_val_set) and the SHA-256 of the fp32 file it came from
(source): inference.py --precision auto (runtime/precision.py) decides on them. `--int8 auto` (the default) writes
it only when held-back images are at hand (int8_plan).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx

from exporting.checks import max_diff, parity_input, run_onnxruntime
from exporting.evidence import LOAD_TRIES, compare_masks, measure_speedup, validation_pairs
from exporting.onnx_metadata import set_metadata
from runtime.lineage import source_record
from runtime.metadata import read_metadata
from training.progress import progress
from training.values import int8_mode
from utils import LOG, UserError, atomic_write_bytes, list_images, preprocess, read_image


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
               side: int | None = None, source: Path | None = None) -> Path:
    """<name>.fp16.onnx of `proto`; `source` (the fp32 file written from it) is recorded in its metadata."""
    half = to_fp16(proto)
    if source is not None:
        half = set_metadata(half, {**read_metadata(half), "source": source_record(source, "fp16")})
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


class CacheReader:
    """onnxruntime CalibrationDataReader over cached training images, one (1, 3, H, W) at a time; a progress line
    every 30 s (training/progress.py), as calibrating a large model takes minutes on a CPU."""

    def __init__(self, images: list[Path], meta: dict):
        self.images, self.meta = images, meta
        self.rewind()

    def get_next(self) -> dict | None:
        path = next(self.pending, None)
        if path is None:
            return None
        chw, _ = preprocess(read_image(path), self.meta)
        return {"image": chw[None]}

    def rewind(self) -> None:
        self.pending = iter(progress(self.images, "int8: calibrating", unit="image"))


def spread(items: list, count: int) -> list:
    """At most `count` items, evenly spread over the list."""
    return items[::max(1, len(items) // count)][:count]


def calibration_images(work_dir: Path, count: int, exclude=()) -> list[Path]:
    """At most `count` training-cache images, spread over it, none of the images the copy is measured on."""
    held = {Path(p).stem for p in exclude}
    images = list_images(work_dir / "images") if (work_dir / "images").is_dir() else []
    images = [p for p in images if p.stem not in held]
    if not images:
        raise UserError(f"--int8 calibrates on the training cache {work_dir / 'images'}, which is empty or missing; "
                        "run train.py on this WORK_DIR first")
    return spread(images, count)


def int8_inputs(work_dir: Path | None, folds: list[int], val_dir, count: int) -> tuple[list[Path], list, str]:
    """(calibration images, held-back validation pairs, what they are) for --int8, checked before anything is
    exported. Without a training run (export.py --checkpoint) both come from --val-dir."""
    if work_dir is None:
        if val_dir is None:
            raise UserError("--int8 with --checkpoint needs --val-dir DIR (DIR/images + DIR/masks): there is no "
                            "training cache to calibrate on")
        pairs, what = validation_pairs(None, folds, val_dir)
        return spread([image for image, _ in pairs], count), pairs, what
    pairs, what = validation_pairs(work_dir, folds, val_dir)
    return calibration_images(work_dir, count, [image for image, _ in pairs]), pairs, what


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
    except UserError as exc:
        return str(exc).split("; give --val-dir")[0]
    return None


def int8_plan(mode: str | bool | None, work_dir: Path | None, folds: list[int], val_dir, count: int,
              timing_tries: int = LOAD_TRIES) -> tuple | None:
    """int8_inputs (+ timing_tries: the timings under load before the speed-up is left unstored; 1 inside a time
    budget, which cannot wait for the load to fall) for --int8 on, or auto with a validation set at hand; None (off,
    or auto without one: one line says why) means no int8 copy."""
    mode = int8_mode(mode)
    if mode == "auto":
        reason = no_validation_set(work_dir, folds, val_dir)
        if reason is not None:
            LOG.info("no int8 copy: %s (--val-dir DIR measures one; --int8 off silences this)", reason)
            return None
    return (*int8_inputs(work_dir, folds, val_dir, count), timing_tries) if mode != "off" else None


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


def write_int8(fp32_path: Path, metadata: dict, images: list[Path], pairs: list[tuple[Path, Path]],
               what: str = "--val-dir", timing_tries: int = LOAD_TRIES) -> Path:
    """<name>.int8.onnx calibrated on `images` and measured against the fp32 file on the held-back `pairs`
    (int8_inputs; `what` names them) before it is written: it records its Dice change and mask agreement under
    the rule, the speed-up when the machine was quiet enough to time it, and its source (runtime/precision.py
    decides on them)."""
    meta = {**metadata, "precision": "int8", "source": source_record(fp32_path, "int8")}
    meta.pop("int8_source", None)
    LOG.info("int8: calibrating on %d images, then comparing both files on %d held-back images and timing them",
             len(images), len(pairs))
    proto = set_metadata(quantize_int8(fp32_path, images, metadata), meta)
    data = proto.SerializeToString()
    masks = compare_masks(fp32_path, data, pairs, int(metadata["num_classes"]))
    timing = measure_speedup(fp32_path, data, [image for image, _ in pairs], metadata, tries=timing_tries)
    speedup = timing.pop("speedup", None)
    meta.update(int8_dice_delta=masks["int8_dice_delta"], int8_min_iou=masks["int8_min_iou"], int8_timing=timing,
                int8_val_images=len(pairs), int8_val_set=what, **({"int8_speedup": speedup} if speedup else {}))
    path = fp32_path.with_suffix(".int8.onnx")
    atomic_write_bytes(path, set_metadata(proto, meta).SerializeToString())
    LOG.info("exported %s (int8 QDQ, calibrated on %d images, %.1f MB)", path, len(images), path.stat().st_size / 1e6)
    LOG.info("int8: Dice %.4f -> %.4f (%+.4f), min IoU %.4f vs fp32, on %d held-back images (%s); %s",
             masks["dice_fp32"], masks["dice_int8"], masks["int8_dice_delta"], masks["int8_min_iou"], len(pairs),
             what, f"median {timing['fp32_ms']:.1f} -> {timing['int8_ms']:.1f} ms ({speedup:.2f}x, {timing['rounds']} "
             f"alternating rounds, load {timing['load_1m']})" if speedup else f"no speed-up stored: "
             f"{timing['not_stored']}")
    return path
