"""Train a segmentation model with K-fold cross-validation, then export it to ONNX.

Run book:
    # images + masks paired by file stem
    RAW_IMG_DIR=data/images RAW_MASK_DIR=data/masks WORK_DIR=runs/exp1 python train.py
    # a Label Studio export instead of a mask folder
    RAW_IMG_DIR=data/images RAW_JSON_PATH=export.json python train.py
    # flags override env vars, which override the defaults in config.py
    python train.py --raw-img-dir data/images --raw-mask-dir data/masks --model Unet --encoder resnet18 \
        --encoder-weights none --input-size 256 --epochs 30 --folds 5
    # fixed split lists (training_dataset.txt, validation_dataset.txt, test_dataset.txt) instead of CV
    python train.py --raw-img-dir data/images --raw-mask-dir data/masks --search-files true
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
(a gate run: no previews, plus gate_oof.csv, the out-of-fold probability of every image).
A killed run resumes (RESUME=true, the default): finished folds are kept and an unfinished fold
continues from its last checkpoint with its optimizer and scheduler.

Several GPUs or nodes (DDP; gloo on CPU, NCCL on CUDA; BATCH_SIZE is per process):
    torchrun --nproc_per_node=4 train.py --raw-img-dir data/images --raw-mask-dir data/masks
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_endpoint=host0:29500 \
        --rdzv_id=exp1 train.py ...   # node_rank=1 on the second node; WORK_DIR on a shared filesystem
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

import classify
from config import Config, config_hash, describe_config, load_config, parse_class_weights
from dataset import (
    CacheEntry, PatchDataset, SegDataset, build_cache, collect_sources, get_transform, pad_collate, read_groups,
    read_split_lists, seed_worker, split_indices,
)
from model import (
    GATE_ARCH, GateLoss, build_loss, build_model, load_checkpoint, model_args, read_checkpoint, save_checkpoint,
)
from runtime.metadata import MULTICLASS_RULE, preprocess_metadata
from utils import LOG, UserError, atomic_write_json, run_cli, setup_logging, write_png

# Thresholds searched on the out-of-fold predictions for the recommended threshold.
THRESHOLD_GRID = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("DEVICE=cuda but no CUDA GPU is visible to torch; use DEVICE=auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


# ----------------------------------------------------------------------------- torchrun (DDP)
# Without torchrun (no WORLD_SIZE > 1) every helper below is the single-process identity.


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the only process that logs, writes checkpoints, metrics, the cache and the export."""
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a float64 CPU tensor over all ranks (gloo and NCCL both accept it on its device)."""
    if not dist.is_initialized():
        return values
    backend_device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    summed = values.to(backend_device)
    dist.all_reduce(summed)
    return summed.cpu()


def shard(items: list) -> list:
    """This rank's contiguous slice of an evaluation list, unpadded, so the summed metrics count
    every sample exactly once (DistributedSampler would pad with repeats)."""
    return [items[i] for i in np.array_split(np.arange(len(items)), world_size())[rank()]]


@contextlib.contextmanager
def distributed(cfg: Config, environ=os.environ):
    """Join the torchrun process group (RANK/WORLD_SIZE/MASTER_ADDR from the launcher) for the run."""
    if int(environ.get("WORLD_SIZE", "1")) <= 1:
        yield
        return
    cuda = cfg.device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def ddp_device(device: torch.device) -> torch.device:
    """One GPU per process under torchrun: cuda:LOCAL_RANK (torch.cuda.set_device in distributed())."""
    if dist.is_initialized() and device.type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return device


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if not dist.is_initialized():
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def sync_buffers(model: torch.nn.Module) -> None:
    """BatchNorm running stats drift apart per rank during training; evaluate and save rank 0's."""
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


# ----------------------------------------------------------------------------- splits


Split = tuple[list[int], list[int]]


def make_folds(entries: list[CacheEntry], folds: int, seed: int, groups: list[str] | None = None) -> list[Split]:
    """K folds stratified on empty vs non-empty masks; grouped when groups are given.

    Falls back to plain KFold when one kind (empty or not) has fewer samples than folds.
    """
    if len(entries) < folds:
        raise UserError(f"{len(entries)} samples cannot be split into FOLDS={folds}; add data or lower FOLDS")
    labels = np.array([int(e.empty) for e in entries])
    index = np.arange(len(entries))
    stratify = np.bincount(labels, minlength=2).min() >= folds
    if groups is not None:
        if len(set(groups)) < folds:
            raise UserError(f"GROUPS has {len(set(groups))} groups, fewer than FOLDS={folds}")
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        splits = splitter.split(index, labels if stratify else np.zeros_like(labels), groups)
    elif stratify:
        splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(index, labels)
    else:
        LOG.info("too few empty or non-empty masks to stratify; using plain KFold")
        splits = KFold(n_splits=folds, shuffle=True, random_state=seed).split(index)
    return [(tr.tolist(), va.tolist()) for tr, va in splits]


