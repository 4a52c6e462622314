"""The whole pipeline end to end on a generated dataset: generate -> 5-fold train -> ONNX -> inference.

Run book:
    make demo                      # creates .venv, installs, runs this file
    .venv/bin/python demo.py       # the same, once installed
    .venv/bin/python demo.py --work-dir demo_work --count 300 --epochs 8
    make demo-steel                # the multi-class steel job: .venv/bin/python demo.py --steel
    .venv/bin/python demo.py --steel --size 1600 --train-patch 256x320   # native 1600x256 strips (slow on a CPU)

The data are synthetic "device patches on skin" (demos/skin.py), deterministic for a seed. Training
runs every fold briefly with a light encoder on the CPU, the folds are exported as one ONNX graph,
and `inference.py` (torch-free) segments a held-out generated folder. The last line printed is
`held-out dice: 0.xxx`: the mean per-image Dice against the held-out masks.

--steel: grey steel strips (800x128 by default, half the line's 1600x256) with 4 defect classes, most
of them clean (demos/steel.py),
patch-trained (TRAIN_PATCH crops, whole-strip validation, CLASS_WEIGHTS=auto) on one fold, exported,
and scored on a held-out generated set by inference.py --gt: per-class Dice lines, then
`held-out dice: 0.xxx` (the mean over (image, class) pairs, a class absent from both counting 1).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from utils import LOG, UserError, run_cli, setup_logging

ROOT = Path(__file__).resolve().parent


# Defaults of each demo; a flag given on the command line wins.
DEFAULTS = {
    "patches": {"work_dir": "demo_work", "count": 300, "heldout": 60, "size": 128, "input_size": 128, "epochs": 4,
                "folds": 5, "fold_ids": "all", "train_patch": None, "patches_per_image": None},
    # steel: half-scale 800x128 strips so 2 CPU cores finish in about 10 minutes; --size 1600 --train-patch
    # 256x320 is the line's native 1600x256. input_size None: the strip width, i.e. native resolution.
    "steel": {"work_dir": "demo_steel", "count": 120, "heldout": 40, "size": 800, "input_size": None, "epochs": 5,
              "folds": 4, "fold_ids": "0", "train_patch": "128x256", "patches_per_image": 6},
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the pipeline end to end on generated data.")
    parser.add_argument("--steel", action="store_true",
                        help="the multi-class steel-strip job (patch training) instead of patches on skin")
    parser.add_argument("--work-dir", help="where data, run and predictions go (demo_work; steel: demo_steel)")
    parser.add_argument("--count", type=int, help="generated training images (300; steel: 120)")
    parser.add_argument("--heldout", type=int, help="generated held-out images (60; steel: 40)")
    parser.add_argument("--size", type=int, help="side of the generated images (128; steel: the strip width, 800, "
                                                 "height width/6.25; 1600 is the line's native size)")
    parser.add_argument("--input-size", type=int, help="training/inference long side (128; steel: --size, native)")
    parser.add_argument("--epochs", type=int, help="epochs per fold (4; steel: 5)")
    parser.add_argument("--folds", type=int, help="cross-validation folds (5; steel: 4)")
    parser.add_argument("--fold-ids", help="folds to train (all; steel: 0, one fold)")
    parser.add_argument("--encoder", default="resnet18", help="a light encoder keeps the CPU demo short")
    parser.add_argument("--clean-fraction", type=float, default=0.6, help="steel: share of defect-free strips")
    parser.add_argument("--train-patch", help="steel: training crop HxW (128x256; 256x320 at --size 1600)")
    parser.add_argument("--patches-per-image", type=int, help="steel: crops per strip and epoch (6)")
    parser.add_argument("--class-weights", default="auto", help="steel: CLASS_WEIGHTS ('auto', '' or 5 numbers)")
    args = parser.parse_args(argv)
    for key, value in DEFAULTS["steel" if args.steel else "patches"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.input_size is None:
        args.input_size = args.size
    return args


def generate(work: Path, args) -> tuple[Path, Path]:
    from demos.skin import generate_dataset

    train_dir, heldout_dir = work / "data" / "train", work / "data" / "heldout"
    for folder, count, seed in ((train_dir, args.count, 0), (heldout_dir, args.heldout, 1)):
        stats = generate_dataset(folder, count, size=args.size, seed=seed)
        LOG.info("generated %s: %s", folder, stats)
    return train_dir, heldout_dir


def run_training(work: Path, train_dir: Path, name: str, args, extra: list[str]) -> dict:
    """`python train.py` in-process on the generated set: the settings both demos share, then `extra`."""
    import train
    from config import load_config

    argv = [
        "--raw-img-dir", str(train_dir / "images"), "--raw-mask-dir", str(train_dir / "masks"),
        "--work-dir", str(work / "run"), "--name", name,
        "--model", "Unet", "--encoder", args.encoder, "--encoder-weights", "none",
        "--input-size", str(args.input_size), "--epochs", str(args.epochs),
        "--folds", str(args.folds), "--fold-ids", args.fold_ids, "--lr", "2e-3", "--workers", "2", *extra,
    ]
    LOG.info("training: python train.py %s", " ".join(argv))
    return train.run(load_config(argv, environ={}))


def train_and_export(work: Path, train_dir: Path, args) -> dict:
    return run_training(work, train_dir, "demo", args, [
        "--restart-epochs", str(args.epochs), "--batch-size", "16", "--min-area", "30"])


def strip_height(width: int) -> int:
    """The steel frames' 1600:256 aspect, rounded to a multiple of 32."""
    return max(32, round(width * 256 / 1600 / 32) * 32)


