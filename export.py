"""Export trained fold models to one self-describing ONNX file, and prove it matches torch.

Run book:
    python export.py --work-dir runs/exp1                  # all folds, averaged in one graph
    python export.py --work-dir runs/exp1 --fold 0         # one fold
    python export.py --work-dir runs/exp1 --folds 0,2      # a subset of folds
    python export.py --work-dir runs/exp1 --tta flips      # + mirrored copies, averaged in the graph
    python export.py --work-dir runs/exp1 --logits         # raw logits instead of probabilities
    python export.py --work-dir runs/exp1 --simplify       # onnxslim
    python export.py --work-dir runs/exp1 --fp16           # + <name>.fp16.onnx for GPUs (I/O stays float32)
    python export.py --work-dir runs/exp1 --int8 off       # no <name>.int8.onnx (see "int8" below)
    python export.py --work-dir runs/exp1 --val-dir data/val   # int8 Dice measured on data/val (images/ + masks/)
    python export.py --work-dir runs/exp1 --end-to-end     # + <name>.e2e.onnx: uint8 image in, mask out
    python export.py --work-dir runs/exp1 --threshold adaptive --fill-holes   # another recorded rule (see below)
    python export.py --work-dir runs/exp1 --triton-repo models/ --triton-kind gpu --triton-dynamic-batching
        # + models/<name>/config.pbtxt and models/<name>/1/model.onnx: an NVIDIA Triton model repository
    python export.py --checkpoint old/best.pth.tar --model unet --encoder resnet34 --input-size 512
        # a plain state dict from another script -> old/best.onnx, with the same metadata and checks
    python export.py --describe model.onnx --class-names wall,sky,tree --no-background   # a foreign ONNX, in place
    python export.py --hf saved_segformer/ --output segformer.onnx   # a Hugging Face save_pretrained() folder

Variants get their own names (<name>.fold0.onnx, <name>.tta-flips.onnx, <name>.logits.onnx, their .fp16/.int8
copies beside them) unless --output is given; a file holding another variant is replaced only with --force.

The rule: every file records how its probabilities become a mask (runtime/rule.py), and every runtime applies it
unless told otherwise: by default the cross-validated threshold (cv_summary.json), else --threshold T or
--threshold adaptive, with --min-area, --close, --open, --fill-holes, --min-component-area, --keep-largest. Every
derived file (fp16, int8, e2e, Triton copy) records the SHA-256 of the file it was made from (runtime/lineage.py).

int8: by default (--int8 auto, env INT8) <name>.int8.onnx is written beside the fp32 file when held-back images
are at hand (images no exported fold trained on: the fold's own held-back images for one fold, the run's test
split, or --val-dir). It is measured against the fp32 file before it is written (exporting/evidence.py) and records
its Dice change, the lowest IoU between the two masks, the speed-up (a median of alternating rounds, not stored
when the machine was busy) and its source, which inference.py --precision auto reads. --int8 on stops when it
cannot be made; --int8 off (--no-int8) skips it.

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

This file is the entry point; the parts live in exporting/: checkpoints (the run's fold checkpoints, plain
state dicts), ensembles (the traced modules), tracing (torch -> ONNX), onnx_metadata, checks, quantize (fp16,
int8), variants (output names), foreign (--describe, --hf) and triton.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Mapping

import onnx
import torch.nn as nn

from config import ARCHITECTURES, INT8_MODES
from exporting.checkpoints import (
    checkpoint_name, find_checkpoints, load_fold_models, load_plain_checkpoint, read_recommended_threshold,
    read_summary,
)
from exporting.checks import verify
from exporting.ensembles import GATE_OUTPUT, ExportEnsemble, GateEnsemble
from exporting.foreign import describe_onnx, export_huggingface
from exporting.onnx_metadata import add_metadata, build_gate_metadata, build_metadata, set_metadata
from exporting.quantize import int8_mode, int8_plan, write_fp16, write_int8
from exporting.tracing import MAX_OPSET, MIN_OPSET, check_opset, simplify, to_onnx_bytes, trace_side
from exporting.triton import write_triton_repo
from exporting.variants import guard_outputs, guard_overwrite, sibling_path, variant_path, warn_stale_siblings
from model import GATE_ARCH
from runtime.foreign import parse_class_names, parse_floats
from runtime.lineage import file_digest
from runtime.rule import describe_rule, make_rule
from runtime.metadata import DEFAULT_METADATA, STRIDE, TTA_MODES, untrained_flips
from runtime.metadata import read_metadata  # noqa: F401  (export.read_metadata: reads what export_onnx wrote)
from utils import LOG, UserError, atomic_write_bytes, run_cli, setup_logging


def rule_threshold(value) -> float | str | None:
    """A segmenter's --threshold: None (the cross-validated one), 'adaptive' or a number in (0, 1); else a
    UserError."""
    if value is None or str(value).strip().lower() == "adaptive":
        return None if value is None else "adaptive"
    return make_rule(value)["threshold"]


def gate_threshold(value) -> float | None:
    """A gate's --threshold: None (the out-of-fold one) or a number in [0, 1]; else a UserError."""
    try:
        number = None if value is None else float(value)
    except ValueError:
        number = float("nan")
    if number is not None and not 0 <= number <= 1:  # also NaN
        raise UserError(f"--threshold {value!r} is not valid for a gate (TASK=classify); use a number from 0 to 1")
    return number


