"""Export trained fold models to one self-describing ONNX file, and prove it matches torch.

Run book:
    python export.py --work-dir runs/exp1                  # all folds, averaged in one graph
    python export.py --work-dir runs/exp1 --fold 0         # one fold
    python export.py --work-dir runs/exp1 --folds 0,2      # a subset of folds
    python export.py --work-dir runs/exp1 --tta flips      # + mirrored copies, averaged in the graph
    python export.py --work-dir runs/exp1 --logits         # raw logits instead of probabilities
    python export.py --work-dir runs/exp1 --simplify       # onnxslim
    python export.py --work-dir runs/exp1 --fp16           # + <name>.fp16.onnx for GPUs (I/O stays float32)
    python export.py --work-dir runs/exp1 --int8 --val-dir data/val   # + <name>.int8.onnx, Dice before/after
    python export.py --work-dir runs/exp1 --triton-repo models/ --triton-kind gpu --triton-dynamic-batching
        # + models/<name>/config.pbtxt and models/<name>/1/model.onnx: an NVIDIA Triton model repository

The graph takes `image` float32 (N, 3, H, W), H and W multiples of 32, dynamic N/H/W, and returns
`probs` (N, C, H, W): sigmoid (binary) or softmax (multi-class) inside the graph, averaged over
the folds and TTA views (nnU-Net style); or `logits`, averaged the same way. A JSON document
under metadata_props['segmentation'] tells the runtime everything it needs.

A gate run (train.py --task classify) exports the same way, by the same command: `prob` (N, 1), the
folds' sigmoids averaged, and metadata with task 'gate', the out-of-fold threshold and its metrics
(written to WORK_DIR/<NAME>.onnx, NAME defaulting to 'gate'). No TTA, logits or int8 for a gate.

Checks (on by default, --no-verify skips them): onnx.checker; onnxruntime vs torch on a batch and
shape unlike the export's (max abs diff <= 1e-4, else the export aborts); OpenCV DNN vs onnxruntime
(<= 1e-3; where OpenCV cannot run the model the export warns and records it in the metadata).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import segmentation_models_pytorch as smp
import torch
import torch.nn as nn
import torch.nn.functional as F

from model import GATE_ARCH, build_model_from_checkpoint
from utils import (
    DEFAULT_METADATA, IMAGENET_MEAN, IMAGENET_STD, LOG, METADATA_KEY, METADATA_VERSION, UserError,
    atomic_write_bytes, decode_metadata, dice_iou, encode_metadata, index_masks, list_images, preprocess, read_image,
    read_mask, run_cli, setup_logging,
)

PARITY_TOLERANCE = 1e-4  # onnxruntime vs torch, probabilities (logits: relative to their scale)
OPENCV_TOLERANCE = 1e-3  # OpenCV DNN vs onnxruntime
STRIDE = 32
MIN_OPSET, MAX_OPSET = 13, 20  # 13: per-channel QDQ and modern Resize; 20: torch's TorchScript exporter
TTA_FLIPS = {"none": [()], "hflip": [(), (3,)], "flips": [(), (3,), (2,), (2, 3)]}  # dims flipped per view
OUTPUTS = ("probs", "logits")
GATE_OUTPUT = "prob"  # the gate's (N, 1) defect probability


class ParityError(UserError, RuntimeError):
    """The exported graph disagrees with torch: the export is aborted (unless --no-verify)."""


class ExportEnsemble(nn.Module):
    """Folds x TTA views in one graph: (N, 3, H, W) -> (N, C, H, W) probs or logits.

    The TTA views are stacked as extra batch entries, so each fold model runs once per call;
    the views are flipped back and averaged, then the folds are averaged (nnU-Net style).
    """

    def __init__(self, models: list[nn.Module], num_classes: int, tta: str = "none", output: str = "probs"):
        super().__init__()
        if tta not in TTA_FLIPS:
            raise UserError(f"tta={tta!r}: choose one of {', '.join(TTA_FLIPS)}")
        if output not in OUTPUTS:
            raise UserError(f"output={output!r}: choose one of {', '.join(OUTPUTS)}")
        self.models = nn.ModuleList(models)
        self.num_classes, self.flips, self.output = num_classes, TTA_FLIPS[tta], output

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        if self.output == "logits":
            return logits
        return torch.sigmoid(logits) if self.num_classes == 1 else torch.softmax(logits, dim=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        views = [image.flip(dims) if dims else image for dims in self.flips]
        batch = torch.cat(views, dim=0) if len(views) > 1 else image  # (V*N, 3, H, W)
        total = sum(self.activate(model(batch)) for model in self.models) / len(self.models)
        if len(views) == 1:
            return total
        per_view = total.unflatten(0, (len(views), -1))  # (V, N, C, H', W')
        unflipped = [per_view[i].flip(dims) if dims else per_view[i] for i, dims in enumerate(self.flips)]
        return sum(unflipped) / len(unflipped)


class GateEnsemble(nn.Module):
    """The gate's folds in one graph: image (N, 3, H, W) -> prob (N, 1), the mean of the folds' sigmoids."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.models = nn.ModuleList(models)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return sum(torch.sigmoid(model(image)) for model in self.models) / len(self.models)