def resolve_splits(cfg: Config, entries: list[CacheEntry]) -> tuple[list[Split], list[int], list[int]]:
    """(splits, folds to train, test indices). Split lists replace CV when a validation list is given."""
    if not cfg.search_files:
        groups = read_groups(cfg.groups, entries) if cfg.groups else None
        return make_folds(entries, cfg.folds, cfg.seed, groups), cfg.selected_folds(), []
    lists = read_split_lists(cfg.split_dir, cfg.raw_img_dir)
    test = split_indices(entries, lists["test"], "test_dataset.txt")
    train = split_indices(entries, lists["train"], "training_dataset.txt")
    if lists["val"]:
        LOG.info("validation_dataset.txt given: one train/val split replaces %d-fold CV", cfg.folds)
        return [(train, split_indices(entries, lists["val"], "validation_dataset.txt"))], [0], test
    subset = [entries[i] for i in train]
    splits = [([train[i] for i in tr], [train[i] for i in va]) for tr, va in make_folds(subset, cfg.folds, cfg.seed)]
    return splits, cfg.selected_folds(), test


# CLASS_WEIGHTS=auto: no class weighs more than this many times the most frequent one (background).
MAX_CLASS_WEIGHT_RATIO = 10.0


def auto_class_weights(entries: list[CacheEntry], classes: int) -> list[float]:
    """Inverse square-root pixel frequency from the cached pixel counts, relative to the most frequent
    class and capped at MAX_CLASS_WEIGHT_RATIO, then scaled to mean 1.

    Weighted cross-entropy moves the argmax towards a class by its weight ratio, so on defect data
    (background ~98 %, a tiny class ~0.02 %) full inverse or median-frequency weights (ratios of
    hundreds) paint the rare classes all over clean images; the square root and the cap keep the
    boost for rare classes while leaving the background a say. Classes absent from the training
    split get the largest weight (it only matters if they appear).
    """
    pixels = np.sum([e.class_pixels[:classes] for e in entries], axis=0).astype(np.float64)
    freq = pixels / max(pixels.sum(), 1)
    present = freq > 0
    weights = np.ones(classes)
    weights[present] = np.minimum(np.sqrt(freq[present].max() / freq[present]), MAX_CLASS_WEIGHT_RATIO)
    weights[~present] = weights[present].max() if present.any() else 1.0
    return (weights / weights.mean()).round(4).tolist()


def resolve_class_weights(cfg: Config, entries: list[CacheEntry], train_idx: list[int]) -> list[float] | None:
    weights = parse_class_weights(cfg.class_weights, cfg.classes) if cfg.classes > 1 else None
    if weights == "auto":
        weights = auto_class_weights([entries[i] for i in train_idx], cfg.classes)
        LOG.info("class weights (auto, from pixel counts): %s", dict(zip(cfg.names(), weights)))
    return weights


# ----------------------------------------------------------------------------- task: segment or classify
# TASK=classify trains the clean/defect gate (classify.py) through the same loop: only the model, the
# loss, the metrics and what early stopping watches differ. Its loss and metrics take the masks
# the loaders yield and reduce them to image labels themselves.


def is_gate(cfg: Config) -> bool:
    return cfg.task == "classify"


def build_task_model(cfg: Config, weights: str | None = None) -> torch.nn.Module:
    if is_gate(cfg):
        return build_model(GATE_ARCH, cfg.encoder, weights, 1, gate_pool=cfg.gate_pool)
    return build_model(cfg.arch, cfg.encoder, weights, cfg.classes)


def task_model_args(cfg: Config) -> dict:
    if is_gate(cfg):
        return model_args(GATE_ARCH, cfg.encoder, 1, gate_pool=cfg.gate_pool)
    return model_args(cfg.arch, cfg.encoder, cfg.classes)


def build_task_loss(cfg: Config, entries: list[CacheEntry] | None = None,
                    train_idx: list[int] | None = None) -> torch.nn.Module:
    """The training loss; without entries (scoring a checkpoint) no class or positive weighting."""
    if is_gate(cfg):
        labels = [not entries[i].empty for i in train_idx] if entries is not None else []
        return GateLoss(classify.resolve_pos_weight(cfg.gate_pos_weight, labels) if labels else None)
    weights = resolve_class_weights(cfg, entries, train_idx) if entries is not None else None
    return build_loss(cfg.classes, cfg.dice_weight, cfg.bce_weight, weights)


def new_sums(cfg: Config):
    return classify.GateSum() if is_gate(cfg) else ScoreSum(cfg.names())


def monitor_name(cfg: Config) -> str:
    return "auc" if is_gate(cfg) else "dice"


def monitor_score(cfg: Config, stats: dict) -> float:
    """What early stopping and the best checkpoint maximise: val Dice, or the gate's val AUC (-loss
    when its val fold holds one class only)."""
    return classify.monitor(stats) if is_gate(cfg) else stats["dice"]


def describe_stats(cfg: Config, stats: dict, iou: bool = False) -> str:
    if is_gate(cfg):
        return classify.describe(stats)
    return f"loss {stats['loss']:.4f} dice {stats['dice']:.4f}" + (f" iou {stats['iou']:.4f}" if iou else "")


# ----------------------------------------------------------------------------- metrics


def per_image_scores(logits: torch.Tensor, target: torch.Tensor, num_classes: int,
                     threshold: float = 0.5, from_probs: bool = False) -> torch.Tensor:
    """(B, 2, K) per-image [dice, iou] for each of the K foreground classes; both empty counts as 1.

    Binary: logits/target (B, 1, H, W), K = 1. Multi-class: logits (B, C, H, W), target (B, H, W)
    class ids, K = C - 1 (class 0 is background). from_probs: `logits` already holds probabilities.
    """
    if num_classes == 1:
        probs = logits.float() if from_probs else torch.sigmoid(logits.float())
        pred = (probs > threshold).flatten(1).float()[:, None]  # (B, 1, N)
        true = target.flatten(1).float()[:, None]
    else:
        classes = torch.arange(1, num_classes, device=logits.device)[None, :, None]
        pred = (logits.argmax(1).flatten(1)[:, None] == classes).float()  # (B, C-1, N)
        true = (target.flatten(1)[:, None] == classes).float()
    inter = (pred * true).sum(-1)
    total = pred.sum(-1) + true.sum(-1)
    union = total - inter
    dice = torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    return torch.stack([dice, iou], dim=1)


