"""Export trained fold models to one self-describing ONNX file, and prove it matches torch.

Run book:
    python export.py --work-dir runs/exp1                 # all folds, averaged in one graph
    python export.py --work-dir runs/exp1 --folds 0,2     # a subset of folds
    python export.py --work-dir runs/exp1 --output model.onnx --opset 17

The graph takes `image` float32 (N, 3, H, W), H and W multiples of 32, dynamic N/H/W, and returns
`probs` (N, C, H, W): sigmoid (binary) or softmax (multi-class) inside the graph, averaged over
the folds (nnU-Net style). A JSON document under metadata_props['segmentation'] tells the
runtime everything it needs: preprocessing, classes, recommended threshold, folds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import segmentation_models_pytorch as smp
import torch
import torch.nn as nn

from model import build_model_from_checkpoint
from utils import (
    DEFAULT_METADATA, IMAGENET_MEAN, IMAGENET_STD, LOG, METADATA_KEY, METADATA_VERSION, UserError,
    atomic_write_bytes, encode_metadata, run_cli, setup_logging,
)

PARITY_TOLERANCE = 1e-4
STRIDE = 32


class ProbabilityEnsemble(nn.Module):
    """Average the probabilities of several models: (N, 3, H, W) -> (N, C, H, W)."""

    def __init__(self, models: list[nn.Module], num_classes: int):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.num_classes = num_classes

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        total = None
        for model in self.models:
            logits = model(image)
            probs = torch.sigmoid(logits) if self.num_classes == 1 else torch.softmax(logits, dim=1)
            total = probs if total is None else total + probs
        return total / len(self.models)


def find_checkpoints(work_dir: Path, folds: list[int] | None) -> dict[int, Path]:
    models_dir = work_dir / "models"
    found = {int(p.stem[4:-5]): p for p in models_dir.glob("fold*_best.pt") if p.stem[4:-5].isdigit()}
    if not found:
        raise UserError(f"no fold checkpoints (models/fold<K>_best.pt) in {work_dir}; run train.py first")
    if folds is None:
        return dict(sorted(found.items()))
    missing = [k for k in folds if k not in found]
    if missing:
        raise UserError(f"folds {missing} have no checkpoint in {models_dir}; available: {sorted(found)}")
    return {k: found[k] for k in folds}


def load_fold_models(checkpoints: dict[int, Path]) -> tuple[list[nn.Module], dict]:
    models, first = [], None
    for fold, path in checkpoints.items():
        model, ckpt = build_model_from_checkpoint(path)
        if first is None:
            first = ckpt
        elif ckpt["model_args"] != first["model_args"]:
            raise UserError(f"fold {fold} has model {ckpt['model_args']} but fold "
                            f"{next(iter(checkpoints))} has {first['model_args']}; export them separately")
        models.append(model.eval())
    return models, first


def build_metadata(ckpt: dict, folds: list[int], threshold: float | None, min_area: int | None) -> dict:
    cfg = ckpt.get("config", {})
    args = ckpt["model_args"]
    classes = args["classes"]
    return {
        **DEFAULT_METADATA,
        "format_version": METADATA_VERSION,
        "name": cfg.get("name", "model"),
        "arch": args["arch"], "encoder": args["encoder"], "num_classes": classes,
        "class_names": ["foreground"] if classes == 1 else [f"class_{i}" for i in range(classes)],
        "input_size": cfg.get("input_size", DEFAULT_METADATA["input_size"]),
        "resize": "long_side", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "stride": STRIDE,
        "output": "probs",
        "threshold": 0.5 if threshold is None else float(threshold),
        "thresholds": DEFAULT_METADATA["thresholds"],
        "min_area": int(cfg.get("min_area", 64) if min_area is None else min_area),
        "folds": folds, "crop_mode": "off", "detector": None,
        "config_hash": ckpt.get("config_hash"),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "smp": smp.__version__, "onnx": onnx.__version__},
    }


def to_onnx_bytes(module: nn.Module, input_size: int, opset: int) -> bytes:
    """Trace with the TorchScript exporter: dynamic N/H/W, stable for every smp architecture."""
    dummy = torch.randn(1, 3, input_size, input_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer warnings about python ints are expected here
        torch.onnx.export(
            module, (dummy,), buffer, dynamo=False, opset_version=opset,
            input_names=["image"], output_names=["probs"],
            dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                          "probs": {0: "batch", 2: "height", 3: "width"}},
        )
    return buffer.getvalue()


def add_metadata(model_bytes: bytes, metadata: dict) -> onnx.ModelProto:
    proto = onnx.load_from_string(model_bytes)
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, encode_metadata(metadata)
    proto.producer_name = "segpipe-export"
    onnx.checker.check_model(proto, full_check=True)
    return proto


def parity_shape(input_size: int) -> tuple[int, int, int, int]:
    """A batch and shape unlike the export's (1, 3, S, S): proves the dynamic axes work."""
    h = max(STRIDE * 2, (input_size * 3 // 4) // STRIDE * STRIDE)
    return 2, 3, h, input_size + STRIDE


def check_parity(module: nn.Module, model_bytes: bytes, input_size: int, seed: int = 0) -> float:
    """Max |onnxruntime - torch| on a new batch/shape; raises if above PARITY_TOLERANCE."""
    import onnxruntime as ort

    x = torch.from_numpy(np.random.default_rng(seed).standard_normal(parity_shape(input_size), dtype=np.float32))
    with torch.inference_mode():
        expected = module(x).numpy()
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})[0]
    if got.shape != expected.shape:
        raise RuntimeError(f"ONNX output shape {got.shape} != torch {expected.shape}")
    diff = float(np.abs(got - expected).max())
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX/torch parity failed: max abs diff {diff:.2e} > {PARITY_TOLERANCE:.0e}")
    return diff


