"""The one fold loop, the same for every task: the optimizer step, evaluation, early stopping, checkpoints and
resume, then cross-validation over the folds (their DataLoaders: training/loaders.py). Under TIME_BUDGET
(training/budget.py) the first fold to train is timed by a probe, the epochs and the schedule are planned from it,
and each fold stops by the clock at an epoch boundary.

What differs between the segmenter and the gate (model, loss, metrics, what early stopping watches,
out-of-fold scoring) comes from the task object (training/tasks.py) that every function here is given.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch.utils.data import DataLoader, DistributedSampler

from config import Config, config_hash
from dataset import AspectBatchSampler, CacheEntry
from model import load_checkpoint, read_checkpoint, save_checkpoint
from training.budget import (
    INT8_CALIBRATION, PROBE_STEPS, Budget, Plan, correction, epoch_estimate, export_estimate, format_duration,
    later_replan_due, plan_epochs, replan_epoch, replan_steps, replay, score_estimate, shortened_steps,
)
from training.distributed import barrier, broadcast, is_main, rank, sync_buffers, wrap_ddp
from training.ema import WeightEma
from training.loaders import make_loader
from training.metrics import MetricsLog, OOFStats, Tracker
from training.precision import amp_dtype, autocast, memory_format
from training.progress import progress
from training.rng import random_state, set_random_state
from training.splits import Split
from utils import LOG, UserError, atomic_write_json, write_png

PLAN_FILE = "budget_plan.json"  # in WORK_DIR/models: the TIME_BUDGET plan a resumed run reuses


class OutOfFold(Protocol):
    """A task's out-of-fold bookkeeping over the folds of one run (training/scoring.py)."""

    def score_fold(self, fold: int, path: Path, entries: list[CacheEntry], val_idx: list[int], device) -> dict: ...
    def summarize(self, fold_scores: dict[int, dict], test_scores: dict[int, dict]) -> dict: ...


class Task(Protocol):
    """What the loop asks of a task (training/tasks.py: SegmentTask, ClassifyTask); train.run also calls
    its check_data, log_summary and export_args."""

    cfg: Config
    monitor_name: str  # the val metric early stopping and the best checkpoint maximise
    pads_to_square: bool  # BATCH_SHAPE applies (the segmenter); else whole images batched by pad_collate

    def build_model(self, weights: str | None = None) -> torch.nn.Module: ...
    def model_args(self) -> dict: ...  # stored in each checkpoint: export rebuilds the model from it
    def build_loss(self, entries: list | None = None, train_idx: list[int] | None = None) -> torch.nn.Module: ...
    def new_sums(self): ...  # running metrics with add_batch, reduce (over ranks) and result
    def monitor_score(self, stats: dict) -> float: ...
    def describe_stats(self, stats: dict, iou: bool = False) -> str: ...
    def describe_best(self, scores: dict) -> str: ...
    def patch_hw(self) -> tuple[int, int] | None: ...
    def preview_grid(self, model, dataset, device): ...  # RGB uint8 rows, or None
    def new_out_of_fold(self, sources: dict) -> OutOfFold: ...


def make_scheduler(cfg: Config, optimizer, steps_per_epoch: int, total_steps: int | None = None):
    """Both schedules are stepped once per optimizer step. `total_steps` (a TIME_BUDGET plan): OneCycleLR over
    exactly those steps, and cosine as one decay to LR x 0.01 at the last planned step (CosineAnnealingLR, no
    restart: RESTART_EPOCHS would leave a run ending mid-cycle at a high learning rate)."""
    if total_steps is not None:
        if cfg.scheduler == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total_steps)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=cfg.lr * 0.01)
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=max(1, cfg.restart_epochs * steps_per_epoch), eta_min=cfg.lr * 0.01)