class ScoreSum:
    """Running sums of loss and per-image scores; `result()` gives means and per-class Dice."""

    def __init__(self, class_names: list[str]):
        self.class_names = class_names
        self.loss, self.scores, self.seen = 0.0, torch.zeros(2, max(len(class_names) - 1, 1), dtype=torch.float64), 0

    def add(self, loss: float, scores: torch.Tensor) -> None:  # scores (B, 2, K)
        self.scores = self.scores + scores.double().sum(0).cpu()
        self.loss += loss * scores.shape[0]
        self.seen += scores.shape[0]

    def add_batch(self, loss: float, logits: torch.Tensor, masks: torch.Tensor, num_classes: int) -> None:
        self.add(loss, per_image_scores(logits, masks, num_classes))

    def reduce(self) -> "ScoreSum":
        """Sum over DDP ranks: per-image score sums and image counts, never means of means."""
        flat = all_reduce_sum(torch.cat([torch.tensor([self.loss, self.seen], dtype=torch.float64),
                                         self.scores.flatten()]))
        self.loss, self.seen, self.scores = float(flat[0]), int(flat[1]), flat[2:].view_as(self.scores)
        return self

    def result(self) -> dict:
        mean = self.scores / max(self.seen, 1)  # (2, K)
        out = {"loss": self.loss / max(self.seen, 1), "dice": float(mean[0].mean()), "iou": float(mean[1].mean())}
        if mean.shape[1] > 1:  # per foreground class
            for name, dice, iou in zip(self.class_names[1:], mean[0].tolist(), mean[1].tolist()):
                out[f"dice_{name}"] = dice
                out[f"iou_{name}"] = iou
        return out