def export_onnx(work_dir: str | Path, folds: list[int] | None = None, output: str | Path | None = None,
                threshold: float | None = None, min_area: int | None = None, opset: int = 17,
                check: bool = True) -> Path:
    """Export the chosen folds of a training run as one averaged ONNX graph; returns its path."""
    work_dir = Path(work_dir)
    checkpoints = find_checkpoints(work_dir, folds)
    models, ckpt = load_fold_models(checkpoints)
    if threshold is None:
        threshold = read_recommended_threshold(work_dir)
    metadata = build_metadata(ckpt, list(checkpoints), threshold, min_area)
    ensemble = ProbabilityEnsemble(models, metadata["num_classes"]).eval()
    proto = add_metadata(to_onnx_bytes(ensemble, metadata["input_size"], opset), metadata)
    model_bytes = proto.SerializeToString()
    output = Path(output) if output else work_dir / f"{metadata['name']}.onnx"
    if check:
        diff = check_parity(ensemble, model_bytes, metadata["input_size"])
        LOG.info("parity: onnxruntime vs torch max abs diff %.2e on shape %s", diff, parity_shape(metadata["input_size"]))
    atomic_write_bytes(output, model_bytes)
    LOG.info("exported %s (folds %s, %.1f MB, threshold %.2f)", output, list(checkpoints),
             len(model_bytes) / 1e6, metadata["threshold"])
    return output


def read_recommended_threshold(work_dir: Path) -> float | None:
    summary = work_dir / "cv_summary.json"
    if summary.is_file():
        return json.loads(summary.read_text()).get("best_threshold")
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description="Export fold checkpoints to one ONNX file.")
    parser.add_argument("--work-dir", required=True, help="the WORK_DIR of a training run")
    parser.add_argument("--folds", default=None, help="comma list of folds, e.g. 0,2 (default: all found)")
    parser.add_argument("--fold", type=int, default=None, help="export a single fold")
    parser.add_argument("--output", default=None, help="output path (default WORK_DIR/<name>.onnx)")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--skip-checks", action="store_true", help="skip the onnxruntime/torch parity check")
    args = parser.parse_args()
    setup_logging()
    folds = [args.fold] if args.fold is not None else None
    if args.folds:
        try:
            folds = [int(x) for x in args.folds.split(",")]
        except ValueError:
            raise UserError(f"--folds={args.folds!r} must be a comma list of integers, e.g. 0,2") from None
    export_onnx(args.work_dir, folds, args.output, opset=args.opset, check=not args.skip_checks)


if __name__ == "__main__":
    run_cli(main)
