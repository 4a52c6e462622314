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


from config import ARCHITECTURES, INT8_MODES
from exporting.foreign import describe_onnx, export_huggingface
from exporting import MAX_OPSET, MIN_OPSET, check_opset
from runtime.foreign import parse_class_names, parse_floats
from runtime.metadata import DEFAULT_METADATA, STRIDE, TTA_MODES
from runtime.metadata import read_metadata  # noqa: F401  (export.read_metadata: reads what export_onnx wrote)
from training.values import int8_mode
from utils import UserError, run_cli, setup_logging


def export_onnx(*args, **kwargs) -> Path:
    """exporting.build.export_onnx: a training run's folds -> one ONNX file (torch loads here, at the first export)."""
    from exporting.build import export_onnx as build

    return build(*args, **kwargs)


def export_checkpoint(*args, **kwargs) -> Path:
    """exporting.build.export_checkpoint: a plain state dict from another script -> the same self-describing file."""
    from exporting.build import export_checkpoint as build

    return build(*args, **kwargs)


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
    check_opset(args.opset)
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
        from exporting.triton import write_triton_repo

        write_triton_repo(path, args.triton_repo, args.triton_name, max_batch_size=args.triton_max_batch,
                          kind=args.triton_kind, instances=args.triton_instances,
                          dynamic_batching=args.triton_dynamic_batching, force=args.force)


if __name__ == "__main__":
    run_cli(main)