def detector_path(output: Path) -> Path:
    """Where the YOLO detector goes: <name>.detector.onnx beside <name>.onnx."""
    return output.with_name(f"{output.stem}.detector.onnx")


def export_onnx(work_dir: str | Path, folds: list[int] | None = None, output: str | Path | None = None,
                threshold: float | str | None = None, min_area: int | None = None, opset: int = 17,
                check: bool = True, tta: str = "none", logits: bool = False, simplify_graph: bool = False,
                fp16: bool = False, int8: str | bool = "off", val_dir: str | Path | None = None,
                calib_count: int = 64, force: bool = False, morphology: dict | None = None,
                end_to_end: bool = False) -> Path:
    """Export the chosen folds of a training run as one averaged ONNX graph; returns its path.

    Without `output` a variant gets its own name (exporting/variants.py). fp16 writes <name>.fp16.onnx beside the
    float32 file; int8 (auto, on or off; quantize.int8_plan) <name>.int8.onnx: export.py and train.py pass auto
    (their default), a Python caller says so; end_to_end <name>.e2e.onnx. A file of another variant is replaced
    only with `force`. The recorded rule (runtime/rule.py): `threshold` (None: the cross-validated one, a number, or
    'adaptive'), `min_area` and `morphology` (close, open, fill_holes, min_component_area, keep_largest).
    """
    check_opset(opset)
    work_dir = Path(work_dir)
    checkpoints = find_checkpoints(work_dir, folds)
    subset = None if set(checkpoints) == set(find_checkpoints(work_dir, None)) else list(checkpoints)
    models, ckpt = load_fold_models(checkpoints)
    if ckpt["model_args"].get("arch") == GATE_ARCH:
        mode = int8_mode(int8)
        used = (("--tta", tta != "none"), ("--logits", logits), ("--int8", mode == "on"))
        unsupported = [name for name, on in used if on]
        if unsupported:
            raise UserError(f"{', '.join(unsupported)}: not available for a gate (TASK=classify) export; drop it")
        if mode == "auto":
            LOG.info("no int8 copy: not made for a gate (TASK=classify) export")
        if morphology or end_to_end:
            raise UserError("the morphology flags and --end-to-end are for segmenters; drop them for a gate "
                            "(TASK=classify)")
        return export_gate(work_dir, checkpoints, models, ckpt, output, gate_threshold(threshold), opset, check,
                           simplify_graph, fp16, subset, force)
    threshold = rule_threshold(threshold)
    rule = {"threshold": threshold, **(morphology or {})}
    if threshold is None or threshold == "adaptive":
        threshold = read_recommended_threshold(work_dir)
    name = ckpt.get("config", {}).get("name") or "model"
    output = Path(output) if output else variant_path(work_dir, name, subset, tta, logits)
    int8_data = int8_plan(int8, work_dir, list(checkpoints), val_dir, calib_count)
    weights = {path.name: file_digest(path) for path in checkpoints.values()}
    return export_segmenter(models, ckpt, list(checkpoints), output, threshold=threshold, min_area=min_area,
                            opset=opset, check=check, tta=tta, logits=logits, simplify_graph=simplify_graph,
                            fp16=fp16, int8_data=int8_data, force=force, rule=rule, weights=weights,
                            end_to_end=end_to_end)