@torch.inference_mode()
def evaluate(model, loader, loss_fn, task: Task, device, oof: OOFStats | None = None, amp: bool = True) -> dict:
    """Metrics over the loader's samples; under DDP over every rank's shard, summed (all ranks call it). amp=False:
    in fp32 whatever USE_AMP says (the out-of-fold scores, which must be the exported fp32 model's)."""
    cfg = task.cfg
    model.eval()
    sync_buffers(model)
    sums, local_oof = task.new_sums(), OOFStats(cfg.classes, ignore_index=cfg.ignore_index)
    for images, masks in loader:
        images, masks = memory_format(cfg, images.to(device)), masks.to(device)
        with autocast(cfg, device) if amp else contextlib.nullcontext():
            logits = model(images)
        logits = logits.float()
        sums.add_batch(loss_fn(logits, masks).item(), logits, masks, cfg.classes)
        if oof is not None:
            local_oof.add(logits, masks, cfg.classes)
    if oof is not None:
        oof.merge(local_oof.reduce())
    return sums.reduce().result()


def evaluate_checkpoint(task: Task, path: Path, entries, indices, device, oof: OOFStats | None = None,
                        amp: bool = False) -> dict:
    """A saved model's metrics; in fp32 by default (the out-of-fold scores), amp=True as an epoch's validation."""
    model = task.build_model().to(device)
    load_checkpoint(model, path)
    loader = make_loader(task, entries, indices, False, device)
    return evaluate(model, loader, task.build_loss().to(device), task, device, oof, amp=amp)


# ----------------------------------------------------------------------------- one fold


def new_state() -> dict:
    """A fold's progress. best_score: the best monitored score (val Dice; the gate's val AUC, or -loss)."""
    return {"epoch": -1, "step": 0, "best_score": float("-inf"), "best_epoch": -1, "finished": False}


def read_state(saved: dict) -> dict:
    """The progress kept in fold<K>_last.pt; older checkpoints name best_score best_dice, even a gate's AUC."""
    state = dict(saved)
    if "best_score" not in state and "best_dice" in state:
        state["best_score"] = state.pop("best_dice")
    return state


@dataclass
class FoldRun:
    """Everything one fold's training loop needs, built once."""
    task: Task
    fold: int
    model: torch.nn.Module
    train_loader: DataLoader
    val_loader: DataLoader
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    device: torch.device
    metrics: MetricsLog
    tracker: Tracker
    best_path: Path
    last_path: Path
    state: dict = field(default_factory=new_state)
    net: torch.nn.Module | None = None  # what train_step runs: the DDP wrapper under torchrun, else model
    ema: WeightEma | None = None  # EMA: the average of the weights, evaluated and kept as the best checkpoint
    pending: tuple | None = None  # EVAL_EVERY: the last epoch trained but not yet evaluated (end_epoch's arguments)

    @property
    def cfg(self) -> Config:
        return self.task.cfg

    @property
    def epochs(self) -> int:
        """EPOCHS, or the epochs of the fold's TIME_BUDGET plan (state["plan"], saved in fold<K>_last.pt)."""
        return self.state["plan"]["epochs"] if self.state.get("plan") else self.cfg.epochs

    @property
    def scored(self) -> torch.nn.Module:
        """The weights an epoch evaluates and the best checkpoint keeps: the EMA average when EMA is on."""
        return self.model if self.ema is None else self.ema.module

    def payload(self) -> dict:
        return {"model": self.scored.state_dict(), "model_args": self.task.model_args(),
                "config": {**self.cfg.to_dict(), "class_names": self.cfg.names()},
                "config_hash": config_hash(self.cfg), "fold": self.fold}


