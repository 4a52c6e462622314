"""Runtime engine: run an exported segmentation ONNX model on images, ZIPs, videos and streams. No torch.

Run book (only onnxruntime(-gpu), opencv-python-headless and numpy are needed):

    # a folder (recursive), an image, a quoted glob or a .txt list -> OUT/masks, OUT/overlays, OUT/summary.csv
    python inference.py --model model.onnx --source images/ --output preds/
    python inference.py --model model.onnx --source "images/**/*.jpg" --output preds/ --batch-size 8

    # a ZIP (extracted safely) -> the same plus OUT/predictions.zip
    python inference.py --model model.onnx --source batch.zip --output preds/

    # a video, a stream or webcam 0 -> OUT/<name>.mp4 (AVI if MP4 cannot be written) + OUT/<name>_frames.csv
    python inference.py --model model.onnx --source clip.mp4 --output preds/ --vid-stride 3 --video-max-side 640
    python inference.py --model model.onnx --source rtsp://camera/stream --output preds/ --max-frames 500

    # a model trained with CROP=person finds the person with <name>.detector.onnx (beside it, or --detector),
    # segments the crop and pastes the mask back; summary.csv gets crop_status and crop_box
    python inference.py --model model.onnx --source photos/ --output preds/ --detector model.detector.onnx

    # flip TTA, Otsu instead of the adaptive cascade, and a clean-up chain
    python inference.py --model model.onnx --source images/ --output preds/ --tta flips --threshold otsu \
        --close 5 --open 3 --fill-holes --min-component-area 100 --keep-largest 1

    # evaluate against ground truth (paired by name) -> dice/iou columns + OUT/metrics.json;
    # --threshold model applies the threshold cross-validation recommended (as train.py scores it)
    python inference.py --model model.onnx --source val/images --output preds/ --gt val/masks --threshold model
    python inference.py --method otsu --source val/images --output otsu/ --gt val/masks   # model-free floor

    # force the CPU with 4 threads; --device auto picks TensorRT > CUDA > CPU
    python inference.py --model model.onnx --source images/ --output preds/ --device cpu --threads 4

    # a clean/defect gate (train.py --task classify -> gate.onnx) in front: images it judges clean are not
    # segmented (empty mask, status gated_clean); summary.csv gets gate_prob. --gate-threshold overrides its own
    python inference.py --model model.onnx --gate gate.onnx --source coil_0042/ --output preds/ --batch-size 8

    # the same outputs through Ray Data: a pool of actors, one onnxruntime session (and GPU) each;
    # RAY_ADDRESS=host:6379 joins a running cluster, else a local Ray is started (pip install -r requirements-dist.txt)
    python inference.py --model model.onnx --source images/ --output preds/ --engine ray --ray-actors 4

Python API (the CLI and the app use the same code):

    seg = Segmenter("model.onnx", tta="hflip", threshold="adaptive", fill_holes=True)
    result = seg.predict(rgb_image)            # Result(mask, probs, info)
    for result in seg.predict_paths(paths):    # a generator; bad files give info["status"] == "error"
        ...

Post-processing order: threshold -> close -> open -> fill holes -> min component area -> keep largest
(see runtime/postprocess.py). Masks are PNGs at the original image size: 0/255 for binary models,
class ids plus a colour PNG and OUT/legend.png for multi-class ones. summary.csv is written row by
row. A bad input gets an `error` row and the run goes on; --strict makes the exit code 1 then.
Untrusted input (docs/reliability.md): images whose header claims more than --max-pixels (env
MAX_IMAGE_PIXELS) are refused undecoded, symlinks leaving a source folder are not followed
(--follow-symlinks), and OUT/.lock refuses a second run on the same output folder.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from functools import lru_cache, partial
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

# Re-exported names below are the engine's public API: `from inference import ...` keeps working.
from runtime.crop import load_crop_stage
from runtime.gate import Gate, clean_prediction
from runtime.pipeline import RunOptions, model_class_names, output_lock, run_items, run_zip, summarize  # noqa: F401
from runtime.postprocess import (  # noqa: F401
    PALETTE, PostOptions, apply_threshold, colorize, component_stats, make_overlay, otsu_level, parse_color,
    parse_threshold, postprocess, remove_small_components,
)
from runtime.report import CSV_COLUMNS, load_gt_index  # noqa: F401
from runtime.sources import (  # noqa: F401
    ZIP_MAX_BYTES, ZIP_MAX_ENTRIES, ZIP_MAX_RATIO, collect_images, detect_source, image_items, list_items,
    output_names,
)
from runtime.ray_engine import RayOptions, run_items_ray
from runtime.video import run_video
from runtime.metadata import check_metadata, decode_metadata
from utils import (
    LOG, MAX_IMAGE_PIXELS, UserError, normalize,
    read_image, resize_long_side, run_cli, setup_logging,
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
        raise UserError(f"--device {requested!r} is not valid; use one of: {', '.join(PROVIDER_CHOICES)}")
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
    # Idle intra-op threads sleep instead of spinning: the spinning burns the cores that the decode
    # and write threads of runtime/pipeline.py need between runs (BENCHMARKS.md, end to end).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads > 0:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
    except LOAD_ERRORS as exc:
        reason = str(exc).split("failed:", 1)[-1].strip()
        if isinstance(exc, NOT_ONNX_ERRORS):
            raise UserError(f"not an ONNX model: {model_path} (export one with export.py) - {reason}") from exc
        raise UserError(f"cannot load model {model_path}: {reason} (re-export it or upgrade onnxruntime)") from exc


def read_metadata(session, model_path) -> tuple[dict, bool]:
    """(the model's `segmentation` metadata, found), or the defaults with one warning."""
    meta, found = decode_metadata(session.get_modelmeta().custom_metadata_map)
    if meta.get("task") == "gate":
        raise UserError(f"{model_path} is a gate classifier (task 'gate'), not a segmentation model: pass it as "
                        "--gate and give the segmenter as --model")
    if not found:
        LOG.warning(
            "model %s has no 'segmentation' metadata; using defaults (input_size %s, ImageNet mean/std, "
            "stride %s, output kind guessed from its values). Re-export it with export.py to embed its settings",
            model_path, meta["input_size"], meta["stride"],
        )
    check_metadata(meta)
    return meta, found


# Flip TTA: the (H, W) axes of a (C, H, W) tensor each copy is flipped along; () is the original.
TTA_FLIPS = {"none": ((),), "hflip": ((), (2,)), "flips": ((), (2,), (1,), (1, 2))}


def to_probs(output: np.ndarray, kind: str) -> np.ndarray:
    """(C, H, W) model output -> probabilities. Our exports already hold probs."""
    if kind != "logits":
        return output
    if output.shape[0] == 1:
        return 0.5 * (1.0 + np.tanh(0.5 * output))  # the sigmoid, without exp overflow
    shifted = np.exp(output - output.max(axis=0, keepdims=True))
    return shifted / shifted.sum(axis=0, keepdims=True)


# ----------------------------------------------------------------------------- segmenter


@dataclass
class Result:
    """One prediction. mask: (H, W) uint8, {0, 1} or class ids; probs: (C, H, W) float32; info: stats."""

    mask: np.ndarray | None
    probs: np.ndarray | None
    info: dict


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Accept (H, W) grey or (H, W, 3|4) uint8; return (H, W, 3) RGB."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise UserError(f"image must be uint8, got {image.dtype} (scale it to 0..255 first)")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2RGB)
    if image.ndim != 3 or image.shape[2] != 3:
        raise UserError(f"image of shape {image.shape} is not an RGB image (H, W, 3)")
    return image


def resize_probs(probs: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(C, h, w) -> (C, H, W) with bilinear interpolation (a no-op at the same size)."""
    if probs.shape[1:] == tuple(hw):
        return probs
    return np.stack([cv2.resize(p, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR) for p in probs])


class Segmenter:
    """Owns one ONNX Runtime session: RGB images in, Result(mask, probs, info) out.

    Pre-processing, the batched (TTA) run and post-processing are separate steps, each timed in
    `timing`. `session` can be injected (tests, or a session the caller built). `**post` are
    the PostOptions fields (threshold, min_area, close, open, fill_holes, ...); min_area and the
    adaptive cascade default to the model's metadata.

    `gate` (a gate .onnx path or a runtime.gate.Gate) runs first on every batch: images below its
    threshold (`gate_threshold`, default the gate's own) are not segmented (empty mask, status gated_clean).
    """

    def __init__(self, model_path, device: str = "auto", threads: int = 0, tta: str | None = None,
                 session=None, providers: str | None = None, detector=None, gate=None,
                 gate_threshold: float | None = None, **post):
        self.model_path = Path(model_path) if model_path is not None else None
        if session is None:
            self.wanted = select_providers(providers or device)  # --providers is the old name
            session = create_session(self.model_path, self.wanted, threads)
        else:
            self.wanted = list(session.get_providers())
        self.session = session
        self.providers = list(self.session.get_providers())
        self.meta, self.has_metadata = read_metadata(self.session, self.model_path)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_dtype = np.float16 if model_input.type == "tensor(float16)" else np.float32
        self.fixed_hw = self._fixed_input_size(model_input.shape)
        self._check_output_channels()
        self.max_batch = model_input.shape[0] if isinstance(model_input.shape[0], int) else 0  # 0: any
        self.tta = self._resolve_tta(tta)
        self.post = self._post_options(post)
        self.timing = {"pre_ms": 0.0, "infer_ms": 0.0, "post_ms": 0.0}
        # smart crop (metadata crop_mode 'person'): the YOLO detector runs on the same providers
        self.crop_stage = load_crop_stage(self.meta, self.model_path,
                                          lambda path: create_session(path, self.wanted, threads), detector)
        self._report_provider()
        self.gate = self._load_gate(gate, threads, gate_threshold)

    def _load_gate(self, gate, threads: int, threshold: float | None) -> Gate | None:
        """The gate on the segmenter's providers and threads; a Gate object is used as given."""
        if gate is None:
            if threshold is not None:
                raise UserError("--gate-threshold needs --gate (the gate .onnx)")
            return None
        if isinstance(gate, Gate):
            return gate if threshold is None else gate.with_threshold(threshold)
        return Gate(gate, create_session(Path(gate), self.wanted, threads), threshold)

    def _fixed_input_size(self, shape) -> tuple[int, int] | None:
        """(H, W) when the model was exported with a static size, else None (dynamic)."""
        if len(shape) != 4:
            raise UserError(f"model input '{self.input_name}' has rank {len(shape)}, shape {shape}; expected rank 4, "
                            "(N, 3, H, W): export an NCHW image model")
        if isinstance(shape[1], int) and shape[1] != 3:
            raise UserError(f"model input '{self.input_name}' has shape {shape}: {shape[1]} channels, expected "
                            "(N, 3, H, W); only RGB (3-channel) models are supported")
        if isinstance(shape[2], int) and isinstance(shape[3], int):
            LOG.info("model has a fixed %dx%d input; images are letterboxed to it", shape[3], shape[2])
            return shape[2], shape[3]
        return None

    def _check_output_channels(self) -> None:
        """A static output channel count must match the metadata's num_classes."""
        outputs = self.session.get_outputs() if self.has_metadata and hasattr(self.session, "get_outputs") else []
        shape = list(outputs[0].shape) if outputs else []
        if len(shape) == 4 and isinstance(shape[1], int) and shape[1] != self.meta["num_classes"]:
            raise UserError(f"model output '{outputs[0].name}' has shape {shape} ({shape[1]} channels) but its "
                            f"metadata says num_classes={self.meta['num_classes']}; re-export the model with export.py")

    def _resolve_tta(self, tta: str | None) -> str:
        """The TTA to apply. Flips already baked into the graph are not repeated unless asked for."""
        baked = str(self.meta.get("tta") or "none")
        if tta is None:
            if baked != "none":
                LOG.info("model already applies '%s' TTA inside the graph; no extra TTA", baked)
            return "none"
        tta = str(tta).strip().lower()
        if tta not in TTA_FLIPS:
            raise UserError(f"--tta {tta!r} is not valid; use one of: {', '.join(TTA_FLIPS)}")
        if tta != "none" and baked != "none":
            LOG.warning("model already applies '%s' TTA inside the graph; applying '%s' on top as asked", baked, tta)
        return tta

    def _post_options(self, post: dict) -> PostOptions:
        post = {key: value for key, value in post.items() if value is not None}
        if str(post.get("threshold", "")).strip().lower() == "model":  # the CV-recommended one from export.py
            post["threshold"] = float(self.meta.get("threshold") or 0.5)
            LOG.info("threshold %.3f from the model's metadata", post["threshold"])
        post.setdefault("min_area", int(self.meta.get("min_area", 64)))
        post.setdefault("cascade", tuple(float(t) for t in self.meta.get("thresholds") or (0.5, 0.3, 0.15)))
        return PostOptions(**post)

    def _report_provider(self) -> None:
        used = self.providers[0]
        LOG.info("model %s running on %s", self.model_path, used)
        if self.wanted[0] != CPU and used == CPU:
            LOG.warning("%s failed to start (see onnxruntime's message); running on CPU", self.wanted[0])

    def with_options(self, **post) -> "Segmenter":
        """A copy sharing the session, with some post-processing options replaced."""
        clone = copy.copy(self)
        clone.post = dataclasses.replace(self.post, **{k: v for k, v in post.items() if v is not None})
        return clone

    def with_gate_threshold(self, threshold: float | None) -> "Segmenter":
        """A copy sharing both sessions, with another gate threshold (None: the gate's own)."""
        if self.gate is None:
            raise UserError("no gate is loaded; pass gate=... (--gate) first")
        clone = copy.copy(self)
        clone.gate = self.gate.with_threshold(threshold)
        return clone

    # -- pre-processing

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """RGB image -> ((3, h, w) normalised, unpadded input; (H', W') it is padded to)."""
        if self.fixed_hw is not None:
            fh, fw = self.fixed_hw  # letterbox: fit inside, keep the aspect ratio, pad bottom/right
            h, w = image.shape[:2]
            scale = min(fh / h, fw / w)
            size = (max(1, min(fw, round(w * scale))), max(1, min(fh, round(h * scale))))
            resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
            return normalize(resized, self.meta["mean"], self.meta["std"]), (fh, fw)
        size = int(self.meta.get("input_size") or 0)
        if size > 0 and self.meta.get("resize", "long_side") == "long_side":
            image = resize_long_side(image, size)
        chw = normalize(image, self.meta["mean"], self.meta["std"])  # (3, h, w)
        stride = int(self.meta["stride"])
        h, w = chw.shape[1:]
        return chw, (h + (-h) % stride, w + (-w) % stride)

    # -- inference

    def _run(self, tensors: list[np.ndarray]) -> list[np.ndarray]:
        """Run (3, H', W') tensors, one session.run per group of equal shapes; (C, h, w) outputs in order."""
        groups: dict[tuple, list[int]] = {}
        for index, x in enumerate(tensors):
            groups.setdefault(x.shape, []).append(index)
        outputs: list = [None] * len(tensors)
        for indices in groups.values():
            step = self.max_batch or len(indices)
            for start in range(0, len(indices), step):
                chunk = indices[start:start + step]
                batch = np.stack([tensors[i] for i in chunk]).astype(self.input_dtype)  # (B, 3, H', W')
                out = np.asarray(self.session.run(None, {self.input_name: batch})[0], dtype=np.float32)
                if out.ndim == 3:  # (B, h, w): a single-channel model that dropped its C axis
                    out = out[:, None]
                if out.ndim != 4 or out.shape[0] != len(chunk):
                    raise UserError(f"model output has shape {out.shape}; a segmentation output (N, C, h, w) is needed")
                for i, o in zip(chunk, out):
                    outputs[i] = o
        return outputs

    def _to_probs(self, output: np.ndarray) -> np.ndarray:
        kind = self.meta.get("output", "probs")
        if not self.has_metadata and (output.min() < -1e-3 or output.max() > 1 + 1e-3):
            kind = "logits"  # a foreign model: values outside [0, 1] cannot be probabilities
        return to_probs(output, kind)

    def predict_probs_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """RGB images -> (C, H, W) float32 probabilities at each image's own size."""
        return self._predict_cropped(images)[0]

    def _predict_cropped(self, images: list[np.ndarray]) -> tuple[list[np.ndarray], list[dict]]:
        """Probabilities plus per-image crop columns; with smart crop the model sees the person crops."""
        if getattr(self, "crop_stage", None) is None:
            return self._predict_probs(images), [{} for _ in images]
        t0 = time.perf_counter()
        images = [as_rgb(image) for image in images]
        crops = self.crop_stage.crop(images)
        crop_ms = (time.perf_counter() - t0) * 1e3 / max(len(images), 1)
        probs = self._predict_probs([crop.image for crop in crops])
        self.timing["crop_ms"] = crop_ms
        return ([self.crop_stage.paste(p, crop, image.shape[:2]) for p, crop, image in zip(probs, crops, images)],
                [self.crop_stage.describe(crop) for crop in crops])

    def _predict_probs(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """RGB images -> (C, H, W) float32 probabilities at each image's own size.

        All images and their TTA flips go through the model together (one session.run per input
        shape); flipped outputs are flipped back and the probabilities averaged.
        """
        t0 = time.perf_counter()
        images = [as_rgb(image) for image in images]
        prepared = [self.prepare(image) for image in images]
        flips = TTA_FLIPS[self.tta]
        tensors = []
        for chw, (ph, pw) in prepared:
            for axes in flips:
                x = np.flip(chw, axis=axes) if axes else chw
                tensors.append(np.pad(x, ((0, 0), (0, ph - x.shape[1]), (0, pw - x.shape[2]))))
        t1 = time.perf_counter()
        outputs = self._run(tensors)
        t2 = time.perf_counter()
        results = []
        for index, (image, (chw, padded_hw)) in enumerate(zip(images, prepared)):
            h, w = chw.shape[1:]
            total = None
            for k, axes in enumerate(flips):
                out = outputs[index * len(flips) + k]
                if out.shape[1:] not in (tuple(padded_hw), (h, w)):
                    out = resize_probs(out, padded_hw)  # a smaller (SegFormer-style) output
                probs = self._to_probs(out)[:, :h, :w]
                probs = np.flip(probs, axis=axes) if axes else probs
                total = probs if total is None else total + probs
            results.append(np.ascontiguousarray(resize_probs(total / len(flips), image.shape[:2]), dtype=np.float32))
        t3 = time.perf_counter()
        n = max(len(images), 1)
        self.timing = {"pre_ms": (t1 - t0) * 1e3 / n, "infer_ms": (t2 - t1) * 1e3 / n, "post_ms": (t3 - t2) * 1e3 / n}
        return results

    def predict_probs(self, image: np.ndarray) -> np.ndarray:
        """RGB uint8 (H, W, 3) -> float32 probabilities (C, H, W) at the image's own size."""
        return self.predict_probs_batch([image])[0]

    def predict_batch(self, images: list[np.ndarray]) -> list[Result]:
        """Results in order. With a gate, only the images it passes are segmented (one batched call)."""
        if getattr(self, "gate", None) is None:
            return self._segment_batch(images)
        images = [as_rgb(image) for image in images]
        probs = self.gate.predict(images)
        gate_ms = self.gate.timing["gate_ms"]
        keep = [i for i, p in enumerate(probs) if p >= self.gate.threshold]
        segmented = dict(zip(keep, self._segment_batch([images[i] for i in keep]) if keep else []))
        results = []
        for i, (image, prob) in enumerate(zip(images, probs)):
            result = segmented.get(i)
            if result is None:
                result = Result(*clean_prediction(image.shape[:2], int(self.meta.get("num_classes", 1)), float(prob)))
            result.info["gate_prob"] = float(prob)
            result.info["timing"] = {**result.info.get("timing", {}), "gate_ms": gate_ms}
            results.append(result)
        return results

    def _segment_batch(self, images: list[np.ndarray]) -> list[Result]:
        probs_list, crop_infos = self._predict_cropped(images)
        t0 = time.perf_counter()
        results = []
        for probs, crop_info in zip(probs_list, crop_infos):
            mask, info = postprocess(probs, self.post)
            info.update(crop_info, status="ok" if info["detected"] else "no_detection")
            results.append(Result(mask, probs, info))
        self.timing["post_ms"] += (time.perf_counter() - t0) * 1e3 / max(len(images), 1)
        for result in results:
            result.info["timing"] = dict(self.timing)
        return results

    def predict(self, image: np.ndarray) -> Result:
        """RGB uint8 (H, W, 3) -> Result(mask (H, W), probs (C, H, W), info)."""
        return self.predict_batch([image])[0]

    def predict_paths(self, paths, batch_size: int = 1):
        """Yield a Result per image path, in order; an unreadable file gives info status 'error'."""
        paths = iter(paths)
        while chunk := list(islice(paths, max(1, batch_size))):
            loaded = []
            for path in chunk:
                try:
                    loaded.append((path, read_image(path), None))
                except Exception as exc:  # noqa: BLE001 - any bad file becomes an error result
                    loaded.append((path, None, str(exc)))
            good = [image for _, image, error in loaded if error is None]
            results = iter(self.predict_batch(good) if good else [])
            for path, _, error in loaded:
                result = Result(None, None, {"status": "error", "error": error}) if error else next(results)
                result.info["file"] = str(path)
                yield result


class OtsuSegmenter(Segmenter):
    """Model-free baseline: Otsu's threshold on the grey image, the side touching the border less is foreground."""

    def __init__(self, **post):
        self.model_path, self.session, self.providers, self.wanted = None, None, ["none (Otsu)"], ["none"]
        self.meta, self.has_metadata = decode_metadata({})[0], False
        self.tta, self.fixed_hw, self.max_batch, self.crop_stage, self.gate = "none", None, 0, None, None
        post["threshold"] = "otsu"
        self.post = self._post_options(post)
        self.timing = {"pre_ms": 0.0, "infer_ms": 0.0, "post_ms": 0.0}
        LOG.info("method otsu: no model, Otsu threshold on the grey image")

    def _predict_probs(self, images: list[np.ndarray]) -> list[np.ndarray]:
        t0 = time.perf_counter()
        results = []
        for image in images:
            grey = cv2.cvtColor(as_rgb(image), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0  # (H, W)
            level = otsu_level(grey)
            if level is not None:
                bright = grey > level
                border = np.concatenate([bright[0], bright[-1], bright[:, 0], bright[:, -1]])
                if border.mean() > 0.5:
                    grey = 1.0 - grey  # objects sit inside the frame: the border side is background
            results.append(grey[None])
        self.timing = {"pre_ms": 0.0, "infer_ms": (time.perf_counter() - t0) * 1e3 / max(len(images), 1),
                       "post_ms": 0.0}
        return results



# ----------------------------------------------------------------------------- runs


def run(segmenter, source, output, options: RunOptions | None = None, progress=None, **overrides) -> dict:
    """Segment whatever `source` is (see runtime/sources.py) into `output`; returns a summary dict.

    `overrides` are RunOptions fields, or threshold/min_area (and other PostOptions) for this run.
    `progress(done, total)` is called after each item (total None for streams).
    """
    post = {k: overrides.pop(k) for k in list(overrides) if k in PostOptions.__dataclass_fields__}
    if any(v is not None for v in post.values()):
        segmenter = segmenter.with_options(**post)
    options = dataclasses.replace(options or RunOptions(), **overrides)
    output = Path(output)
    kind = detect_source(source)
    gt_index = load_gt_index(options.gt_dir)
    with output_lock(output):  # one run per output folder: a second one is refused, not interleaved
        if kind in ("video", "stream", "webcam"):
            return run_video(segmenter, source, output, options, progress)
        if kind == "zip":
            return run_zip(segmenter, Path(source), output, options, gt_index, progress)
        items = (list_items(Path(source)) if kind == "list"
                 else image_items(source, exclude=output, follow_symlinks=options.follow_symlinks))
        return run_items(segmenter, items, output, options, gt_index, progress)


def run_folder(segmenter, source, output, threshold=None, min_area=None, alpha: float = 0.5, gt_dir=None,
               progress=None, **options) -> dict:
    """The foundation's entry point, kept: `run` with the old keyword arguments."""
    return run(segmenter, source, output, progress=progress, threshold=threshold, min_area=min_area,
               alpha=alpha, gt_dir=gt_dir, **options)


# ----------------------------------------------------------------------------- CLI


class ProgressBar:
    """Text progress on stderr with items/s: redrawn in place on a terminal, a line every ~10% otherwise."""

    def __init__(self, label: str = "images", stream=None, width: int = 30):
        self.label, self.width = label, width
        self.stream = stream if stream is not None else sys.stderr
        self.is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self.last_step = -1

    def __call__(self, done: int, total: int | None) -> None:
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        if not total:  # a stream: no end known
            step = int(time.perf_counter() - self.start) // 5
            if self.is_tty or step > self.last_step:
                self.last_step = step
                self.stream.write(("\r" if self.is_tty else "") + f"{self.label} {done} {rate:.1f}/s"
                                  + ("" if self.is_tty else "\n"))
                self.stream.flush()
            return
        fraction = done / total
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
        description="Segment images, ZIPs, videos and streams with an exported ONNX model (torch not needed).",
        epilog="Writes OUT/masks/*.png, OUT/overlays/*.png and OUT/summary.csv (videos: OUT/<name>.mp4 and "
               "OUT/<name>_frames.csv). Post-processing order: threshold -> close -> open -> fill holes -> "
               "min component area -> keep largest.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    # what to run on
    add("--model", default=None, help="the .onnx file written by export.py (not needed with --method otsu)")
    add("--source", required=True, help="an image, a folder (recursive), a quoted glob, a .txt list of paths, a "
        ".zip, a video (mp4/avi/mov/mkv), an rtsp:// or http:// stream URL, or a webcam index such as 0")
    add("--output", required=True, help="output folder")
    add("--method", default="model", choices=("model", "otsu"), help="'otsu': model-free baseline on grey levels")
    # model and device
    add("--device", "--providers", dest="device", default="auto", choices=PROVIDER_CHOICES,
        help="execution provider; auto tries TensorRT > CUDA > CPU (--providers is the old name)")
    add("--threads", type=int, default=0, help="CPU threads for onnxruntime, 0 = automatic")
    add("--batch-size", type=int, default=1, help="images per model run for folders, lists and ZIPs")
    add("--io-threads", type=int, default=2, help="background threads for decoding and for writing")
    add("--gate", default=None,
        help="clean/defect gate .onnx (train.py --task classify): images it judges clean skip the segmenter "
             "(empty mask, status gated_clean, gate_prob in summary.csv)")
    add("--gate-threshold", type=float, default=None,
        help="segment images whose gate probability is >= this (None: the gate's own out-of-fold threshold)")
    add("--detector", default=None,
        help="smart-crop models: the YOLO11-seg .onnx (default: the file the model's metadata names, beside it)")
    add("--tta", default=None, choices=tuple(TTA_FLIPS),
        help="flip test-time augmentation, batched into one run (None: none, and flips already baked into "
             "the model are not repeated)")
    # thresholding and morphology, applied in this order
    add("--threshold", default="adaptive",
        help="'adaptive' (the model's cascade, e.g. 0.5 -> 0.3 -> 0.15), 'model' (the model's recommended "
             "threshold from cross-validation), 'otsu' or a number in (0, 1)")
    add("--min-area", type=int, default=None,
        help="pixels a region needs to count as a detection (None: the model's min_area, else 64)")
    add("--close", type=int, default=0, help="morphological closing kernel in px, 0 = off")
    add("--open", type=int, default=0, help="morphological opening kernel in px, 0 = off")
    add("--fill-holes", action="store_true", help="fill holes enclosed by the mask (bays open to the border stay)")
    add("--min-component-area", type=int, default=0, help="drop components smaller than this many px, 0 = off")
    add("--keep-largest", type=int, default=0, help="keep only the N largest components, 0 = all")
    # outputs
    add("--alpha", type=float, default=0.5, help="overlay opacity, 0..1")
    add("--color", default="red", help="overlay colour of binary masks: a name, #rrggbb or R,G,B")
    add("--save-probs", action="store_true", help="also write OUT/probs/<name>.npy (float16, C x H x W)")
    add("--gt", default=None, help="folder of ground-truth masks, paired by name: dice/iou columns + metrics.json")
    add("--gated-overlay", default="fast", choices=("fast", "png", "skip"),
        help="with --gate, the overlay of an image judged clean (the image itself): fast = uncompressed PNG (about "
             "6x less CPU than png, about 3x the bytes), png = compressed as every other overlay, skip = none")
    add("--strict", action="store_true", help="exit with code 1 when any item failed (otherwise failures are error rows and the exit code is 0)")
    # ZIP limits, checked before anything is extracted
    add("--zip-max-mb", type=float, default=ZIP_MAX_BYTES / 2**20, help="refuse a ZIP expanding past this size")
    add("--zip-max-ratio", type=float, default=ZIP_MAX_RATIO, help="refuse a ZIP entry compressed more than this")
    add("--zip-max-entries", type=int, default=ZIP_MAX_ENTRIES, help="refuse a ZIP with more entries")
    # untrusted files
    add("--max-pixels", type=int, default=None,
        help=f"refuse images whose header claims more pixels, before decoding (decompression bombs); "
             f"default: env MAX_IMAGE_PIXELS, else {MAX_IMAGE_PIXELS}")
    add("--follow-symlinks", action="store_true",
        help="read symlinks in a source folder that point outside it (by default they are error rows)")
    # videos and streams
    add("--video-max-side", type=int, default=0, help="downscale frames to this long side, 0 = as is")
    add("--vid-stride", type=int, default=1, help="infer every Nth frame and reuse the last mask between")
    add("--max-frames", type=int, default=0, help="stop after this many frames, 0 = all")
    add("--view-img", action="store_true", help="show a window with the annotated frames (when a display exists)")
    # scale-out (folders, globs and lists): Ray Data over a local or remote (RAY_ADDRESS) Ray cluster
    add("--engine", default="local", choices=("local", "ray"),
        help="'ray': the same outputs through Ray Data and a pool of actors (requirements-dist.txt)")
    add("--ray-actors", type=int, default=2, help="actors in the pool, one onnxruntime session each")
    add("--ray-num-cpus", type=int, default=0, help="CPUs of the local Ray started when RAY_ADDRESS is unset, 0 = all")
    add("--ray-cpus-per-actor", type=float, default=1.0, help="CPUs reserved by each actor")
    add("--ray-gpus-per-actor", type=float, default=None,
        help="GPUs per actor (fractions share a GPU); default 1 when the cluster has GPUs, else 0")
    add("--ray-block-size", type=int, default=8,
        help="images per actor call (rounded up to a multiple of --batch-size)")
    add("--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def build_segmenter(args: argparse.Namespace):
    post = dict(threshold=args.threshold, min_area=args.min_area, close=args.close, open=args.open,
                fill_holes=args.fill_holes, min_component_area=args.min_component_area, keep_largest=args.keep_largest)
    check = {k: v for k, v in post.items() if v is not None}
    if str(args.threshold).strip().lower() == "model":
        check["threshold"] = 0.5  # resolved from the model's metadata once it is loaded
    PostOptions(**check)  # fail on bad options before loading a model
    if args.method == "otsu":
        if args.gate is not None:
            raise UserError("--gate needs a segmentation model (--model), not --method otsu")
        if args.tta not in (None, "none"):
            LOG.warning("--tta is ignored with --method otsu")
        return OtsuSegmenter(**{**post, "threshold": "otsu"})
    if args.model is None:
        raise UserError("--model is required (the .onnx from export.py), or use --method otsu for the baseline")
    return Segmenter(args.model, device=args.device, threads=args.threads, tta=args.tta, detector=args.detector,
                     gate=args.gate, gate_threshold=args.gate_threshold, **post)


def run_ray(args: argparse.Namespace, options: RunOptions, progress=None, environ=os.environ) -> dict:
    """--engine ray: the folder/glob/list run of `run`, with the model run by Ray actors."""
    ray_options = RayOptions(args.ray_actors, args.ray_num_cpus, args.ray_cpus_per_actor, args.ray_gpus_per_actor,
                             args.ray_block_size)
    kind = detect_source(args.source)
    if kind not in ("folder", "glob", "list", "image"):
        raise UserError(f"--engine ray runs folders, globs and .txt lists; {args.source} is a {kind}: "
                        "use --engine local for it")
    probe = build_segmenter(argparse.Namespace(**{**vars(args), "device": "cpu", "threads": 1}))  # fail fast, here
    options = dataclasses.replace(options, class_names=model_class_names(probe.meta))  # per-class CSV columns
    output = Path(args.output)
    with output_lock(output):
        items = (list_items(Path(args.source)) if kind == "list"
                 else image_items(args.source, exclude=output, follow_symlinks=options.follow_symlinks))
        # without --threads each actor's session gets the CPUs the actor reserved, not the whole machine
        threads = args.threads or max(1, round(args.ray_cpus_per_actor))
        model = os.path.abspath(args.model) if args.model else None  # actors may run in another directory
        gate = os.path.abspath(args.gate) if args.gate else None
        actor_args = argparse.Namespace(**{**vars(args), "threads": threads, "model": model, "gate": gate})
        import inference  # by module name, so actors unpickle it even when this file runs as __main__

        return run_items_ray(partial(inference.build_segmenter, actor_args), items, output, options,
                             load_gt_index(options.gt_dir), progress, ray_options, environ)


def print_summary(result: dict, with_gt: bool) -> None:
    for label, key in (("masks", "masks"), ("overlays", "overlays"), ("video", "video"), ("summary", "summary_csv"),
                       ("metrics", "metrics_json"), ("zip", "predictions_zip")):
        if result.get(key):
            print(f"{label + ':':<12} {result[key]}")
    unit = "frames" if "video" in result else "images"
    print(f"{unit}: {result['images']}  ok: {result['ok']}  no_detection: {result['no_detection']}  "
          f"errors: {result['errors']}" + (f"  gated_clean: {result['gated_clean']}" if result.get("gated_clean") else "")
          + (f"  inferences: {result['inferences']}" if "inferences" in result else ""))
    if result["timing_ms"]:
        print("time per image: " + "  ".join(f"{k[:-3]} {v:.1f} ms" for k, v in result["timing_ms"].items()))
    if with_gt and result["mean_dice"] is None:
        print("mean dice: n/a  (no ground-truth mask matched an image name)")
    elif with_gt:
        metrics = result.get("metrics") or {}
        pooled = (f"  pixel dice: {metrics['pixel_dice']:.3f}  pixel iou: {metrics['pixel_iou']:.3f}"
                  if metrics.get("pixel_dice") is not None else "")
        print(f"mean dice: {result['mean_dice']:.3f}  mean iou: {result['mean_iou']:.3f}  "
              f"({result['with_gt']} images with ground truth){pooled}")
        for name, scores in (metrics.get("per_class") or {}).items():
            print(f"  class {name + ':':<14} dice {scores['mean_dice']:.3f}  iou {scores['mean_iou']:.3f}  "
                  f"(true in {scores['images_true']} images, predicted in {scores['images_predicted']})")


def resolve_max_pixels(flag: int | None, environ) -> int:
    """--max-pixels, else env MAX_IMAGE_PIXELS, else the built-in limit (default < env < flag)."""
    if flag is not None:
        return flag
    text = environ.get("MAX_IMAGE_PIXELS", "").strip()
    if not text:
        return MAX_IMAGE_PIXELS
    try:
        return int(text.replace("_", ""))
    except ValueError:
        raise UserError(f"MAX_IMAGE_PIXELS={text!r} is not a valid positive int (e.g. 100000000)") from None


def main(argv=None) -> None:
    args = parse_args(argv)
    setup_logging(level=10 if args.verbose else 20)
    options = RunOptions(  # fail on bad options before loading the model
        alpha=args.alpha, color=args.color, gt_dir=args.gt, save_probs=args.save_probs, batch_size=args.batch_size,
        io_threads=args.io_threads, zip_max_mb=args.zip_max_mb, zip_max_ratio=args.zip_max_ratio,
        zip_max_entries=args.zip_max_entries, video_max_side=args.video_max_side, vid_stride=args.vid_stride,
        max_frames=args.max_frames, view_img=args.view_img,
        max_pixels=resolve_max_pixels(args.max_pixels, os.environ), follow_symlinks=args.follow_symlinks,
        gated_overlay=args.gated_overlay,
    )
    kind = detect_source(args.source)
    label = "frames" if kind in ("video", "stream", "webcam") else "images"
    if args.engine == "ray":
        result = run_ray(args, options, progress=ProgressBar(label))
    else:
        result = run(build_segmenter(args), args.source, args.output, options, progress=ProgressBar(label))
    if result["errors"]:
        LOG.warning("%d item(s) failed; see the error column of %s", result["errors"], result["summary_csv"])
    print_summary(result, with_gt=args.gt is not None)
    if args.strict and result["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
