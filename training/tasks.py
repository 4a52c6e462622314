"""The two things train.py can train, as task objects the one fold loop (training/loop.py) calls.

    SegmentTask   TASK=segment: the segmenter; Dice+BCE/CE loss, per-image Dice/IoU, early stopping on val Dice
    ClassifyTask  TASK=classify: the clean/defect gate (training/classify.py); an encoder + pooling head, BCE on image
                  labels, loss/accuracy/AUC, early stopping on val AUC

Both take the masks the loaders yield; the gate's loss and metrics reduce them to image labels
(any pixel > 0) themselves. Each task says what its model is, how it is scored out of fold and
what its export needs; the loop never asks which task it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from training import classify
from config import Config
from model import GATE_ARCH, GateLoss, build_loss, build_model, model_args
from training.metrics import ScoreSum
from training.scoring import GateOutOfFold, SegmentOutOfFold
from training.splits import resolve_class_weights
from utils import LOG


@dataclass(frozen=True)
class SegmentTask:
    """TASK=segment: the segmenter (arch + encoder, CLASSES outputs), scored per pixel."""
    cfg: Config
    monitor_name: ClassVar[str] = "dice"  # what early stopping and the best checkpoint maximise
    pads_to_square: ClassVar[bool] = True  # whole images padded to an INPUT_SIZE square

    def build_model(self, weights: str | None = None) -> torch.nn.Module:
        return build_model(self.cfg.arch, self.cfg.encoder, weights, self.cfg.classes)

    def model_args(self) -> dict:
        return model_args(self.cfg.arch, self.cfg.encoder, self.cfg.classes)

    def build_loss(self, entries: list | None = None, train_idx: list[int] | None = None) -> torch.nn.Module:
        """The training loss; without entries (scoring a checkpoint) no class weighting."""
        cfg = self.cfg
        weights = resolve_class_weights(cfg, entries, train_idx) if entries is not None else None
        return build_loss(cfg.classes, cfg.dice_weight, cfg.bce_weight, weights, cfg.ignore_index)

    def new_sums(self) -> ScoreSum:
        return ScoreSum(self.cfg.names(), self.cfg.ignore_index)

    def monitor_score(self, stats: dict) -> float:
        return stats["dice"]

    def describe_stats(self, stats: dict, iou: bool = False) -> str:
        return f"loss {stats['loss']:.4f} dice {stats['dice']:.4f}" + (f" iou {stats['iou']:.4f}" if iou else "")

    def describe_best(self, scores: dict) -> str:
        return f"dice {scores['dice']:.4f} iou {scores['iou']:.4f}"

    def patch_hw(self) -> tuple[int, int] | None:
        return self.cfg.patch_hw()

    def preview_grid(self, model, dataset, device) -> np.ndarray:
        return preview_grid(model, dataset, self.cfg.classes, device, ignore_index=self.cfg.ignore_index)

    def check_data(self, entries: list) -> None:
        """Any labelled images can train a segmenter."""

    def new_out_of_fold(self, sources: dict) -> SegmentOutOfFold:
        return SegmentOutOfFold(self, sources)

    def log_summary(self, summary: dict) -> None:
        LOG.info("CV dice %.4f ± %.4f, IoU %.4f ± %.4f; out-of-fold dice at original size %.4f; "
                 "best threshold %.2f (oof dice %.4f)",
                 summary["mean_dice"], summary["std_dice"], summary["mean_iou"], summary["std_iou"],
                 summary["oof_dice"], summary["best_threshold"], summary["oof_dice_at_best_threshold"])
        if "oof_per_class" in summary:
            LOG.info("out-of-fold per class at original size: %s", ", ".join(
                f"{name} dice {v['dice']:.4f} iou {v['iou']:.4f}" for name, v in summary["oof_per_class"].items()))

    def export_args(self, summary: dict) -> dict:
        """export_onnx's settings: MIN_AREA and INT8. No threshold: export reads the out-of-fold best one from
        cv_summary.json itself and records it as the cross-validated rule, as a later export.py does."""
        return {"min_area": self.cfg.min_area, "int8": self.cfg.int8}


@dataclass(frozen=True)
class ClassifyTask:
    """TASK=classify: the clean/defect gate (encoder + pooling head, 1 logit), scored per image."""
    cfg: Config
    monitor_name: ClassVar[str] = "auc"  # val ROC-AUC, or -loss when the val fold holds one class only
    pads_to_square: ClassVar[bool] = False  # whole images as cached, batched by pad_collate as the runtime pads

    def build_model(self, weights: str | None = None) -> torch.nn.Module:
        return build_model(GATE_ARCH, self.cfg.encoder, weights, 1, gate_pool=self.cfg.gate_pool)

    def model_args(self) -> dict:
        return model_args(GATE_ARCH, self.cfg.encoder, 1, gate_pool=self.cfg.gate_pool)

    def build_loss(self, entries: list | None = None, train_idx: list[int] | None = None) -> torch.nn.Module:
        """The training loss; without entries (scoring a checkpoint) no positive weighting."""
        labels = [not entries[i].empty for i in train_idx] if entries is not None else []
        return GateLoss(classify.resolve_pos_weight(self.cfg.gate_pos_weight, labels) if labels else None,
                        self.cfg.ignore_index)

    def new_sums(self) -> classify.GateSum:
        return classify.GateSum(self.cfg.ignore_index)

    def monitor_score(self, stats: dict) -> float:
        return classify.monitor(stats)

    def describe_stats(self, stats: dict, iou: bool = False) -> str:
        return classify.describe_gate_stats(stats)

    def describe_best(self, scores: dict) -> str:
        return classify.describe_gate_stats(scores)

    def patch_hw(self) -> None:
        return None  # the gate judges whole images (config refuses TRAIN_PATCH for it)

    def preview_grid(self, model, dataset, device) -> None:
        return None  # no mask to show

    def check_data(self, entries: list) -> None:
        LOG.info("task classify: the clean/defect gate, %s encoder + pooling head at %d px", self.cfg.encoder,
                 self.cfg.input_size)
        classify.check_labels([not e.empty for e in entries])

    def new_out_of_fold(self, sources: dict) -> GateOutOfFold:
        return GateOutOfFold(self)

    def log_summary(self, summary: dict) -> None:
        LOG.info("%s", classify.describe_gate_report(summary["oof"]))

    def export_args(self, summary: dict) -> dict:
        """export_onnx's settings: the out-of-fold threshold that keeps GATE_RECALL (gate.onnx); a gate has no int8."""
        return {"threshold": summary["threshold"], "int8": "off"}


