"""Probabilities -> mask, in one documented order, plus overlays and colour masks. numpy + OpenCV only.

The chain (each step optional, always in this order):

    threshold (adaptive | float | otsu) -> close K -> open K -> fill holes
        -> drop components < A px -> keep the N largest components

Which settings apply is the model's recorded rule (runtime/rule.py) unless the user overrides them. `min_area`
counts a mask's foreground pixels in all: the cascade's test and the detection status, the same count the
end-to-end graph makes (ReduceSum), so both cut at the same level.

Closing first joins a region broken by a thin gap before opening removes specks; holes are
filled after both so a closed ring is filled; the area filters come last so they judge the
final shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from runtime.rule import DEFAULT_CASCADE
from utils import UserError

# Overlay colours by class id (RGB); class 0 is background and never drawn.
PALETTE = np.array(
    [(0, 0, 0), (255, 0, 0), (0, 200, 0), (0, 90, 255), (255, 200, 0), (200, 0, 255), (0, 220, 220),
     (255, 120, 0), (140, 70, 20), (255, 105, 180), (128, 128, 128)],
    dtype=np.float32,
)
COLOR_NAMES = {
    "red": (255, 0, 0), "green": (0, 200, 0), "blue": (0, 90, 255), "yellow": (255, 220, 0),
    "cyan": (0, 220, 220), "magenta": (255, 0, 255), "white": (255, 255, 255), "orange": (255, 140, 0),
}


@dataclass(frozen=True)
class PostOptions:
    """Settings of the post-processing chain; 0 / False switches a step off."""

    threshold: str | float = "adaptive"  # 'adaptive', 'otsu' or a float in (0, 1)
    min_area: int = 64  # px a region needs to count as a detection
    cascade: tuple[float, ...] = DEFAULT_CASCADE
    close: int = 0  # kernel size in px
    open: int = 0
    fill_holes: bool = False
    min_component_area: int = 0
    keep_largest: int = 0
    background: bool = True  # multi-class: False = class 0 is a real class (ADE20k's wall), nothing is "empty"

    def __post_init__(self):
        object.__setattr__(self, "threshold", parse_threshold(self.threshold))
        for name in ("min_area", "close", "open", "min_component_area", "keep_largest"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 0:
                flag = "--" + name.replace("_", "-")
                raise UserError(f"{flag} {value!r} is not valid; use 0 (off) or a positive whole number")


# ----------------------------------------------------------------------------- thresholds


def parse_threshold(value) -> str | float:
    """'adaptive', 'otsu' or a float in (0, 1); anything else is a UserError naming --threshold."""
    if isinstance(value, str) and value.strip().lower() in ("adaptive", "otsu"):
        return value.strip().lower()
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not 0 < number < 1:  # also rejects NaN
        raise UserError(
            f"--threshold {value!r} is not valid; use 'adaptive', 'model' (the model's recommended threshold), "
            "'otsu' or a number between 0 and 1, e.g. 0.5"
        )
    return number


def otsu_level(probs: np.ndarray) -> float | None:
    """Otsu's threshold of an (H, W) map in [0, 1], or None when the map is flat."""
    if float(probs.max() - probs.min()) < 1e-6:
        return None
    levels = np.clip(np.rint(probs * 255.0), 0, 255).astype(np.uint8)
    level, _ = cv2.threshold(levels, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(level) / 255.0


def component_stats(mask: np.ndarray) -> tuple[int, int]:
    """(number of 8-connected foreground components, pixels in the largest one)."""
    count, _, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    if count <= 1:
        return 0, 0
    return count - 1, int(stats[1:, cv2.CC_STAT_AREA].max())


def detected_area(mask: np.ndarray, min_area: int) -> bool:
    """A detection: at least `min_area` (and at least one) foreground pixels in all."""
    return int(np.count_nonzero(mask)) >= max(int(min_area), 1)


def apply_threshold(
    probs: np.ndarray, threshold, min_area: int, cascade=DEFAULT_CASCADE
) -> tuple[np.ndarray, float | None]:
    """(H, W) probs -> (uint8 {0, 1} mask, threshold used, or None when nothing was detected).

    'adaptive' tries each cascade level and keeps the first whose mask holds at least `min_area`
    foreground pixels in all (its total area: what the end-to-end graph counts too); if none does,
    the result is an empty mask (a safe negative). A fixed or Otsu threshold keeps its mask as is;
    the same area test only decides detected or not.
    """
    threshold = parse_threshold(threshold)
    if threshold == "adaptive":
        levels = [float(t) for t in cascade]
    elif threshold == "otsu":
        level = otsu_level(probs)
        if level is None:
            return np.zeros(probs.shape, np.uint8), None
        levels = [level]
    else:
        levels = [threshold]
    mask = np.zeros(probs.shape, np.uint8)
    for level in levels:
        mask = (probs > level).astype(np.uint8)
        if detected_area(mask, min_area):
            return mask, round(level, 4)
    if threshold == "adaptive":
        return np.zeros(probs.shape, np.uint8), None
    return mask, None


# ----------------------------------------------------------------------------- morphology


def _kernel(size: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def close_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Morphological closing with a size x size ellipse: bridges gaps narrower than it."""
    if size <= 1:
        return mask
    # Pad so the dilation cannot touch the border and the erosion shrink regions there.
    pad = size
    padded = cv2.copyMakeBorder(mask, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    closed = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, _kernel(size))
    return closed[pad:-pad, pad:-pad]


def open_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Morphological opening with a size x size ellipse: removes specks thinner than it."""
    if size <= 1:
        return mask
    return cv2.morphologyEx(mask, cv2.MORPH_OPEN, _kernel(size))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background areas fully enclosed by foreground; bays open to the border stay open."""
    background = (mask == 0).astype(np.uint8)
    # 4-connected background pairs with 8-connected foreground: a diagonal gap does not leak.
    count, labels = cv2.connectedComponents(background, connectivity=4)
    if count <= 1:
        return mask
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    outside = np.zeros(count, bool)
    outside[np.unique(border)] = True
    outside[0] = True  # label 0 is the foreground itself
    filled = mask.copy()
    filled[~outside[labels]] = 1
    return filled


def remove_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Binary mask without the 8-connected components smaller than `min_area` pixels."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area  # (count,)
    keep[0] = False  # label 0 is the background
    return keep[labels].astype(np.uint8)


def keep_largest(mask: np.ndarray, count: int) -> np.ndarray:
    """Binary mask with only its `count` largest 8-connected components (ties: lower label first)."""
    total, labels, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    if total - 1 <= count:
        return (mask > 0).astype(np.uint8)
    order = np.argsort(-stats[1:, cv2.CC_STAT_AREA], kind="stable")[:count] + 1
    keep = np.zeros(total, bool)
    keep[order] = True
    return keep[labels].astype(np.uint8)


def clean_binary(mask: np.ndarray, options: PostOptions) -> np.ndarray:
    """The morphology part of the chain on a {0, 1} mask, in the documented order."""
    mask = close_mask(mask, options.close)
    mask = open_mask(mask, options.open)
    if options.fill_holes:
        mask = fill_holes(mask)
    if options.min_component_area > 0:
        mask = remove_small_components(mask, options.min_component_area)
    if options.keep_largest > 0:
        mask = keep_largest(mask, options.keep_largest)
    return mask


def morphology_off(options: PostOptions) -> bool:
    return options.close <= 1 and options.open <= 1 and not options.fill_holes and not (
        options.min_component_area or options.keep_largest)


def argmax_mask(probs: np.ndarray, options: PostOptions) -> np.ndarray:
    """(C, H, W) probs -> (H, W) uint8 class ids, each class cleaned on its own, in class order.

    With a background, a pixel no class keeps is background (0). Without one, class 0 is cleaned like the
    others and a pixel no class keeps takes the class of the nearest kept pixel: nothing is "empty"."""
    labels = probs.argmax(axis=0).astype(np.uint8)  # (H, W) class ids
    if morphology_off(options):
        return labels
    mask, claimed = np.zeros_like(labels), np.zeros(labels.shape, bool)
    for cls in range(0 if not options.background else 1, probs.shape[0]):
        take = (clean_binary((labels == cls).astype(np.uint8), options) > 0) & ~claimed
        mask[take] = cls
        claimed |= take
    if not options.background and not claimed.all():
        mask = fill_from_nearest(mask, claimed) if claimed.any() else labels
    return mask


def fill_from_nearest(mask: np.ndarray, claimed: np.ndarray) -> np.ndarray:
    """Each unclaimed pixel of a class-id mask takes the class of the nearest claimed pixel (L2 distance)."""
    present = np.unique(mask[claimed])
    distances = np.stack([cv2.distanceTransform((~(claimed & (mask == c))).astype(np.uint8), cv2.DIST_L2, 3)
                          for c in present])  # (K, H, W)
    nearest = present[distances.argmin(axis=0)].astype(np.uint8)
    return np.where(claimed, mask, nearest)


def class_component_stats(mask: np.ndarray) -> tuple[int, int]:
    """component_stats over every class of a mask without background (class 0 included), summed / max."""
    stats = [component_stats(mask == cls) for cls in np.unique(mask)]
    return sum(s[0] for s in stats), max(s[1] for s in stats)


def postprocess(probs: np.ndarray, options: PostOptions) -> tuple[np.ndarray, dict]:
    """(C, H, W) probs -> (uint8 mask, info). Binary: {0, 1}; multi-class: class ids (argmax).

    info: threshold (used, or None), detected, max_prob, area_px, components, largest_component_px.
    A multi-class model without background (options.background False) always detects something: every
    pixel belongs to a class, class 0 included, and counts in the area and the components.
    """
    every_class = probs.shape[0] > 1 and not options.background
    if probs.shape[0] > 1:
        mask = argmax_mask(probs, options)
        used, detected = None, every_class or detected_area(mask, options.min_area)
        foreground = probs if every_class else probs[1:]
    else:
        raw, used = apply_threshold(probs[0], options.threshold, options.min_area, options.cascade)
        detected = used is not None
        if not detected and isinstance(options.threshold, float):
            used = options.threshold  # a fixed threshold was still the one applied
        mask = clean_binary(raw, options)
        detected = detected and bool(mask.any())
        foreground = probs
    count, largest = class_component_stats(mask) if every_class else component_stats(mask)
    info = {
        "threshold": used, "detected": detected, "max_prob": float(foreground.max()),
        "area_px": mask.size if every_class else int(np.count_nonzero(mask)), "components": count,
        "largest_component_px": largest,
    }
    return mask, info


# ----------------------------------------------------------------------------- drawing


def parse_color(value) -> tuple[int, int, int]:
    """'red', '#ff0000' or '255,0,0' -> (R, G, B)."""
    if isinstance(value, (tuple, list)) and len(value) == 3:
        return tuple(int(v) for v in value)
    text = str(value).strip().lower()
    if text in COLOR_NAMES:
        return COLOR_NAMES[text]
    try:
        if text.startswith("#") and len(text) == 7:
            return tuple(int(text[i: i + 2], 16) for i in (1, 3, 5))
        parts = tuple(int(p) for p in text.split(","))
        if len(parts) == 3 and all(0 <= p <= 255 for p in parts):
            return parts
    except ValueError:
        pass
    raise UserError(
        f"--color {value!r} is not valid; use a name ({', '.join(COLOR_NAMES)}), '#rrggbb' or 'R,G,B' e.g. 255,0,0"
    )


def class_palette(background: bool = True) -> np.ndarray:
    """Colours by class id: class 0 black and never drawn when it is the background, else every class coloured."""
    return PALETTE if background else PALETTE[1:]


def make_overlay(
    image: np.ndarray, mask: np.ndarray, color=(255, 0, 0), alpha: float = 0.5, palette: np.ndarray | None = None,
    background: bool = True,
) -> np.ndarray:
    """RGB uint8 image with `color` blended in where mask is set; unmasked pixels untouched.

    With a `palette` the mask holds class ids and each class gets its palette colour; without a
    `background` class 0 is drawn too (pass class_palette(False)).
    """
    overlay = image.copy()
    where = mask > 0 if background or palette is None else np.ones(mask.shape, bool)  # (H, W)
    if palette is None and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        # One colour: blend every byte value once (a 256-entry table per channel, the same float32
        # formula as below) and copy the table's answer where the mask is set. 720p: ~2.5x faster
        # (16 vs 41 ms) than gathering the masked pixels as floats (BENCHMARKS.md, video).
        table = np.arange(256, dtype=np.float32)[:, None] * (1.0 - alpha) + np.asarray(color, np.float32) * alpha
        table = np.clip(np.rint(table), 0, 255).astype(np.uint8)  # (256, 3)
        # LUT on `overlay`: a contiguous copy (cv2 refuses some numpy views)
        return cv2.copyTo(cv2.LUT(overlay, table[None]), where.view(np.uint8), overlay)
    if palette is not None:
        tint = palette[mask[where] % len(palette)]  # (N, 3)
    else:
        tint = np.asarray(color, np.float32)
    blended = image[where].astype(np.float32) * (1.0 - alpha) + tint * alpha
    overlay[where] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return overlay


def colorize(mask: np.ndarray, palette: np.ndarray = PALETTE) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) RGB with the palette colour of each class."""
    return palette[mask % len(palette)].astype(np.uint8)


def draw_legend(class_names: list[str], row: int = 24, palette: np.ndarray = PALETTE) -> np.ndarray:
    """An RGB image with one swatch and name per class, for multi-class outputs."""
    legend = np.full((row * len(class_names) + 8, 260, 3), 255, np.uint8)
    for cls, name in enumerate(class_names):
        y = 4 + cls * row
        color = tuple(int(c) for c in palette[cls % len(palette)])
        cv2.rectangle(legend, (6, y + 2), (6 + row - 6, y + row - 4), color, -1)
        cv2.rectangle(legend, (6, y + 2), (6 + row - 6, y + row - 4), (0, 0, 0), 1)
        cv2.putText(legend, f"{cls}: {name}", (row + 8, y + row - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return legend
