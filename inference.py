"""Runtime engine: run an exported segmentation ONNX model on images. Torch is never imported.

Run book (only onnxruntime(-gpu), opencv-python-headless and numpy are needed):

    # a folder (recursive) -> OUT/masks/, OUT/overlays/, OUT/summary.csv
    python inference.py --model runs/exp/model.onnx --source images/ --output preds/

    # one image, fixed threshold instead of the adaptive 0.5 -> 0.3 -> 0.15 cascade
    python inference.py --model model.onnx --source photo.jpg --output preds/ --threshold 0.4

    # a glob (quote it so the shell leaves it alone)
    python inference.py --model model.onnx --source "images/**/*.jpg" --output preds/

    # evaluate against ground-truth masks (paired by file name): per-image and mean Dice/IoU
    python inference.py --model model.onnx --source val/images --output preds/ --gt val/masks

    # force the CPU with 4 threads; --providers auto picks TensorRT > CUDA > CPU
    python inference.py --model model.onnx --source images/ --output preds/ --providers cpu --threads 4

Masks are PNGs at the original image size: 0/255 for binary models, class ids for multi-class
ones. summary.csv is written row by row, so an interrupted run keeps what it has done.
An unreadable image gets an `error` row; the run goes on.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import glob
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from utils import (
    IMAGE_EXTS,
    LOG,
    UserError,
    decode_metadata,
    dice_iou,
    list_images,
    normalize,
    preprocess,
    read_image,
    read_mask,
    restore_size,
    run_cli,
    setup_logging,
    write_png,
)

# ----------------------------------------------------------------------------- providers

CPU = "CPUExecutionProvider"
PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": CPU,
}
PROVIDER_CHOICES = ("auto", "cpu", "cuda", "tensorrt")

# What each GPU provider needs besides being compiled into onnxruntime. Checking that the
# libraries load is what keeps a GPU build on a GPU-less machine free of a wall of errors.
CUDA_DRIVER_LIBS = {"win32": ("nvcuda.dll",), "linux": ("libcuda.so.1", "libcuda.so")}
TENSORRT_LIBS = {
    "win32": ("nvinfer_10.dll", "nvinfer.dll"),
    "linux": ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so"),
}


def _platform_libs(table: dict) -> tuple[str, ...]:
    return table["win32"] if sys.platform == "win32" else table["linux"]


@lru_cache(maxsize=None)
def can_load_library(names: tuple[str, ...]) -> bool:
    """True when any of the shared libraries `names` can be loaded."""
    for name in names:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def gpu_provider_problem(provider: str) -> str | None:
    """Why `provider` cannot run here, or None when it can."""
    if provider not in ort.get_available_providers():
        return "not in this onnxruntime build (pip install onnxruntime-gpu)"
    if not can_load_library(_platform_libs(CUDA_DRIVER_LIBS)):
        return "no NVIDIA driver found (libcuda / nvcuda.dll not loadable)"
    if provider == PROVIDER_NAMES["tensorrt"] and not can_load_library(_platform_libs(TENSORRT_LIBS)):
        return "TensorRT libraries (libnvinfer) not loadable"
    return None


def select_providers(requested: str = "auto") -> list[str]:
    """Execution providers to try, best first, always ending with the CPU.

    auto: TensorRT > CUDA > CPU, each GPU provider only when it can really run here. An explicit
    GPU request that cannot be met gives one warning and the CPU.
    """
    requested = (requested or "auto").strip().lower()
    if requested not in PROVIDER_CHOICES:
        raise UserError(f"--providers {requested!r} is not valid; use one of: {', '.join(PROVIDER_CHOICES)}")
    if requested == "cpu":
        return [CPU]
    gpu_order = [PROVIDER_NAMES["tensorrt"], PROVIDER_NAMES["cuda"]]
    if requested != "auto":
        wanted = PROVIDER_NAMES[requested]
        problem = gpu_provider_problem(wanted)
        if problem is not None:
            LOG.warning("%s requested but unavailable: %s; falling back to CPU", wanted, problem)
            return [CPU]
        gpu_order = gpu_order[gpu_order.index(wanted):]
    return [p for p in gpu_order if gpu_provider_problem(p) is None] + [CPU]


# ----------------------------------------------------------------------------- session

# onnxruntime's own exception types for "this file is not a model it can read".
NOT_ONNX_ERRORS = (ort_state.InvalidProtobuf, ort_state.InvalidArgument, ort_state.Fail, ort_state.NoSuchFile)
LOAD_ERRORS = NOT_ONNX_ERRORS + (ort_state.InvalidGraph, ort_state.NotImplemented, ort_state.RuntimeException)


def create_session(model_path: Path, providers: list[str], threads: int = 0) -> ort.InferenceSession:
    """Open an ONNX file with `providers` (from select_providers); user mistakes become UserError."""
    if not model_path.is_file():
        raise UserError(f"model file not found: {model_path} (check --model, or export one with export.py)")
    if threads < 0:
        raise UserError(f"--threads {threads} is not valid; use 0 (automatic) or a positive number")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's placement warnings are noise to a user
    if threads > 0:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
    except LOAD_ERRORS as exc:
        reason = str(exc).split("failed:", 1)[-1].strip()
        if isinstance(exc, NOT_ONNX_ERRORS):
            raise UserError(f"not an ONNX model: {model_path} (export one with export.py) - {reason}") from exc
        raise UserError(f"cannot load model {model_path}: {reason} (re-export it or upgrade onnxruntime)") from exc


def read_metadata(session, model_path) -> dict:
    """The model's `segmentation` metadata, or the defaults with one warning."""
    meta, found = decode_metadata(session.get_modelmeta().custom_metadata_map)
    if not found:
        LOG.warning(
            "model %s has no 'segmentation' metadata; using defaults (input_size %s, ImageNet mean/std, "
            "stride %s). Re-export it with export.py to embed its settings",
            model_path, meta["input_size"], meta["stride"],
        )
    check_metadata(meta)
    return meta


