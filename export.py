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

This file is the entry point; the parts live in exporting/: checkpoints (the run's fold checkpoints),
ensembles (the traced modules), tracing (torch -> ONNX), onnx_metadata, checks, quantize (fp16, int8)
and triton.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import onnx
import torch.nn as nn

from config import TTA_MODES
from exporting.checkpoints import find_checkpoints, load_fold_models, read_recommended_threshold, read_summary
from exporting.checks import verify
from exporting.ensembles import GATE_OUTPUT, ExportEnsemble, GateEnsemble
from exporting.onnx_metadata import add_metadata, build_gate_metadata, build_metadata, set_metadata
from exporting.quantize import write_fp16, write_int8
from exporting.tracing import MAX_OPSET, MIN_OPSET, check_opset, simplify, to_onnx_bytes, trace_side
from exporting.triton import write_triton_repo
from model import GATE_ARCH
from runtime.metadata import read_metadata  # noqa: F401  (export.read_metadata: reads what export_onnx wrote)
from utils import LOG, UserError, atomic_write_bytes, run_cli, setup_logging


def detector_path(output: Path) -> Path:
    """Where the YOLO detector goes: <name>.detector.onnx beside <name>.onnx."""
    return output.with_name(f"{output.stem}.detector.onnx")


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Export fold checkpoints to one ONNX file.")
    parser.add_argument("--work-dir", required=True, help="the WORK_DIR of a training run")
    parser.add_argument("--fold", type=int, default=None, help="export a single fold")
    parser.add_argument("--folds", default=None, help="comma list of folds, e.g. 0,2 (default: all found)")
    parser.add_argument("--output", default=None, help="output path (default WORK_DIR/<name>.onnx)")
    parser.add_argument("--tta", default="none", choices=list(TTA_MODES), help="flips baked into the graph")
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
    if args.triton_repo:
        write_triton_repo(path, args.triton_repo, args.triton_name, max_batch_size=args.triton_max_batch,
                          kind=args.triton_kind, instances=args.triton_instances,
                          dynamic_batching=args.triton_dynamic_batching)


if __name__ == "__main__":
    run_cli(main)
