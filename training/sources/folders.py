"""Image and mask folders paired by file stem (`a.jpg` + `a.png` or `a_mask.png`)."""

from __future__ import annotations

from pathlib import Path

from training.sources import Source
from utils import LOG, UserError, index_masks, list_images


def pair_by_stem(image_dir: str | Path, mask_dir: str | Path) -> list[Source]:
    """Pair images and masks by file stem (a mask may also be named <stem>_mask). Every image without a mask is
    reported at once; masks without an image are left out with a warning."""
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    if not mask_dir.is_dir():
        raise UserError(f"RAW_MASK_DIR not found: {mask_dir} (check the path)")
    images = list_images(image_dir)
    if not images:
        raise UserError(f"no images (jpg/png/tif/bmp) in RAW_IMG_DIR={image_dir}")
    masks = index_masks(mask_dir)
    seen: dict[str, Path] = {}
    for image in images:
        if image.stem in seen:
            raise UserError(f"two images share the stem {image.stem!r}: {seen[image.stem]} and {image}; rename one")
        seen[image.stem] = image
    missing = [image.name for image in images if image.stem not in masks]
    orphans = sorted(masks[stem].name for stem in set(masks) - set(seen))
    if missing:
        extra = f"; {len(orphans)} masks match no image (e.g. {', '.join(orphans[:3])})" if orphans else ""
        raise UserError(f"{len(missing)} of {len(images)} images have no mask in {mask_dir} (e.g. "
                        f"{', '.join(missing[:3])}){extra}; a mask is named <stem>.png (or .jpg/.tif/.bmp) or "
                        "<stem>_mask.png: add the masks, rename them or remove those images")
    if orphans:
        LOG.warning("%d masks in %s match no image and are not used (e.g. %s)", len(orphans), mask_dir,
                    ", ".join(orphans[:3]))
    warn_jpeg_masks([masks[image.stem] for image in images])
    return [Source(image.stem, image, mask_path=masks[image.stem]) for image in images]


def warn_jpeg_masks(mask_paths: list[Path]) -> None:
    """JPEG blurs mask values near every edge: say so once per run."""
    jpegs = [p.name for p in mask_paths if p.suffix.lower() in (".jpg", ".jpeg")]
    if jpegs:
        LOG.warning("%d of %d masks are JPEG (e.g. %s): lossy compression changes values near edges; binary masks "
                    "are read by their own scale (0/1 or 0/255, see docs/training.md) but class ids of multi-class "
                    "masks may come out wrong. Save masks as PNG", len(jpegs), len(mask_paths), ", ".join(jpegs[:3]))
