"""Training side: training images/s of the README horse recipe in several variants side by side, and the ETL cache
stage, first vs second run.

    python bench/train_speed.py                      # horse train set (250 images), 5 blocks of 6 steps after 2 warm-up
    python bench/train_speed.py --variants square,rect --steps 12 --blocks 7
    python bench/train_speed.py --variants square,square+compile --repeats 1             # torch.compile, one shape
    python bench/train_speed.py --variants rect+bf16+channels_last,loader,loader+workers0 --repeats 1  # loader vs model
    python bench/train_speed.py --variants loader,loader+ram,loader+workers0,loader+ram+workers0 --steps 60 --repeats 1
    python bench/train_speed.py --limit 16 --size 64 --batch-size 4 --steps 1 --blocks 1 --repeats 1 --out smoke.json

Training: the trainer's own pieces (train.prepare, training.loop.setup_fold and train_step) with the README recipe's
settings (Unet/resnet18, random init, 192 px, batch 8, AdamW + OneCycle, 2 DataLoader workers), one fold run per
variant (--variants: square = BATCH_SHAPE=square, rect = BATCH_SHAPE=rect, and rect with +channels_last
(CHANNELS_LAST) or +bf16 (USE_AMP=true: bf16 autocast on the CPU; the others pin USE_AMP=false and
CHANNELS_LAST=false), plain = bench/plain_unet.py's own step (squashed squares held in memory, fp32), and, only
when asked for, loader / loader+workers0 = the rect DataLoader alone with 2 / 0 workers (read, augment, collate:
the rate it can feed a faster device), the same with +ram = CACHE=ram (every other variant reads with
CACHE=disk), and square+compile = torch.compile(dynamic=False) of the square variant, compiled in its first warm-up
step);
--warmup steps untimed, then --blocks rounds, each timing --steps steps of every variant in turn with their data
loading; images/s = batch x steps / block time, median over the blocks. Same images, same seed; no convergence,
no validation (Dice at equal epochs and at equal budgets is measured by full runs: bench/equal_budget.py).
ETL: dataset.build_cache on the train folder into a fresh folder (first run: decode, resize and
write every sample), then again on the same folder (second run: hashes checked, files reused);
--repeats fresh folders, medians. The smart-crop (YOLO person crop) stage has its own script,
bench/smart_crop.py.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

# The repository first, whatever PYTHONPATH says: `training` is the package there, not this script.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import HORSE, machine_info, median, print_table, summary, time_once, write_result  # noqa: E402

RECIPE = {"name": "horse", "arch": "Unet", "encoder": "resnet18", "encoder_weights": "none", "batch_size": "8",
          "scheduler": "onecycle", "lr": "1e-3", "epochs": "30", "workers": "2", "cache": "disk"}


def source_subset(args, tmp: Path) -> tuple[Path, Path]:
    images, masks = HORSE / "images" / "train", HORSE / "masks" / "train"
    if not args.limit:
        return images, masks
    for folder, name in ((images, "images"), (masks, "masks")):
        (tmp / name).mkdir(parents=True)
        for path in sorted(folder.iterdir())[:args.limit]:
            shutil.copy(path, tmp / name / path.name)
    return tmp / "images", tmp / "masks"


def etl(sources: list, size: int, repeats: int, tmp: Path) -> dict:
    from dataset import build_cache

    first, second = [], []
    for i in range(repeats):
        work = tmp / f"cache{i}"
        first.append(time_once(lambda: build_cache(sources, work, size)))
        second.append(time_once(lambda: build_cache(sources, work, size)))
        shutil.rmtree(work)
    return {"first": summary(first), "second": summary(second), "images": len(sources)}


VARIANTS = {"square": {"batch_shape": "square", "use_amp": "false", "channels_last": "false"},
            "rect": {"batch_shape": "rect", "use_amp": "false", "channels_last": "false"},
            "rect+channels_last": {"batch_shape": "rect", "channels_last": "true", "use_amp": "false"},
            "rect+bf16": {"batch_shape": "rect", "use_amp": "true", "channels_last": "false"},
            "rect+bf16+channels_last": {"batch_shape": "rect", "use_amp": "true", "channels_last": "true"},
            "square+compile": {"batch_shape": "square", "use_amp": "false", "channels_last": "false",
                               "compile": "static"},
            "plain": {},  # bench/plain_unet.py's own step (PlainStepper)
            "loader": {"batch_shape": "rect", "load_only": True},  # the rect DataLoader alone (2 workers), no model
            "loader+workers0": {"batch_shape": "rect", "workers": "0", "load_only": True},  # in the main process
            "loader+ram": {"batch_shape": "rect", "cache": "ram", "load_only": True},  # CACHE=ram, 2 workers
            "loader+ram+workers0": {"batch_shape": "rect", "cache": "ram", "workers": "0", "load_only": True}}
# compile: torch.compile(dynamic=False) of the model, one graph per batch shape (square batches: one), compiled
# during the warm-up steps. With dynamic shapes, inductor on the CPU fails on rect's second shape (torch 2.14.1).


class Stepper:
    """One variant's fold run and an endless stream of its training batches."""

    def __init__(self, name: str, args, images: Path, masks: Path, tmp: Path):
        import train
        from config import load_config
        from training.loop import setup_fold
        from training.metrics import MetricsLog, Tracker
        from training.splits import make_folds
        from training.tasks import make_task

        variant = dict(VARIANTS[name])
        compile_mode = variant.pop("compile", None)
        self.load_only = variant.pop("load_only", False)  # time the batches only: what the loader can feed
        settings = {**RECIPE, **variant, "input_size": str(args.size), "batch_size": str(args.batch_size),
                    "raw_img_dir": str(images), "raw_mask_dir": str(masks), "work_dir": str(tmp / "work")}
        self.cfg = load_config([a for k, v in settings.items() for a in ("--" + k.replace("_", "-"), v)], environ={})
        entries, _, device = train.prepare(self.cfg)
        torch.manual_seed(self.cfg.seed)  # the same initial weights in every variant
        self.split = make_folds(entries, 5, self.cfg.seed)[0]
        self.run = setup_fold(make_task(self.cfg), 0, entries, self.split, device, MetricsLog(tmp / f"{name}.json"),
                              Tracker("none", tmp, {}))
        self.run.model.train()
        if compile_mode:
            self.run.net = torch.compile(self.run.model, dynamic=False)
        self.batches = iter(self.run.train_loader)

    def next_batch(self):
        try:
            return next(self.batches)
        except StopIteration:  # a new epoch
            self.batches = iter(self.run.train_loader)
            return next(self.batches)

    def steps(self, count: int) -> None:
        from training.loop import train_step

        for _ in range(count):
            images_, masks_ = self.next_batch()
            if not self.load_only:
                train_step(self.run, images_, masks_)


