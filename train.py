"""Train a segmentation model with K-fold cross-validation, then export it to ONNX.

Run book:
    # images + masks paired by file stem
    RAW_IMG_DIR=data/images RAW_MASK_DIR=data/masks WORK_DIR=runs/exp1 python train.py
    # a Label Studio export instead of a mask folder
    RAW_IMG_DIR=data/images RAW_JSON_PATH=export.json python train.py
    # flags override env vars, which override the defaults in config.py
    python train.py --raw-img-dir data/images --raw-mask-dir data/masks --model Unet --encoder resnet18 \
        --encoder-weights none --input-size 256 --epochs 30 --folds 5
    # a wall-clock budget: the epochs (at most EPOCHS) and the schedule are planned to finish training, out-of-fold
    # scoring and export in 20 minutes from now (docs/training.md#time-budget)
    python train.py --raw-img-dir data/images --raw-mask-dir data/masks --time-budget 20m --epochs 1000
    # fixed split lists (training_dataset.txt, validation_dataset.txt, test_dataset.txt) instead of CV
    python train.py --raw-img-dir data/images --raw-mask-dir data/masks --search-files true
    # check the data only (WORK_DIR/data_report.json and a table; it also runs before every training)
    python train.py --raw-img-dir data/images --raw-mask-dir data/masks --check-data
    # multi-class: class ids in the masks, named classes, weights from pixel counts
    python train.py ... --classes 3 --class-names background,scratch,dent --class-weights auto
    # smart crop: a square around the largest person (YOLO11-seg weights are a local file)
    python train.py ... --crop person --crop-model weights/yolo11n-seg.pt --crop-roi-factor 2.5
    # the clean/defect gate in front of the segmenter (its own WORK_DIR; trains at INPUT_SIZE / 2 unless
    # GATE_INPUT_SIZE says otherwise) -> WORK_DIR/gate.onnx, cv_summary.json with the out-of-fold threshold
    python train.py --task classify --raw-img-dir data/images --raw-mask-dir data/masks --work-dir runs/gate \
        --encoder resnet18 --gate-recall 0.99
    python train.py --help

Writes to WORK_DIR: config.json, images/ + masks/ (the cache), folds.json, models/fold<K>_{best,last}.pt,
logs/metrics.json, logs/training.log, logs/val_preview_fold<K>.png, cv_summary.json and <NAME>.onnx
(a gate run: no previews, plus gate_oof.csv, the out-of-fold probability of every image; with TIME_BUDGET,
models/budget_plan.json). A killed run resumes (RESUME=true, the default): finished folds are kept and an
unfinished fold continues from its last checkpoint with its optimizer, scheduler and budget plan.

This file is the job (prepare, run, main); its pieces live in training/: torchrun helpers, splits,
metrics, the one fold loop, the segment/classify task objects and the out-of-fold scoring.

Several GPUs or nodes (DDP; gloo on CPU, NCCL on CUDA; BATCH_SIZE is per process):
    torchrun --nproc_per_node=4 train.py --raw-img-dir data/images --raw-mask-dir data/masks
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_endpoint=host0:29500 \
        --rdzv_id=exp1 train.py ...   # node_rank=1 on the second node; WORK_DIR on a shared filesystem
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

PROCESS_START = time.monotonic()  # TIME_BUDGET counts from here: imports, the cache and the probe included

from config import Config, describe_config, load_config  # noqa: E402
from utils import LOG, UserError, atomic_write_json, run_cli, setup_logging  # noqa: E402

if TYPE_CHECKING:
    import torch

    from dataset import CacheEntry
    from training.metrics import Tracker

# torch, and everything that imports it, is imported inside the functions that train: `--help` and a bad flag
# answer at once instead of after the ~10 s torch import (tests/test_train_inputs.py runs them with torch blocked).


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("DEVICE=cuda but no CUDA GPU is visible to torch; use DEVICE=auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def check_work_dir_task(cfg: Config) -> None:
    """A gate run and a segmenter run never share a WORK_DIR: one would retrain over the other's models."""
    saved = Path(cfg.work_dir) / "config.json"
    if not saved.is_file():
        return
    try:
        previous = json.loads(saved.read_text()).get("task", "segment")
    except (json.JSONDecodeError, AttributeError):
        return
    if previous != cfg.task:
        raise UserError(f"WORK_DIR={cfg.work_dir} holds a TASK={previous} run; TASK={cfg.task} would overwrite its "
                        "models and cache. Use another WORK_DIR (e.g. runs/gate for the gate)")