def ProbabilityEnsemble(models: list[nn.Module], num_classes: int) -> ExportEnsemble:  # noqa: N802
    """Backwards-compatible name: the fold average of probabilities, no TTA."""
    return ExportEnsemble(models, num_classes)


# ----------------------------------------------------------------------------- checkpoints


def find_checkpoints(work_dir: Path, folds: list[int] | None) -> dict[int, Path]:
    models_dir = Path(work_dir) / "models"
    found = {int(p.stem[4:-5]): p for p in models_dir.glob("fold*_best.pt") if p.stem[4:-5].isdigit()}
    if not found:
        raise UserError(f"no fold checkpoints (models/fold<K>_best.pt) in {work_dir}; run train.py first")
    if folds is None:
        return dict(sorted(found.items()))
    missing = [k for k in folds if k not in found]
    if missing:
        raise UserError(f"folds {missing} have no checkpoint in {models_dir}; available: {sorted(found)}")
    return {k: found[k] for k in folds}


def describe(args: dict) -> str:
    return f"{args['arch']}/{args['encoder']} with {args['classes']} class(es)"


def load_fold_models(checkpoints: dict[int, Path]) -> tuple[list[nn.Module], dict]:
    """Rebuild every fold model; all must share one architecture, encoder and class count."""
    models, first, first_path = [], None, None
    for path in checkpoints.values():
        model, ckpt = build_model_from_checkpoint(path)
        if first is None:
            first, first_path = ckpt, path
        elif ckpt["model_args"] != first["model_args"]:
            raise UserError(f"{path.name} is {describe(ckpt['model_args'])} but {first_path.name} is "
                            f"{describe(first['model_args'])}; one ONNX graph needs one architecture: "
                            "export them separately with --fold K")
        models.append(model.eval())
    return models, first


def parse_folds(text: str | None, fold: int | None) -> list[int] | None:
    if text and fold is not None:
        raise UserError("give either --fold K or --folds LIST, not both")
    if fold is not None:
        return [fold]
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise UserError(f"--folds={text!r} must be a comma list of integers, e.g. 0,2") from None


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UserError(f"opset {opset} is not supported; choose {MIN_OPSET}..{MAX_OPSET} (default 17)")


# ----------------------------------------------------------------------------- metadata


def package_versions() -> dict:
    import onnxruntime as ort

    return {"torch": torch.__version__, "smp": smp.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__}


def crop_metadata(cfg: dict, detector_name: str) -> dict:
    """The smart-crop fields of the metadata: mode, the ROI settings and the detector file beside the model."""
    if cfg.get("crop", "off") != "person":
        return {"crop_mode": "off", "detector": None}
    settings = {"conf": cfg["crop_conf"], "roi_factor": cfg["crop_roi_factor"], "min_size": cfg["crop_min_size"],
                "pad_value": cfg["crop_pad_value"], "input_size": cfg["input_size"]}
    return {"crop_mode": "person", "detector": detector_name, "crop": settings}