def check_metadata(meta: dict) -> None:
    """Fail early and clearly on metadata that would break preprocessing later."""
    problems = []
    if len(meta.get("mean") or ()) != 3 or len(meta.get("std") or ()) != 3:
        problems.append("mean/std need 3 values each")
    if not isinstance(meta.get("stride"), int) or meta["stride"] < 1:
        problems.append(f"stride={meta.get('stride')!r} must be a positive integer")
    if not all(isinstance(t, (int, float)) and 0 < t < 1 for t in meta.get("thresholds") or [None]):
        problems.append(f"thresholds={meta.get('thresholds')!r} must be numbers in (0, 1)")
    if problems:
        raise UserError(f"model metadata is invalid: {'; '.join(problems)}. Re-export the model with export.py")


def to_probs(output: np.ndarray, kind: str) -> np.ndarray:
    """(C, H, W) model output -> probabilities. Our exports already hold probs."""
    if kind != "logits":
        return output
    if output.shape[0] == 1:
        return 0.5 * (1.0 + np.tanh(0.5 * output))  # the sigmoid, without exp overflow
    shifted = np.exp(output - output.max(axis=0, keepdims=True))
    return shifted / shifted.sum(axis=0, keepdims=True)


# ----------------------------------------------------------------------------- segmenter