def generate_steel_sets(work: Path, args) -> tuple[Path, Path]:
    from demos.steel import generate_steel

    train_dir, heldout_dir = work / "data" / "train", work / "data" / "heldout"
    for folder, count, seed in ((train_dir, args.count, 0), (heldout_dir, args.heldout, 1)):
        stats = generate_steel(folder, count, args.clean_fraction, seed, width=args.size,
                               height=strip_height(args.size))
        LOG.info("generated %s: %s", folder, stats)
    return train_dir, heldout_dir


def train_steel(work: Path, train_dir: Path, args) -> dict:
    """Patch training on the strips: 4 classes + background, auto class weights, whole-strip validation."""
    return run_training(work, train_dir, "steel", args, [
        "--classes", "5", "--classes-file", str(train_dir / "classes.txt"), "--class-weights", args.class_weights,
        "--train-patch", args.train_patch, "--patches-per-image", str(args.patches_per_image),
        "--scheduler", "onecycle", "--batch-size", "8", "--min-area", "16"])


def run_inference(onnx_path: Path, heldout_dir: Path, out_dir: Path) -> str:
    """Run the torch-free CLI exactly as a user would; returns its stdout."""
    cmd = [sys.executable, str(ROOT / "inference.py"), "--model", str(onnx_path),
           "--source", str(heldout_dir / "images"), "--output", str(out_dir), "--gt", str(heldout_dir / "masks")]
    LOG.info("inference: %s", " ".join(cmd[1:]))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    sys.stderr.write(proc.stderr[-2000:])
    if proc.returncode != 0:
        raise UserError(f"inference.py failed with exit code {proc.returncode}")
    return proc.stdout


def read_mean_dice(stdout: str) -> float:
    for line in stdout.splitlines():
        if line.strip().startswith("mean dice:"):
            return float(line.split()[2])
    raise RuntimeError("inference.py printed no 'mean dice:' line")


def print_steel_result(summary: dict, metrics_path: Path) -> None:
    """The CV and held-out per-class Dice of the steel demo."""
    import json

    print("out-of-fold dice per class: " + ", ".join(f"{name} {v['dice']:.3f}"
                                                      for name, v in summary["oof_per_class"].items()))
    metrics = json.loads(metrics_path.read_text())
    per_class = metrics["per_class"]
    print("held-out dice per class: " + ", ".join(f"{name} {v['mean_dice']:.3f}" for name, v in per_class.items()))
    print("held-out pixel dice per class: " + ", ".join(f"{name} {v['pixel_dice']:.3f}"
                                                        for name, v in per_class.items()))
    # most (image, class) pairs are empty and score 1 when left empty: the floor a model has to beat
    present = sum(v["images_true"] for v in per_class.values())
    print(f"predicting nothing would score: {1 - present / (len(per_class) * metrics['images_with_gt']):.3f}")


def main(argv=None) -> None:
    args = parse_args(argv)
    work = Path(args.work_dir)
    setup_logging()
    start = time.perf_counter()
    if args.steel:
        train_dir, heldout_dir = generate_steel_sets(work, args)
        summary = train_steel(work, train_dir, args)
    else:
        train_dir, heldout_dir = generate(work, args)
        summary = train_and_export(work, train_dir, args)
    onnx_path = Path(summary["onnx"])
    stdout = run_inference(onnx_path, heldout_dir, work / "predictions")
    print(stdout.rstrip())
    run = work / "run"
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s. Outputs:")
    for label, path in (("generated data", work / "data"), ("config", run / "config.json"),
                        ("fold checkpoints", run / "models"), ("metrics + log", run / "logs"),
                        ("CV summary", run / "cv_summary.json"), ("ONNX model", onnx_path),
                        ("masks", work / "predictions" / "masks"), ("overlays", work / "predictions" / "overlays"),
                        ("summary CSV", work / "predictions" / "summary.csv")):
        print(f"  {label:17s} {path}")
    if args.steel:
        print(f"  {'colour masks':17s} {work / 'predictions' / 'masks_color'}  (legend: "
              f"{work / 'predictions' / 'legend.png'})")
        print_steel_result(summary, work / "predictions" / "metrics.json")
    print(f"CV dice {summary['mean_dice']:.3f} ± {summary['std_dice']:.3f}, out-of-fold dice "
          f"{summary['oof_dice']:.3f}, recommended threshold {summary['best_threshold']:.2f}")
    print(f"held-out dice: {read_mean_dice(stdout):.3f}")


if __name__ == "__main__":
    run_cli(main)
