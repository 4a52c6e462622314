"""Training side: training images/s of the README horse recipe, and the ETL cache stage, first vs second run.

    python bench/train_speed.py                      # horse train set (250 images), 5 blocks of 6 steps after 2 warm-up
    python bench/train_speed.py --steps 12 --blocks 7
    python bench/train_speed.py --limit 16 --size 64 --batch-size 4 --steps 1 --blocks 1 --repeats 1 --out smoke.json

Training: the trainer's own pieces (train.prepare, training.loop.setup_fold and train_step) with the README recipe's
settings (Unet/resnet18, random init, 192 px, batch 8, AdamW + OneCycle, 2 DataLoader workers);
--warmup steps untimed, then --blocks blocks of --steps steps, each timed with its data loading;
images/s = batch x steps / block time, median over the blocks. No convergence, no validation.
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

import torch

# The repository first, whatever PYTHONPATH says: `training` is the package there, not this script.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import HORSE, machine_info, median, print_table, summary, time_once, write_result  # noqa: E402

RECIPE = {"name": "horse", "arch": "Unet", "encoder": "resnet18", "encoder_weights": "none", "batch_size": "8",
          "scheduler": "onecycle", "lr": "1e-3", "epochs": "30", "workers": "2"}


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


def training(args, images: Path, masks: Path, tmp: Path) -> dict:
    import train
    from config import load_config
    from training.loop import setup_fold, train_step
    from training.metrics import MetricsLog, Tracker
    from training.splits import make_folds
    from training.tasks import make_task

    settings = {**RECIPE, "input_size": str(args.size), "batch_size": str(args.batch_size),
                "raw_img_dir": str(images), "raw_mask_dir": str(masks), "work_dir": str(tmp / "work")}
    cfg = load_config([a for k, v in settings.items() for a in ("--" + k.replace("_", "-"), v)], environ={})
    entries, _, device = train.prepare(cfg)
    split = make_folds(entries, 5, cfg.seed)[0]
    run = setup_fold(make_task(cfg), 0, entries, split, device, MetricsLog(tmp / "metrics.json"),
                     Tracker("none", tmp, {}))
    run.model.train()
    batches = iter(run.train_loader)

    def next_batch():
        nonlocal batches
        try:
            return next(batches)
        except StopIteration:  # a new epoch
            batches = iter(run.train_loader)
            return next(batches)

    def steps(count: int):
        for _ in range(count):
            images_, masks_ = next_batch()
            train_step(run, images_, masks_)

    steps(args.warmup)
    blocks = [time_once(lambda: steps(args.steps)) for _ in range(args.blocks)]
    return {"blocks": summary(blocks), "steps_per_block": args.steps, "batch_size": cfg.batch_size,
            "images_per_s": cfg.batch_size * args.steps / median(blocks), "torch_threads": torch.get_num_threads(),
            "workers": cfg.workers, "train_images": len(split[0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="ETL: fresh cache folders")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N train images (0: all 250)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from dataset import pair_by_stem

    start_info = machine_info()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        images, masks = source_subset(args, tmp / "subset")
        cache = etl(pair_by_stem(images, masks), args.size, args.repeats, tmp)
        fit = training(args, images, masks, tmp)
    n = cache["images"]
    first, second = cache["first"]["median_ms"] / 1e3, cache["second"]["median_ms"] / 1e3
    print_table(["stage", "median s", "images/s", "note"], [
        [f"training step (batch {fit['batch_size']}, {args.size} px)", f"{fit['blocks']['median_ms'] / 1e3 / args.steps:.2f}",
         f"{fit['images_per_s']:.1f}", f"{fit['torch_threads']} torch threads, {fit['workers']} loader workers"],
        [f"ETL cache, first run ({n} images)", f"{first:.2f}", f"{n / first:.0f}", "decode, resize, write PNGs"],
        [f"ETL cache, second run ({n} images)", f"{second:.2f}", f"{n / second:.0f}",
         f"hash check only: {first / second:.1f}x faster"],
    ])
    write_result("train_speed", {"command": "python bench/train_speed.py", "args": {k: str(v) for k, v in vars(args).items()},
                              "training": fit, "etl": cache, "etl_second_run_speedup": first / second,
                              "smart_crop": "measured by bench/smart_crop.py"}, args.out, start_info)


if __name__ == "__main__":
    main()