class Segmenter:
    """Owns one ONNX Runtime session: image in, probabilities at the image's size out.

    `session` can be injected (tests, or a session the caller built). `timing` holds the
    pre/infer/post milliseconds of the last `predict`.
    """

    def __init__(self, model_path, providers: str = "auto", threads: int = 0, session=None):
        self.model_path = Path(model_path) if model_path is not None else None
        if session is None:
            self.wanted = select_providers(providers)
            session = create_session(self.model_path, self.wanted, threads)
        else:
            self.wanted = list(session.get_providers())
        self.session = session
        self.providers = list(self.session.get_providers())
        self.meta = read_metadata(self.session, self.model_path)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_dtype = np.float16 if model_input.type == "tensor(float16)" else np.float32
        self.fixed_hw = self._fixed_input_size(model_input.shape)
        self.timing = {"pre_ms": 0.0, "infer_ms": 0.0, "post_ms": 0.0}
        self._report_provider()

    def _fixed_input_size(self, shape) -> tuple[int, int] | None:
        """(H, W) when the model was exported with a static size, else None (dynamic)."""
        if len(shape) != 4:
            raise UserError(f"model input '{self.input_name}' has shape {shape}; an NCHW image input is needed")
        if isinstance(shape[1], int) and shape[1] != 3:
            raise UserError(f"model expects {shape[1]} input channels; only RGB (3-channel) models are supported")
        if isinstance(shape[2], int) and isinstance(shape[3], int):
            return shape[2], shape[3]
        return None

    def _report_provider(self) -> None:
        used = self.providers[0]
        LOG.info("model %s running on %s", self.model_path, used)
        if self.wanted[0] != CPU and used == CPU:
            LOG.warning("%s failed to start (see onnxruntime's message); running on CPU", self.wanted[0])

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int], int]:
        """RGB image -> ((3, H', W') input, valid (h, w), stride for undoing the padding)."""
        if self.fixed_hw is None:
            chw, valid_hw = preprocess(image, self.meta)
            return chw, valid_hw, int(self.meta["stride"])
        h, w = self.fixed_hw
        # A static-shape model takes exactly its size: stretch, no padding to undo.
        resized = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        return normalize(resized, self.meta["mean"], self.meta["std"]), (h, w), 1

    def predict(self, image: np.ndarray) -> np.ndarray:
        """RGB uint8 (H, W, 3) -> float32 probabilities (C, H, W) at the image's own size."""
        t0 = time.perf_counter()
        chw, valid_hw, stride = self.prepare(image)  # (3, H', W')
        t1 = time.perf_counter()
        output = self.session.run(None, {self.input_name: chw[None].astype(self.input_dtype)})[0]
        t2 = time.perf_counter()
        output = np.asarray(output, dtype=np.float32)
        if output.ndim == 3:  # (N, H', W'): a single-channel model that dropped its C axis
            output = output[:, None]
        probs = to_probs(output[0], self.meta.get("output", "probs"))  # (C, H', W')
        probs = restore_size(probs, valid_hw, image.shape[:2], stride)  # (C, H, W)
        t3 = time.perf_counter()
        self.timing = {"pre_ms": (t1 - t0) * 1e3, "infer_ms": (t2 - t1) * 1e3, "post_ms": (t3 - t2) * 1e3}
        return probs


# ----------------------------------------------------------------------------- post-processing

# Overlay colours by class id (RGB); class 0 is background and never drawn.
PALETTE = np.array(
    [(0, 0, 0), (255, 0, 0), (0, 200, 0), (0, 90, 255), (255, 200, 0), (200, 0, 255), (0, 220, 220),
     (255, 120, 0), (140, 70, 20), (255, 105, 180), (128, 128, 128)],
    dtype=np.float32,
)


def parse_threshold(value) -> str | float:
    """'adaptive' or a float in (0, 1); anything else is a UserError naming --threshold."""
    if isinstance(value, str) and value.strip().lower() == "adaptive":
        return "adaptive"
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not 0 < number < 1:  # also rejects NaN
        raise UserError(f"--threshold {value!r} is not valid; use 'adaptive' or a number between 0 and 1, e.g. 0.5")
    return number


def component_stats(mask: np.ndarray) -> tuple[int, int]:
    """(number of 8-connected foreground components, pixels in the largest one)."""
    count, _, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    if count <= 1:
        return 0, 0
    return count - 1, int(stats[1:, cv2.CC_STAT_AREA].max())


def remove_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Binary mask without the 8-connected components smaller than `min_area` pixels."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area  # (count,)
    keep[0] = False  # label 0 is the background
    return keep[labels].astype(np.uint8)


def apply_threshold(
    probs: np.ndarray, threshold, min_area: int, cascade=(0.5, 0.3, 0.15)
) -> tuple[np.ndarray, float | None]:
    """(H, W) probs -> (uint8 {0, 1} mask, threshold used, or None when nothing was detected).

    'adaptive' tries each cascade level and keeps the first whose mask has a component of at
    least `min_area` pixels; if none has, the result is an empty mask (a safe negative). A fixed
    threshold keeps its mask as is; the same area test only decides detected or not.
    """
    threshold = parse_threshold(threshold)
    levels = [float(t) for t in cascade] if threshold == "adaptive" else [threshold]
    mask = np.zeros(probs.shape, np.uint8)
    for level in levels:
        mask = (probs > level).astype(np.uint8)
        if component_stats(mask)[1] >= max(min_area, 1):
            return mask, level
    if threshold == "adaptive":
        return np.zeros(probs.shape, np.uint8), None
    return mask, None