def setup_fold(task: Task, fold: int, entries, split: Split, device, metrics: MetricsLog,
               tracker: Tracker, budgeted: bool = False) -> FoldRun:
    """The fold's model, loaders, loss, optimizer and scheduler; `budgeted` (TIME_BUDGET): no scheduler yet, it is
    built for the planned steps (set_plan)."""
    cfg = task.cfg
    models_dir = Path(cfg.work_dir) / "models"
    model = task.build_model(cfg.encoder_weights)
    if cfg.load_model:
        load_checkpoint(model, cfg.load_model)
        LOG.info("fold %d: fine-tuning from %s", fold, cfg.load_model)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    net = wrap_ddp(model, device)
    train_loader = make_loader(task, entries, split[0], True, device)
    loss_fn = task.build_loss(entries, split[0])
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
    return FoldRun(
        task, fold, model, train_loader, make_loader(task, entries, split[1], False, device), loss_fn.to(device),
        optimizer, None if budgeted else make_scheduler(cfg, optimizer, len(train_loader)),
        torch.amp.GradScaler(device.type, enabled=amp_dtype(cfg, device) == torch.float16), device, metrics, tracker,
        models_dir / f"fold{fold}_best.pt", models_dir / f"fold{fold}_last.pt", net=net,
        ema=WeightEma(model, cfg.ema) if cfg.ema else None,
    )


def restore(run: FoldRun) -> None:
    """Continue from fold<K>_last.pt when it was written with the same training settings."""
    if not run.last_path.is_file():
        return
    try:
        ckpt = read_checkpoint(run.last_path)
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state"), dict):
            raise UserError(f"{run.last_path} is not a resumable checkpoint (no training state)")
    except UserError as exc:  # truncated or corrupt: keep it for inspection, train the fold again
        aside = run.last_path.with_name(run.last_path.name + ".corrupt")
        if is_main():
            run.last_path.replace(aside)
        LOG.warning("fold %d: %s; moved it to %s and training this fold from scratch", run.fold, exc, aside.name)
        run.metrics.drop_fold(run.fold)
        return
    if not run.cfg.resume:
        LOG.info("fold %d: RESUME=false, ignoring %s", run.fold, run.last_path)
    elif ckpt.get("config_hash") != config_hash(run.cfg):
        LOG.info("fold %d: settings changed since %s was written; training from scratch", run.fold, run.last_path)
    elif run.scheduler is None and not fits_the_loader(run, ckpt["state"].get("plan")):
        LOG.info("fold %d: %s holds no TIME_BUDGET plan for %d steps per epoch; training from scratch", run.fold,
                 run.last_path, len(run.train_loader))
    else:
        if run.scheduler is None:  # TIME_BUDGET: the schedule of the plan the checkpoint was trained under
            set_plan(run, ckpt["state"]["plan"])
        load_checkpoint(run.model, ckpt)
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        run.scaler.load_state_dict(ckpt.get("scaler", {}))
        if run.ema is not None:
            run.ema.load_state_dict(ckpt["ema"])
        run.state = read_state(ckpt["state"])
        if not run.state["finished"]:
            LOG.info("fold %d: resuming after epoch %d (best %s %.4f)", run.fold, run.state["epoch"] + 1,
                     run.task.monitor_name, run.state["best_score"])
        return
    run.metrics.drop_fold(run.fold)


def fits_the_loader(run: FoldRun, plan: dict | None) -> bool:
    return isinstance(plan, dict) and plan.get("steps_per_epoch") == len(run.train_loader)


def set_plan(run: FoldRun, plan: dict) -> None:
    """The fold's TIME_BUDGET plan ({budget_s, epochs, steps_per_epoch, total_steps}): kept in its state (so in
    fold<K>_last.pt) and its scheduler built for exactly total_steps."""
    run.state["plan"] = dict(plan)
    run.scheduler = make_scheduler(run.cfg, run.optimizer, plan["steps_per_epoch"], plan["total_steps"])


def train_step(run: FoldRun, images: torch.Tensor, masks: torch.Tensor) -> tuple[float, torch.Tensor]:
    """One optimizer step; returns (loss, detached logits)."""
    images = memory_format(run.cfg, images)
    with autocast(run.cfg, run.device):
        logits = (run.model if run.net is None else run.net)(images)
    logits = logits.float()
    loss = run.loss_fn(logits, masks)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if run.cfg.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update(run.model)
    return loss.item(), logits.detach()