class PlainStepper:
    """bench/plain_unet.py's training step: every image squashed to a size x size square and held in memory, its
    random flips, fp32, random batches."""

    def __init__(self, args, images: Path):
        import plain_unet

        self.x, self.y, _ = plain_unet.load(images, args.size)
        torch.manual_seed(42)
        self.model, self.loss_fn, self.optimizer = plain_unet.build("Unet", "resnet18", 1e-3)
        self.model.train()
        self.batch_size, self.pick, self.step = args.batch_size, np.random.default_rng(42), plain_unet.train_step

    def steps(self, count: int) -> None:
        for _ in range(count):
            batch = self.pick.choice(len(self.x), self.batch_size, replace=False)
            self.step(self.model, self.optimizer, self.loss_fn, self.x[batch], self.y[batch])


def training(args, images: Path, masks: Path, tmp: Path) -> dict:
    steppers = {name: PlainStepper(args, images) if name == "plain" else Stepper(name, args, images, masks, tmp)
                for name in args.variants}
    warmup = {name: [time_once(lambda: s.steps(1)) for _ in range(args.warmup)] for name, s in steppers.items()}
    blocks = {name: [] for name in steppers}
    for _ in range(args.blocks):  # the variants alternate block by block
        for name, stepper in steppers.items():
            blocks[name].append(time_once(lambda: stepper.steps(args.steps)))
    first = next((s for s in steppers.values() if isinstance(s, Stepper)), None)  # a train.py variant
    rows = {name: {"blocks": summary(blocks[name]), "images_per_s": args.batch_size * args.steps /
                   median(blocks[name]), "first_step_s": warmup[name][0] if warmup[name] else None}
            for name in steppers}
    base = rows[args.variants[0]]["images_per_s"]
    for row in rows.values():
        row["vs_first"] = row["images_per_s"] / base
    return {"variants": rows, "steps_per_block": args.steps, "batch_size": args.batch_size,
            "images_per_s": base, "torch_threads": torch.get_num_threads(),
            "workers": first.cfg.workers if first else None, "train_images": len(first.split[0]) if first else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="ETL: fresh cache folders")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N train images (0: all 250)")
    parser.add_argument("--variants", type=lambda v: v.split(","),
                        default=["square", "rect", "rect+channels_last", "rect+bf16", "rect+bf16+channels_last",
                                 "plain"],
                        help=f"comma list of {', '.join(VARIANTS)}; ratios are against the first")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")

    from training.sources.folders import pair_by_stem

    start_info = machine_info()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        images, masks = source_subset(args, tmp / "subset")
        cache = etl(pair_by_stem(images, masks), args.size, args.repeats, tmp)
        fit = training(args, images, masks, tmp)
    n = cache["images"]
    first, second = cache["first"]["median_ms"] / 1e3, cache["second"]["median_ms"] / 1e3
    print_table(["stage", "median s", "images/s", "note"], [
        *[[f"training step, {name} (batch {fit['batch_size']}, {args.size} px)",
           f"{row['blocks']['median_ms'] / 1e3 / args.steps:.2f}", f"{row['images_per_s']:.1f}",
           f"{row['vs_first']:.2f}x {args.variants[0]}; {fit['torch_threads']} torch threads, {fit['workers']} workers"]
          for name, row in fit["variants"].items()],
        [f"ETL cache, first run ({n} images)", f"{first:.2f}", f"{n / first:.0f}", "decode, resize, write PNGs"],
        [f"ETL cache, second run ({n} images)", f"{second:.2f}", f"{n / second:.0f}",
         f"hash check only: {first / second:.1f}x faster"],
    ])
    write_result("train_speed", {"command": "python bench/train_speed.py", "args": {k: str(v) for k, v in vars(args).items()},
                              "training": fit, "etl": cache, "etl_second_run_speedup": first / second,
                              "smart_crop": "measured by bench/smart_crop.py"}, args.out, start_info)


if __name__ == "__main__":
    main()