def export_checkpoint(path: str | Path, arch: str | None = None, encoder: str | None = None,
                      classes: int | None = None, input_size: int | None = None, class_names: list[str] | None = None,
                      output: str | Path | None = None, trust_pickle: bool = False, int8: str | bool = "off",
                      val_dir: str | Path | None = None, calib_count: int = 64, **options) -> Path:
    """A plain state dict saved by another script (any wrapper model.unwrap_state_dict accepts), exported by the
    same steps as a run's folds. `options`: export_segmenter's (threshold, opset, check, tta, logits, ...)."""
    check_opset(options.get("opset", 17))
    if input_size is not None and (input_size < STRIDE or input_size % STRIDE):
        raise UserError(f"--input-size {input_size} must be a multiple of {STRIDE} (the models' stride), e.g. 512")
    model, ckpt = load_plain_checkpoint(path, arch, encoder, classes, trust_pickle)
    classes = ckpt["model_args"]["classes"]
    if class_names and len(class_names) != classes:
        raise UserError(f"{len(class_names)} class names ({', '.join(class_names)}) for a model with {classes} "
                        "output channel(s); give one name per channel (or --classes N)")
    name = checkpoint_name(Path(path))
    ckpt["config"] = {"name": name, "input_size": input_size or DEFAULT_METADATA["input_size"],
                      "class_names": class_names}
    output = Path(output) if output else variant_path(Path(path).parent, name, None, options.get("tta", "none"),
                                                      options.get("logits", False))
    int8_data = int8_plan(int8, None, [], val_dir, calib_count)
    threshold = rule_threshold(options.get("threshold"))
    options["rule"] = {"threshold": threshold, **(options.pop("morphology", None) or {})}
    options["threshold"] = None if threshold == "adaptive" else threshold
    return export_segmenter([model], ckpt, [], output, int8_data=int8_data,
                            weights={Path(path).name: file_digest(Path(path))}, **options)