def train_one_epoch(run: FoldRun, epoch: int) -> dict:
    run.model.train()
    for sampler in (run.train_loader.sampler, run.train_loader.batch_sampler):
        if isinstance(sampler, (DistributedSampler, AspectBatchSampler)):
            sampler.set_epoch(epoch)  # a different shuffle every epoch (the same on every rank), also on resume
    sums = run.task.new_sums()
    desc = f"fold {run.fold} epoch {epoch + 1}/{run.epochs}"
    bar = progress(run.train_loader, desc, every_s=run.cfg.log_every, enabled=is_main(), unit="step")
    total = run.state["plan"]["total_steps"] if run.state.get("plan") else None
    for images, masks in bar:
        if total is not None and run.state["step"] >= total:  # TIME_BUDGET: a last, shorter epoch ends here
            break
        images, masks = images.to(run.device, non_blocking=True), masks.to(run.device, non_blocking=True)
        loss, logits = train_step(run, images, masks)
        sums.add_batch(loss, logits, masks, run.cfg.classes)
        run.state["step"] += 1
        bar.set_postfix(loss=f"{sums.loss / sums.seen:.4f}", lr=f"{run.optimizer.param_groups[0]['lr']:.2e}")
        if run.cfg.eval_step and run.state["step"] % run.cfg.eval_step == 0:
            val_stats = evaluate(run.scored, run.val_loader, run.loss_fn, run.task, run.device)
            record_evaluation(run, epoch, {"loss": loss}, val_stats, kind="step")
            run.model.train()
    return sums.result()


def record_evaluation(run: FoldRun, epoch: int, train_stats: dict, val_stats: dict, seconds: float = 0.0,
                      kind: str = "epoch") -> bool:
    """Log one evaluation ('epoch' end or mid-epoch 'step'); save the best checkpoint when the monitored
    score (val Dice; the gate's val AUC) improved after the cooldown."""
    record = {"fold": run.fold, "epoch": epoch, "step": run.state["step"], "kind": kind,
              "lr": run.optimizer.param_groups[0]["lr"],
              **{f"train_{k}": v for k, v in train_stats.items()}, **{f"val_{k}": v for k, v in val_stats.items()},
              "time_s": round(seconds, 2)}
    run.metrics.add(record)
    run.tracker.log(record, run.state["step"])
    score = run.task.monitor_score(val_stats)
    improved = epoch >= run.cfg.cooldown and score > run.state["best_score"]
    if improved:
        run.state.update(best_score=score, best_epoch=epoch)
    if improved and is_main():
        save_checkpoint(run.best_path, {**run.payload(), "epoch": epoch, "step": run.state["step"],
                                        f"val_{run.task.monitor_name}": score})
    return improved


def end_epoch(run: FoldRun, epoch: int, train_stats: dict, start: float) -> bool:
    """Every EVAL_EVERY epochs and at the fold's last, evaluate_epoch; other epochs are logged and left pending,
    for out_of_time to evaluate should the clock stop the fold after them. True when early stopping triggers."""
    if epoch == run.epochs - 1 or (epoch + 1) % run.cfg.eval_every == 0:
        return evaluate_epoch(run, epoch, train_stats, start)
    run.state["epoch"], run.pending = epoch, (epoch, train_stats, start)
    LOG.info("fold %d epoch %d/%d  train %s | lr %.2e", run.fold, epoch + 1, run.epochs,
             run.task.describe_stats(train_stats), run.optimizer.param_groups[0]["lr"])
    return False


def evaluate_epoch(run: FoldRun, epoch: int, train_stats: dict, start: float) -> bool:
    """Evaluate, checkpoint and log one epoch; returns True when early stopping triggers."""
    run.pending = None
    val_stats = evaluate(run.scored, run.val_loader, run.loss_fn, run.task, run.device)
    improved = record_evaluation(run, epoch, train_stats, val_stats, time.perf_counter() - start)
    cfg, task = run.cfg, run.task
    stop = epoch >= cfg.cooldown and epoch - max(run.state["best_epoch"], cfg.cooldown) >= cfg.patience
    run.state.update(epoch=epoch, finished=stop or epoch == run.epochs - 1)
    if is_main():
        save_last_and_preview(run, epoch)
    LOG.info("fold %d epoch %d/%d  train %s | val %s | lr %.2e%s", run.fold, epoch + 1, run.epochs,
             task.describe_stats(train_stats), task.describe_stats(val_stats, iou=True),
             run.optimizer.param_groups[0]["lr"], "  *best*" if improved else "")
    if stop:
        LOG.info("fold %d: early stop, no val %s gain for %d epochs", run.fold, task.monitor_name, cfg.patience)
    return stop