def make_cropper(cfg: Config, device: torch.device):
    """The SmartCropper for CROP=person, else None (the cache then only resizes)."""
    if cfg.crop != "person":
        return None
    from runtime.crop import CropSettings
    from training.smartcrop import SmartCropper

    return SmartCropper(cfg.crop_model, CropSettings.from_config(cfg), device=str(device))


def plan(cfg: Config, budget=None) -> tuple[Config, list, torch.device]:
    """Logging, the sources, the data check, seeds and the device, then (RECIPE=auto) the settings planned from the
    data and the budget: (the config to train with, the sources, the device)."""
    import torch
    import torch.distributed as dist

    from config import explicit_settings
    from training import trial
    from training.datacheck import check_data
    from training.distributed import ddp_device, is_main, world_size
    from training.precision import describe_amp
    from training.sources import sources_from_config

    work = Path(cfg.work_dir)
    check_work_dir_task(cfg)
    if is_main():
        setup_logging(work / "logs" / "training.log")
    else:
        setup_logging(level=logging.ERROR)
    # the sources first: a wrong path or label stops the run before the config line, not after it
    sources = sources_from_config(cfg)
    report = check_data(cfg, sources) if is_main() else None
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = ddp_device(pick_device(cfg.device))
    LOG.info("device: %s, torch threads: %d, %s%s", device, torch.get_num_threads(), describe_amp(cfg, device),
             f", DDP over {world_size()} processes ({dist.get_backend()})" if dist.is_initialized() else "")
    decisions = []
    if cfg.recipe == "auto":
        left = budget.left() if budget is not None else None
        if left is not None and trial.wanted(cfg, explicit_settings(cfg)):  # the trials' share is not the main run's
            left -= trial.reserve_s(cfg)
        cfg, decisions = plan_recipe(cfg, report, device, left)
    if is_main():
        LOG.info("%s", describe_config(cfg, cfg.save(extra={"recipe_plan": [d.line() for d in decisions]})))
    return cfg, sources, device


def plan_recipe(cfg: Config, report: dict | None, device: torch.device, budget_s: float | None = None
                ) -> tuple[Config, list]:
    """RECIPE=auto (training/recipe.py): rank 0 plans (or reuses WORK_DIR/recipe.json, so a resumed run keeps its
    settings), the other ranks read its plan -> (the config with the plan applied, still knowing which settings the
    user gave, and its decisions)."""
    from config import explicit_settings, with_explicit
    from training import recipe, trial
    from training.distributed import barrier, is_main

    key = {"report": {k: v for k, v in (report or {}).items() if k != "seconds"},
           "settings": {k: v for k, v in cfg.to_dict().items() if k not in ("recipe", "check_data", "trial")},
           **({"trial": True} if trial.wanted(cfg, explicit_settings(cfg)) else {})}  # then planned on less budget
    if is_main():
        decisions = recipe.load_saved(cfg.work_dir, key)
        if decisions is None:
            def image_s(size: int) -> float:  # measured once, when the plan first needs it
                if not cost:
                    from training.costs import image_seconds

                    sizes = report["sizes"]
                    cost.append(image_seconds(cfg, device, sizes["width"]["median"] / max(sizes["height"]["median"], 1)))
                return cost[0](size)

            cost: list = []
            decisions = recipe.plan_recipe(report, cfg, set(explicit_settings(cfg)), image_s, budget_s)
            recipe.save(cfg.work_dir, key, decisions)
        for decision in decisions:
            LOG.info("%s", decision.line())
    barrier()
    if not is_main():
        decisions = recipe.load_saved(cfg.work_dir, None) or []
    return with_explicit(recipe.apply_recipe(cfg, decisions), explicit_settings(cfg)), decisions


def build_entries(cfg: Config, sources: list, device: torch.device) -> list[CacheEntry]:
    """The cache (on disk, and in RAM under CACHE=ram or auto) of `sources`, at the planned settings."""
    from dataset import build_cache, check_mask_labels
    from training import ramcache
    from training.distributed import barrier, is_main
    from training.progress import progress

    work = Path(cfg.work_dir)
    cropper = make_cropper(cfg, device)
    entries = None
    if is_main():  # rank 0 builds the cache while the others wait, then they read its manifest
        entries = build_cache(sources, work, cfg.input_size, cfg.classes, cropper=cropper, max_pixels=cfg.max_image_pixels,
                              ignore_index=cfg.ignore_index,
                              progress=lambda it: progress(it, "cache", every_s=cfg.log_every, unit="image"))
    barrier()
    if entries is None:
        entries = build_cache(sources, work, cfg.input_size, cfg.classes, cropper=cropper, write=False,
                              max_pixels=cfg.max_image_pixels, ignore_index=cfg.ignore_index)
    check_mask_labels(entries, cfg.names(), cfg.classes, segment=cfg.task == "segment")
    return ramcache.apply(entries, cfg.cache, cfg.workers, cfg.max_image_pixels, progress=lambda it: progress(
        it, "cache to RAM", total=len(entries), every_s=cfg.log_every, unit="image"))


