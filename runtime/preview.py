"""What the web page (app.py) shows, without its widgets: one image's prediction views and summary row, its
ground-truth scores, a video copy a browser can play, and the small file-name helpers. numpy + OpenCV, no
streamlit, no torch, so each piece is testable alone.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import cv2
import numpy as np

from runtime.postprocess import class_palette, colorize, make_overlay
from runtime.report import fill_row, new_row
from utils import IGNORE_INDEX, UserError, class_counts, dice_iou, dice_iou_from_counts, read_mask, resize_long_side

# Browsers cannot play the engine's MPEG-4 Part 2 (mp4v) or AVI output, so the page shows a VP8 WebM copy.
PREVIEW_FORMAT = ("VP80", ".webm", "video/webm")


def safe_name(name: str, default: str = "upload") -> str:
    """A file name of the upload that is safe to write in our own temporary folder."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name or default).name).strip("._") or default
    return stem[:120]


def strip_folder(text: str, folder: Path | None) -> str:
    return text.replace(str(folder) + os.sep, "").replace(str(folder), "") if folder else text



def predict_image(segmenter, image: np.ndarray, image_max_side: int = 0, alpha: float = 0.5) -> dict:
    """Mask, overlay and the summary row of one RGB image (downscaled to `image_max_side` first, 0: as is)."""
    original_hw = image.shape[:2]
    if image_max_side and max(original_hw) > image_max_side:
        image = resize_long_side(image, image_max_side)
    result = segmenter.predict(image)
    multi, background = result.probs.shape[0] > 1, bool(segmenter.meta.get("background", True))
    palette = class_palette(background) if multi else None
    row = new_row("image")
    fill_row(row, result.mask, result.info)
    return {
        "image": image, "mask": result.mask, "multi": multi, "row": row, "original_hw": original_hw,
        "gate_threshold": segmenter.gate.threshold if segmenter.gate is not None else None, "palette": palette,
        "background": background, "mask_view": colorize(result.mask, palette) if multi else result.mask * 255,
        "overlay": make_overlay(image, result.mask, alpha=alpha, palette=palette, background=background),
    }


def compare_gt(mask: np.ndarray, gt_path: Path, num_classes: int, original_hw: tuple,
               background: bool = True) -> tuple[np.ndarray, float, float]:
    """(ground truth at the mask's size, Dice, IoU); the GT must match the uploaded image's size.

    Binary: the foreground. Multi-class: the mean over the classes (class 0 too without `background`), a
    class absent from both counting 1 (runtime.metadata.MULTICLASS_RULE, as inference.py --gt scores it)."""
    gt = read_mask(gt_path, num_classes)  # void (IGNORE_INDEX) left out of the scores
    if gt.shape != tuple(original_hw):
        raise UserError(f"the ground-truth mask is {gt.shape[1]}x{gt.shape[0]} but the image is "
                        f"{original_hw[1]}x{original_hw[0]}; upload the mask that belongs to this image")
    if gt.shape != mask.shape:  # the image was downscaled to the max long side
        gt = cv2.resize(gt, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_NEAREST)
    valid = gt != IGNORE_INDEX
    if num_classes > 1:
        shift = 0 if background else 1  # class ids one up: class_counts scores 1.., here every class
        counts = class_counts(mask + shift, gt + shift, num_classes + shift, valid)
        dice, iou = (float(v.mean()) for v in dice_iou_from_counts(counts))
    else:
        dice, iou = dice_iou(mask > 0, gt == 1, valid)
    return gt, dice, iou


def browser_preview(video: Path) -> bytes | None:
    """A VP8 WebM copy a browser can play (frames re-encoded as they are), or None without that encoder."""
    fourcc, suffix, _ = PREVIEW_FORMAT
    capture = cv2.VideoCapture(str(video))
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    target, writer = video.with_name(video.stem + "_preview" + suffix), None
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if writer is None:
                writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*fourcc), fps,
                                         (frame.shape[1], frame.shape[0]))
                if not writer.isOpened():
                    return None
            writer.write(frame)
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    return target.read_bytes() if target.is_file() and target.stat().st_size else None