TASK_CLASSES = {"segment": SegmentTask, "classify": ClassifyTask}


def make_task(cfg: Config) -> SegmentTask | ClassifyTask:
    return TASK_CLASSES[cfg.task](cfg)


@torch.inference_mode()
def preview_grid(model, dataset, num_classes: int, device, count: int = 4, ignore_index: int | None = None
                 ) -> np.ndarray:
    """Rows of [image | ground truth | prediction] for the first val images, RGB uint8. Class ids get
    the runtime's palette colours; wide images (TRAIN_PATCH strips) stack the three vertically."""
    from runtime.postprocess import colorize

    model.eval()
    rows = []
    for i in range(min(count, len(dataset))):
        image, mask = dataset[i]
        logits = model(image[None].to(device)).float()[0]
        pred = (torch.sigmoid(logits[0]) > 0.5) if num_classes == 1 else logits.argmax(0)
        truth = mask[0] if num_classes == 1 else mask
        rgb = image.permute(1, 2, 0).numpy() * np.array(dataset.std) + np.array(dataset.mean)
        def as_rgb(m: torch.Tensor) -> np.ndarray:
            ids = m.cpu().numpy().astype(np.uint8)
            rgb = colorize(ids) if num_classes > 1 else np.repeat((ids == 1)[..., None] * np.uint8(255), 3, 2)
            rgb[ids == ignore_index] = 128  # void: grey
            return rgb
        panels = [(rgb.clip(0, 1) * 255).astype(np.uint8), as_rgb(truth), as_rgb(pred)]
        rows.append(np.concatenate(panels, 0 if rgb.shape[1] > 2 * rgb.shape[0] else 1))
    width = max(row.shape[1] for row in rows)  # whole val images may differ in size under TRAIN_PATCH
    return np.concatenate([np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0))) for row in rows], 0)