def detector_path(output: Path) -> Path:
    """Where the YOLO detector goes: <name>.detector.onnx beside <name>.onnx."""
    return output.with_name(f"{output.stem}.detector.onnx")


def build_metadata(ckpt: dict, folds: list[int], threshold: float | None, min_area: int | None,
                   tta: str = "none", output: str = "probs", detector_name: str = "") -> dict:
    cfg = ckpt.get("config", {})
    args = ckpt["model_args"]
    classes = args["classes"]
    default_names = ["foreground"] if classes == 1 else [f"class_{i}" for i in range(classes)]
    return {
        **DEFAULT_METADATA,
        "format_version": METADATA_VERSION,
        "name": cfg.get("name") or "model",
        "arch": args["arch"], "encoder": args["encoder"], "num_classes": classes,
        "class_names": list(cfg.get("class_names") or default_names),
        "input_size": cfg.get("input_size", DEFAULT_METADATA["input_size"]),
        "resize": "long_side", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "stride": STRIDE,
        "task": "segment", "output": output, "tta": tta, "precision": "fp32",
        "threshold": 0.5 if threshold is None else float(threshold),
        "thresholds": DEFAULT_METADATA["thresholds"],
        "min_area": int(cfg.get("min_area", 64) if min_area is None else min_area),
        "folds": folds, **crop_metadata(cfg, detector_name),
        **({"train_patch": cfg["train_patch"]} if cfg.get("train_patch") else {}),
        "config_hash": ckpt.get("config_hash"),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
    }


def build_gate_metadata(ckpt: dict, folds: list[int], summary: dict | None, threshold: float | None) -> dict:
    """The gate's metadata: task 'gate', the threshold (the out-of-fold one unless given) and the
    out-of-fold metrics it came with, plus the shared preprocessing keys the runtime needs."""
    meta = build_metadata(ckpt, folds, None, None)
    for key in ("thresholds", "min_area", "tta", "crop_mode", "detector", "crop"):  # segmenter-only
        meta.pop(key, None)
    oof = dict((summary or {}).get("oof") or {})
    source = "oof" if threshold is None else "given"
    threshold = oof.get("threshold") if threshold is None else float(threshold)
    if threshold is None:
        LOG.warning("no gate cv_summary.json in the run folder: gate threshold 0.5 (pass --threshold to choose)")
        threshold, source = 0.5, "default"
    meta.update(task="gate", num_classes=1, class_names=["defective"], output="probs", threshold=float(threshold),
                pool=ckpt["model_args"].get("pool", "avg"),
                threshold_source=source, recall_target=oof.get("recall_target"),
                oof={k: oof.get(k) for k in ("images", "defective", "clean", "accuracy", "auc", "threshold", "recall",
                                             "specificity", "precision", "skipped_fraction") if k in oof})
    return meta


def trace_side(ckpt: dict) -> int:
    """Side of the square the graph is traced and checked at: INPUT_SIZE, or the long side of the
    TRAIN_PATCH crops (a 1600x1600 trace of a strip model costs minutes and gigabytes for nothing:
    H and W stay dynamic either way)."""
    cfg = ckpt.get("config", {})
    if cfg.get("train_patch"):
        return max(int(side) for side in cfg["train_patch"].split("x"))
    return int(cfg.get("input_size", DEFAULT_METADATA["input_size"]))


def set_metadata(proto: onnx.ModelProto, metadata: dict) -> onnx.ModelProto:
    """Replace our metadata_props entry (other entries, e.g. from tools, are kept)."""
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    for key, value in keep + [(METADATA_KEY, encode_metadata(metadata))]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "segpipe-export"
    return proto