def make_overlay(
    image: np.ndarray, mask: np.ndarray, color=(255, 0, 0), alpha: float = 0.5, palette: np.ndarray | None = None
) -> np.ndarray:
    """RGB uint8 image with `color` blended in where mask is set; unmasked pixels untouched.

    With a `palette` the mask holds class ids and each class gets its palette colour.
    """
    overlay = image.copy()
    where = mask > 0  # (H, W)
    if palette is not None:
        tint = palette[mask[where] % len(palette)]  # (N, 3)
    else:
        tint = np.asarray(color, np.float32)
    blended = image[where].astype(np.float32) * (1.0 - alpha) + tint * alpha
    overlay[where] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return overlay


# ----------------------------------------------------------------------------- inputs


def has_magic(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def collect_images(source: str, exclude: Path | None = None) -> tuple[Path, list[Path]]:
    """(root that output names are relative to, sorted image paths) for a file, folder or glob."""
    path = Path(source)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_EXTS:
            raise UserError(f"unsupported input: {path} (give an image {', '.join(IMAGE_EXTS)}, a folder or a glob)")
        return path.parent, [path]
    if path.is_dir():
        root, images = path, list_images(path)
    elif has_magic(source):
        first_magic = next(i for i, part in enumerate(path.parts) if has_magic(part))
        root = Path(*path.parts[:first_magic]) if first_magic else Path(".")
        images = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).suffix.lower() in IMAGE_EXTS)
    else:
        raise UserError(f"source not found: {source} (give an image file, a folder or a glob)")
    if exclude is not None:
        # An output folder inside the source must not feed last run's masks back in.
        images = [p for p in images if not p.resolve().is_relative_to(exclude.resolve())]
    if not images:
        raise UserError(f"no images found in {source} (looked for {', '.join(IMAGE_EXTS)})")
    return root, images


def output_names(images: list[Path], root: Path) -> list[tuple[str, Path]]:
    """(name for summary.csv, relative .png output path) per image, output paths kept unique."""
    names, seen = [], set()
    for path in images:
        rel = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
        out = rel.with_suffix(".png")
        if out in seen:  # a.jpg and a.png side by side: keep both
            out = rel.with_name(rel.name + ".png")
            LOG.warning("%s shares its name with another image; its outputs are named %s", rel, out.name)
        seen.add(out)
        names.append((rel.as_posix(), out))
    return names


def index_masks(gt_dir) -> dict[str, Path]:
    """Ground-truth masks by relative path without suffix and by bare stem (first one wins)."""
    gt_dir = Path(gt_dir)
    index: dict[str, Path] = {}
    for path in list_images(gt_dir):
        index.setdefault(path.relative_to(gt_dir).with_suffix("").as_posix(), path)
        index.setdefault(path.stem, path)
    return index


# ----------------------------------------------------------------------------- folder run

CSV_COLUMNS = (
    "file", "status", "width", "height", "area_px", "area_pct", "threshold", "max_prob",
    "components", "largest_component_px", "time_ms", "dice", "iou", "error",
)


def binarize(probs: np.ndarray, threshold, min_area: int, cascade) -> tuple[np.ndarray, float | None, bool]:
    """(C, H, W) probs -> (uint8 mask, threshold to report, detected). Multi-class: argmax, no cascade."""
    if probs.shape[0] > 1:
        mask = probs.argmax(axis=0).astype(np.uint8)  # (H, W) class ids
        return mask, None, component_stats(mask)[1] >= max(min_area, 1)
    mask, used = apply_threshold(probs[0], threshold, min_area, cascade)
    detected = used is not None
    if not detected and threshold != "adaptive":
        used = threshold  # a fixed threshold was still the one applied
    return mask, used, detected


@dataclass(frozen=True)
class RunOptions:
    """The validated settings of one run_folder call."""

    threshold: str | float
    min_area: int
    alpha: float
    cascade: tuple[float, ...]
    gt_index: dict


def process_image(segmenter, path: Path, name: str, out_name: Path, output: Path, options: RunOptions) -> dict:
    """Predict, threshold and write one image; returns its summary.csv row (never raises)."""
    start = time.perf_counter()
    row = dict.fromkeys(CSV_COLUMNS, "")
    row["file"] = name
    try:
        image = read_image(path)  # (H, W, 3) RGB
        probs = segmenter.predict(image)  # (C, H, W)
        mask, used, detected = binarize(probs, options.threshold, options.min_area, options.cascade)
        multi = probs.shape[0] > 1
        write_png(output / "masks" / out_name, mask if multi else mask * 255)
        overlay = make_overlay(image, mask, alpha=options.alpha, palette=PALETTE if multi else None)
        write_png(output / "overlays" / out_name, overlay)
        fill_row(row, image, probs, mask, used, detected)
        add_scores(row, mask, find_gt(options.gt_index, name), probs.shape[0])
    except Exception as exc:  # one bad image must never end the run
        LOG.warning("%s: %s", name, exc)
        LOG.debug("traceback", exc_info=True)
        row.update(status="error", error=str(exc))
    row["time_ms"] = round((time.perf_counter() - start) * 1e3, 1)
    return row


