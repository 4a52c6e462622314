"""The clean/defect gate's training pieces (TASK=classify): metrics, batching, the recall-keeping threshold.

The one fold loop (training/loop.py) trains the gate as it trains the segmenter (folds, schedules, AMP,
early stopping, resume); training/tasks.py's ClassifyTask hands it what differs, from here:

    GateSum          running loss, accuracy and ROC-AUC of image-level predictions
    select_threshold the HIGHEST threshold whose recall of defective images >= the target
    gate_report      out-of-fold accuracy, AUC, threshold, recall, specificity (clean images skipped), precision

Label of an image: 1 ("defective") when its mask has any pixel > 0, else 0 ("clean").
"""

from __future__ import annotations

import csv
import io

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from model import image_labels
from training.distributed import gather
from utils import IGNORE_INDEX, LOG, UserError, atomic_write_bytes


def roc_auc(labels: np.ndarray, probs: np.ndarray) -> float | None:
    """sklearn's ROC-AUC, or None when only one class is present (it is undefined then)."""
    labels = np.asarray(labels, bool)
    if labels.all() or not labels.any():
        return None
    return float(roc_auc_score(labels, probs))


class GateSum:
    """Loss and per-image (probability, label) pairs of the gate; `result()`: loss, accuracy at 0.5, auc.

    The same interface as training.metrics.ScoreSum (`add_batch`, `reduce`, `result`), so the loop is shared.
    """

    def __init__(self, ignore_index: int | None = IGNORE_INDEX):
        self.loss, self.seen, self.probs, self.labels = 0.0, 0, [], []
        self.ignore_index = ignore_index

    def add_batch(self, loss: float, logits: torch.Tensor, masks: torch.Tensor, num_classes: int = 1) -> None:
        labels = image_labels(masks, self.ignore_index)[:, 0]  # (B,)
        self.probs.append(torch.sigmoid(logits.float()[:, 0]).cpu().numpy())
        self.labels.append(labels.cpu().numpy().astype(bool))
        self.loss += loss * len(labels)
        self.seen += len(labels)

    def reduce(self) -> "GateSum":
        """Every rank's pairs (torchrun): AUC needs them all, not a mean of per-rank AUCs."""
        parts = gather((self.loss, self.seen, self.probs, self.labels))
        self.loss, self.seen = sum(p[0] for p in parts), sum(p[1] for p in parts)
        self.probs = [a for p in parts for a in p[2]]
        self.labels = [a for p in parts for a in p[3]]
        return self

    def result(self) -> dict:
        probs = np.concatenate(self.probs) if self.probs else np.zeros(0)
        labels = np.concatenate(self.labels) if self.labels else np.zeros(0, bool)
        accuracy = float(np.mean((probs >= 0.5) == labels)) if len(labels) else 0.0
        return {"loss": self.loss / max(self.seen, 1), "accuracy": accuracy, "auc": roc_auc(labels, probs)}


def monitor(stats: dict) -> float:
    """What early stopping maximises: val ROC-AUC, or minus the val loss when the fold holds one class only."""
    return stats["auc"] if stats.get("auc") is not None else -stats["loss"]


def describe_gate_stats(stats: dict) -> str:
    auc = "n/a" if stats.get("auc") is None else f"{stats['auc']:.4f}"
    return f"loss {stats['loss']:.4f} acc {stats['accuracy']:.4f} auc {auc}"


def resolve_pos_weight(setting: str, labels: list[bool]) -> float | None:
    """GATE_POS_WEIGHT: '' -> None, 'auto' -> clean / defective images of the training fold, else the number."""
    if not setting:
        return None
    if setting == "auto":
        positives = sum(labels)
        weight = (len(labels) - positives) / max(positives, 1)
        LOG.info("gate pos_weight (auto): %.3f (%d clean / %d defective training images)", weight,
                 len(labels) - positives, positives)
        return weight
    return float(setting)


def check_labels(labels: list[bool]) -> None:
    """A gate needs both kinds of image to learn anything."""
    defective = sum(labels)
    if defective == 0 or defective == len(labels):
        kind = "defective (non-empty mask)" if defective == 0 else "clean (empty mask)"
        raise UserError(f"TASK=classify needs clean and defective images, but none of the {len(labels)} images is "
                        f"{kind}; add such images (a gate decides between the two)")


# ----------------------------------------------------------------------------- threshold and report


def select_threshold(probs, labels, recall_target: float) -> float:
    """The HIGHEST threshold t such that recall = #(defective with prob >= t) / #defective >= recall_target.

    It is one of the defective images' probabilities: the k-th largest, k the smallest count meeting
    the target (ties at t are all kept, so recall can only exceed the target). Images with
    prob >= t are segmented, the others skipped.
    """
    if not 0.0 < recall_target <= 1.0:
        raise UserError(f"GATE_RECALL={recall_target} must be in (0, 1]")
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, bool)
    positives = np.sort(probs[labels])[::-1]  # descending
    if len(positives) == 0:
        raise UserError("no defective (non-empty mask) image among the out-of-fold predictions: "
                        "the gate threshold cannot be chosen; add defective images")
    recall = np.arange(1, len(positives) + 1) / len(positives)  # recall when keeping the k largest
    k = int(np.argmax(recall >= recall_target))  # recall[-1] == 1.0, so some k qualifies
    return float(positives[k])


def gate_report(probs, labels, recall_target: float) -> dict:
    """Out-of-fold metrics of the gate and the threshold keeping `recall_target` of defective images.

    specificity = fraction of clean images skipped (prob < threshold); skipped_fraction = of all images.
    No clean image: a warning, and specificity is None.
    """
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, bool)
    threshold = select_threshold(probs, labels, recall_target)
    keep = probs >= threshold
    defective, clean = int(labels.sum()), int((~labels).sum())
    if clean == 0:
        LOG.warning("no clean (empty mask) image among the out-of-fold predictions: the gate's specificity "
                    "(clean images skipped) cannot be measured")
    true_pos = int((keep & labels).sum())
    return {
        "images": len(labels), "defective": defective, "clean": clean,
        "accuracy": float(np.mean((probs >= 0.5) == labels)),
        "auc": roc_auc(labels, probs),
        "recall_target": recall_target, "threshold": threshold,
        "recall": true_pos / defective,
        "specificity": float((~keep & ~labels).sum() / clean) if clean else None,
        "precision": true_pos / max(int(keep.sum()), 1),
        "skipped_fraction": float(np.mean(~keep)),
        "accuracy_at_threshold": float(np.mean(keep == labels)),
    }


def describe_gate_report(report: dict) -> str:
    def show(value):
        return "n/a" if value is None else f"{value:.4f}"
    return (f"gate out-of-fold on {report['images']} images ({report['defective']} defective, {report['clean']} "
            f"clean): accuracy {show(report['accuracy'])}, ROC-AUC {show(report['auc'])}; threshold "
            f"{report['threshold']:.6g} keeps recall {show(report['recall'])} (target {report['recall_target']}), "
            f"skips {show(report['specificity'])} of clean images, precision {show(report['precision'])}")


def write_oof_csv(path, rows: list[tuple[str, int, bool, float]]) -> None:
    """gate_oof.csv: key, fold, label, prob per image, to re-pick a threshold later without retraining."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["key", "fold", "defective", "prob"])
    writer.writerows((key, fold, int(label), f"{prob:.8g}") for key, fold, label, prob in rows)
    atomic_write_bytes(path, buffer.getvalue().encode())
