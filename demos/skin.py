"""Deterministic synthetic data for the demo: small device patches on skin.

Each image is a close-up of skin (a range of skin tones, texture, hairs, moles, uneven
lighting) carrying one or two small patches (medical patch, sensor, clear film), each about
1-6 % of the image. About `empty_fraction` of the images carry none, so stratified folds see
both kinds. Masks are exactly the patch pixels (0/255). The same seed gives byte-identical files.

Run book::

    python -m demos.skin --out demo_work/raw --count 300 --size 256 --seed 0
    RAW_IMG_DIR=demo_work/raw/images RAW_MASK_DIR=demo_work/raw/masks python train.py ...
"""

from __future__ import annotations

import argparse
import math
import os
import re
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from utils import LOG, UserError, run_cli, setup_logging, write_png

# Skin tones from very light to very dark (RGB); a sample interpolates between neighbours.
SKIN_TONES = np.array(
    [
        (246, 214, 190),
        (236, 192, 160),
        (222, 170, 132),
        (198, 140, 100),
        (165, 112, 78),
        (124, 82, 56),
        (88, 58, 42),
    ],
    dtype=np.float32,
)

# Patch looks: base colour (RGB), or None for a clear film that lets the skin through.
PATCH_COLOURS = {
    "white": (243, 243, 238),
    "beige": (232, 214, 186),
    "blue": (188, 212, 236),
    "clear": None,
}

PATCH_AREA = (0.01, 0.06)  # fraction of the image per patch
MIN_CONTRAST = 38.0  # RGB distance patch vs. skin: below it the task stops being learnable
SUPERSAMPLE = 4  # shapes are drawn at 4x and averaged down: anti-aliased edges, exact masks
SEED_STRIDE = 100003  # per-image seed = seed * SEED_STRIDE + index


# ----------------------------------------------------------------------------- helpers


def image_rng(seed: int, index: int) -> np.random.Generator:
    """One generator per image, so image i does not depend on how many came before it."""
    return np.random.default_rng(seed * SEED_STRIDE + index)


def is_empty(index: int, empty_fraction: float, phase: float) -> bool:
    """Spread the empty images evenly: exactly round(count * fraction) +- 1 of them."""
    return math.floor((index + 1) * empty_fraction + phase) > math.floor(index * empty_fraction + phase)


def white_noise(rng: np.random.Generator, shape) -> np.ndarray:
    """Zero-mean, unit-variance float32 noise; uniform because it is several times cheaper than normal."""
    noise = rng.random(shape, dtype=np.float32)
    noise -= 0.5
    noise *= np.float32(12**0.5)
    return noise


@lru_cache(maxsize=8)
def unit_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates scaled to [-1, 1], shape (size, size) each."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    return yy, xx


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse random grid upscaled bicubically."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC) * 0.6


# ----------------------------------------------------------------------------- skin


def pick_skin_tone(rng: np.random.Generator) -> np.ndarray:
    position = rng.uniform(0, len(SKIN_TONES) - 1)
    low = int(position)
    high = min(low + 1, len(SKIN_TONES) - 1)
    tone = SKIN_TONES[low] + (SKIN_TONES[high] - SKIN_TONES[low]) * (position - low)
    return tone * rng.uniform(0.96, 1.04, 3).astype(np.float32)  # redness / yellowness


def render_skin(rng: np.random.Generator, size: int, tone: np.ndarray) -> np.ndarray:
    """Skin with blotchy low-frequency tone changes and fine pore grain, float32 (H, W, 3)."""
    blotch = smooth_noise(rng, size, int(rng.integers(4, 9)))
    redness = smooth_noise(rng, size, int(rng.integers(3, 7)))
    grain = cv2.GaussianBlur(white_noise(rng, (size, size)), (0, 0), 0.8)
    shade = 1 + 0.07 * blotch + 0.035 * grain
    image = tone[None, None, :] * shade[..., None]
    image[..., 0] += 6 * redness  # patches of redder skin
    image[..., 2] -= 3 * redness
    return image