def find_gt(gt_index: dict[str, Path], name: str) -> Path | None:
    """The ground-truth mask for image `name`: same relative path first, then same stem."""
    rel = Path(name).with_suffix("")
    return gt_index.get(rel.as_posix()) or gt_index.get(rel.name)


def add_scores(row: dict, mask: np.ndarray, gt_path: Path | None, num_classes: int) -> None:
    """Foreground Dice/IoU against the ground truth; a bad GT mask is noted, the prediction stays."""
    if gt_path is None:
        return
    try:
        gt = read_mask(gt_path, num_classes)
    except UserError as exc:
        row["error"] = f"ground truth: {exc}"
        return
    if gt.shape != mask.shape:
        gt_size, image_size = f"{gt.shape[1]}x{gt.shape[0]}", f"{mask.shape[1]}x{mask.shape[0]}"
        row["error"] = f"ground truth {gt_path.name} is {gt_size} but the image is {image_size}"
        return
    dice, iou = dice_iou(mask > 0, gt > 0)
    row.update(dice=round(dice, 4), iou=round(iou, 4))


def fill_row(row: dict, image, probs, mask, used, detected) -> None:
    """Size, area, threshold, max prob and component columns of a processed image."""
    h, w = image.shape[:2]
    area = int(np.count_nonzero(mask))
    count, largest = component_stats(mask)
    foreground = probs if probs.shape[0] == 1 else probs[1:]  # class 0 is background
    row.update(
        status="ok" if detected else "no_detection", width=w, height=h, area_px=area,
        area_pct=round(100.0 * area / (h * w), 3), threshold="" if used is None else used,
        max_prob=round(float(foreground.max()), 4), components=count, largest_component_px=largest,
    )


def check_options(threshold, min_area: int, alpha: float) -> str | float:
    """Validate the run options; returns the parsed threshold."""
    if min_area < 0:
        raise UserError(f"--min-area {min_area} is not valid; use 0 or a positive number of pixels, e.g. 64")
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"--alpha {alpha} is not valid; use a number from 0 (invisible) to 1 (opaque), e.g. 0.5")
    return parse_threshold(threshold)


def load_gt_index(gt_dir) -> dict[str, Path]:
    if gt_dir is None:
        return {}
    if not Path(gt_dir).is_dir():
        raise UserError(f"ground-truth folder not found: {gt_dir} (check --gt)")
    index = index_masks(gt_dir)
    if not index:
        LOG.warning("no mask images in --gt %s; Dice/IoU will be empty", gt_dir)
    return index