@dataclass
class OOFStats:
    """Out-of-fold per-image Dice/IoU of each foreground class at every threshold of THRESHOLD_GRID,
    summed, not stored: dice_sum and iou_sum are (thresholds, K), K = 1 (binary) or classes - 1.

    Multi-class masks are the argmax, so the threshold plays no part: scored once, the same in
    every row. The class mean of an image is its score, as the runtime's summary.csv has it.
    """
    classes: int = 1
    dice_sum: np.ndarray | None = None
    iou_sum: np.ndarray | None = None
    count: int = 0

    def __post_init__(self):
        shape = (len(THRESHOLD_GRID), max(self.classes - 1, 1))
        self.dice_sum = np.zeros(shape) if self.dice_sum is None else np.asarray(self.dice_sum).reshape(shape)
        self.iou_sum = np.zeros(shape) if self.iou_sum is None else np.asarray(self.iou_sum).reshape(shape)

    def add(self, logits: torch.Tensor, target: torch.Tensor, num_classes: int, from_probs: bool = False) -> None:
        assert num_classes == self.classes, (num_classes, self.classes)
        grid = [0.5] if num_classes > 1 else THRESHOLD_GRID
        for i, thr in enumerate(grid):
            scores = per_image_scores(logits, target, num_classes, thr, from_probs)
            scores = scores.double().sum(0).cpu().numpy()  # (2, K)
            rows = slice(None) if num_classes > 1 else i
            self.dice_sum[rows] += scores[0]
            self.iou_sum[rows] += scores[1]
        self.count += logits.shape[0]

    def reduce(self) -> "OOFStats":
        """Sum over DDP ranks (each holds its shard's sums)."""
        flat = all_reduce_sum(torch.from_numpy(np.concatenate([self.dice_sum.ravel(), self.iou_sum.ravel(),
                                                               [self.count]])))
        half = self.dice_sum.size
        return OOFStats(self.classes, flat[:half].numpy(), flat[half:2 * half].numpy(), int(flat[-1]))

    def merge(self, other: "OOFStats") -> None:
        self.dice_sum, self.iou_sum = self.dice_sum + other.dice_sum, self.iou_sum + other.iou_sum
        self.count += other.count

    def best(self) -> tuple[float, float, float]:
        """(threshold, dice, iou) maximising the OOF Dice; multi-class (argmax) reports 0.5."""
        if self.classes > 1:
            return (0.5, *self.at(0.5))
        dice = self.dice_sum.mean(1) / max(self.count, 1)
        i = int(np.argmax(dice))
        return THRESHOLD_GRID[i], float(dice[i]), float(self.iou_sum[i].mean() / max(self.count, 1))

    def at(self, threshold: float) -> tuple[float, float]:
        dice, iou = self.per_class(threshold)
        return float(dice.mean()), float(iou.mean())

    def per_class(self, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
        """(dice (K,), iou (K,)): each class's mean over the images, empty/empty counting 1."""
        i = THRESHOLD_GRID.index(threshold)
        return self.dice_sum[i] / max(self.count, 1), self.iou_sum[i] / max(self.count, 1)

    def describe(self, class_names: list[str]) -> dict:
        """{'dice', 'iou', 'per_class': {name: {'dice', 'iou'}}} at 0.5 (argmax for multi-class)."""
        dice, iou = self.per_class(0.5)
        out = {"dice": float(dice.mean()), "iou": float(iou.mean()), "images": self.count}
        if self.classes > 1:
            out["per_class"] = {name: {"dice": float(d), "iou": float(j)}
                                for name, d, j in zip(class_names[1:], dice, iou)}
        return out


class MetricsLog:
    """logs/metrics.json: one record per evaluation, rewritten atomically so a crash keeps all."""

    def __init__(self, path: Path, write: bool = True):
        self.path, self.write = path, write  # write=False on DDP ranks other than 0
        self.records = json.loads(path.read_text()) if path.is_file() else []

    def drop_fold(self, fold: int) -> None:
        self.records = [r for r in self.records if r["fold"] != fold]
        if self.write:
            atomic_write_json(self.path, self.records)

    def add(self, record: dict) -> None:
        def key(r):
            return r["fold"], r["epoch"], r["step"], r.get("kind")
        self.records = [r for r in self.records if key(r) != key(record)]
        self.records.append(record)
        if self.write:
            atomic_write_json(self.path, self.records)


class Tracker:
    """Optional experiment tracker (TensorBoard or W&B offline). Never required."""

    def __init__(self, kind: str, log_dir: Path, config: dict):
        self.kind, self.backend = kind, None
        if kind == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("TRACKER=tensorboard needs the tensorboard package: pip install tensorboard") from None
            self.backend = SummaryWriter(log_dir=str(log_dir / "tensorboard"))
        elif kind == "wandb":
            try:
                import wandb
            except ImportError:
                raise UserError("TRACKER=wandb needs the wandb package: pip install wandb") from None
            # offline unless WANDB_MODE says otherwise; `wandb sync` uploads later
            self.backend = wandb.init(project="segpipe", dir=str(log_dir), config=config, mode="offline")

    def log(self, record: dict, step: int) -> None:
        numbers = {k: v for k, v in record.items() if isinstance(v, float)}
        if self.kind == "tensorboard":
            for key, value in numbers.items():
                self.backend.add_scalar(f"fold{record['fold']}/{key}", value, step)
        elif self.kind == "wandb":
            self.backend.log({f"fold{record['fold']}/{k}": v for k, v in numbers.items()}, step=step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        if self.kind == "tensorboard":
            self.backend.add_image(tag, image, step, dataformats="HWC")
        elif self.kind == "wandb":
            import wandb
            self.backend.log({tag: wandb.Image(image)}, step=step)

    def close(self) -> None:
        if self.backend is not None:
            getattr(self.backend, "close", getattr(self.backend, "finish", lambda: None))()


# ----------------------------------------------------------------------------- one fold


def make_dataset(cfg: Config, entries: list[CacheEntry], train: bool) -> SegDataset:
    """Whole images padded to an INPUT_SIZE square; with TRAIN_PATCH, random HxW crops for training
    and whole images padded to /32 for evaluation. Augmentation and crops are seeded per rank."""
    patch = None if is_gate(cfg) else cfg.patch_hw()  # the gate sees whole images (config refuses both)
    transform = get_transform(train, cfg.input_size, seed=cfg.seed + rank(), patch=patch is not None,
                              square=not is_gate(cfg))
    if patch and train:
        return PatchDataset(entries, transform, cfg.classes, patch, cfg.patches_per_image, seed=cfg.seed + rank(),
                            max_pixels=cfg.max_image_pixels)
    return SegDataset(entries, transform, cfg.classes, max_pixels=cfg.max_image_pixels)


def make_loader(cfg: Config, entries: list[CacheEntry], indices: list[int], train: bool, device) -> DataLoader:
    """Under DDP: training through a DistributedSampler (set_epoch each epoch), evaluation on this
    rank's unpadded shard. TRAIN_PATCH evaluation and the gate batch whole images of different sizes
    (pad_collate)."""
    dataset = make_dataset(cfg, [entries[i] for i in (indices if train else shard(indices))], train)
    sampler = DistributedSampler(dataset, shuffle=True, seed=cfg.seed) if train and dist.is_initialized() else None
    return DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=train and sampler is None, sampler=sampler,
        collate_fn=pad_collate if is_gate(cfg) or (cfg.train_patch and not train) else None,
        num_workers=cfg.workers, pin_memory=cfg.pin_memory and device.type == "cuda",
        persistent_workers=cfg.workers > 0, worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(cfg.seed) if train else None,
        drop_last=train and len(sampler or dataset) > cfg.batch_size,
    )


def make_scheduler(cfg: Config, optimizer, steps_per_epoch: int):
    """Both schedules are stepped once per optimizer step."""
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=max(1, cfg.restart_epochs * steps_per_epoch), eta_min=cfg.lr * 0.01)


def autocast(cfg: Config, device: torch.device):
    """fp16 on CUDA, bf16 on CPU, or nothing."""
    if not cfg.use_amp:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


@torch.inference_mode()
def evaluate(model, loader, loss_fn, cfg: Config, device, oof: OOFStats | None = None) -> dict:
    """Metrics over the loader's samples; under DDP over every rank's shard, summed (all ranks call it)."""
    model.eval()
    sync_buffers(model)
    sums, local_oof = new_sums(cfg), OOFStats(cfg.classes)
    for images, masks in loader:
        images, masks = images.to(device), masks.to(device)
        with autocast(cfg, device):
            logits = model(images)
        logits = logits.float()
        sums.add_batch(loss_fn(logits, masks).item(), logits, masks, cfg.classes)
        if oof is not None:
            local_oof.add(logits, masks, cfg.classes)
    if oof is not None:
        oof.merge(local_oof.reduce())
    return sums.reduce().result()