def read_metadata(model: str | Path | onnx.ModelProto) -> dict:
    """Our metadata back from an ONNX file or proto (defaults filled in)."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    meta, found = decode_metadata({p.key: p.value for p in proto.metadata_props})
    if not found:
        raise UserError(f"{model} has no '{METADATA_KEY}' metadata; it was not written by export.py")
    return meta


def add_metadata(model_bytes: bytes, metadata: dict) -> onnx.ModelProto:
    proto = set_metadata(onnx.load_from_string(model_bytes), metadata)
    onnx.checker.check_model(proto, full_check=True)
    return proto


# ----------------------------------------------------------------------------- export


def _pool_matrix(n, k: int, like: torch.Tensor) -> torch.Tensor:
    """(k, n) averaging matrix of adaptive pooling n -> k bins; n may be a traced size."""
    n = torch.as_tensor(n)
    i = torch.arange(k)
    start = torch.div(i * n, k, rounding_mode="floor")
    end = torch.div((i + 1) * n + k - 1, k, rounding_mode="floor")
    j = torch.arange(n)
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


def traceable_adaptive_avg_pool2d(x: torch.Tensor, output_size) -> torch.Tensor:
    """F.adaptive_avg_pool2d as two matmuls: exact, and exportable with dynamic H/W."""
    kh, kw = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if kh is None or kw is None:
        return _ADAPTIVE_AVG_POOL2D(x, output_size)
    if (kh, kw) == (1, 1):
        return x.mean(dim=(-2, -1), keepdim=True)
    ph, pw = _pool_matrix(x.shape[-2], kh, x), _pool_matrix(x.shape[-1], kw, x)  # (kh, H), (kw, W)
    return torch.matmul(torch.matmul(ph, x), pw.transpose(0, 1))  # (N, C, kh, kw)


_ADAPTIVE_AVG_POOL2D = F.adaptive_avg_pool2d


@contextlib.contextmanager
def exportable_adaptive_pooling():
    """The TorchScript exporter rejects adaptive_avg_pool2d on dynamic H/W (PSPNet, UPerNet; also
    F.interpolate(mode='area')); swap in the matmul form while tracing. Parity checks prove it."""
    F.adaptive_avg_pool2d = traceable_adaptive_avg_pool2d
    try:
        yield
    finally:
        F.adaptive_avg_pool2d = _ADAPTIVE_AVG_POOL2D


def to_onnx_bytes(module: nn.Module, input_size: int, opset: int, output_name: str = "probs",
                  output_axes: dict | None = None) -> bytes:
    """Trace with the TorchScript exporter: dynamic N/H/W, stable for the smp architectures.

    output_axes: the output's dynamic axes (default N, H, W; the gate's (N, 1) output: N only)."""
    check_opset(opset)
    dummy = torch.randn(1, 3, input_size, input_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(), exportable_adaptive_pooling():
        warnings.simplefilter("ignore")  # tracer warnings about python ints are expected here
        torch.onnx.export(
            module, (dummy,), buffer, dynamo=False, opset_version=opset,
            input_names=["image"], output_names=[output_name],
            dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                          output_name: output_axes or {0: "batch", 2: "height", 3: "width"}},
        )
    return buffer.getvalue()


def simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    """onnxslim: constant folding, dead-node removal, fusions. Our metadata is re-attached."""
    try:
        import onnxslim
    except ImportError:
        raise UserError("--simplify needs onnxslim: pip install -r requirements-train.txt") from None
    metadata = read_metadata(proto)
    before = len(proto.graph.node)
    slim = onnxslim.slim(proto)
    LOG.info("onnxslim: %d -> %d nodes", before, len(slim.graph.node))
    return set_metadata(slim, metadata)


# ----------------------------------------------------------------------------- checks


def parity_shape(input_size: int) -> tuple[int, int, int, int]:
    """A batch and shape unlike the export's (1, 3, S, S): proves the dynamic axes work."""
    h = max(STRIDE * 2, (input_size * 3 // 4) // STRIDE * STRIDE)
    return 2, 3, h, input_size + STRIDE


def parity_input(input_size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(parity_shape(input_size), dtype=np.float32)


def run_onnxruntime(model: bytes | str | Path, image: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    source = model if isinstance(model, bytes) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: image})[0]


def max_diff(got: np.ndarray, want: np.ndarray, what: str) -> float:
    if got.shape != want.shape:
        raise ParityError(f"{what}: output shape {got.shape} != {want.shape}")
    return float(np.abs(got.astype(np.float32) - want.astype(np.float32)).max())


def check_parity(module: nn.Module, model_bytes: bytes, input_size: int, seed: int = 0) -> float:
    """Max |onnxruntime - torch| on a new batch/shape; raises ParityError if above tolerance.

    Probabilities use PARITY_TOLERANCE as is; logits relative to their largest magnitude. A
    larger difference still passes when it is float32 rounding, not a wrong graph: onnxruntime
    is then no further from a float64 torch run than float32 torch itself is (deep nets such
    as HRNet, see docs/export_matrix.md).
    """
    x = parity_input(input_size, seed)
    with torch.inference_mode():
        expected = module(torch.from_numpy(x)).numpy()
    got = run_onnxruntime(model_bytes, x)
    diff = max_diff(got, expected, "onnxruntime vs torch")
    tolerance = PARITY_TOLERANCE * max(1.0, float(np.abs(expected).max()))
    if diff <= tolerance:
        return diff
    if np.isfinite(diff):
        ort_error, torch_error = float64_errors(module, x, got, expected)
        if ort_error <= max(2 * torch_error, tolerance):
            LOG.warning("parity: onnxruntime vs torch max abs diff %.2e > %.0e, but it is float32 rounding: vs a "
                        "float64 torch run onnxruntime is off by %.2e and float32 torch by %.2e",
                        diff, tolerance, ort_error, torch_error)
            return diff
    raise ParityError(f"ONNX/torch parity failed: max abs diff {diff:.2e} > {tolerance:.0e} on input "
                      f"{x.shape}; the graph is wrong for this model (export with --no-verify to keep it anyway)")


def float64_errors(module: nn.Module, x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """(max |onnxruntime - torch64|, max |torch32 - torch64|) for the same input."""
    import copy

    with torch.inference_mode():
        reference = copy.deepcopy(module).double()(torch.from_numpy(x).double()).numpy()
    return float(np.abs(got - reference).max()), float(np.abs(expected - reference).max())


def check_opencv(model_bytes: bytes, image: np.ndarray, reference: np.ndarray) -> dict:
    """Run the model in OpenCV DNN; {'status': ok|mismatch|unsupported, 'max_diff', 'note'}.

    OpenCV 5's engine takes dynamic N/H/W as they come. Never raises: OpenCV is a second
    runtime we report on, not one the export depends on.
    """
    import cv2

    if not hasattr(cv2, "dnn"):
        return {"status": "unsupported", "max_diff": None, "note": f"OpenCV {cv2.__version__} has no dnn module"}
    try:
        net = cv2.dnn.readNetFromONNX(np.frombuffer(model_bytes, np.uint8))
        net.setInput(image)
        got = np.asarray(net.forward())
    except cv2.error as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        return {"status": "unsupported", "max_diff": None, "note": lines[-1][:300] if lines else "cv2.error"}
    if got.shape != reference.shape:
        return {"status": "mismatch", "max_diff": None, "note": f"output shape {got.shape} != {reference.shape}"}
    diff = float(np.abs(got - reference).max())
    status = "ok" if diff <= OPENCV_TOLERANCE else "mismatch"
    return {"status": status, "max_diff": diff, "note": ""}


def verify(module: nn.Module, model_bytes: bytes, input_size: int, arch: str = "") -> dict:
    """All checks on a finished graph; raises ParityError on a torch mismatch, warns for OpenCV."""
    onnx.checker.check_model(onnx.load_from_string(model_bytes), full_check=True)
    ort_diff = check_parity(module, model_bytes, input_size)
    x = parity_input(input_size)
    LOG.info("parity: onnxruntime vs torch max abs diff %.2e on shape %s", ort_diff, x.shape)
    opencv = check_opencv(model_bytes, x, run_onnxruntime(model_bytes, x))
    if opencv["status"] == "ok":
        LOG.info("parity: OpenCV DNN vs onnxruntime max abs diff %.2e", opencv["max_diff"])
    elif opencv["status"] == "mismatch":
        LOG.warning("OpenCV DNN runs this %s model but disagrees with onnxruntime (max abs diff %s > %.0e; %s): "
                    "do not deploy it with OpenCV DNN", arch or "", opencv["max_diff"], OPENCV_TOLERANCE,
                    opencv["note"] or "wrong values")
    else:
        LOG.warning("OpenCV DNN cannot load this %s model (%s); onnxruntime is fine", arch or "", opencv["note"])
    return {"onnxruntime_max_diff": ort_diff, "opencv": opencv["status"], "opencv_max_diff": opencv["max_diff"]}


# ----------------------------------------------------------------------------- fp16 / int8


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

    from utils import restore_size

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


# ----------------------------------------------------------------------------- entry points


def export_onnx(work_dir: str | Path, folds: list[int] | None = None, output: str | Path | None = None,
                threshold: float | None = None, min_area: int | None = None, opset: int = 17,
                check: bool = True, tta: str = "none", logits: bool = False, simplify_graph: bool = False,
                fp16: bool = False, int8: bool = False, val_dir: str | Path | None = None,
                calib_count: int = 64) -> Path:
    """Export the chosen folds of a training run as one averaged ONNX graph; returns its path.

    fp16/int8 write <name>.fp16.onnx / <name>.int8.onnx beside the float32 file.
    """
    check_opset(opset)
    work_dir = Path(work_dir)
    checkpoints = find_checkpoints(work_dir, folds)
    models, ckpt = load_fold_models(checkpoints)
    if ckpt["model_args"].get("arch") == GATE_ARCH:
        unsupported = [name for name, on in (("--tta", tta != "none"), ("--logits", logits), ("--int8", int8)) if on]
        if unsupported:
            raise UserError(f"{', '.join(unsupported)}: not available for a gate (TASK=classify) export; drop it")
        return export_gate(work_dir, checkpoints, models, ckpt, output, threshold, opset, check, simplify_graph, fp16)
    if threshold is None:
        threshold = read_recommended_threshold(work_dir)
    kind = "logits" if logits else "probs"
    output = Path(output) if output else work_dir / f"{ckpt.get('config', {}).get('name') or 'model'}.onnx"
    metadata = build_metadata(ckpt, list(checkpoints), threshold, min_area, tta, kind, detector_path(output).name)
    if metadata["crop_mode"] == "person":  # first: a missing detector fails before the long export
        from smartcrop import export_detector

        export_detector(ckpt["config"]["crop_model"], detector_path(output))
    ensemble = ExportEnsemble(models, metadata["num_classes"], tta, kind).eval()
    side = trace_side(ckpt)
    proto = add_metadata(to_onnx_bytes(ensemble, side, opset, kind), metadata)
    proto = finish_export(proto, ensemble, metadata, output, check, simplify_graph, side)
    LOG.info("exported %s (folds %s, tta %s, %s, %.1f MB, threshold %.2f)", output, list(checkpoints), tta, kind,
             output.stat().st_size / 1e6, metadata["threshold"])
    if fp16:
        write_fp16(proto, output.with_suffix(".fp16.onnx"), metadata, check, side)
    if int8:
        write_int8(work_dir, output, metadata, val_dir, calib_count)
    return output


def finish_export(proto: onnx.ModelProto, module: nn.Module, metadata: dict, output: Path, check: bool,
                  simplify_graph: bool, side: int | None = None) -> onnx.ModelProto:
    """Simplify (optional), verify against `module` at a `side` square (default INPUT_SIZE; the results go
    into the metadata) and write atomically."""
    if simplify_graph:
        proto = simplify(proto)
    if check:
        metadata["checks"] = verify(module, proto.SerializeToString(), side or metadata["input_size"], metadata["arch"])
        proto = set_metadata(proto, metadata)
    atomic_write_bytes(output, proto.SerializeToString())
    return proto


def export_gate(work_dir: Path, checkpoints: dict[int, Path], models: list[nn.Module], ckpt: dict, output,
                threshold: float | None, opset: int, check: bool, simplify_graph: bool, fp16: bool) -> Path:
    """A gate run's folds as one graph: image (N, 3, H, W) -> prob (N, 1), with the gate's metadata."""
    metadata = build_gate_metadata(ckpt, list(checkpoints), read_summary(work_dir), threshold)
    output = Path(output) if output else work_dir / f"{metadata['name']}.onnx"
    ensemble = GateEnsemble(models).eval()
    proto = to_onnx_bytes(ensemble, metadata["input_size"], opset, GATE_OUTPUT, {0: "batch"})
    proto = finish_export(add_metadata(proto, metadata), ensemble, metadata, output, check, simplify_graph)
    LOG.info("exported gate %s (folds %s, %.1f MB, threshold %.6g)", output, list(checkpoints),
             output.stat().st_size / 1e6, metadata["threshold"])
    if fp16:
        write_fp16(proto, output.with_suffix(".fp16.onnx"), metadata, check)
    return output


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


def read_summary(work_dir: Path) -> dict | None:
    summary = work_dir / "cv_summary.json"
    return json.loads(summary.read_text()) if summary.is_file() else None


def read_recommended_threshold(work_dir: Path) -> float | None:
    return (read_summary(work_dir) or {}).get("best_threshold")


# ----------------------------------------------------------------------------- Triton model repository

TRITON_DTYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
                 onnx.TensorProto.DOUBLE: "TYPE_FP64", onnx.TensorProto.UINT8: "TYPE_UINT8",
                 onnx.TensorProto.INT8: "TYPE_INT8", onnx.TensorProto.INT32: "TYPE_INT32",
                 onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.BOOL: "TYPE_BOOL"}


def tensor_spec(value: onnx.ValueInfoProto) -> tuple[str, list[int]]:
    """(Triton data type, dims with -1 for every symbolic or unknown dim) of one graph input/output."""
    tensor = value.type.tensor_type
    if tensor.elem_type not in TRITON_DTYPES:
        raise UserError(f"--triton-repo: {value.name} has ONNX element type {tensor.elem_type}, "
                        f"which this writer does not map; supported: {sorted(TRITON_DTYPES.values())}")
    return TRITON_DTYPES[tensor.elem_type], [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]


def triton_config(proto: onnx.ModelProto, name: str, max_batch_size: int = 8, kind: str = "gpu", instances: int = 1,
                  dynamic_batching: bool = False) -> str:
    """config.pbtxt for Triton's onnxruntime backend, every tensor described from the graph itself.

    A dynamic first dim becomes Triton's batch dim (max_batch_size > 0, dims without it); a static
    one means max_batch_size 0 and full dims, and no dynamic batching.
    """
    initializers = {init.name for init in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in initializers]
    specs = [(section, v.name, *tensor_spec(v))
             for section, values in (("input", inputs), ("output", proto.graph.output)) for v in values]
    batched = max_batch_size > 0 and all(dims and dims[0] == -1 for *_, dims in specs)
    if dynamic_batching and not batched:
        raise UserError("--triton-dynamic-batching needs a dynamic batch dim in every input and output and "
                        "--triton-max-batch > 0")
    lines = [f'name: "{name}"', 'platform: "onnxruntime_onnx"', 'backend: "onnxruntime"',
             f"max_batch_size: {max_batch_size if batched else 0}"]
    skip = 1 if batched else 0  # Triton's batch dim is implicit
    for section in ("input", "output"):
        entries = [f'  {{\n    name: "{tensor}"\n    data_type: {dtype}\n'
                   f'    dims: [ {", ".join(map(str, dims[skip:]))} ]\n  }}'
                   for kind_, tensor, dtype, dims in specs if kind_ == section]
        lines.append(f"{section} [\n" + ",\n".join(entries) + "\n]")
    lines.append(f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_{kind.upper()}\n  }}\n]")
    if dynamic_batching:
        lines.append("dynamic_batching {\n  max_queue_delay_microseconds: 100\n}")
    return "\n".join(lines) + "\n"