def prepare(cfg: Config) -> tuple[list[CacheEntry], dict, torch.device]:
    """plan, then build_entries: (cache entries, {key: source}, device). RECIPE=auto's settings apply to the cache;
    run() keeps the planned config itself."""
    cfg, sources, device = plan(cfg)
    return build_entries(cfg, sources, device), {s.key: s for s in sources}, device


def make_tracker(cfg: Config, log_dir: Path, environ: Mapping[str, str] | None = None) -> Tracker:
    """The run's tracker (rank 0 only). W&B runs offline unless WANDB_MODE is set (online, disabled, ...)."""
    from training.distributed import is_main
    from training.metrics import Tracker

    environ = os.environ if environ is None else environ
    return Tracker(cfg.tracker if is_main() else "none", log_dir, cfg.to_dict(),
                   wandb_mode=environ.get("WANDB_MODE") or "offline")


def run(cfg: Config, started: float | None = None) -> dict:
    """The whole training job: every fold, cv_summary.json and <NAME>.onnx; returns the CV summary.
    `started` (a time.monotonic() reading, default now) is when the run began: TIME_BUDGET counts from it."""
    from config import explicit_settings
    from training import trial
    from training.budget import Budget, format_duration
    from training.distributed import is_main
    from training.loop import cross_validate
    from training.metrics import MetricsLog
    from training.splits import resolve_splits
    from training.tasks import make_task

    budget = Budget(cfg.time_budget, time.monotonic() if started is None else started) if cfg.time_budget else None
    cfg, sources, device = plan(cfg, budget)
    entries = build_entries(cfg, sources, device)
    sources = {s.key: s for s in sources}
    if budget is not None and trial.wanted(cfg, explicit_settings(cfg)):  # AUGMENT tried both ways first
        cfg = trial.run_trial(cfg, entries, sources, device)
    work, task = Path(cfg.work_dir), make_task(cfg)
    splits, fold_ids, test_idx = resolve_splits(cfg, entries)
    if is_main():
        held = {str(k): [entries[i].key for i in va] for k, (_, va) in enumerate(splits)}  # each fold's val keys
        atomic_write_json(work / "folds.json", {**held, **({"test": [entries[i].key for i in test_idx]}
                                                           if test_idx else {})})
    metrics = MetricsLog(work / "logs" / "metrics.json", write=is_main())
    tracker = make_tracker(cfg, work / "logs")
    task.check_data(entries)
    try:
        summary, best_paths = cross_validate(task, entries, sources, splits, fold_ids, test_idx, device, metrics,
                                             tracker, budget)
    finally:
        tracker.close()
    if not is_main():  # the summary is the same on every rank; rank 0 writes it and exports
        return summary
    atomic_write_json(work / "cv_summary.json", summary)
    task.log_summary(summary)
    exported = time.monotonic()
    if cfg.export:
        from export import export_onnx

        # inside a budget the int8 speed-up is timed once: the run cannot wait for the machine to calm down
        timing = {"int8_timing_tries": 1} if budget is not None and task.cfg.task == "segment" else {}
        summary["onnx"] = str(export_onnx(work, folds=sorted(best_paths), **task.export_args(summary), **timing))
    if budget is not None:
        export = (f", the export {format_duration(time.monotonic() - exported)} of "
                  f"{format_duration(budget.plan.export_s)} reserved" if cfg.export and budget.plan else "")
        LOG.info("budget %s: the run took %s (%.0f s), training, out-of-fold scoring and export included%s",
                 format_duration(budget.seconds), format_duration(budget.elapsed()), budget.elapsed(), export)
    return summary


def main() -> None:
    cfg = load_config()  # before torch: --help and argument errors answer at once
    if cfg.check_data:  # the data check alone: no torch, no training
        from training.datacheck import check_only

        check_only(cfg)
        return
    from training.distributed import distributed

    with distributed(cfg):
        run(cfg, started=PROCESS_START)


if __name__ == "__main__":
    run_cli(main)
