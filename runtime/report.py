"""summary.csv rows, ground-truth scores and metrics.json. numpy + OpenCV + utils only."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from runtime.metadata import MULTICLASS_RULE
from utils import (
    IGNORE_INDEX, UserError, atomic_write_json, class_counts, dice_iou, dice_iou_from_counts, list_images,
    mask_stem, read_mask,
)

CSV_COLUMNS = (
    "file", "status", "width", "height", "area_px", "area_pct", "threshold", "max_prob",
    "components", "largest_component_px", "ms", "dice", "iou", "crop_status", "crop_box", "gate_prob", "backend",
    "error",
)
FRAME_COLUMNS = ("frame", "inferred") + CSV_COLUMNS[1:]


def scored_names(class_names, background: bool = True) -> list[str]:
    """The classes scored one by one: all but class 0 when it is the background, else all of them."""
    return list(class_names[1:] if background else class_names)


def csv_columns(class_names=(), background: bool = True) -> tuple[str, ...]:
    """summary.csv columns: multi-class models (names incl. class 0) add dice_<class> after iou per scored class."""
    if len(class_names) < 2:
        return CSV_COLUMNS
    at = CSV_COLUMNS.index("iou") + 1
    return CSV_COLUMNS[:at] + tuple(f"dice_{n}" for n in scored_names(class_names, background)) + CSV_COLUMNS[at:]


class CsvLog:
    """A CSV written row by row and flushed each time, so a crash loses nothing already done."""

    def __init__(self, path: Path, columns=CSV_COLUMNS):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.columns = path, columns
        self.fh = open(path, "w", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.fh, fieldnames=columns, extrasaction="ignore")
        self.writer.writeheader()
        self.fh.flush()

    def write(self, row: dict) -> None:
        self.writer.writerow(row)
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def new_row(name: str, columns=CSV_COLUMNS) -> dict:
    row = dict.fromkeys(columns, "")
    row["file" if "file" in columns else "frame"] = name
    return row


def fill_row(row: dict, mask: np.ndarray, info: dict) -> None:
    """Size, area, threshold, max prob, component and gate columns from a prediction's info.

    An image the gate judged clean (info 'gated') gets status gated_clean and no max_prob (not segmented).
    """
    h, w = mask.shape[:2]
    area = int(info["area_px"])
    status = "gated_clean" if info.get("gated") else "ok" if info["detected"] else "no_detection"
    gate_prob = info.get("gate_prob")
    row.update(
        status=status, width=w, height=h, area_px=area,
        area_pct=round(100.0 * area / (h * w), 3), threshold="" if info["threshold"] is None else info["threshold"],
        max_prob="" if info["max_prob"] is None else round(float(info["max_prob"]), 4), components=info["components"],
        largest_component_px=info["largest_component_px"],
        crop_status=info.get("crop_status", ""), crop_box=info.get("crop_box", ""),
        gate_prob="" if gate_prob is None else float(f"{gate_prob:.6g}"), backend=info.get("backend", ""),
    )


def error_row(name: str, reason: str, columns=CSV_COLUMNS) -> dict:
    row = new_row(name, columns)
    row.update(status="error", error=reason)
    return row


# ----------------------------------------------------------------------------- ground truth


def load_gt_index(gt_dir, num_classes: int | None = None, ignore_index: int | None = IGNORE_INDEX,
                  max_pixels: int | None = None) -> dict[str, Path]:
    """Ground-truth masks by relative path without suffix and by bare stem (first one wins). With the model's
    `num_classes`, every mask is first read by the rules training reads masks by (runtime/masks.py): photos,
    class ids the model does not have and contradicting encodings stop the run with one line."""
    if gt_dir is None:
        return {}
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise UserError(f"ground-truth folder not found: {gt_dir} (check --gt)")
    index: dict[str, Path] = {}
    paths = list_images(gt_dir)
    for path in paths:
        index.setdefault(path.relative_to(gt_dir).with_name(mask_stem(path)).as_posix(), path)
        index.setdefault(mask_stem(path), path)
    if num_classes is not None and paths:
        from runtime.masks import check_mask_files

        try:
            check_mask_files(paths, num_classes, ignore_index, max_pixels, what="--gt masks")
        except UserError as exc:
            raise UserError(f"--gt {gt_dir}: {exc}") from None
    return index


def find_gt(gt_index: dict[str, Path], name: str) -> Path | None:
    """The ground-truth mask for image `name`: same relative path first, then same stem."""
    rel = Path(name).with_suffix("")
    return gt_index.get(rel.as_posix()) or gt_index.get(rel.name)


def score(row: dict, mask: np.ndarray, gt_path: Path | None, num_classes: int,
          class_names=(), background: bool = True, ignore_index: int | None = IGNORE_INDEX) -> tuple[int, ...] | None:
    """Add Dice/IoU to `row`; returns (intersection, predicted, true) pixels for pooling, one triple per
    foreground class (flat), so metrics.json can pool and average them. Ground-truth pixels of `ignore_index`
    (void) are left out.

    Binary: the foreground. Multi-class: by runtime.metadata.MULTICLASS_RULE, dice/iou the class mean and a
    dice_<class> column per class (without `background`, class 0 is scored too). A bad ground-truth mask is noted in the error column; the
    prediction stays.
    """
    if gt_path is None:
        return None
    try:
        gt = read_mask(gt_path, num_classes, ignore_index=ignore_index)
    except UserError as exc:
        row["error"] = f"ground truth: {exc}"
        return None
    if gt.shape != mask.shape:
        gt_size, image_size = f"{gt.shape[1]}x{gt.shape[0]}", f"{mask.shape[1]}x{mask.shape[0]}"
        row["error"] = f"ground truth {gt_path.name} is {gt_size} but the image is {image_size}"
        return None
    valid = gt != ignore_index if ignore_index is not None else None
    if num_classes > 1:
        shift = 0 if background else 1  # no background: ids one up, so class_counts' classes 1.. are all of them
        counts = class_counts(mask + shift, gt + shift, num_classes + shift, valid)  # (K, 3)
        dice, iou = dice_iou_from_counts(counts)
        names = scored_names(class_names, background) or [str(c) for c in range(1 - shift, num_classes)]
        row.update(dice=round(float(dice.mean()), 4), iou=round(float(iou.mean()), 4),
                   **{f"dice_{name}": round(float(d), 4) for name, d in zip(names, dice)})
        return tuple(int(v) for v in counts.ravel())
    valid = np.ones(gt.shape, bool) if valid is None else valid
    pred, true = (mask > 0) & valid, gt == 1
    dice, iou = dice_iou(pred, true)
    row.update(dice=round(dice, 4), iou=round(iou, 4))
    return int(np.logical_and(pred, true).sum()), int(pred.sum()), int(true.sum())


def write_metrics(path: Path, rows: list[dict], counts: list[tuple[int, ...]], class_names=(),
                  background: bool = True, model: dict | None = None) -> dict:
    """metrics.json: mean per-image Dice/IoU and Dice/IoU pooled over all pixels (over every
    foreground class). Multi-class adds `per_class`: each class's mean Dice/IoU over the images
    (MULTICLASS_RULE), its pooled pixel Dice, and in how many images it is true / predicted.
    `model` (Segmenter.run_info): the file that produced the numbers, its precision and why, and the rule."""
    scored = [row for row in rows if row["dice"] != ""]
    inter = sum(sum(c[0::3]) for c in counts)
    total = sum(sum(c[1::3]) + sum(c[2::3]) for c in counts)
    metrics = {
        "images_with_gt": len(scored),
        "mean_dice": float(np.mean([float(r["dice"]) for r in scored])) if scored else None,
        "mean_iou": float(np.mean([float(r["iou"]) for r in scored])) if scored else None,
        "pixel_dice": (2 * inter / total if total else 1.0) if counts else None,
        "pixel_iou": (inter / (total - inter) if total else 1.0) if counts else None,
        "backend": ",".join(sorted({str(r.get("backend")) for r in rows if r.get("backend")})) or None,
    }
    if len(class_names) > 1:
        metrics.update(per_class=per_class_metrics(counts, class_names, background), multiclass_rule=MULTICLASS_RULE)
        if not background:
            metrics.update(background=False, multiclass_rule=MULTICLASS_RULE + " (no background here: the "
                           "classes 0..C-1 are all scored, class 0 included)")
    if model:
        metrics["model"] = model
    atomic_write_json(path, metrics)
    return metrics


def per_class_metrics(counts: list[tuple[int, ...]], class_names, background: bool = True) -> dict:
    """{class: {mean_dice, mean_iou, pixel_dice, images_true, images_predicted}} from the per-image counts."""
    names = scored_names(class_names, background)
    table = np.asarray(counts, np.int64).reshape(len(counts), len(names), 3) if counts else np.zeros((0, len(names), 3))
    dice, iou = dice_iou_from_counts(table)  # (images, K)
    pooled_dice, _ = dice_iou_from_counts(table.sum(axis=0))  # (K,)
    return {name: {"mean_dice": float(dice[:, k].mean()) if len(table) else None,
                   "mean_iou": float(iou[:, k].mean()) if len(table) else None,
                   "pixel_dice": float(pooled_dice[k]) if len(table) else None,
                   "images_true": int((table[:, k, 2] > 0).sum()), "images_predicted": int((table[:, k, 1] > 0).sum())}
            for k, name in enumerate(names)}