def export_segmenter(models: list[nn.Module], ckpt: dict, folds: list[int], output: Path, *,
                     threshold: float | None = None, min_area: int | None = None, opset: int = 17, check: bool = True,
                     tta: str = "none", logits: bool = False, simplify_graph: bool = False, fp16: bool = False,
                     int8_data: tuple | None = None, force: bool = False, rule: dict | None = None,
                     weights: dict | None = None, end_to_end: bool = False) -> Path:
    """The steps every segmenter export shares: metadata (with the rule and the weights' digests), the overwrite
    guard, the detector, trace, checks, write, then the fp16/int8/e2e copies (int8_data: quantize.int8_plan,
    checked by the caller beforehand), then a warning for each file beside it that no longer matches."""
    from exporting.e2e import convert, e2e_path, planned_metadata

    kind = "logits" if logits else "probs"
    metadata = build_metadata(ckpt, folds, threshold, min_area, tta, kind, detector_path(output).name, rule, weights)
    if warning := untrained_flips(metadata, tta):
        LOG.warning("%s", warning)
    precisions = [name for name, on in (("fp16", fp16), ("int8", int8_data is not None)) if on]
    guard_outputs(output, metadata, precisions, force)  # before anything is written
    if end_to_end:
        guard_overwrite(e2e_path(output), planned_metadata(metadata), force)
    if metadata["crop_mode"] == "person":  # first: a missing detector fails before the long export
        from training.smartcrop import export_detector

        export_detector(ckpt["config"]["crop_model"], detector_path(output))
    ensemble = ExportEnsemble(models, metadata["num_classes"], tta, kind).eval()
    side = trace_side(ckpt)
    proto = add_metadata(to_onnx_bytes(ensemble, side, opset, kind), metadata)
    proto = finish_export(proto, ensemble, metadata, output, check, simplify_graph, side)
    LOG.info("exported %s (folds %s, tta %s, %s, %.1f MB, rule: %s)", output, folds, tta, kind,
             output.stat().st_size / 1e6, describe_rule(metadata["rule"]))
    if fp16:
        write_fp16(proto, sibling_path(output, "fp16"), metadata, check, side, source=output)
    if int8_data is not None:
        write_int8(output, metadata, *int8_data)
    if end_to_end:
        convert(output, check=check, force=force)
    warn_stale_siblings(output)
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
                threshold: float | None, opset: int, check: bool, simplify_graph: bool, fp16: bool,
                subset: list[int] | None = None, force: bool = False) -> Path:
    """A gate run's folds as one graph: image (N, 3, H, W) -> prob (N, 1), with the gate's metadata."""
    metadata = build_gate_metadata(ckpt, list(checkpoints), read_summary(work_dir), threshold)
    output = Path(output) if output else variant_path(work_dir, metadata["name"], subset)
    guard_outputs(output, metadata, ["fp16"] if fp16 else [], force)
    ensemble = GateEnsemble(models).eval()
    proto = to_onnx_bytes(ensemble, metadata["input_size"], opset, GATE_OUTPUT, {0: "batch"})
    proto = finish_export(add_metadata(proto, metadata), ensemble, metadata, output, check, simplify_graph)
    LOG.info("exported gate %s (folds %s, %.1f MB, threshold %.6g)", output, list(checkpoints),
             output.stat().st_size / 1e6, metadata["threshold"])
    if fp16:
        write_fp16(proto, sibling_path(output, "fp16"), metadata, check, source=output)
    warn_stale_siblings(output)
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


SOURCES = ("work_dir", "checkpoint", "describe", "hf")
# Flags that describe a model trained elsewhere: a training run's checkpoints carry all of this themselves.
FOREIGN_ONLY = {"model", "encoder", "classes", "trust_pickle", "class_names", "classes_file", "mean", "std",
                "input_size", "no_background"}
REFUSED = {"work_dir": FOREIGN_ONLY, "checkpoint": {"fold", "folds", "mean", "std", "no_background"}}
ACCEPTED = {"describe": {"output", "class_names", "classes_file", "mean", "std", "input_size", "no_background",
                         "logits", "probs"},
            "hf": {"output", "input_size", "opset"}}


def add_source_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("what to export (exactly one)")
    sources = group.add_mutually_exclusive_group(required=True)
    sources.add_argument("--work-dir", help="the WORK_DIR of a training run")
    sources.add_argument("--checkpoint", help="a plain state dict (.pth, .pth.tar) saved by another script; "
                         "needs --model and --encoder")
    sources.add_argument("--describe", metavar="MODEL_ONNX", help="write our metadata into a foreign ONNX file "
                         "(in place unless --output)")
    sources.add_argument("--hf", metavar="FOLDER", help="export a Hugging Face save_pretrained() segmentation folder")


def add_foreign_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("a model trained elsewhere (--checkpoint, --describe, --hf)")
    group.add_argument("--model", help=f"--checkpoint's architecture, any case: {', '.join(ARCHITECTURES)}")
    group.add_argument("--encoder", help="--checkpoint's encoder, e.g. resnet34")
    group.add_argument("--classes", type=int, help="--checkpoint's output channels (default: its head's)")
    group.add_argument("--trust-pickle", action="store_true", help="--checkpoint holds a whole pickled model (or "
                       "other Python objects): load it fully. Runs its pickled code; only for files you trust")
    group.add_argument("--class-names", help="comma list, one name per output channel, e.g. wall,sky,tree")
    group.add_argument("--classes-file", help="text file with one class name per line (instead of --class-names)")
    group.add_argument("--mean", help="--describe: RGB mean, e.g. 0.485,0.456,0.406 (0..255 values are scaled)")
    group.add_argument("--std", help="--describe: RGB std, e.g. 0.229,0.224,0.225")
    group.add_argument("--input-size", type=int, help="long side images are resized to (--checkpoint: default "
                       f"{DEFAULT_METADATA['input_size']}, a multiple of {STRIDE}; --describe/--hf: the model's own)")
    group.add_argument("--no-background", action="store_true", help="--describe: class 0 is a real class (e.g. "
                       "ADE20k's wall); argmax over all classes")