@torch.inference_mode()
def preview_grid(model, dataset: SegDataset, cfg: Config, device, count: int = 4) -> np.ndarray:
    """Rows of [image | ground truth | prediction] for the first val images, RGB uint8. Class ids get
    the runtime's palette colours; wide images (TRAIN_PATCH strips) stack the three vertically."""
    from runtime.postprocess import colorize

    model.eval()
    rows = []
    for i in range(min(count, len(dataset))):
        image, mask = dataset[i]
        logits = model(image[None].to(device)).float()[0]
        pred = (torch.sigmoid(logits[0]) > 0.5) if cfg.classes == 1 else logits.argmax(0)
        truth = mask[0] if cfg.classes == 1 else mask
        rgb = image.permute(1, 2, 0).numpy() * np.array(dataset.std) + np.array(dataset.mean)
        def as_rgb(m: torch.Tensor) -> np.ndarray:
            ids = m.cpu().numpy().astype(np.uint8)
            return colorize(ids) if cfg.classes > 1 else np.repeat(ids[..., None] * 255, 3, 2)
        panels = [(rgb.clip(0, 1) * 255).astype(np.uint8), as_rgb(truth), as_rgb(pred)]
        rows.append(np.concatenate(panels, 0 if rgb.shape[1] > 2 * rgb.shape[0] else 1))
    width = max(row.shape[1] for row in rows)  # whole val images may differ in size under TRAIN_PATCH
    return np.concatenate([np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0))) for row in rows], 0)


@dataclass
class FoldRun:
    """Everything one fold's training loop needs, built once."""
    cfg: Config
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
    # best_dice: the best monitored score (val Dice; the gate's val AUC or -loss), kept under its old name
    state: dict = field(default_factory=lambda: {"epoch": -1, "step": 0, "best_dice": float("-inf"),
                                                 "best_epoch": -1, "finished": False})
    net: torch.nn.Module | None = None  # what train_step runs: the DDP wrapper under torchrun, else model

    def payload(self) -> dict:
        return {"model": self.model.state_dict(), "model_args": task_model_args(self.cfg),
                "config": {**self.cfg.to_dict(), "class_names": self.cfg.names()},
                "config_hash": config_hash(self.cfg), "fold": self.fold}