def last_payload(run: FoldRun) -> dict:
    """What fold<K>_last.pt holds: the weights (the raw ones, and their average under EMA) and everything a resume
    needs."""
    ema = {} if run.ema is None else {"model": run.model.state_dict(), "ema": run.ema.state_dict()}
    return {**run.payload(), **ema, "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(), "state": dict(run.state)}


def save_last_and_preview(run: FoldRun, epoch: int) -> None:
    last = last_payload(run)
    save_checkpoint(run.last_path, last)
    if run.cfg.save_checkpoints:
        save_checkpoint(run.last_path.with_name(f"fold{run.fold}_epoch{epoch + 1}.pt"), last)
    grid = run.task.preview_grid(run.scored, run.val_loader.dataset, run.device)
    if grid is None:  # the gate: no mask to show
        return
    write_png(Path(run.cfg.work_dir) / "logs" / f"val_preview_fold{run.fold}.png", grid)
    run.tracker.image(f"fold{run.fold}/val_preview", grid, run.state["step"])


def train_fold(task: Task, fold: int, entries, split: Split, device, metrics: MetricsLog,
               tracker: Tracker | None = None, budget: Budget | None = None) -> Path:
    """Train one fold with early stopping (and, under TIME_BUDGET, its planned epochs and the clock); returns
    the path of its best checkpoint."""
    run = setup_fold(task, fold, entries, split, device, metrics, tracker or Tracker("none", Path(), {}),
                     budgeted=budget is not None)
    restore(run)
    if run.state["finished"] and run.best_path.is_file():
        LOG.info("fold %d: already finished (best %s %.4f at epoch %d)", fold, task.monitor_name,
                 run.state["best_score"], run.state["best_epoch"] + 1)
        return run.best_path
    fold_end, measured = 0.0, []  # TIME_BUDGET: when this fold should end; seconds of each epoch trained here
    steady_from = 0  # measured[steady_from:]: the epochs since the last correction (all of them after a resume)
    if budget is not None:
        if budget.plan is None:
            budget.plan = budget_plan(run, budget)
        if run.scheduler is None:  # a fold starting now: the run's epochs, over this fold's steps per epoch
            steps = len(run.train_loader)
            set_plan(run, {"budget_s": budget.seconds, "epochs": budget.plan.epochs, "steps_per_epoch": steps,
                           "total_steps": budget.plan.epochs * steps})
        fold_end = budget.fold_end()
    epoch = run.state["epoch"] + 1
    while epoch < run.epochs:  # a TIME_BUDGET fold's epochs may be corrected on the way (replan_fold)
        if budget is not None and run.state["epoch"] >= 0 and out_of_time(run, budget, fold_end, measured):
            break
        start = time.perf_counter()
        stop = end_epoch(run, epoch, train_one_epoch(run, epoch), start)
        measured.append(time.perf_counter() - start)
        if stop:
            break
        corrected = int(run.state.get("replanned", 0))  # older checkpoints: True (once)
        if budget is not None and not corrected and len(measured) == replan_epoch(run.epochs):
            replan_fold(run, budget, fold_end, measured)
            steady_from = len(measured)
        elif (budget is not None
              and later_replan_due(run.epochs, run.state["epoch"] + 1, len(measured) - steady_from, corrected)):
            replan_fold(run, budget, fold_end, measured[steady_from:], later=True)
            steady_from = len(measured)
        epoch += 1
    if is_main() and not run.best_path.is_file():  # every epoch fell inside the cooldown: keep the last weights
        save_checkpoint(run.best_path, {**run.payload(), "epoch": run.state["epoch"]})
    barrier()  # every rank reads the best checkpoint next
    return run.best_path


# ----------------------------------------------------------------------------- TIME_BUDGET


class NoSchedule:
    """The scheduler during the probe: the real one is built afterwards, for the planned steps."""

    def step(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {}


def probe_fold(run: FoldRun, steps: int = PROBE_STEPS) -> dict:
    """Time `steps` real optimizer steps after one warm-up step (their batches loaded as in training), one validation
    pass, one preview and one fold<K>_last.pt-sized checkpoint write; returns the seconds of each. The batches come
    from a copy of the training loader (its dataset, augmentation and crop streams copied), and the model, optimizer,
    scaler and the global random generators are put back afterwards: the fold then trains as if never probed."""
    loader = run.train_loader
    common = dict(collate_fn=loader.collate_fn, num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                  persistent_workers=loader.persistent_workers, worker_init_fn=loader.worker_init_fn)
    if isinstance(loader.batch_sampler, AspectBatchSampler):  # rect batches: time batches of the real shapes
        probe_loader = DataLoader(copy.deepcopy(loader.dataset), batch_sampler=copy.deepcopy(loader.batch_sampler),
                                  **common)
    else:
        probe_loader = DataLoader(
            copy.deepcopy(loader.dataset), batch_size=loader.batch_size, shuffle=True, drop_last=loader.drop_last,
            generator=torch.Generator().manual_seed(run.cfg.seed + rank()), **common)
    saved = {"model": copy.deepcopy(run.model.state_dict()), "optimizer": copy.deepcopy(run.optimizer.state_dict()),
             "scaler": run.scaler, "scheduler": run.scheduler, "rng": random_state(),
             "ema": None if run.ema is None else copy.deepcopy(run.ema.state_dict())}
    run.scheduler = NoSchedule()
    run.scaler = torch.amp.GradScaler(run.device.type, enabled=saved["scaler"].is_enabled())
    run.model.train()
    batches = itertools.chain.from_iterable(itertools.repeat(probe_loader))  # past the end of a short epoch
    marks = []
    for images, masks in itertools.islice(batches, steps + 1):
        train_step(run, images.to(run.device, non_blocking=True), masks.to(run.device, non_blocking=True))
        marks.append(time.perf_counter())  # train_step's loss.item() waits for the device
    del batches, probe_loader
    start = time.perf_counter()
    evaluate(run.model, run.val_loader, run.loss_fn, run.task, run.device)
    val_s = time.perf_counter() - start
    start = time.perf_counter()
    if is_main():
        run.task.preview_grid(run.model, run.val_loader.dataset, run.device)
        scratch = run.last_path.with_name(f".fold{run.fold}_probe.pt")
        save_checkpoint(scratch, last_payload(run))
        scratch.unlink(missing_ok=True)
    overhead_s = time.perf_counter() - start
    run.model.load_state_dict(saved["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scaler, run.scheduler = saved["scaler"], saved["scheduler"]
    if run.ema is not None:
        run.ema.load_state_dict(saved["ema"])
    set_random_state(saved["rng"])
    return {"step_s": (marks[-1] - marks[0]) / steps, "val_s": val_s, "overhead_s": overhead_s,
            "image_s": val_s / max(1, len(run.val_loader.dataset))}


def budget_plan(run: FoldRun, budget: Budget) -> Plan:
    """The run's plan, the same on every rank: WORK_DIR/models/budget_plan.json when it was made for these settings
    and folds (a resumed run: no new probe), else measured now on this fold (probe_fold), planned, saved and logged."""
    cfg = run.cfg
    path = run.last_path.parent / PLAN_FILE
    key = {"config_hash": config_hash(cfg), "fold_ids": list(budget.fold_ids)}
    saved = None
    if is_main() and path.is_file():
        try:
            saved = json.loads(path.read_text())
            saved = Plan.from_dict(saved).to_dict() if {k: saved.get(k) for k in key} == key else None
        except (ValueError, TypeError, KeyError, AttributeError):
            saved = None
    saved = broadcast(saved)
    if saved is not None:
        plan = Plan.from_dict(saved)
        LOG.info("%s: the plan saved in %s, reused (a resumed run does not measure again; its clock restarts now)",
                 plan.headline(), path.name)
        return plan
    timings = probe_fold(run)
    val_s, val_images = timings["val_s"], len(run.val_loader.dataset)
    tile = cfg.tile_hw()  # large images are scored (and the int8 copy compared) as tiles
    score_s = score_estimate(val_s, val_images, val_images + budget.test_images, tiled=bool(tile))
    one_fold = len(budget.fold_ids) == 1  # export.py measures one fold's int8 copy on its own held-back images
    int8 = cfg.task == "segment" and (cfg.int8 == "on" or (cfg.int8 == "auto" and (budget.test_images or one_fold)))
    train_images = len(getattr(run.train_loader.dataset, "entries", run.train_loader.dataset))  # patches: images
    calibration = min(INT8_CALIBRATION, train_images)  # export.py calibrates on the cache less the held-back images
    compared = val_images if one_fold else budget.test_images
    check_share = tile[0] * tile[1] / cfg.input_size ** 2 if tile else 1.0
    export_s = export_estimate(len(budget.fold_ids), timings["image_s"], calibration if int8 else 0, compared,
                               check_share, tiled=bool(tile)) if cfg.export else 0.0
    plan = plan_epochs(budget.seconds, budget.elapsed(), timings["step_s"], len(run.train_loader), val_s,
                       timings["overhead_s"], budget.folds_left, score_s, export_s, cfg.epochs,
                       eval_every=cfg.eval_every)
    plan = Plan.from_dict(broadcast(plan.to_dict()))  # rank 0's measurements decide
    if is_main():
        atomic_write_json(path, {**plan.to_dict(), **key})
    LOG.info("%s", plan.describe())
    if not plan.fits:
        LOG.warning("%s", plan.shortfall())
    return plan


def replan_fold(run: FoldRun, budget: Budget, fold_end: float, measured: list[float], later: bool = False) -> None:
    """After a tenth of the fold's planned epochs (at least 2) timed in this process, and again (`later`) at half and
    three quarters of the corrected plan on the epochs timed since the correction before: its epochs corrected to what
    they take (rank 0 decides), the schedule rebuilt over the new total and brought to the current step."""
    run.state["replanned"] = int(run.state.get("replanned", 0)) + 1 if later else 1
    if run.state["finished"]:
        return
    plan = run.state["plan"]
    before = plan.get("epoch_s", budget.plan.epoch_s) if later else budget.plan.epoch_s
    epoch_s, margin = correction(budget.plan.epoch_s, measured, later)
    done, planned = run.state["epoch"] + 1, run.epochs
    epochs, total = broadcast(replan_steps(planned, done, plan["steps_per_epoch"], epoch_s, budget.plan.eval_s,
                                           fold_end - budget.clock(), run.cfg.epochs, margin))
    if total == plan["total_steps"]:
        return
    set_plan(run, {**plan, "epochs": epochs, "total_steps": total, "epoch_s": epoch_s})
    replay(run.scheduler, run.state["step"])
    change = epoch_s / before - 1
    last = total - (epochs - 1) * plan["steps_per_epoch"]
    short = f" (the last one {last} of {plan['steps_per_epoch']} steps)" if last < plan["steps_per_epoch"] else ""
    LOG.info("fold %d: budget: epochs %stake %s, %.0f %% %s than the %s %s: %d epochs%s instead of %d, the "
             "schedule rebuilt over them", run.fold, "since the last correction " if later else "",
             format_duration(epoch_s), abs(change) * 100, "more" if change > 0 else "less",
             "corrected" if later else "planned", format_duration(before), epochs, short, planned)


def next_epoch_estimate(run: FoldRun, budget: Budget, measured: list[float]) -> float:
    """The next epoch's seconds: a whole epoch's estimate, its training part scaled down for a last, shorter one."""
    epoch_s = epoch_estimate(budget.plan.epoch_s, measured)
    plan, step = run.state.get("plan") or {}, run.state["step"]
    spe = plan.get("steps_per_epoch") or 1
    left = plan.get("total_steps", step + spe) - step
    if left >= spe:
        return epoch_s
    return budget.plan.eval_s + max(epoch_s - budget.plan.eval_s, 0.0) * max(left, 0) / spe


def out_of_time(run: FoldRun, budget: Budget, fold_end: float, measured: list[float]) -> bool:
    """At an epoch boundary: whether the fold stops, its next epoch ending past its share of the budget (rank 0
    decides for every rank), its best checkpoint kept; when a quarter of an epoch fits, a shorter last one instead."""
    epoch_s = next_epoch_estimate(run, budget, measured)
    stop = broadcast(not budget.next_epoch_fits(fold_end, epoch_s))
    plan, step = run.state.get("plan"), run.state["step"]
    steps = broadcast(shortened_steps(plan["steps_per_epoch"], plan["total_steps"] - step, epoch_estimate(
        budget.plan.epoch_s, measured), budget.plan.eval_s, fold_end - budget.clock())) if stop and plan else 0
    if steps:  # the fold ends on a shorter last epoch, its schedule annealing by then, instead of an unused share
        set_plan(run, {**plan, "epochs": run.state["epoch"] + 2, "total_steps": step + steps})
        replay(run.scheduler, step)
        LOG.info("fold %d: budget: the next epoch (~%s) would end past this fold's share: it is the last, %d of %d "
                 "steps, the schedule rebuilt to end there", run.fold, format_duration(epoch_s), steps, plan[
                     "steps_per_epoch"])
        return False
    if stop:
        LOG.info("%s", budget.stop_message(run.fold, run.state["epoch"] + 1, run.epochs, fold_end, epoch_s))
        if run.pending is not None:  # EVAL_EVERY: the weights the fold ends with are evaluated, and may be the best
            evaluate_epoch(run, *run.pending)
        run.state.update(finished=True, stopped="time budget")
        if is_main():
            save_checkpoint(run.last_path, last_payload(run))
    return stop


# ----------------------------------------------------------------------------- every fold


def cross_validate(task: Task, entries, sources: dict, splits: list[Split], fold_ids: list[int], test_idx: list[int],
                   device, metrics: MetricsLog, tracker: Tracker,
                   budget: Budget | None = None) -> tuple[dict, dict[int, Path]]:
    """Train the chosen folds; score each best checkpoint on its val fold (and on the test list), then
    the task's out-of-fold summary. Returns (the cv_summary.json contents, {fold: best checkpoint}).
    Under TIME_BUDGET the folds share the budget: the same planned epochs, and each fold's clock share is an
    equal part of what is left once the scoring of it and the folds after it and the export are reserved."""
    out_of_fold = task.new_out_of_fold(sources)
    fold_scores, test_scores, best_paths = {}, {}, {}
    if budget is not None:
        budget.fold_ids, budget.test_images = list(fold_ids), len(test_idx)
    for position, fold in enumerate(fold_ids):
        if budget is not None:
            budget.folds_left = len(fold_ids) - position
        best_paths[fold] = train_fold(task, fold, entries, splits[fold], device, metrics, tracker, budget)
        start = time.perf_counter()
        fold_scores[fold] = out_of_fold.score_fold(fold, best_paths[fold], entries, splits[fold][1], device)
        LOG.info("fold %d best: val %s", fold, task.describe_best(fold_scores[fold]))
        if test_idx:
            test_scores[fold] = evaluate_checkpoint(task, best_paths[fold], entries, test_idx, device)
        if budget is not None:
            reserved, took = budget.score_s(), time.perf_counter() - start
            budget.record_scoring(took)
            LOG.info("fold %d: budget: out-of-fold scoring took %s (%s reserved)", fold, format_duration(took),
                     format_duration(reserved))
    return out_of_fold.summarize(fold_scores, test_scores), best_paths