def add_rule_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("the post-processing rule every runtime applies (runtime/rule.py)")
    group.add_argument("--threshold", default=None,
                       help="default: the CV best threshold (a gate: the out-of-fold threshold keeping GATE_RECALL); "
                       "a number in (0, 1), or 'adaptive' (the cascade 0.5 -> 0.3 -> 0.15, the first level whose "
                       "mask holds --min-area px)")
    group.add_argument("--min-area", type=int, default=None, help="foreground px a mask needs to count as a "
                       "detection (default: the run's MIN_AREA)")
    group.add_argument("--close", type=int, default=None, help="closing kernel in px (not in an e2e graph)")
    group.add_argument("--open", type=int, default=None, help="opening kernel in px (not in an e2e graph)")
    group.add_argument("--fill-holes", action="store_true", default=None, help="fill enclosed holes (not in an "
                       "e2e graph)")
    group.add_argument("--min-component-area", type=int, default=None, help="drop smaller components (not in an "
                       "e2e graph)")
    group.add_argument("--keep-largest", type=int, default=None, help="keep the N largest components (not in an "
                       "e2e graph)")


MORPHOLOGY_FLAGS = ("close", "open", "fill_holes", "min_component_area", "keep_largest")


def check_flags_apply(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One line naming the flags that mean nothing for the chosen source (instead of ignoring them)."""
    source = next(name for name in SOURCES if getattr(args, name))
    given = [a for a in parser._actions if a.option_strings and a.dest not in (*SOURCES, "help")
             and getattr(args, a.dest) != a.default]
    accepted, refused = ACCEPTED.get(source), REFUSED.get(source, set())
    wrong = [a.option_strings[0] for a in given if (a.dest not in accepted if accepted else a.dest in refused)]
    if wrong:
        raise UserError(f"{', '.join(wrong)}: not used with --{source.replace('_', '-')}; drop "
                        f"{'it' if len(wrong) == 1 else 'them'}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Export fold checkpoints to one ONNX file; or describe or convert "
                                     "a model trained elsewhere.")
    add_source_args(parser)
    parser.add_argument("--fold", type=int, default=None, help="export a single fold")
    parser.add_argument("--folds", default=None, help="comma list of folds, e.g. 0,2 (default: all found)")
    parser.add_argument("--output", default=None, help="output path (default WORK_DIR/<name>.onnx, variants named "
                        "<name>.fold0.onnx, <name>.tta-flips.onnx, <name>.logits.onnx)")
    parser.add_argument("--force", action="store_true", help="replace an existing file that holds another variant")
    parser.add_argument("--tta", default="none", choices=list(TTA_MODES), help="flips baked into the graph")
    kinds = parser.add_mutually_exclusive_group()
    kinds.add_argument("--logits", action="store_true", help="output raw logits instead of probabilities "
                       "(--describe: the model outputs logits, the default there)")
    kinds.add_argument("--probs", action="store_true", help="--describe: the model outputs probabilities")
    parser.add_argument("--opset", type=int, default=17, help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET}")
    parser.add_argument("--no-verify", "--skip-checks", dest="no_verify", action="store_true",
                        help="skip the checker, onnxruntime and OpenCV checks")
    parser.add_argument("--simplify", action="store_true", help="simplify the graph with onnxslim")
    parser.add_argument("--fp16", action="store_true", help="also write <name>.fp16.onnx (GPU)")
    parser.add_argument("--int8", nargs="?", const="on", default=None, choices=INT8_MODES,
                        help="<name>.int8.onnx (static QDQ, CPU), measured against fp32: auto (default; env INT8) "
                        "writes it when held-back images are at hand, on (bare --int8) writes it or stops, off never")
    parser.add_argument("--no-int8", dest="int8", action="store_const", const="off", help="the same as --int8 off")
    parser.add_argument("--val-dir", default=None, help="--int8 Dice on DIR/images + DIR/masks "
                        "(default: the cached validation images of the exported folds)")
    parser.add_argument("--calib-images", type=int, default=64, help="cached images used for int8 calibration")
    parser.add_argument("--end-to-end", action="store_true", help="also write <name>.e2e.onnx: uint8 RGB image in, "
                        "mask and probs out (exporting/e2e.py; python -m exporting.e2e converts an existing file)")
    add_rule_args(parser)
    add_foreign_args(parser)
    triton = parser.add_argument_group("Triton model repository (written only; Triton is not started)")
    triton.add_argument("--triton-repo", default=None,
                        help="also write DIR/<name>/config.pbtxt + DIR/<name>/1/model.onnx")
    triton.add_argument("--triton-name", default=None, help="model name in the repository (default: the model's name)")
    triton.add_argument("--triton-max-batch", type=int, default=8, help="max_batch_size (0: no batching by Triton)")
    triton.add_argument("--triton-kind", default="gpu", choices=("gpu", "cpu"), help="instance_group kind")
    triton.add_argument("--triton-instances", type=int, default=1, help="model instances (per GPU for KIND_GPU)")
    triton.add_argument("--triton-dynamic-batching", action="store_true", help="let Triton batch requests together")
    args = parser.parse_args(argv)
    check_flags_apply(parser, args)
    return args


def read_class_names(args: argparse.Namespace) -> list[str] | None:
    """--class-names a,b,c or --classes-file (one name per line)."""
    if args.class_names and args.classes_file:
        raise UserError("give either --class-names or --classes-file, not both")
    if args.classes_file:
        path = Path(args.classes_file)
        if not path.is_file():
            raise UserError(f"--classes-file {path}: no such file (one class name per line)")
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return parse_class_names(args.class_names)


def export_foreign(args: argparse.Namespace) -> Path:
    """--describe (metadata into a foreign ONNX) or --hf (a Hugging Face folder to ONNX)."""
    if args.hf:
        folder = Path(args.hf)
        output = args.output or folder.resolve().parent / f"{folder.resolve().name}.onnx"
        return export_huggingface(args.hf, output, args.input_size, args.opset)
    return describe_onnx(args.describe, args.output, class_names=read_class_names(args),
                         mean=parse_floats(args.mean, "--mean"), std=parse_floats(args.std, "--std"),
                         input_size=args.input_size, output="probs" if args.probs else "logits",
                         background=False if args.no_background else None)


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> None:
    args = parse_args(argv)
    args.int8 = args.int8 or int8_mode((os.environ if environ is None else environ).get("INT8") or "auto")
    setup_logging()
    if args.describe or args.hf:
        export_foreign(args)
        return
    if args.triton_max_batch < 0 or args.triton_instances < 1:
        raise UserError("--triton-max-batch must be >= 0 and --triton-instances >= 1")
    morphology = {name: getattr(args, name) for name in MORPHOLOGY_FLAGS if getattr(args, name) is not None}
    options = dict(threshold=args.threshold, min_area=args.min_area, opset=args.opset, check=not args.no_verify,
                   tta=args.tta, logits=args.logits, simplify_graph=args.simplify, fp16=args.fp16, int8=args.int8,
                   val_dir=args.val_dir, calib_count=args.calib_images, force=args.force, morphology=morphology,
                   end_to_end=args.end_to_end)
    if args.checkpoint:
        path = export_checkpoint(args.checkpoint, args.model, args.encoder, args.classes, args.input_size,
                                 read_class_names(args), args.output, args.trust_pickle, **options)
    else:
        path = export_onnx(args.work_dir, parse_folds(args.folds, args.fold), args.output, **options)
    if args.triton_repo:
        write_triton_repo(path, args.triton_repo, args.triton_name, max_batch_size=args.triton_max_batch,
                          kind=args.triton_kind, instances=args.triton_instances,
                          dynamic_batching=args.triton_dynamic_batching, force=args.force)


if __name__ == "__main__":
    run_cli(main)
