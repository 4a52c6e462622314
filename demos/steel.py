"""Deterministic synthetic steel-strip images with 4 defect classes (multi-class demo and bench data).

Each image is a 1600x256 grey crop of a rolled steel strip: rolling streaks along the strip,
brightness drift, grain and sensor noise, plus things that are *not* defects (faint stains,
bright specks, sometimes the dark end of the strip). About `clean_fraction` of the images carry
no defect. The others carry one or more of four classes with very different frequencies and sizes:

| id | name    | looks like                                      | in defective images | size |
| -- | ------- | ----------------------------------------------- | ------------------- | ---- |
| 1  | pits    | clusters of small dark pits                     | ~30 %               | tiny (a few hundred px) |
| 2  | scratch | a rare thin long line, bright or dark           | ~12 %               | small (thin) |
| 3  | scale   | common large regions elongated along the strip  | ~65 %               | large |
| 4  | blotch  | rare large round mottled dark blotches          | ~12 %               | large |

Masks are class-id PNGs (0 = background, 1..4 as above); `classes.txt` beside images/ and masks/
names them, one per line, background first (train.py --classes-file). The same seed gives
byte-identical files; image i does not depend on how many images come before it.

Run book::

    python -m demos.steel --out data/steel --count 120 --clean-fraction 0.6 --seed 0
    python train.py --raw-img-dir data/steel/images --raw-mask-dir data/steel/masks \
        --classes 5 --classes-file data/steel/classes.txt --class-weights auto \
        --input-size 1600 --train-patch 256x320 ...
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import cv2
import numpy as np

from demos.skin import image_rng, is_empty, white_noise
from utils import LOG, UserError, atomic_write_bytes, run_cli, setup_logging, write_png

CLASS_NAMES = ("background", "pits", "scratch", "scale", "blotch")
# Chance that a defective image carries each class (at least one is always drawn).
CLASS_CHANCE = {1: 0.30, 2: 0.12, 3: 0.65, 4: 0.12}
WIDTH, HEIGHT = 1600, 256  # the inspection line's frames; defect sizes scale with the height
SUPERSAMPLE = 4  # shapes are drawn at 4x and averaged down: anti-aliased edges, exact masks
EXTENSIONS = ("png", "jpg")


# ----------------------------------------------------------------------------- shapes


def shape_coverage(draw, points_box: tuple[float, float, float, float], shape: tuple[int, int], margin: int = 0):
    """Coverage (float32 0..1) of a shape inside its bounding box, drawn at SUPERSAMPLE x.

    `draw(canvas, offset)` paints 255 onto the uint8 supersampled canvas, with `offset` (x, y)
    the box origin in image pixels. Returns (window slices, coverage of that window) or None when
    the box misses the image. `margin` extra pixels around the box leave room for a feathered edge.
    """
    h, w = shape
    grow = 2 + margin
    x0, y0 = max(int(np.floor(points_box[0])) - grow, 0), max(int(np.floor(points_box[1])) - grow, 0)
    x1, y1 = min(int(np.ceil(points_box[2])) + grow + 1, w), min(int(np.ceil(points_box[3])) + grow + 1, h)
    if x1 <= x0 or y1 <= y0:
        return None
    canvas = np.zeros(((y1 - y0) * SUPERSAMPLE, (x1 - x0) * SUPERSAMPLE), np.uint8)
    draw(canvas, (x0, y0))
    coverage = cv2.resize(canvas, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    return (slice(y0, y1), slice(x0, x1)), coverage


def _fixed(points: np.ndarray, offset) -> np.ndarray:
    """Image-pixel points -> int32 canvas points with 4 fractional bits (cv2 shift=4)."""
    return np.round((points - np.asarray(offset, np.float64)) * SUPERSAMPLE * 16).astype(np.int32)


def polygon_coverage(points: np.ndarray, shape: tuple[int, int], margin: int = 0):
    box = (*points.min(axis=0), *points.max(axis=0))
    return shape_coverage(lambda canvas, off: cv2.fillPoly(canvas, [_fixed(points, off)], 255, cv2.LINE_8, shift=4),
                          box, shape, margin)


def polyline_coverage(points: np.ndarray, width: float, shape: tuple[int, int]):
    pad = width
    box = (points[:, 0].min() - pad, points[:, 1].min() - pad, points[:, 0].max() + pad, points[:, 1].max() + pad)
    thickness = max(1, int(round(width * SUPERSAMPLE)))
    return shape_coverage(lambda canvas, off: cv2.polylines(canvas, [_fixed(points, off)], False, 255, thickness,
                                                            cv2.LINE_8, shift=4), box, shape)


def blob_outline(rng: np.random.Generator, centre, half_x: float, half_y: float, angle: float,
                 roughness: float) -> np.ndarray:
    """An irregular closed outline (N, 2): an ellipse whose radius wobbles with a few random harmonics."""
    theta = np.linspace(0, 2 * np.pi, 160, endpoint=False)
    radius = np.ones_like(theta)
    for k in range(2, 7):
        radius += roughness / k * rng.uniform(-1, 1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    radius = np.clip(radius, 0.35, None)
    x, y = half_x * radius * np.cos(theta), half_y * radius * np.sin(theta)
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([x * c - y * s + centre[0], x * s + y * c + centre[1]], axis=1)


# ----------------------------------------------------------------------------- strip


def smooth_profile(rng: np.random.Generator, length: int, cells: int) -> np.ndarray:
    """1-D low-frequency noise in about [-1, 1] of `length` samples."""
    coarse = rng.standard_normal((1, cells + 1)).astype(np.float32)
    return cv2.resize(coarse, (length, 1), interpolation=cv2.INTER_CUBIC)[0] * 0.6


def render_strip(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """The clean steel surface, float32 (H, W) grey levels."""
    level = rng.uniform(95, 150)
    image = np.full((height, width), level, np.float32)
    image += rng.uniform(3, 8) * smooth_profile(rng, height, int(rng.integers(6, 20)))[:, None]  # rolling bands
    image += rng.uniform(6, 18) * smooth_profile(rng, width, int(rng.integers(2, 6)))[None, :]  # brightness drift
    streaks = cv2.GaussianBlur(white_noise(rng, (height, width)), (0, 0), sigmaX=rng.uniform(15, 40), sigmaY=0.7)
    image += rng.uniform(20, 45) * streaks  # rolling streaks along the strip (blur shrinks the variance)
    image += rng.uniform(2.5, 5) * cv2.GaussianBlur(white_noise(rng, (height, width)), (0, 0), 0.8)  # grain
    return image


def add_distractors(rng: np.random.Generator, image: np.ndarray) -> None:
    """What is not a defect: faint stains, bright specks and, sometimes, the dark end of the strip."""
    h, w = image.shape
    scale = h / HEIGHT
    for _ in range(int(rng.integers(0, 4))):  # faint stains: soft, low contrast, no edge
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        sx, sy = rng.uniform(20, 120) * scale, rng.uniform(10, 50) * scale
        yy, xx = np.ogrid[:h, :w]
        glow = np.exp(-(((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2) / 2).astype(np.float32)
        image += rng.uniform(-9, 9) * glow
    for _ in range(int(rng.integers(0, 25))):  # bright specks of one or two pixels
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        image[y:y + int(rng.integers(1, 3)), x:x + int(rng.integers(1, 3))] += rng.uniform(25, 60)
    if rng.random() < 0.12:  # the strip ends: a dark field with a slanted, blurred edge
        edge = rng.uniform(0.05, 0.2) * w
        slant = rng.uniform(-0.15, 0.15) * np.arange(h, dtype=np.float32)[:, None]
        x = np.arange(w, dtype=np.float32)[None, :]
        field = x < edge + slant if rng.random() < 0.5 else x > w - edge + slant
        dark = cv2.GaussianBlur(field.astype(np.float32), (0, 0), 2.0)
        image *= 1 - dark * rng.uniform(0.6, 0.85)


# ----------------------------------------------------------------------------- defects


def paint(image: np.ndarray, mask: np.ndarray, placed, class_id: int, target, feather: float = 0.0) -> None:
    """Blend `target(window)` where the shape covers it; the mask is the shape itself (coverage >= 0.5).

    `feather` (px) softens the painted edge only, so the boundary is not a perfect step.
    """
    if placed is None:
        return
    window, coverage = placed
    region = image[window]
    alpha = cv2.GaussianBlur(coverage, (0, 0), feather) if feather > 0 else coverage
    region[:] = region * (1 - alpha) + target(region) * alpha
    mask[window][coverage >= 0.5] = class_id


def draw_pits(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray) -> None:
    """Class 1: a cluster of small dark pits."""
    h, w = image.shape
    scale = h / HEIGHT
    cx, cy = rng.uniform(0.03, 0.97) * w, rng.uniform(0.1, 0.9) * h
    spread = np.array([rng.uniform(10, 45), rng.uniform(5, 20)]) * scale
    for _ in range(int(rng.integers(4, 18))):
        centre = np.array([cx, cy]) + rng.standard_normal(2) * spread
        rx, ry = max(1.3, rng.uniform(1.8, 4.5) * scale), max(1.3, rng.uniform(1.5, 3.5) * scale)
        outline = blob_outline(rng, centre, rx, ry, rng.uniform(0, np.pi), 0.2)
        depth = rng.uniform(0.5, 0.78)
        paint(image, mask, polygon_coverage(outline, (h, w)), 1, lambda r, d=depth: r * d)


def draw_scratch(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray) -> None:
    """Class 2: one thin, long, slightly curved line, bright or dark."""
    h, w = image.shape
    scale = h / HEIGHT
    length = rng.uniform(0.15, 0.45) * w
    angle = rng.uniform(-0.35, 0.35) if rng.random() < 0.75 else rng.uniform(-1.2, 1.2)
    start = np.array([rng.uniform(0, w - length * abs(np.cos(angle))), rng.uniform(0.1, 0.9) * h])
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    t = np.linspace(0, 1, 24)[:, None]
    points = start + t * length * direction + rng.uniform(-0.08, 0.08) * length * t * (1 - t) * normal
    points[:, 1] = np.clip(points[:, 1], 2, h - 3)
    width = max(1.5, rng.uniform(2.0, 3.5) * scale)
    shift = rng.uniform(22, 50) * (1 if rng.random() < 0.6 else -1)
    paint(image, mask, polyline_coverage(points, width, (h, w)), 2, lambda r: r + shift)


def draw_scale(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray) -> None:
    """Class 3: a large region stretched along the strip, darker or brighter, with streaky texture inside."""
    h, w = image.shape
    scale = h / HEIGHT
    half_x, half_y = rng.uniform(60, 260) * scale, rng.uniform(10, 38) * scale
    centre = (rng.uniform(0.05, 0.95) * w, rng.uniform(0.15, 0.85) * h)
    outline = blob_outline(rng, centre, half_x, half_y, rng.uniform(-0.12, 0.12), 0.35)
    sign = -1 if rng.random() < 0.65 else 1
    contrast = rng.uniform(10, 24)
    sigma = rng.uniform(4, 12) * scale
    feather = rng.uniform(1.0, 3.0) * scale

    def target(region: np.ndarray) -> np.ndarray:
        texture = cv2.GaussianBlur(white_noise(rng, region.shape), (0, 0), sigmaX=max(sigma, 1.0), sigmaY=0.8)
        return region + sign * contrast * (1 + 2.0 * texture)
    paint(image, mask, polygon_coverage(outline, (h, w), margin=int(3 * feather) + 1), 3, target, feather)


def draw_blotch(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray) -> None:
    """Class 4: a large, roughly round, mottled dark blotch."""
    h, w = image.shape
    scale = h / HEIGHT
    radius = min(rng.uniform(35, 95) * scale, 0.42 * h)
    centre = (rng.uniform(0.05, 0.95) * w, rng.uniform(0.3, 0.7) * h)
    outline = blob_outline(rng, centre, radius * rng.uniform(1.0, 1.6), radius, rng.uniform(0, np.pi), 0.45)
    factor = rng.uniform(0.68, 0.85)
    feather = rng.uniform(1.5, 4.0) * scale

    def target(region: np.ndarray) -> np.ndarray:
        mottle = cv2.GaussianBlur(white_noise(rng, region.shape), (0, 0), max(2.0 * scale, 1.0))
        return region * factor * (1 + 0.25 * mottle)
    paint(image, mask, polygon_coverage(outline, (h, w), margin=int(3 * feather) + 1), 4, target, feather)


# Large classes first, so pits and scratches on top of them stay visible and labelled.
DRAW_ORDER = ((3, draw_scale), (4, draw_blotch), (1, draw_pits), (2, draw_scratch))


def pick_classes(rng: np.random.Generator) -> list[int]:
    """The classes of one defective image: each by its chance, at least one (drawn by chance weights)."""
    chosen = [c for c, p in CLASS_CHANCE.items() if rng.random() < p]
    if not chosen:
        weights = np.array(list(CLASS_CHANCE.values()))
        chosen = [int(rng.choice(list(CLASS_CHANCE), p=weights / weights.sum()))]
    return chosen


def render_steel(seed: int, index: int, clean: bool, height: int = HEIGHT,
                 width: int = WIDTH) -> tuple[np.ndarray, np.ndarray]:
    """One (grey uint8 (H, W) image, uint8 class-id mask) pair, fully determined by its arguments."""
    rng = image_rng(seed, index)
    image = render_strip(rng, height, width)
    add_distractors(rng, image)
    mask = np.zeros((height, width), np.uint8)
    classes = [] if clean else pick_classes(rng)
    for class_id, draw in DRAW_ORDER:
        if class_id in classes:
            for _ in range(1 if class_id in (2, 4) else int(rng.integers(1, 3))):
                draw(rng, image, mask)
    image += 2.0 * white_noise(rng, image.shape)  # sensor noise, over defects too
    np.clip(np.round(image, out=image), 0, 255, out=image)
    return image.astype(np.uint8), mask


# ----------------------------------------------------------------------------- dataset


def check_arguments(count: int, width: int, height: int, seed: int, clean_fraction: float, ext: str) -> None:
    if count < 1:
        raise UserError(f"--count must be at least 1, got {count}")
    if width < 64 or height < 32:
        raise UserError(f"--width must be at least 64 and --height at least 32 pixels, got {width}x{height}")
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    if not 0.0 <= clean_fraction <= 1.0:
        raise UserError(f"--clean-fraction must be within 0..1, got {clean_fraction}")
    if ext not in EXTENSIONS:
        raise UserError(f"--ext {ext!r} is not supported; use one of: {', '.join(EXTENSIONS)}")


def remove_stale(folder: Path, count: int, keep_suffix: str) -> int:
    """Delete NNNN.* files an earlier, larger run (or one with another --ext) left behind."""
    removed = 0
    for path in folder.glob("*.*"):
        if re.fullmatch(r"\d{4,}", path.stem) and (int(path.stem) >= count or path.suffix != keep_suffix):
            path.unlink()
            removed += 1
    return removed


def write_image(path: Path, image: np.ndarray) -> None:
    if path.suffix == ".png":
        write_png(path, image, rgb=False)
        return
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise OSError(f"JPEG encoding failed for {path}")
    atomic_write_bytes(path, buf.tobytes())


def generate_steel(out_dir: str | os.PathLike, count: int, clean_fraction: float = 0.6, seed: int = 0,
                   width: int = WIDTH, height: int = HEIGHT, ext: str = "png", progress=None) -> dict:
    """Write out_dir/images/NNNN.<ext> (grey), out_dir/masks/NNNN.png (class ids) and classes.txt; return stats."""
    check_arguments(count, width, height, seed, clean_fraction, ext)
    out_dir = Path(out_dir)
    image_dir, mask_dir = out_dir / "images", out_dir / "masks"
    phase = float(np.random.default_rng(seed).random())
    images_with = np.zeros(len(CLASS_NAMES), np.int64)
    pixels = np.zeros(len(CLASS_NAMES), np.int64)
    clean = 0
    indices = range(count) if progress is None else progress(range(count))
    for index in indices:
        image, mask = render_steel(seed, index, is_empty(index, clean_fraction, phase), height, width)
        write_image(image_dir / f"{index:04d}.{ext}", image)
        write_png(mask_dir / f"{index:04d}.png", mask, rgb=False)
        counts = np.bincount(mask.ravel(), minlength=len(CLASS_NAMES))
        pixels += counts
        images_with += counts > 0
        clean += int(counts[1:].sum() == 0)
    atomic_write_bytes(out_dir / "classes.txt", ("\n".join(CLASS_NAMES) + "\n").encode())
    stale = remove_stale(image_dir, count, f".{ext}") + remove_stale(mask_dir, count, ".png")
    if stale:
        LOG.info("removed %d files left by an earlier run in %s", stale, out_dir)
    return {
        "count": count, "clean": clean,
        "images_with_class": dict(zip(CLASS_NAMES[1:], images_with[1:].tolist())),
        "pixel_fraction": dict(zip(CLASS_NAMES, (pixels / max(pixels.sum(), 1)).round(6).tolist())),
        "size": [width, height], "seed": seed, "clean_fraction": clean_fraction,
    }


# ----------------------------------------------------------------------------- CLI


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Write a synthetic steel-strip dataset with 4 defect classes.")
    parser.add_argument("--out", required=True, help="output folder; gets images/, masks/ and classes.txt")
    parser.add_argument("--count", type=int, default=120, help="number of image/mask pairs")
    parser.add_argument("--clean-fraction", type=float, default=0.6, help="share of images without any defect")
    parser.add_argument("--seed", type=int, default=0, help="same seed -> byte-identical files")
    parser.add_argument("--width", type=int, default=WIDTH, help="image width (along the strip)")
    parser.add_argument("--height", type=int, default=HEIGHT, help="image height; defect sizes scale with it")
    parser.add_argument("--ext", default="png", choices=EXTENSIONS, help="image format (masks are always PNG)")
    return parser.parse_args(argv)


def generate_from_cli(argv=None) -> None:
    setup_logging()
    args = parse_args(argv)
    stats = generate_steel(args.out, args.count, args.clean_fraction, args.seed, args.width, args.height, args.ext)
    with_class = ", ".join(f"{name} {n}" for name, n in stats["images_with_class"].items())
    print(f"wrote {stats['count']} {args.width}x{args.height} images to {Path(args.out) / 'images'} and class-id "
          f"masks to {Path(args.out) / 'masks'}: {stats['clean']} clean; images with {with_class}; "
          f"class names in {Path(args.out) / 'classes.txt'}")


def main(argv=None) -> None:
    run_cli(lambda: generate_from_cli(argv))


if __name__ == "__main__":
    main()
