"""Out-of-fold scoring, as the runtime scores, and the cv_summary.json each task writes.

The segmenter: every val image scored by the fold model that did not train on it, at the cached
resolution and at the image's own size (the shared torch-free preprocessing, the runtime's rule).
The gate: every val image's defect probability, then the threshold keeping GATE_RECALL of the
defective images.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch

from training import classify
from config import Config
from dataset import CacheEntry
from model import load_checkpoint
from runtime.metadata import MULTICLASS_RULE, TILE_OVERLAP, preprocess_metadata
from runtime.tiling import predict_tiled
from training.distributed import gather, is_main, shard
from training.loop import Task, evaluate_checkpoint
from training.metrics import OOFStats


def model_probs(model, classes: int, device, tensors: list[np.ndarray]) -> list[np.ndarray]:
    """(3, H, W) inputs of one shape -> (C, H, W) probabilities, fp32, as the exported model computes them."""
    logits = model(torch.from_numpy(np.stack(tensors)).to(device)).float()  # (N, C, H, W)
    probs = torch.sigmoid(logits) if classes == 1 else torch.softmax(logits, 1)
    return list(probs.cpu().numpy())


@torch.inference_mode()
def score_original_resolution(task: Task, path: Path, sources: list, device, oof: OOFStats,
                              boxes: list | None = None) -> None:
    """Score a fold model as the runtime will: the shared torch-free preprocessing, the output mapped
    back to each source image's own size, compared with the source mask. With smart crop, each image
    is cut to its cached crop box first and the prediction pasted back (runtime/crop.py)."""
    from runtime.crop import background_fill, crop_square, paste_back
    from utils import preprocess, read_image, restore_size

    cfg = task.cfg
    model = task.build_model().to(device).eval()
    load_checkpoint(model, path)
    meta = preprocess_metadata(cfg.input_size)
    local = OOFStats(cfg.classes, ignore_index=cfg.ignore_index)
    for source, box in shard(list(zip(sources, boxes or [None] * len(sources)))):
        image = read_image(source.image_path, cfg.max_image_pixels)
        mask = source.load_mask(cfg.classes, cfg.max_image_pixels, image.shape[:2], cfg.ignore_index)
        view = crop_square(image, box, cfg.input_size, cfg.crop_pad_value) if box else image
        chw, valid_hw = preprocess(view, meta)  # (3, H', W')
        tile = cfg.tile_hw()
        if tile and (valid_hw[0] > tile[0] or valid_hw[1] > tile[1]):  # as the exported model will: tiles, blended
            probs = predict_tiled(chw, valid_hw, tile, partial(model_probs, model, cfg.classes, device), TILE_OVERLAP)
        else:
            probs = model_probs(model, cfg.classes, device, [chw])[0]
        probs = restore_size(probs, valid_hw, view.shape[:2])  # (C, h, w)
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
        "mean_dice": float(dice.mean()), "std_dice": float(dice.std()),
        "mean_iou": float(iou.mean()), "std_iou": float(iou.std()),
        "oof_dice": oof_dice, "oof_iou": oof_iou, "oof_images": oof_original.count,
        "best_threshold": threshold, "oof_dice_at_best_threshold": oof_dice_best,
        "oof_iou_at_best_threshold": oof_iou_best,
        "oof_dice_cached_resolution": cached_dice, "oof_iou_cached_resolution": cached_iou,
        "note": "fold dice/iou: per-image means at the training resolution; oof_*: per-image means at each "
                "image's original resolution (as inference.py scores), threshold 0.5 unless named",
    }
    if oof_original.classes > 1:
        summary["oof_per_class"] = oof_original.report(class_names)["per_class"]
        summary["oof_per_class_cached_resolution"] = oof.report(class_names)["per_class"]
        summary["multiclass_rule"] = MULTICLASS_RULE
    if test_scores:
        summary["test"] = {str(k): v for k, v in test_scores.items()}
    return summary


class SegmentOutOfFold:
    """The segmenter's out-of-fold statistics, fold by fold: at the cached resolution and at each image's own."""

    def __init__(self, task: Task, sources: dict):
        self.task, self.sources = task, sources
        classes, ignore = task.cfg.classes, task.cfg.ignore_index
        self.cached, self.original = OOFStats(classes, ignore_index=ignore), OOFStats(classes, ignore_index=ignore)

    def score_fold(self, fold: int, path: Path, entries: list[CacheEntry], val_idx: list[int], device) -> dict:
        """The fold's val scores at the cached resolution; multi-class adds "oof", its images at their own size."""
        cfg = self.task.cfg
        scores = evaluate_checkpoint(self.task, path, entries, val_idx, device, self.cached)
        val = [entries[i] for i in val_idx]
        fold_oof = OOFStats(cfg.classes, ignore_index=cfg.ignore_index)
        score_original_resolution(self.task, path, [self.sources[e.key] for e in val], device, fold_oof,
                                  [e.crop_box for e in val])
        self.original.merge(fold_oof)
        if cfg.classes > 1:  # this fold's val images at their original size, per class
            scores["oof"] = fold_oof.report(cfg.names())
        return scores

    def summarize(self, fold_scores: dict[int, dict], test_scores: dict[int, dict]) -> dict:
        return summarize(fold_scores, self.cached, self.original, test_scores, self.task.cfg.names())


# ----------------------------------------------------------------------------- the gate


@torch.inference_mode()
def predict_gate(task: Task, path: Path, entries: list[CacheEntry], device) -> list[float]:
    """The gate's defect probability for each cached image, preprocessed as the runtime does (the shared
    torch-free rule: long side to INPUT_SIZE, normalise, pad to 32), one image at a time, float32."""
    from utils import preprocess, read_image

    cfg = task.cfg
    model = task.build_model().to(device).eval()
    load_checkpoint(model, path)
    meta = preprocess_metadata(cfg.input_size)
    probs = []
    for entry in shard(entries):
        chw, _ = preprocess(read_image(entry.image, cfg.max_image_pixels), meta)  # (3, H', W')
        probs.append(float(torch.sigmoid(model(torch.from_numpy(chw)[None].to(device)).float())[0, 0]))
    return [p for part in gather(probs) for p in part]  # rank order = input order (contiguous shards)


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


class GateOutOfFold:
    """The gate's out-of-fold rows (key, fold, defective, probability), for the threshold and gate_oof.csv."""

    def __init__(self, task: Task):
        self.task, self.rows = task, []

    def score_fold(self, fold: int, path: Path, entries: list[CacheEntry], val_idx: list[int], device) -> dict:
        scores = evaluate_checkpoint(self.task, path, entries, val_idx, device)
        val = [entries[i] for i in val_idx]
        probs = predict_gate(self.task, path, val, device)
        self.rows += [(e.key, fold, not e.empty, p) for e, p in zip(val, probs)]
        return scores

    def summarize(self, fold_scores: dict[int, dict], test_scores: dict[int, dict]) -> dict:
        cfg = self.task.cfg
        report = classify.gate_report([r[3] for r in self.rows], [r[2] for r in self.rows], cfg.gate_recall)
        summary = summarize_gate(cfg, fold_scores, report, test_scores)
        if is_main():
            classify.write_oof_csv(Path(cfg.work_dir) / "gate_oof.csv", self.rows)
        return summary
