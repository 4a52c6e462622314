"""The whole pipeline end to end on a generated dataset: generate -> 5-fold train -> ONNX -> inference.

Run book:
    make demo                      # creates .venv, installs, runs this file
    .venv/bin/python demo.py       # the same, once installed
    .venv/bin/python demo.py --work-dir demo_work --count 300 --epochs 8

The data are synthetic "device patches on skin" (demo_data.py), deterministic for a seed. Training
runs every fold briefly with a light encoder on the CPU, the folds are exported as one ONNX graph,
and `inference.py` (torch-free) segments a held-out generated folder. The last line printed is
`held-out dice: 0.xxx`: the mean per-image Dice against the held-out masks.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from utils import LOG, UserError, run_cli, setup_logging

ROOT = Path(__file__).resolve().parent


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the pipeline end to end on generated data.")
    parser.add_argument("--work-dir", default="demo_work", help="where data, run and predictions go")
    parser.add_argument("--count", type=int, default=300, help="generated training images")
    parser.add_argument("--heldout", type=int, default=60, help="generated held-out images")
    parser.add_argument("--size", type=int, default=128, help="side of the generated images")
    parser.add_argument("--input-size", type=int, default=128, help="training/inference long side")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per fold")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--encoder", default="resnet18", help="a light encoder keeps the CPU demo short")
    return parser.parse_args(argv)


def generate(work: Path, args) -> tuple[Path, Path]:
    from demo_data import generate_dataset

    train_dir, heldout_dir = work / "data" / "train", work / "data" / "heldout"
    for folder, count, seed in ((train_dir, args.count, 0), (heldout_dir, args.heldout, 1)):
        stats = generate_dataset(folder, count, size=args.size, seed=seed)
        LOG.info("generated %s: %s", folder, stats)
    return train_dir, heldout_dir


def train_and_export(work: Path, train_dir: Path, args) -> dict:
    import train
    from config import load_config

    argv = [
        "--raw-img-dir", str(train_dir / "images"), "--raw-mask-dir", str(train_dir / "masks"),
        "--work-dir", str(work / "run"), "--name", "demo",
        "--model", "Unet", "--encoder", args.encoder, "--encoder-weights", "none",
        "--input-size", str(args.input_size), "--epochs", str(args.epochs),
        "--restart-epochs", str(args.epochs), "--folds", str(args.folds),
        "--batch-size", "16", "--lr", "2e-3", "--workers", "2", "--min-area", "30",
    ]
    LOG.info("training: python train.py %s", " ".join(argv))
    return train.run(load_config(argv, environ={}))


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


def main(argv=None) -> None:
    args = parse_args(argv)
    work = Path(args.work_dir)
    setup_logging()
    start = time.perf_counter()
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
    print(f"CV dice {summary['dice_mean']:.3f} ± {summary['dice_std']:.3f}, out-of-fold dice "
          f"{summary['oof_dice']:.3f}, recommended threshold {summary['best_threshold']:.2f}")
    print(f"held-out dice: {read_mean_dice(stdout):.3f}")


if __name__ == "__main__":
    run_cli(main)
