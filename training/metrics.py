"""What training measures: per-image Dice/IoU, running sums over an evaluation, the out-of-fold statistics
behind the recommended threshold, logs/metrics.json and the optional experiment tracker."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training.distributed import all_reduce_sum
from utils import IGNORE_INDEX, UserError, atomic_write_json

# Thresholds searched on the out-of-fold predictions for the recommended threshold.
THRESHOLD_GRID = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))


def per_image_scores(logits: torch.Tensor, target: torch.Tensor, num_classes: int,
                     threshold: float = 0.5, from_probs: bool = False,
                     ignore_index: int | None = IGNORE_INDEX) -> torch.Tensor:
    """(B, 2, K) per-image [dice, iou] for each of the K foreground classes; both empty counts as 1.

    Binary: logits/target (B, 1, H, W), K = 1. Multi-class: logits (B, C, H, W), target (B, H, W)
    class ids, K = C - 1 (class 0 is background). from_probs: `logits` already holds probabilities.
    Target pixels of `ignore_index` (void) count neither as predicted nor as true.
    """
    flat = target.flatten(1)[:, None]  # (B, 1, N)
    valid = (flat != ignore_index).float() if ignore_index is not None else torch.ones_like(flat, dtype=torch.float)
    if num_classes == 1:
        probs = logits.float() if from_probs else torch.sigmoid(logits.float())
        pred = (probs > threshold).flatten(1).float()[:, None] * valid  # (B, 1, N)
        true = (flat == 1).float()
    else:
        classes = torch.arange(1, num_classes, device=logits.device)[None, :, None]
        pred = (logits.argmax(1).flatten(1)[:, None] == classes).float() * valid  # (B, C-1, N)
        true = (flat == classes).float()
    inter = (pred * true).sum(-1)
    total = pred.sum(-1) + true.sum(-1)
    union = total - inter
    dice = torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    return torch.stack([dice, iou], dim=1)


class ScoreSum:
    """Running sums of loss and per-image scores; `result()` gives means and per-class Dice."""

    def __init__(self, class_names: list[str], ignore_index: int | None = IGNORE_INDEX):
        self.class_names, self.ignore_index = class_names, ignore_index
        self.loss, self.scores, self.seen = 0.0, torch.zeros(2, max(len(class_names) - 1, 1), dtype=torch.float64), 0

    def add(self, loss: float, scores: torch.Tensor) -> None:  # scores (B, 2, K)
        self.scores = self.scores + scores.double().sum(0).cpu()
        self.loss += loss * scores.shape[0]
        self.seen += scores.shape[0]

    def add_batch(self, loss: float, logits: torch.Tensor, masks: torch.Tensor, num_classes: int) -> None:
        self.add(loss, per_image_scores(logits, masks, num_classes, ignore_index=self.ignore_index))

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
    ignore_index: int | None = IGNORE_INDEX  # void target pixels: left out of every threshold's scores

    def __post_init__(self):
        shape = (len(THRESHOLD_GRID), max(self.classes - 1, 1))
        self.dice_sum = np.zeros(shape) if self.dice_sum is None else np.asarray(self.dice_sum).reshape(shape)
        self.iou_sum = np.zeros(shape) if self.iou_sum is None else np.asarray(self.iou_sum).reshape(shape)

    def add(self, logits: torch.Tensor, target: torch.Tensor, num_classes: int, from_probs: bool = False) -> None:
        assert num_classes == self.classes, (num_classes, self.classes)
        grid = [0.5] if num_classes > 1 else THRESHOLD_GRID
        for i, thr in enumerate(grid):
            scores = per_image_scores(logits, target, num_classes, thr, from_probs, self.ignore_index)
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
        return OOFStats(self.classes, flat[:half].numpy(), flat[half:2 * half].numpy(), int(flat[-1]),
                        self.ignore_index)

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

    def report(self, class_names: list[str]) -> dict:
        """{'dice', 'iou', 'images', 'per_class': {name: {'dice', 'iou'}}} at 0.5 (argmax for multi-class)."""
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
    """Optional experiment tracker (TensorBoard or W&B, offline unless WANDB_MODE says otherwise). Never required."""

    def __init__(self, kind: str, log_dir: Path, config: dict, wandb_mode: str = "offline"):
        """`wandb_mode`: W&B's mode (offline, online, disabled); the entry point takes it from WANDB_MODE."""
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
            # offline by default; `wandb sync` uploads later
            self.backend = wandb.init(project="segpipe", dir=str(log_dir), config=config, mode=wandb_mode)

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
