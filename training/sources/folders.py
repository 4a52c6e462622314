"""Image and mask folders paired by file stem (`a.jpg` + `a.png` or `a_mask.png`).

Nested folders pair by relative path first (`images/train/a.jpg` + `masks/train/a.png`), then by stem. Nothing is
paired by guesswork: two masks for one image, two images for one mask, or a mask folder that is the image folder
itself stop with one line. The masks are read by runtime/masks.py (grey, palette PNG, one colour on black).
"""

from __future__ import annotations

from pathlib import Path

from training.sources import Source, unique_keys
from utils import IMAGE_EXTS, LOG, UserError, list_images, list_skipped, mask_stem


def _mask_index(mask_dir: Path, masks: list[Path]) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Masks by relative path without suffix (and `_mask`), and by stem."""
    by_path: dict[str, list[Path]] = {}
    by_stem: dict[str, list[Path]] = {}
    for path in masks:
        by_path.setdefault(path.relative_to(mask_dir).with_name(mask_stem(path)).as_posix(), []).append(path)
        by_stem.setdefault(mask_stem(path), []).append(path)
    return by_path, by_stem


def _same_folder(image_dir: Path, mask_dir: Path, images: list[Path]) -> tuple[list[Path], list[Path]]:
    """RAW_MASK_DIR == RAW_IMG_DIR: the masks are the `_mask` files beside the images, or there are none."""
    masks = [p for p in images if p.stem.endswith("_mask")]
    if not masks:
        raise UserError(f"RAW_MASK_DIR is the image folder {image_dir}: every image would be its own mask. Point "
                        "RAW_MASK_DIR at the masks (or name them <stem>_mask.png beside the images)")
    return [p for p in images if not p.stem.endswith("_mask")], masks


def _pair(image: Path, image_dir: Path, by_path: dict, by_stem: dict) -> list[Path]:
    return by_path.get(image.relative_to(image_dir).with_suffix("").as_posix()) or by_stem.get(image.stem, [])


def pair_by_stem(image_dir: str | Path, mask_dir: str | Path) -> list[Source]:
    """Pair images and masks (see the module docstring). Every image without a mask is reported at once; masks
    without an image are left out with a warning."""
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    if not mask_dir.is_dir():
        raise UserError(f"RAW_MASK_DIR not found: {mask_dir} (check the path)")
    images = list_images(image_dir)
    warn_skipped(image_dir)
    if image_dir.resolve() == mask_dir.resolve():
        images, masks = _same_folder(image_dir, mask_dir, images)
    else:
        masks = list_images(mask_dir)
        if mask_dir.resolve().is_relative_to(image_dir.resolve()):  # RAW_IMG_DIR=data, RAW_MASK_DIR=data/masks
            images = [p for p in images if not p.resolve().is_relative_to(mask_dir.resolve())]
    if not images:
        raise UserError(f"no images ({'/'.join(e[1:] for e in IMAGE_EXTS)}) in RAW_IMG_DIR={image_dir}")
    by_path, by_stem = _mask_index(mask_dir, masks)
    pairs = {image: _pair(image, image_dir, by_path, by_stem) for image in images}
    _refuse_ambiguous(pairs)
    missing = [image.name for image, found in pairs.items() if not found]
    used = {found[0] for found in pairs.values() if found}
    orphans = sorted(p.name for p in masks if p not in used)
    if missing:
        extra = f"; {len(orphans)} masks match no image (e.g. {', '.join(orphans[:3])})" if orphans else ""
        raise UserError(f"{len(missing)} of {len(images)} images have no mask in {mask_dir} (e.g. "
                        f"{', '.join(missing[:3])}){extra}; a mask is named <stem>.png (or .jpg/.tif/.bmp) or "
                        "<stem>_mask.png: add the masks, rename them or remove those images")
    if orphans:
        LOG.warning("%d masks in %s match no image and are not used (e.g. %s)", len(orphans), mask_dir,
                    ", ".join(orphans[:3]))
    warn_jpeg_masks([found[0] for found in pairs.values()])
    return [Source(key, image, mask_path=pairs[image][0]) for key, image in zip(unique_keys(images, image_dir), images)]


def _refuse_ambiguous(pairs: dict[Path, list[Path]]) -> None:
    """One image with two masks (a.png and a_mask.png, a.png and a.tif), or one mask claimed by two images."""
    for image, found in pairs.items():
        if image in found:
            raise UserError(f"{image} would be its own mask: RAW_MASK_DIR and RAW_IMG_DIR hold the same files; point "
                            "RAW_MASK_DIR at the masks")
        if len(found) > 1:
            raise UserError(f"image {image} has {len(found)} masks ({', '.join(str(p) for p in found[:3])}); "
                            "keep one mask per image")
    owners: dict[Path, Path] = {}
    for image, found in pairs.items():
        if found and owners.setdefault(found[0], image) != image:
            raise UserError(f"two images share the stem {image.stem!r} ({owners[found[0]]} and {image}) but there is "
                            f"one mask, {found[0]}; rename one image (and give it its own mask)")


def warn_skipped(folder: Path) -> None:
    """Files of other kinds (.gif, .heic, ...) are not read: say so instead of leaving them out silently."""
    skipped = list_skipped(folder)
    if skipped:
        LOG.warning("%d files in %s are not read (e.g. %s): images are %s; convert them to use them", len(skipped),
                    folder, ", ".join(p.name for p in skipped[:3]), "/".join(e[1:] for e in IMAGE_EXTS))


def warn_jpeg_masks(mask_paths: list[Path]) -> None:
    """JPEG blurs mask values near every edge: say so once per run."""
    jpegs = [p.name for p in mask_paths if p.suffix.lower() in (".jpg", ".jpeg")]
    if jpegs:
        LOG.warning("%d of %d masks are JPEG (e.g. %s): lossy compression changes values near edges; binary masks "
                    "are read by their own scale (0/1 or 0/255, see docs/training.md) but class ids of multi-class "
                    "masks may come out wrong. Save masks as PNG", len(jpegs), len(mask_paths), ", ".join(jpegs[:3]))