def draw_hairs(rng: np.random.Generator, image: np.ndarray, tone: np.ndarray) -> None:
    """A few thin dark curved strokes: the classic false edge on skin."""
    size = image.shape[0]
    colour = tuple(float(c) for c in tone * rng.uniform(0.25, 0.55))
    for _ in range(int(rng.integers(0, 7))):
        start = rng.uniform(0, size, 2)
        angle = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.1, 0.35) * size
        bend = rng.uniform(-0.8, 0.8)
        t = np.linspace(0, 1, 12)[:, None]
        direction = np.array([np.cos(angle), np.sin(angle)])
        normal = np.array([-direction[1], direction[0]])
        points = start + t * length * direction + (bend * length * t * (1 - t)) * normal
        cv2.polylines(image, [np.round(points * 16).astype(np.int32)], False, colour, 1, cv2.LINE_AA, shift=4)


def draw_moles(rng: np.random.Generator, image: np.ndarray, tone: np.ndarray) -> None:
    size = image.shape[0]
    for _ in range(int(rng.integers(0, 4))):
        centre = tuple(int(v) for v in rng.uniform(0.05, 0.95, 2) * size * 16)
        axes = tuple(int(v) for v in rng.uniform(1.5, 4.5, 2) * size / 256 * 16)
        colour = tuple(float(c) for c in tone * rng.uniform(0.45, 0.7) * (1.0, 0.85, 0.75))
        cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA, shift=4)


def add_sheen(rng: np.random.Generator, image: np.ndarray) -> None:
    """A soft specular highlight (oily skin): bright like a patch, but without an edge."""
    if rng.random() > 0.35:
        return
    size = image.shape[0]
    yy, xx = unit_grid(size)
    cy, cx = rng.uniform(-0.8, 0.8, 2)
    radius = rng.uniform(0.08, 0.25)
    glow = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2)) * rng.uniform(0.15, 0.35)
    image += (255 - image) * glow[..., None]


# ----------------------------------------------------------------------------- patches