def setup_fold(cfg: Config, fold: int, entries, split: Split, device, metrics: MetricsLog, tracker: Tracker) -> FoldRun:
    models_dir = Path(cfg.work_dir) / "models"
    model = build_task_model(cfg, cfg.encoder_weights)
    if cfg.load_model:
        load_checkpoint(model, cfg.load_model)
        LOG.info("fold %d: fine-tuning from %s", fold, cfg.load_model)
    model.to(device)
    train_loader = make_loader(cfg, entries, split[0], True, device)
    loss_fn = build_task_loss(cfg, entries, split[0])
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
    return FoldRun(
        cfg, fold, model, train_loader, make_loader(cfg, entries, split[1], False, device), loss_fn.to(device),
        optimizer, make_scheduler(cfg, optimizer, len(train_loader)),
        torch.amp.GradScaler(device.type, enabled=cfg.use_amp and device.type == "cuda"), device, metrics, tracker,
        models_dir / f"fold{fold}_best.pt", models_dir / f"fold{fold}_last.pt", net=wrap_ddp(model, device),
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
    else:
        load_checkpoint(run.model, ckpt)
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        run.scaler.load_state_dict(ckpt.get("scaler", {}))
        run.state = ckpt["state"]
        if not run.state["finished"]:
            LOG.info("fold %d: resuming after epoch %d (best %s %.4f)", run.fold, run.state["epoch"] + 1,
                     monitor_name(run.cfg), run.state["best_dice"])
        return
    run.metrics.drop_fold(run.fold)


def train_step(run: FoldRun, images: torch.Tensor, masks: torch.Tensor) -> tuple[float, torch.Tensor]:
    """One optimizer step; returns (loss, detached logits)."""
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
    return loss.item(), logits.detach()


def train_one_epoch(run: FoldRun, epoch: int) -> dict:
    run.model.train()
    if isinstance(run.train_loader.sampler, DistributedSampler):
        run.train_loader.sampler.set_epoch(epoch)  # a different shuffle every epoch, the same on every rank
    sums = new_sums(run.cfg)
    desc = f"fold {run.fold} epoch {epoch + 1}/{run.cfg.epochs}"
    bar = tqdm(run.train_loader, desc=desc, leave=False, dynamic_ncols=True,
               disable=None if is_main() else True)  # None: off without a TTY
    for images, masks in bar:
        images, masks = images.to(run.device, non_blocking=True), masks.to(run.device, non_blocking=True)
        loss, logits = train_step(run, images, masks)
        sums.add_batch(loss, logits, masks, run.cfg.classes)
        run.state["step"] += 1
        bar.set_postfix(loss=f"{sums.loss / sums.seen:.4f}", lr=f"{run.optimizer.param_groups[0]['lr']:.2e}")
        if run.cfg.eval_step and run.state["step"] % run.cfg.eval_step == 0:
            val_stats = evaluate(run.model, run.val_loader, run.loss_fn, run.cfg, run.device)
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
    score = monitor_score(run.cfg, val_stats)
    improved = epoch >= run.cfg.cooldown and score > run.state["best_dice"]
    if improved:
        run.state.update(best_dice=score, best_epoch=epoch)
    if improved and is_main():
        save_checkpoint(run.best_path, {**run.payload(), "epoch": epoch, "step": run.state["step"],
                                        f"val_{monitor_name(run.cfg)}": score})
    return improved


def end_epoch(run: FoldRun, epoch: int, train_stats: dict, start: float) -> bool:
    """Evaluate, checkpoint and log one epoch; returns True when early stopping triggers."""
    val_stats = evaluate(run.model, run.val_loader, run.loss_fn, run.cfg, run.device)
    improved = record_evaluation(run, epoch, train_stats, val_stats, time.perf_counter() - start)
    cfg = run.cfg
    stop = epoch >= cfg.cooldown and epoch - max(run.state["best_epoch"], cfg.cooldown) >= cfg.patience
    run.state.update(epoch=epoch, finished=stop or epoch == cfg.epochs - 1)
    if is_main():
        save_last_and_preview(run, epoch)
    LOG.info("fold %d epoch %d/%d  train %s | val %s | lr %.2e%s", run.fold, epoch + 1, cfg.epochs,
             describe_stats(cfg, train_stats), describe_stats(cfg, val_stats, iou=True),
             run.optimizer.param_groups[0]["lr"], "  *best*" if improved else "")
    if stop:
        LOG.info("fold %d: early stop, no val %s gain for %d epochs", run.fold, monitor_name(cfg), cfg.patience)
    return stop


def save_last_and_preview(run: FoldRun, epoch: int) -> None:
    last = {**run.payload(), "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(), "state": dict(run.state)}
    save_checkpoint(run.last_path, last)
    if run.cfg.save_checkpoints:
        save_checkpoint(run.last_path.with_name(f"fold{run.fold}_epoch{epoch + 1}.pt"), last)
    if is_gate(run.cfg):  # no mask to show
        return
    grid = preview_grid(run.model, run.val_loader.dataset, run.cfg, run.device)
    write_png(Path(run.cfg.work_dir) / "logs" / f"val_preview_fold{run.fold}.png", grid)
    run.tracker.image(f"fold{run.fold}/val_preview", grid, run.state["step"])


def train_fold(cfg: Config, fold: int, entries, split: Split, device, metrics: MetricsLog,
               tracker: Tracker | None = None) -> Path:
    """Train one fold with early stopping; returns the path of its best checkpoint."""
    run = setup_fold(cfg, fold, entries, split, device, metrics, tracker or Tracker("none", Path(), {}))
    restore(run)
    if run.state["finished"] and run.best_path.is_file():
        LOG.info("fold %d: already finished (best %s %.4f at epoch %d)", fold, monitor_name(cfg),
                 run.state["best_dice"], run.state["best_epoch"] + 1)
        return run.best_path
    for epoch in range(run.state["epoch"] + 1, cfg.epochs):
        start = time.perf_counter()
        if end_epoch(run, epoch, train_one_epoch(run, epoch), start):
            break
    if is_main() and not run.best_path.is_file():  # every epoch fell inside the cooldown: keep the last weights
        save_checkpoint(run.best_path, {**run.payload(), "epoch": run.state["epoch"]})
    barrier()  # every rank reads the best checkpoint next
    return run.best_path


# ----------------------------------------------------------------------------- CV summary


def evaluate_checkpoint(cfg: Config, path: Path, entries, indices, device, oof: OOFStats | None = None) -> dict:
    model = build_task_model(cfg).to(device)
    load_checkpoint(model, path)
    loader = make_loader(cfg, entries, indices, False, device)
    return evaluate(model, loader, build_task_loss(cfg).to(device), cfg, device, oof)


@torch.inference_mode()
def score_original_resolution(cfg: Config, path: Path, sources: list, device, oof: OOFStats,
                              boxes: list | None = None) -> None:
    """Score a fold model as the runtime will: the shared torch-free preprocessing, the output mapped
    back to each source image's own size, compared with the source mask. With smart crop, each image
    is cut to its cached crop box first and the prediction pasted back (runtime/crop.py)."""
    from runtime.crop import background_fill, crop_square, paste_back
    from utils import preprocess, read_image, restore_size

    model = build_model(cfg.arch, cfg.encoder, None, cfg.classes).to(device).eval()
    load_checkpoint(model, path)
    meta = preprocess_metadata(cfg.input_size)
    local = OOFStats(cfg.classes)
    for source, box in shard(list(zip(sources, boxes or [None] * len(sources)))):
        image = read_image(source.image_path, cfg.max_image_pixels)
        mask = source.load_mask(cfg.classes, cfg.max_image_pixels)
        view = crop_square(image, box, cfg.input_size, cfg.crop_pad_value) if box else image
        chw, valid_hw = preprocess(view, meta)  # (3, H', W')
        with autocast(cfg, device):
            logits = model(torch.from_numpy(chw)[None].to(device)).float()[0]
        probs = torch.sigmoid(logits) if cfg.classes == 1 else torch.softmax(logits, 0)
        probs = restore_size(probs.cpu().numpy(), valid_hw, view.shape[:2])  # (C, h, w)
        if box:
            probs = paste_back(probs, box, image.shape[:2], background_fill(cfg.classes))
        probs = torch.from_numpy(np.ascontiguousarray(probs))  # (C, H, W)
        target = torch.from_numpy(mask.astype(np.int64))
        local.add(probs[None], target[None, None] if cfg.classes == 1 else target[None], cfg.classes, from_probs=True)
    oof.merge(local.reduce())


def summarize(fold_scores: dict[int, dict], oof: OOFStats, oof_original: OOFStats,
              test_scores: dict[int, dict], class_names: list[str] | None = None) -> dict:
    dice = np.array([s["dice"] for s in fold_scores.values()])
    iou = np.array([s["iou"] for s in fold_scores.values()])
    threshold, oof_dice_best, oof_iou_best = oof_original.best()
    oof_dice, oof_iou = oof_original.at(0.5)
    cached_dice, cached_iou = oof.at(0.5)
    summary = {
        "folds": {str(k): v for k, v in fold_scores.items()},
        "dice_mean": float(dice.mean()), "dice_std": float(dice.std()),
        "iou_mean": float(iou.mean()), "iou_std": float(iou.std()),
        "oof_dice": oof_dice, "oof_iou": oof_iou, "oof_images": oof_original.count,
        "best_threshold": threshold, "oof_dice_at_best_threshold": oof_dice_best,
        "oof_iou_at_best_threshold": oof_iou_best,
        "oof_dice_cached_resolution": cached_dice, "oof_iou_cached_resolution": cached_iou,
        "note": "fold dice/iou: per-image means at the training resolution; oof_*: per-image means at each "
                "image's original resolution (as inference.py scores), threshold 0.5 unless named",
    }
    if oof_original.classes > 1:
        summary["oof_per_class"] = oof_original.describe(class_names)["per_class"]
        summary["oof_per_class_cached_resolution"] = oof.describe(class_names)["per_class"]
        summary["multiclass_rule"] = MULTICLASS_RULE
    if test_scores:
        summary["test"] = {str(k): v for k, v in test_scores.items()}
    return summary


@torch.inference_mode()
def predict_gate(cfg: Config, path: Path, entries: list[CacheEntry], device) -> list[float]:
    """The gate's defect probability for each cached image, preprocessed as the runtime does (the shared
    torch-free rule: long side to INPUT_SIZE, normalise, pad to 32), one image at a time, float32."""
    from utils import preprocess, read_image

    model = build_task_model(cfg).to(device).eval()
    load_checkpoint(model, path)
    meta = preprocess_metadata(cfg.input_size)
    probs = []
    for entry in shard(entries):
        chw, _ = preprocess(read_image(entry.image, cfg.max_image_pixels), meta)  # (3, H', W')
        probs.append(float(torch.sigmoid(model(torch.from_numpy(chw)[None].to(device)).float())[0, 0]))
    return [p for part in classify.gather(probs) for p in part]  # rank order = input order (contiguous shards)


def summarize_gate(cfg: Config, fold_scores: dict[int, dict], report: dict, test_scores: dict[int, dict]) -> dict:
    """cv_summary.json of a gate run: per-fold val loss/accuracy/AUC and the out-of-fold report."""
    summary = {
        "task": "classify",
        "folds": {str(k): v for k, v in fold_scores.items()},
        "accuracy_mean": float(np.mean([s["accuracy"] for s in fold_scores.values()])),
        "oof": report, "threshold": report["threshold"], "recall_target": report["recall_target"],
        "input_size": cfg.input_size,
        "note": "fold metrics: at the training size, accuracy at 0.5; oof: every image scored once by the fold "
                "model that did not train on it, preprocessed as the runtime does; threshold: the highest one "
                "whose oof recall of defective images >= recall_target (images below it are not segmented)",
    }
    if test_scores:
        summary["test"] = {str(k): v for k, v in test_scores.items()}
    return summary


def run_gate_folds(cfg: Config, entries, splits, fold_ids, test_idx, device, metrics, tracker) -> dict:
    """TASK=classify: train the gate's folds, score each image out of fold, pick the threshold."""
    fold_scores, test_scores, best_paths, oof_rows = {}, {}, {}, []
    for fold in fold_ids:
        best_paths[fold] = train_fold(cfg, fold, entries, splits[fold], device, metrics, tracker)
        fold_scores[fold] = evaluate_checkpoint(cfg, best_paths[fold], entries, splits[fold][1], device)
        val = [entries[i] for i in splits[fold][1]]
        probs = predict_gate(cfg, best_paths[fold], val, device)
        oof_rows += [(e.key, fold, not e.empty, p) for e, p in zip(val, probs)]
        LOG.info("fold %d best: val %s", fold, classify.describe(fold_scores[fold]))
        if test_idx:
            test_scores[fold] = evaluate_checkpoint(cfg, best_paths[fold], entries, test_idx, device)
    report = classify.gate_report([r[3] for r in oof_rows], [r[2] for r in oof_rows], cfg.gate_recall)
    summary = summarize_gate(cfg, fold_scores, report, test_scores)
    if is_main():
        classify.write_oof_csv(Path(cfg.work_dir) / "gate_oof.csv", oof_rows)
    summary["best_paths"] = best_paths
    return summary


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
    from smartcrop import SmartCropper

    return SmartCropper(cfg.crop_model, CropSettings.from_config(cfg), device=str(device))


def prepare(cfg: Config) -> tuple[list[CacheEntry], dict, torch.device]:
    work = Path(cfg.work_dir)
    check_work_dir_task(cfg)
    if is_main():
        setup_logging(work / "logs" / "training.log")
        LOG.info("config:\n%s", describe_config(cfg))
        cfg.save()
    else:
        setup_logging(level=logging.ERROR)
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = ddp_device(pick_device(cfg.device))
    LOG.info("device: %s, torch threads: %d%s%s", device, torch.get_num_threads(), ", AMP on" if cfg.use_amp else "",
             f", DDP over {world_size()} processes ({dist.get_backend()})" if dist.is_initialized() else "")
    sources = collect_sources(cfg.raw_img_dir, cfg.raw_mask_dir, cfg.raw_json_path, cfg.max_image_pixels)
    cropper = make_cropper(cfg, device)
    entries = None
    if is_main():  # rank 0 builds the cache while the others wait, then they read its manifest
        entries = build_cache(sources, work, cfg.input_size, cfg.classes, cropper=cropper, progress=lambda it: tqdm(
            it, desc="cache", leave=False, dynamic_ncols=True, disable=None), max_pixels=cfg.max_image_pixels)
    barrier()
    if entries is None:
        entries = build_cache(sources, work, cfg.input_size, cfg.classes, cropper=cropper, write=False,
                              max_pixels=cfg.max_image_pixels)
    return entries, {s.key: s for s in sources}, device


def run(cfg: Config) -> dict:
    """The whole training job; returns the CV summary."""
    entries, sources, device = prepare(cfg)
    work = Path(cfg.work_dir)
    splits, fold_ids, test_idx = resolve_splits(cfg, entries)
    if is_main():
        atomic_write_json(work / "folds.json",
                          {str(k): [entries[i].key for i in va] for k, (_, va) in enumerate(splits)})
    metrics = MetricsLog(work / "logs" / "metrics.json", write=is_main())
    tracker = Tracker(cfg.tracker if is_main() else "none", work / "logs", cfg.to_dict())
    if is_gate(cfg):
        return run_gate(cfg, entries, splits, fold_ids, test_idx, device, metrics, tracker)
    oof, oof_original, fold_scores, test_scores, best_paths = OOFStats(cfg.classes), OOFStats(cfg.classes), {}, {}, {}
    try:
        for fold in fold_ids:
            best_paths[fold] = train_fold(cfg, fold, entries, splits[fold], device, metrics, tracker)
            fold_scores[fold] = evaluate_checkpoint(cfg, best_paths[fold], entries, splits[fold][1], device, oof)
            val = [entries[i] for i in splits[fold][1]]
            fold_oof = OOFStats(cfg.classes)
            score_original_resolution(cfg, best_paths[fold], [sources[e.key] for e in val], device, fold_oof,
                                      [e.crop_box for e in val])
            oof_original.merge(fold_oof)
            if cfg.classes > 1:  # this fold's val images at their original size, per class
                fold_scores[fold]["oof"] = fold_oof.describe(cfg.names())
            LOG.info("fold %d best: val dice %.4f iou %.4f", fold, fold_scores[fold]["dice"], fold_scores[fold]["iou"])
            if test_idx:
                test_scores[fold] = evaluate_checkpoint(cfg, best_paths[fold], entries, test_idx, device)
    finally:
        tracker.close()
    summary = summarize(fold_scores, oof, oof_original, test_scores, cfg.names())
    if not is_main():  # the summary is the same on every rank; rank 0 writes it and exports
        return summary
    atomic_write_json(work / "cv_summary.json", summary)
    LOG.info("CV dice %.4f ± %.4f, IoU %.4f ± %.4f; out-of-fold dice at original size %.4f; "
             "best threshold %.2f (oof dice %.4f)",
             summary["dice_mean"], summary["dice_std"], summary["iou_mean"], summary["iou_std"],
             summary["oof_dice"], summary["best_threshold"], summary["oof_dice_at_best_threshold"])
    if "oof_per_class" in summary:
        LOG.info("out-of-fold per class at original size: %s", ", ".join(
            f"{name} dice {v['dice']:.4f} iou {v['iou']:.4f}" for name, v in summary["oof_per_class"].items()))
    if cfg.export:
        from export import export_onnx

        onnx_path = export_onnx(work, folds=sorted(best_paths), threshold=summary["best_threshold"],
                                min_area=cfg.min_area)
        summary["onnx"] = str(onnx_path)
    return summary


def run_gate(cfg: Config, entries, splits, fold_ids, test_idx, device, metrics, tracker) -> dict:
    """run() for TASK=classify: the gate's folds, cv_summary.json, gate_oof.csv and <NAME>.onnx (gate.onnx)."""
    LOG.info("task classify: the clean/defect gate, %s encoder + pooling head at %d px", cfg.encoder, cfg.input_size)
    classify.check_labels([not e.empty for e in entries])
    try:
        summary = run_gate_folds(cfg, entries, splits, fold_ids, test_idx, device, metrics, tracker)
    finally:
        tracker.close()
    best_paths = summary.pop("best_paths")
    if not is_main():
        return summary
    atomic_write_json(Path(cfg.work_dir) / "cv_summary.json", summary)
    LOG.info("%s", classify.describe_report(summary["oof"]))
    if cfg.export:
        from export import export_onnx

        summary["onnx"] = str(export_onnx(cfg.work_dir, folds=sorted(best_paths), threshold=summary["threshold"]))
    return summary


def main() -> None:
    cfg = load_config()
    with distributed(cfg):
        run(cfg)


if __name__ == "__main__":
    run_cli(main)