def run_folder(
    segmenter, source, output, threshold="adaptive", min_area: int = 64, alpha: float = 0.5, gt_dir=None, progress=None
) -> dict:
    """Segment an image, a folder (recursive) or a glob into OUT/masks, OUT/overlays, OUT/summary.csv.

    `progress(done, total)` is called after each image. Returns the counts, the mean Dice/IoU over
    the images that have a ground-truth mask in `gt_dir`, mean timings and the output paths.
    """
    output = Path(output)
    options = RunOptions(
        threshold=check_options(threshold, min_area, alpha),
        min_area=int(min_area),
        alpha=float(alpha),
        cascade=tuple(segmenter.meta.get("thresholds") or (0.5, 0.3, 0.15)),
        gt_index=load_gt_index(gt_dir),
    )
    root, images = collect_images(str(source), exclude=output)
    output.mkdir(parents=True, exist_ok=True)
    rows, timings = [], []
    with open(output / "summary.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for done, (path, (name, out_name)) in enumerate(zip(images, output_names(images, root)), start=1):
            row = process_image(segmenter, path, name, out_name, output, options)
            writer.writerow(row)
            fh.flush()  # a crash or Ctrl+C keeps every finished row
            rows.append(row)
            if row["status"] != "error":
                timings.append(dict(segmenter.timing))
            if progress is not None:
                progress(done, len(images))
    return summarize(rows, timings, output)


def summarize(rows: list[dict], timings: list[dict], output: Path) -> dict:
    statuses = [row["status"] for row in rows]
    scored = [row for row in rows if row["dice"] != ""]
    return {
        "images": len(rows),
        "ok": statuses.count("ok"),
        "no_detection": statuses.count("no_detection"),
        "errors": statuses.count("error"),
        "with_gt": len(scored),
        "mean_dice": float(np.mean([row["dice"] for row in scored])) if scored else None,
        "mean_iou": float(np.mean([row["iou"] for row in scored])) if scored else None,
        "timing_ms": {key: float(np.mean([t[key] for t in timings])) for key in timings[0]} if timings else {},
        "masks": output / "masks",
        "overlays": output / "overlays",
        "summary_csv": output / "summary.csv",
    }


# ----------------------------------------------------------------------------- CLI


class ProgressBar:
    """Text progress on stderr: redrawn in place on a terminal, a line every ~10% otherwise."""

    def __init__(self, label: str = "images", stream=None, width: int = 30):
        self.label, self.width = label, width
        self.stream = stream if stream is not None else sys.stderr
        self.is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self.last_step = -1

    def __call__(self, done: int, total: int) -> None:
        fraction = done / total if total else 1.0
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        text = f"{self.label} {done}/{total} {fraction:4.0%} {rate:.1f}/s"
        if self.is_tty:
            filled = int(self.width * fraction)
            bar = "#" * filled + "." * (self.width - filled)
            self.stream.write(f"\r[{bar}] {text}" + ("\n" if done >= total else ""))
        elif int(fraction * 10) > self.last_step:
            self.last_step = int(fraction * 10)
            self.stream.write(text + "\n")
        self.stream.flush()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Segment images with an exported ONNX model (torch not needed).",
        epilog="Writes OUT/masks/*.png, OUT/overlays/*.png and OUT/summary.csv.",
    )
    parser.add_argument("--model", required=True, help="the .onnx file written by export.py")
    parser.add_argument("--source", required=True, help="an image, a folder (searched recursively) or a quoted glob")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--threshold", default="adaptive", help="'adaptive' (0.5 -> 0.3 -> 0.15) or a number in (0, 1)")
    parser.add_argument("--min-area", type=int, default=None,
                        help="pixels a region needs to count as a detection (default: the model's, else 64)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity, 0..1")
    parser.add_argument("--providers", default="auto", choices=PROVIDER_CHOICES, help="execution provider")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for onnxruntime, 0 = automatic")
    parser.add_argument("--gt", default=None, help="folder of ground-truth masks, paired by file name: adds Dice/IoU")
    return parser.parse_args(argv)


def print_summary(result: dict, with_gt: bool) -> None:
    print(f"masks:       {result['masks']}")
    print(f"overlays:    {result['overlays']}")
    print(f"summary:     {result['summary_csv']}")
    print(f"images: {result['images']}  ok: {result['ok']}  no_detection: {result['no_detection']}  "
          f"errors: {result['errors']}")
    if result["timing_ms"]:
        print("time per image: " + "  ".join(f"{k[:-3]} {v:.1f} ms" for k, v in result["timing_ms"].items()))
    if with_gt and result["mean_dice"] is None:
        print("mean dice: n/a  (no ground-truth mask matched an image name)")
    elif with_gt:
        print(f"mean dice: {result['mean_dice']:.3f}  mean iou: {result['mean_iou']:.3f}  "
              f"({result['with_gt']} images with ground truth)")


def main(argv=None) -> None:
    args = parse_args(argv)
    setup_logging()
    # fail on bad options before loading the model
    threshold = check_options(args.threshold, 0 if args.min_area is None else args.min_area, args.alpha)
    segmenter = Segmenter(args.model, providers=args.providers, threads=args.threads)
    min_area = int(segmenter.meta.get("min_area", 64)) if args.min_area is None else args.min_area
    result = run_folder(
        segmenter, args.source, args.output, threshold=threshold, min_area=min_area,
        alpha=args.alpha, gt_dir=args.gt, progress=ProgressBar(),
    )
    if result["errors"]:
        LOG.warning("%d image(s) failed; see the error column of %s", result["errors"], result["summary_csv"])
    print_summary(result, with_gt=args.gt is not None)


if __name__ == "__main__":
    run_cli(main)