def patch_outline(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    """A rotated ellipse or rounded rectangle (superellipse) as an (N, 2) polygon, plus its radius."""
    exponent = 2.0 if rng.random() < 0.4 else rng.uniform(4, 10)  # 2 = ellipse, high = boxy
    area = rng.uniform(*PATCH_AREA) * size * size
    aspect = rng.uniform(1.0, 2.2)
    # Superellipse area = 4ab * G(1+1/n)^2 / G(1+2/n).
    unit_area = 4 * math.gamma(1 + 1 / exponent) ** 2 / math.gamma(1 + 2 / exponent)
    half_b = math.sqrt(area / (unit_area * aspect))
    half_a = half_b * aspect
    theta = np.linspace(0, 2 * np.pi, 180, endpoint=False)
    cos, sin = np.cos(theta), np.sin(theta)
    x = half_a * np.sign(cos) * np.abs(cos) ** (2 / exponent)
    y = half_b * np.sign(sin) * np.abs(sin) ** (2 / exponent)
    angle = rng.uniform(0, np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    outline = np.stack([x, y], axis=1) @ rotation.T
    return outline, float(np.linalg.norm(outline, axis=1).max())


def rasterize_outline(points: np.ndarray, size: int) -> np.ndarray:
    """Coverage (float32 0..1, (size, size)) of a polygon, drawn at SUPERSAMPLE x inside its box."""
    x0, y0 = np.floor(points.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(points.max(axis=0)).astype(int) + 1
    big = np.zeros(((y1 - y0) * SUPERSAMPLE, (x1 - x0) * SUPERSAMPLE), np.uint8)
    fixed = np.round((points - (x0, y0)) * SUPERSAMPLE * 16).astype(np.int32)  # 4 fractional bits
    cv2.fillPoly(big, [fixed], 255, cv2.LINE_8, shift=4)
    coverage = np.zeros((size, size), np.float32)
    coverage[y0:y1, x0:x1] = cv2.resize(big, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA) / np.float32(255)
    return coverage


def place_patch(rng: np.random.Generator, size: int, occupied: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Coverage (float32 0..1) and mask (bool) of one patch clear of `occupied`; None if no room."""
    outline, radius = patch_outline(rng, size)
    # Keep a gap so two patches never merge into one component.
    blocked = cv2.dilate(occupied, np.ones((7, 7), np.uint8)) > 0
    for _ in range(20):
        centre = rng.uniform(radius + 3, size - radius - 3, 2)
        coverage = rasterize_outline(outline + centre, size)
        mask = coverage >= 0.5
        if not (mask & blocked).any():
            return coverage, mask
    return None


def patch_colour(rng: np.random.Generator, style: str, skin_mean: np.ndarray) -> np.ndarray:
    base = PATCH_COLOURS[style]
    if base is None:  # clear film: a whitish veil over the skin
        return skin_mean * 0.5 + 255 * 0.5
    colour = np.array(base, np.float32) * rng.uniform(0.9, 1.02) + rng.uniform(-6, 6, 3)
    return np.clip(colour, 0, 255)


def ensure_contrast(colour: np.ndarray, skin_mean: np.ndarray) -> np.ndarray:
    """Push a patch colour away from the skin until it is at least MIN_CONTRAST apart."""
    for _ in range(10):
        if np.linalg.norm(colour - skin_mean) >= MIN_CONTRAST:
            break
        # Light skin: a darker, cooler patch; dark skin: a brighter one.
        target = np.array((150, 165, 185), np.float32) if skin_mean.mean() > 170 else np.full(3, 255, np.float32)
        colour = colour + 0.25 * (target - colour)
    return colour


def patch_texture(rng: np.random.Generator, mask: np.ndarray, style: str) -> np.ndarray:
    """Per-pixel shading of the patch: domed centre, darker rim, fabric grain, maybe a sensor pad."""
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    depth = np.clip(dist / max(float(dist.max()), 1.0), 0, 1)
    shade = 0.9 + 0.1 * np.sqrt(depth)  # rim darker than the centre
    grain = cv2.GaussianBlur(white_noise(rng, mask.shape), (0, 0), 0.7)
    shade = shade + rng.uniform(0.015, 0.04) * grain
    if style != "clear" and rng.random() < 0.5:  # sensor: an inner pad of another shade
        pad = np.clip((depth - rng.uniform(0.45, 0.7)) / 0.08, 0, 1)  # soft-edged inner pad
        shade = shade * (1 - (1 - rng.uniform(0.78, 0.92)) * pad)
    return shade.astype(np.float32)


def cast_shadow(rng: np.random.Generator, image: np.ndarray, coverage: np.ndarray) -> None:
    dx, dy = rng.uniform(-3, 3, 2)
    shifted = cv2.warpAffine(coverage, np.float32([[1, 0, dx], [0, 1, dy]]), coverage.shape[::-1])
    shadow = cv2.GaussianBlur(shifted, (0, 0), rng.uniform(1.0, 3.0)) * rng.uniform(0.15, 0.4)
    image *= 1 - (shadow * (1 - coverage))[..., None]


def patch_window(mask: np.ndarray, margin: int = 14) -> tuple[slice, slice]:
    """The patch's bounding box grown by room for its shadow: all painting happens in there."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return (
        slice(max(int(ys.min()) - margin, 0), min(int(ys.max()) + margin + 1, h)),
        slice(max(int(xs.min()) - margin, 0), min(int(xs.max()) + margin + 1, w)),
    )


def paint_patch(rng: np.random.Generator, image: np.ndarray, coverage: np.ndarray, mask: np.ndarray) -> None:
    window = patch_window(mask)
    image, coverage, mask = image[window], coverage[window], mask[window]  # views: painted in place
    style = str(rng.choice(list(PATCH_COLOURS)))
    skin_mean = image[mask].mean(axis=0)
    colour = ensure_contrast(patch_colour(rng, style, skin_mean), skin_mean)
    cast_shadow(rng, image, coverage)
    if style == "clear":  # the skin's own texture shows through the film
        patch = image * 0.5 + (colour - skin_mean * 0.5)
    else:
        patch = np.broadcast_to(colour, image.shape)
    patch = patch * patch_texture(rng, mask, style)[..., None]
    alpha = coverage[..., None]
    image[:] = image * (1 - alpha) + patch * alpha


# ----------------------------------------------------------------------------- lighting and assembly


def apply_lighting(rng: np.random.Generator, image: np.ndarray) -> None:
    """Uneven light: a linear gradient of random direction times a vignette, plus white balance."""
    yy, xx = unit_grid(image.shape[0])
    angle = rng.uniform(0, 2 * np.pi)
    gradient = 1 + rng.uniform(0, 0.3) * (np.cos(angle) * xx + np.sin(angle) * yy)
    vignette = 1 - rng.uniform(0, 0.3) * (xx**2 + yy**2) / 2
    balance = rng.uniform(0.94, 1.06, 3).astype(np.float32) * np.float32(rng.uniform(0.85, 1.1))
    image *= (gradient * vignette)[..., None]
    image *= balance


def render_sample(seed: int, index: int, size: int, empty: bool) -> tuple[np.ndarray, np.ndarray]:
    """One (RGB uint8 image, uint8 0/255 mask) pair, fully determined by (seed, index, size, empty)."""
    rng = image_rng(seed, index)
    tone = pick_skin_tone(rng)
    image = render_skin(rng, size, tone)
    draw_hairs(rng, image, tone)
    draw_moles(rng, image, tone)
    add_sheen(rng, image)
    mask = np.zeros((size, size), np.uint8)
    patches = 0 if empty else (2 if rng.random() < 0.25 else 1)
    for _ in range(patches):
        placed = place_patch(rng, size, mask)
        if placed is None:
            continue
        coverage, patch_mask = placed
        paint_patch(rng, image, coverage, patch_mask)
        mask[patch_mask] = 1
    apply_lighting(rng, image)
    image += 1.5 * white_noise(rng, image.shape)  # sensor noise
    np.clip(np.round(image, out=image), 0, 255, out=image)
    return image.astype(np.uint8), mask * 255


def check_arguments(count: int, size: int, seed: int, empty_fraction: float) -> None:
    if count < 1:
        raise UserError(f"--count must be at least 1, got {count}")
    if size < 32:
        raise UserError(f"--size must be at least 32 pixels, got {size}")
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    if not 0.0 <= empty_fraction <= 1.0:
        raise UserError(f"empty_fraction must be within 0..1, got {empty_fraction}")


def remove_stale_samples(folder: Path, count: int) -> int:
    """Delete NNNN.png files a larger earlier run left behind, so the set is exactly `count`."""
    removed = 0
    for path in folder.glob("*.png"):
        if re.fullmatch(r"\d{4,}", path.stem) and int(path.stem) >= count:
            path.unlink()
            removed += 1
    return removed


def generate_dataset(
    out_dir: str | os.PathLike, count: int, size: int = 256, seed: int = 0, empty_fraction: float = 0.15
) -> dict:
    """Write out_dir/images/NNNN.png (RGB) and out_dir/masks/NNNN.png (0/255); return stats."""
    check_arguments(count, size, seed, empty_fraction)
    out_dir = Path(out_dir)
    image_dir, mask_dir = out_dir / "images", out_dir / "masks"
    phase = float(np.random.default_rng(seed).random())
    fractions = []
    for index in range(count):
        image, mask = render_sample(seed, index, size, is_empty(index, empty_fraction, phase))
        write_png(image_dir / f"{index:04d}.png", image)
        write_png(mask_dir / f"{index:04d}.png", mask)
        fractions.append(float((mask > 0).mean()))
    stale = remove_stale_samples(image_dir, count) + remove_stale_samples(mask_dir, count)
    if stale:
        LOG.info("removed %d files left by an earlier, larger run in %s", stale, out_dir)
    fractions_arr = np.array(fractions)
    nonempty = fractions_arr[fractions_arr > 0]
    return {
        "count": count,
        "empty": int((fractions_arr == 0).sum()),
        "mean_foreground_fraction": float(fractions_arr.mean()),
        "mean_foreground_fraction_nonempty": float(nonempty.mean()) if nonempty.size else 0.0,
        "size": size,
        "seed": seed,
    }


# ----------------------------------------------------------------------------- CLI


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Write a synthetic 'patches on skin' dataset for the demo.")
    parser.add_argument("--out", required=True, help="output folder; gets images/ and masks/")
    parser.add_argument("--count", type=int, default=300, help="number of image/mask pairs")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="same seed -> byte-identical files")
    parser.add_argument("--empty-fraction", type=float, default=0.15, help="share of images without a patch")
    return parser.parse_args(argv)


def generate_from_cli(argv=None) -> None:
    setup_logging()
    args = parse_args(argv)
    stats = generate_dataset(args.out, args.count, args.size, args.seed, args.empty_fraction)
    print(
        f"wrote {stats['count']} images to {Path(args.out) / 'images'} and masks to {Path(args.out) / 'masks'}: "
        f"{stats['empty']} empty, mean foreground {stats['mean_foreground_fraction']:.2%} "
        f"({stats['mean_foreground_fraction_nonempty']:.2%} where non-empty)"
    )


def main(argv=None) -> None:
    run_cli(lambda: generate_from_cli(argv))


if __name__ == "__main__":
    main()
