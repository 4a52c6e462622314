"""The pipeline against the plain smp script at the same TIME_BUDGET, each run timed alone, seeds alternating.

    python bench/equal_budget.py --budget 5m --seeds 42 1 --variant square="--batch-shape square" \
        --variant rect="--batch-shape rect" --out bench/results/equal_budget_horse_5m.json
    python bench/equal_budget.py --budget 15m --seeds 42 1                      # the README's horse comparison

Each side is a subprocess started from a quiet machine (it waits for a 1-minute load average below --quiet):
- a pipeline variant: `train.py` with the horse recipe (Unet/resnet18 from scratch, 192 px, batch 8, OneCycle
  lr 1e-3, fold 0 of 10 held back, EPOCHS no limit, INT8 off) plus the variant's own flags and `--time-budget`,
  then `inference.py --gt` on the val photos at their original size;
- `plain`: `bench/plain_unet.py --time-budget` (the same model, squashed to a square, every train photo, the
  last epoch), scored the same way.
Both report the mean per-image Dice and the pixel-pooled Dice at original size (threshold: inference.py's default,
the plain script's 0.5), epochs reached and the wall time from process start, with the host's matmul rate before and
after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import HORSE, ROOT, host_gflops, load_average, machine_info, median, wait_quiet, write_result  # noqa: E402

RECIPE = ["--name", "model", "--model", "Unet", "--encoder", "resnet18", "--encoder-weights", "none",
          "--batch-size", "8", "--epochs", "1000", "--scheduler", "onecycle", "--lr", "1e-3",
          "--folds", "10", "--fold-ids", "0", "--patience", "1000", "--int8", "off"]


def run(cmd: list[str], log: Path, env: dict | None = None) -> float:
    start = time.monotonic()
    with open(log, "w") as out:
        done = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}); see {log}:\n{log.read_text()[-2000:]}")
    return time.monotonic() - start


def pipeline(args, flags: list[str], seed: int, work: Path) -> dict:
    env = {**os.environ, "RAW_IMG_DIR": str(args.train), "RAW_MASK_DIR": str(masks_of(args.train)),
           "WORK_DIR": str(work)}
    wall = run([sys.executable, "train.py", *RECIPE, "--input-size", str(args.size), *args.recipe, "--time-budget",
                args.budget, "--seed", str(seed), *flags], work.with_suffix(".train.log"), env)
    run([sys.executable, "inference.py", "--model", str(work / "model.onnx"), "--source", str(args.val),
         "--output", str(work / "pred"), "--gt", str(masks_of(args.val))], work.with_suffix(".score.log"))
    scores = json.loads((work / "pred" / "metrics.json").read_text())
    if scores["mean_dice"] is None:  # no image was scored: say why rather than report nothing as a result
        raise RuntimeError(f"inference.py scored no image; see {work.with_suffix('.score.log')}:\n"
                           f"{work.with_suffix('.score.log').read_text()[-1500:]}")
    evaluated = [r for r in json.loads((work / "logs" / "metrics.json").read_text()) if r.get("kind") == "epoch"]
    log = (work / "logs" / "training.log").read_text()
    # the epochs trained: a fold's last epoch is always evaluated, also under EVAL_EVERY
    return {"dice": scores["mean_dice"], "pixel_dice": scores["pixel_dice"], "epochs": evaluated[-1]["epoch"] + 1,
            "wall_s": round(wall, 1), "val_curve": [round(r["val_dice"], 4) for r in evaluated],
            "plan": next((line.split(" ", 2)[-1] for line in log.splitlines() if "budget " in line and "→" in line), None),
            "precision": next((line.split(", ")[-1] for line in log.splitlines() if "AMP " in line), None)}


def plain(args, seed: int, work: Path) -> dict:
    out = work / "plain.json"
    work.mkdir(parents=True, exist_ok=True)
    wall = run([sys.executable, "bench/plain_unet.py", "--train", str(args.train), "--val", str(args.val),
                "--size", str(args.size), "--epochs", "1000", "--time-budget", args.budget, "--seed", str(seed),
                "--out", str(out)], work.with_suffix(".train.log"))
    result = json.loads(out.read_text())
    return {"dice": result["val_dice"], "pixel_dice": result["val_pixel_dice"], "epochs": result["epochs_reached"],
            "wall_s": round(wall, 1)}


def masks_of(images: Path) -> Path:
    """images/<split> pairs with masks/<split>, as bench/plain_unet.py reads them."""
    return Path(str(images).replace("/images", "/masks", 1))


def natural_key(path: Path) -> tuple:
    """'2.png' before '10.png': numeric stems by number, then the rest by name."""
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.name)


def hold_out(images: Path, count: int, into: Path) -> tuple[Path, Path]:
    """A split for a folder with no val set (ISBI): its last `count` images in natural order (a contiguous block of
    a stack) are the val set, the rest the train set; copies in into/{images,masks}/{train,val} (inference.py does
    not follow symlinks out of its input folder). Returns the two image folders."""
    masks = {p.stem: p for p in masks_of(images).iterdir() if p.is_file()}
    photos = sorted((p for p in images.iterdir() if p.is_file() and p.stem in masks), key=natural_key)
    if not 0 < count < len(photos):
        raise SystemExit(f"--holdout {count}: {images} has {len(photos)} images with masks; hold out 1 to "
                         f"{len(photos) - 1}")
    for split, part in (("train", photos[:-count]), ("val", photos[-count:])):
        for kind, paths in (("images", part), ("masks", [masks[p.stem] for p in part])):
            folder = into / kind / split
            folder.mkdir(parents=True, exist_ok=True)
            for path in paths:
                shutil.copyfile(path, folder / path.name)
    return into / "images" / "train", into / "images" / "val"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="5m", help="TIME_BUDGET of every run (90s, 5m, 15m)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1])
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                        help="a pipeline side: its name and extra train.py flags (default: pipeline=\"\")")
    parser.add_argument("--no-plain", action="store_true", help="leave the plain script out")
    parser.add_argument("--train", type=Path, default=HORSE / "images" / "train")
    parser.add_argument("--val", type=Path, default=HORSE / "images" / "val")
    parser.add_argument("--size", type=int, default=192, help="INPUT_SIZE of the pipeline, square side of the plain "
                        "script")
    parser.add_argument("--recipe", type=shlex.split, default=[], help="train.py flags added to the horse recipe "
                        "(e.g. \"--folds 2\")")
    parser.add_argument("--quiet", type=float, default=1.0, help="start each run below this 1-minute load average")
    parser.add_argument("--holdout", type=int, default=0, help="no val folder: the last N images of --train (natural "
                        "order) are the val set, the rest the train set (ISBI: --holdout 6)")
    parser.add_argument("--work", type=Path, default=None, help="keep every run's folder and logs here (default: a "
                        "temporary folder, removed at the end)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    variants = dict(v.split("=", 1) for v in args.variant) or {"pipeline": ""}
    sides = [*variants, *([] if args.no_plain else ["plain"])]

    data = {"train": str(args.train), "val": str(args.val)}
    start_info = machine_info()
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.work or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        if args.holdout:
            data = {"train": str(args.train), "val": f"the last {args.holdout} of train", "holdout": args.holdout}
            args.train, args.val = hold_out(args.train, args.holdout, tmp / "split")
        for seed in args.seeds:  # seed by seed, every side in turn: a slow hour hits all of them
            for side in sides:
                wait_quiet(args.quiet)
                work = Path(tmp) / f"{side}_{seed}"
                before = {"matmul_gflops": host_gflops(), "load": (load_average() or [None])[0]}
                result = plain(args, seed, work) if side == "plain" else pipeline(args, shlex.split(variants[side]),
                                                                                seed, work)
                result.update(seed=seed, before=before,
                              after={"matmul_gflops": host_gflops(), "load": (load_average() or [None])[0]})
                runs[side].append(result)
                print(f"{side} seed {seed}: Dice {result['dice']:.4f}, {result['epochs']} epochs, "
                      f"{result['wall_s']:.0f} s", flush=True)
    summary = {side: {"mean_dice": sum(r["dice"] for r in rs) / len(rs),
                      "mean_pixel_dice": sum(r["pixel_dice"] for r in rs) / len(rs),
                      "median_epochs": median([r["epochs"] for r in rs]),
                      "median_wall_s": median([r["wall_s"] for r in rs])} for side, rs in runs.items()}
    for side, row in summary.items():
        print(f"| {side} | {row['mean_dice']:.4f} | " + " / ".join(f"{r['dice']:.4f}" for r in runs[side]) +
              f" | {row['mean_pixel_dice']:.4f}" +
              f" | {' / '.join(str(r['epochs']) for r in runs[side])} | {row['median_wall_s']:.0f} s |")
    write_result("equal_budget", {"command": "python bench/equal_budget.py " + " ".join(sys.argv[1:]),
                                  "budget": args.budget, "seeds": args.seeds, "variants": variants,
                                  **data, "summary": summary, "runs": runs},
                 args.out, start_info)


if __name__ == "__main__":
    main()