def write_triton_repo(onnx_path: Path, repo: str | Path, name: str | None = None, **config) -> Path:
    """REPO/<name>/config.pbtxt + REPO/<name>/1/model.onnx; returns the model folder. Triton itself is not run."""
    proto = onnx.load(str(onnx_path), load_external_data=False)
    name = name or read_metadata(proto).get("name") or onnx_path.stem
    if not name.replace("_", "").replace("-", "").isalnum():
        raise UserError(f"--triton-name {name!r} is not a valid Triton model name; use letters, digits, - and _")
    folder = Path(repo) / name
    text = triton_config(proto, name, **config)
    atomic_write_bytes(folder / "1" / "model.onnx", onnx_path.read_bytes())
    atomic_write_bytes(folder / "config.pbtxt", text.encode())
    LOG.info("Triton model repository: %s (config.pbtxt + 1/model.onnx)", folder)
    return folder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Export fold checkpoints to one ONNX file.")
    parser.add_argument("--work-dir", required=True, help="the WORK_DIR of a training run")
    parser.add_argument("--fold", type=int, default=None, help="export a single fold")
    parser.add_argument("--folds", default=None, help="comma list of folds, e.g. 0,2 (default: all found)")
    parser.add_argument("--output", default=None, help="output path (default WORK_DIR/<name>.onnx)")
    parser.add_argument("--tta", default="none", choices=list(TTA_FLIPS), help="flips baked into the graph")
    parser.add_argument("--logits", action="store_true", help="output raw logits instead of probabilities")
    parser.add_argument("--opset", type=int, default=17, help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET}")
    parser.add_argument("--threshold", type=float, default=None,
                        help="default: the CV best threshold (a gate: the out-of-fold threshold keeping GATE_RECALL)")
    parser.add_argument("--no-verify", "--skip-checks", dest="no_verify", action="store_true",
                        help="skip the checker, onnxruntime and OpenCV checks")
    parser.add_argument("--simplify", action="store_true", help="simplify the graph with onnxslim")
    parser.add_argument("--fp16", action="store_true", help="also write <name>.fp16.onnx (GPU)")
    parser.add_argument("--int8", action="store_true", help="also write <name>.int8.onnx (static QDQ, CPU)")
    parser.add_argument("--val-dir", default=None, help="--int8 Dice on DIR/images + DIR/masks "
                        "(default: the cached validation images of the exported folds)")
    parser.add_argument("--calib-images", type=int, default=64, help="cached images used for int8 calibration")
    parser.add_argument("--end-to-end", action="store_true", help="also write <name>.e2e.onnx: uint8 RGB image in, "
                        "mask and probs out (exporting/e2e.py; python -m exporting.e2e converts an existing file)")
    triton = parser.add_argument_group("Triton model repository (written only; Triton is not started)")
    triton.add_argument("--triton-repo", default=None,
                        help="also write DIR/<name>/config.pbtxt + DIR/<name>/1/model.onnx")
    triton.add_argument("--triton-name", default=None, help="model name in the repository (default: the model's name)")
    triton.add_argument("--triton-max-batch", type=int, default=8, help="max_batch_size (0: no batching by Triton)")
    triton.add_argument("--triton-kind", default="gpu", choices=("gpu", "cpu"), help="instance_group kind")
    triton.add_argument("--triton-instances", type=int, default=1, help="model instances (per GPU for KIND_GPU)")
    triton.add_argument("--triton-dynamic-batching", action="store_true", help="let Triton batch requests together")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging()
    if args.triton_max_batch < 0 or args.triton_instances < 1:
        raise UserError("--triton-max-batch must be >= 0 and --triton-instances >= 1")
    path = export_onnx(args.work_dir, parse_folds(args.folds, args.fold), args.output, threshold=args.threshold,
                       opset=args.opset, check=not args.no_verify, tta=args.tta, logits=args.logits,
                       simplify_graph=args.simplify, fp16=args.fp16, int8=args.int8, val_dir=args.val_dir,
                       calib_count=args.calib_images)
    if args.end_to_end:
        from exporting.e2e import convert

        convert(path, check=not args.no_verify)
    if args.triton_repo:
        write_triton_repo(path, args.triton_repo, args.triton_name, max_batch_size=args.triton_max_batch,
                          kind=args.triton_kind, instances=args.triton_instances,
                          dynamic_batching=args.triton_dynamic_batching)


if __name__ == "__main__":
    run_cli(main)
