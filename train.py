"""Train a segmentation model with K-fold cross-validation, then export it to ONNX.

Run book:
    # images + masks paired by file stem
    RAW_IMG_DIR=data/images RAW_MASK_DIR=data/masks WORK_DIR=runs/exp1 python train.py
    # a Label Studio export instead of a mask folder
    RAW_IMG_DIR=data/images RAW_JSON_PATH=export.json python train.py
    # flags override env vars, which override the defaults in config.py
    python train.py --raw-img-dir data/images --raw-mask-dir data/masks --model Unet --encoder resnet18 \
        --encoder-weights none --input-size 256 --epochs 30 --folds 5
    python train.py --help

Writes to WORK_DIR: config.json, images/ + masks/ (the cache), folds.json, models/fold<K>_{best,last}.pt,
logs/metrics.json, logs/training.log, cv_summary.json and <NAME>.onnx. A killed run resumes: finished
folds are kept and an unfinished fold continues from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import KFold, StratifiedKFold
from torch.utils.data import DataLoader
from tqdm import tqdm

from config import Config, describe, load_config
from dataset import CacheEntry, SegDataset, build_cache, collect_sources, get_transform
from model import build_loss, build_model, load_checkpoint, model_args, read_checkpoint, save_checkpoint
from utils import LOG, UserError, atomic_write_json, run_cli, setup_logging

# Thresholds searched on the out-of-fold predictions for the recommended threshold.
THRESHOLD_GRID = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))
# Settings that do not change what is trained: a change in them keeps finished folds valid.
NON_TRAINING_KEYS = ("work_dir", "workers", "device", "threads", "export", "fold_ids", "name", "min_area")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def config_hash(cfg: Config) -> str:
    relevant = {k: v for k, v in cfg.to_dict().items() if k not in NON_TRAINING_KEYS}
    return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("DEVICE=cuda but no CUDA GPU is visible to torch; use DEVICE=auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


# ----------------------------------------------------------------------------- folds


def make_folds(entries: list[CacheEntry], folds: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """K folds stratified on empty vs non-empty masks (plain KFold if a group is too small)."""
    if len(entries) < folds:
        raise UserError(f"{len(entries)} samples cannot be split into FOLDS={folds}; add data or lower FOLDS")
    labels = np.array([int(e.empty) for e in entries])
    index = np.arange(len(entries))
    if np.bincount(labels, minlength=2).min() >= folds:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        splits = splitter.split(index, labels)
    else:
        LOG.info("too few empty or non-empty masks to stratify; using plain KFold")
        splits = KFold(n_splits=folds, shuffle=True, random_state=seed).split(index)
    return [(tr.tolist(), va.tolist()) for tr, va in splits]


# ----------------------------------------------------------------------------- metrics


def per_image_scores(logits: torch.Tensor, target: torch.Tensor, num_classes: int,
                     threshold: float = 0.5) -> torch.Tensor:
    """(B, 2) tensor of per-image [dice, iou]; both empty counts as 1.

    Binary: logits/target (B, 1, H, W). Multi-class: logits (B, C, H, W), target (B, H, W);
    the scores are averaged over the foreground classes.
    """
    if num_classes == 1:
        pred = (torch.sigmoid(logits) > threshold).flatten(1).float()
        true = target.flatten(1).float()
        pred, true = pred[:, None], true[:, None]  # (B, 1, N)
    else:
        classes = torch.arange(1, num_classes, device=logits.device)[None, :, None]
        pred = (logits.argmax(1).flatten(1)[:, None] == classes).float()  # (B, C-1, N)
        true = (target.flatten(1)[:, None] == classes).float()
    inter = (pred * true).sum(-1)
    total = pred.sum(-1) + true.sum(-1)
    union = total - inter
    dice = torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    return torch.stack([dice.mean(1), iou.mean(1)], dim=1)


@dataclass
class OOFStats:
    """Out-of-fold per-image Dice/IoU for every threshold of THRESHOLD_GRID, summed, not stored."""
    dice_sum: np.ndarray = field(default_factory=lambda: np.zeros(len(THRESHOLD_GRID)))
    iou_sum: np.ndarray = field(default_factory=lambda: np.zeros(len(THRESHOLD_GRID)))
    count: int = 0

    def add(self, logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> None:
        for i, thr in enumerate(THRESHOLD_GRID if num_classes == 1 else (0.5,) * len(THRESHOLD_GRID)):
            scores = per_image_scores(logits, target, num_classes, thr).double().sum(0).cpu().numpy()
            self.dice_sum[i] += scores[0]
            self.iou_sum[i] += scores[1]
        self.count += logits.shape[0]

    def best(self) -> tuple[float, float, float]:
        dice = self.dice_sum / max(self.count, 1)
        i = int(np.argmax(dice))
        return THRESHOLD_GRID[i], float(dice[i]), float(self.iou_sum[i] / max(self.count, 1))

    def at(self, threshold: float) -> tuple[float, float]:
        i = THRESHOLD_GRID.index(threshold)
        return float(self.dice_sum[i] / max(self.count, 1)), float(self.iou_sum[i] / max(self.count, 1))


class MetricsLog:
    """logs/metrics.json: one record per epoch, rewritten atomically so a crash keeps all."""

    def __init__(self, path: Path):
        self.path = path
        self.records = json.loads(path.read_text()) if path.is_file() else []

    def drop_fold(self, fold: int) -> None:
        self.records = [r for r in self.records if r["fold"] != fold]
        atomic_write_json(self.path, self.records)

    def add(self, record: dict) -> None:
        self.records = [r for r in self.records if (r["fold"], r["epoch"]) != (record["fold"], record["epoch"])]
        self.records.append(record)
        atomic_write_json(self.path, self.records)


# ----------------------------------------------------------------------------- one fold


def make_loader(cfg: Config, entries: list[CacheEntry], indices: list[int], train: bool, device) -> DataLoader:
    dataset = SegDataset([entries[i] for i in indices], get_transform(train, cfg.input_size), cfg.classes)
    return DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=train, num_workers=cfg.workers,
        pin_memory=device.type == "cuda", persistent_workers=cfg.workers > 0,
        generator=torch.Generator().manual_seed(cfg.seed) if train else None,
        drop_last=train and len(dataset) > cfg.batch_size,
    )


def make_scheduler(cfg: Config, optimizer, steps_per_epoch: int):
    """Both schedules are stepped once per optimizer step."""
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=max(1, cfg.restart_epochs * steps_per_epoch), eta_min=cfg.lr * 0.01)


def train_one_epoch(model, loader, loss_fn, optimizer, scheduler, cfg: Config, device, desc: str) -> dict:
    model.train()
    loss_sum, score_sum, seen = 0.0, torch.zeros(2), 0
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None)  # None: off when not a TTY
    for images, masks in bar:
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        logits = model(images)
        loss = loss_fn(logits, masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        n = images.shape[0]
        loss_sum += loss.item() * n
        score_sum += per_image_scores(logits.detach(), masks, cfg.classes).sum(0).cpu()
        seen += n
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    return {"loss": loss_sum / seen, "dice": float(score_sum[0] / seen), "iou": float(score_sum[1] / seen)}


@torch.inference_mode()
def evaluate(model, loader, loss_fn, cfg: Config, device, oof: OOFStats | None = None) -> dict:
    model.eval()
    loss_sum, score_sum, seen = 0.0, torch.zeros(2), 0
    for images, masks in loader:
        images, masks = images.to(device), masks.to(device)
        logits = model(images)
        n = images.shape[0]
        loss_sum += loss_fn(logits, masks).item() * n
        score_sum += per_image_scores(logits, masks, cfg.classes).sum(0).cpu()
        seen += n
        if oof is not None:
            oof.add(logits, masks, cfg.classes)
    return {"loss": loss_sum / seen, "dice": float(score_sum[0] / seen), "iou": float(score_sum[1] / seen)}


def train_fold(cfg: Config, fold: int, entries, split, device, metrics: MetricsLog) -> Path:
    """Train one fold with early stopping; returns the path of its best checkpoint."""
    models_dir = Path(cfg.work_dir) / "models"
    best_path, last_path = models_dir / f"fold{fold}_best.pt", models_dir / f"fold{fold}_last.pt"
    chash = config_hash(cfg)
    model = build_model(cfg.arch, cfg.encoder, cfg.encoder_weights, cfg.classes).to(device)
    train_loader = make_loader(cfg, entries, split[0], True, device)
    val_loader = make_loader(cfg, entries, split[1], False, device)
    loss_fn = build_loss(cfg.classes, cfg.dice_weight, cfg.bce_weight).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
    scheduler = make_scheduler(cfg, optimizer, len(train_loader))
    state = {"epoch": -1, "best_dice": -1.0, "best_epoch": -1, "finished": False}

    if last_path.is_file():
        ckpt = read_checkpoint(last_path)
        if ckpt.get("config_hash") == chash:
            load_checkpoint(model, ckpt)
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            state = ckpt["state"]
            LOG.info("fold %d: resuming after epoch %d (best dice %.4f)", fold, state["epoch"], state["best_dice"])
        else:
            LOG.info("fold %d: settings changed since %s was written; training from scratch", fold, last_path)
            metrics.drop_fold(fold)
    if state["finished"] and best_path.is_file():
        LOG.info("fold %d: already finished (best dice %.4f at epoch %d)", fold, state["best_dice"], state["best_epoch"])
        return best_path

    for epoch in range(state["epoch"] + 1, cfg.epochs):
        start = time.perf_counter()
        train_stats = train_one_epoch(model, train_loader, loss_fn, optimizer, scheduler, cfg, device,
                                      desc=f"fold {fold} epoch {epoch + 1}/{cfg.epochs}")
        val_stats = evaluate(model, val_loader, loss_fn, cfg, device)
        record = {"fold": fold, "epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                  **{f"train_{k}": v for k, v in train_stats.items()},
                  **{f"val_{k}": v for k, v in val_stats.items()}, "time_s": round(time.perf_counter() - start, 2)}
        metrics.add(record)
        improved = epoch >= cfg.cooldown and val_stats["dice"] > state["best_dice"]
        state["epoch"] = epoch
        payload = {"model": model.state_dict(), "model_args": model_args(cfg.arch, cfg.encoder, cfg.classes),
                   "config": cfg.to_dict(), "config_hash": chash, "fold": fold}
        if improved:
            state.update(best_dice=val_stats["dice"], best_epoch=epoch)
            save_checkpoint(best_path, {**payload, "epoch": epoch, "val_dice": val_stats["dice"]})
        stop = epoch >= cfg.cooldown and epoch - max(state["best_epoch"], cfg.cooldown) >= cfg.patience
        state["finished"] = stop or epoch == cfg.epochs - 1
        save_checkpoint(last_path, {**payload, "optimizer": optimizer.state_dict(),
                                    "scheduler": scheduler.state_dict(), "state": dict(state)})
        LOG.info("fold %d epoch %d/%d  train loss %.4f dice %.4f | val loss %.4f dice %.4f iou %.4f | lr %.2e%s",
                 fold, epoch + 1, cfg.epochs, train_stats["loss"], train_stats["dice"], val_stats["loss"],
                 val_stats["dice"], val_stats["iou"], record["lr"], "  *best*" if improved else "")
        if stop:
            LOG.info("fold %d: early stop, no val dice gain for %d epochs", fold, cfg.patience)
            break
    if not best_path.is_file():  # every epoch fell inside the cooldown: keep the last weights
        save_checkpoint(best_path, {"model": model.state_dict(), "config": cfg.to_dict(), "config_hash": chash,
                                    "model_args": model_args(cfg.arch, cfg.encoder, cfg.classes),
                                    "fold": fold, "epoch": state["epoch"]})
    return best_path


# ----------------------------------------------------------------------------- CV summary


def evaluate_out_of_fold(cfg: Config, best_path: Path, entries, val_idx, device, oof: OOFStats) -> dict:
    model = build_model(cfg.arch, cfg.encoder, None, cfg.classes).to(device)
    load_checkpoint(model, best_path)
    val_loader = make_loader(cfg, entries, val_idx, False, device)
    loss_fn = build_loss(cfg.classes, cfg.dice_weight, cfg.bce_weight).to(device)
    return evaluate(model, val_loader, loss_fn, cfg, device, oof)


def summarize(fold_scores: dict[int, dict], oof: OOFStats) -> dict:
    dice = np.array([s["dice"] for s in fold_scores.values()])
    iou = np.array([s["iou"] for s in fold_scores.values()])
    threshold, oof_dice_best, oof_iou_best = oof.best()
    oof_dice, oof_iou = oof.at(0.5)
    return {
        "folds": {str(k): {"dice": v["dice"], "iou": v["iou"]} for k, v in fold_scores.items()},
        "dice_mean": float(dice.mean()), "dice_std": float(dice.std()),
        "iou_mean": float(iou.mean()), "iou_std": float(iou.std()),
        "oof_dice": oof_dice, "oof_iou": oof_iou, "oof_images": oof.count,
        "best_threshold": threshold, "oof_dice_at_best_threshold": oof_dice_best,
        "oof_iou_at_best_threshold": oof_iou_best,
        "note": "per-image scores at the cached training resolution (long side = INPUT_SIZE)",
    }


def run(cfg: Config) -> dict:
    """The whole training job; returns the CV summary."""
    work = Path(cfg.work_dir)
    setup_logging(work / "logs" / "training.log")
    LOG.info("config:\n%s", describe(cfg))
    cfg.save()
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    LOG.info("device: %s, torch threads: %d", device, torch.get_num_threads())
    sources = collect_sources(cfg.raw_img_dir, cfg.raw_mask_dir, cfg.raw_json_path)
    entries = build_cache(sources, work, cfg.input_size, cfg.classes,
                          progress=lambda it: tqdm(it, desc="cache", leave=False, dynamic_ncols=True, disable=None))
    splits = make_folds(entries, cfg.folds, cfg.seed)
    atomic_write_json(work / "folds.json", {str(k): [entries[i].key for i in va] for k, (_, va) in enumerate(splits)})
    metrics = MetricsLog(work / "logs" / "metrics.json")
    oof, fold_scores, best_paths = OOFStats(), {}, {}
    for fold in cfg.selected_folds():
        best_paths[fold] = train_fold(cfg, fold, entries, splits[fold], device, metrics)
        fold_scores[fold] = evaluate_out_of_fold(cfg, best_paths[fold], entries, splits[fold][1], device, oof)
        LOG.info("fold %d best: val dice %.4f iou %.4f", fold, fold_scores[fold]["dice"], fold_scores[fold]["iou"])
    summary = summarize(fold_scores, oof)
    atomic_write_json(work / "cv_summary.json", summary)
    LOG.info("CV dice %.4f ± %.4f, IoU %.4f ± %.4f; out-of-fold dice %.4f; best threshold %.2f (oof dice %.4f)",
             summary["dice_mean"], summary["dice_std"], summary["iou_mean"], summary["iou_std"],
             summary["oof_dice"], summary["best_threshold"], summary["oof_dice_at_best_threshold"])
    if cfg.export:
        from export import export_onnx

        onnx_path = export_onnx(work, folds=sorted(best_paths), threshold=summary["best_threshold"],
                                min_area=cfg.min_area)
        summary["onnx"] = str(onnx_path)
    return summary


def main() -> None:
    cfg = load_config()
    run(cfg)


if __name__ == "__main__":
    run_cli(main)
