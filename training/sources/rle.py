"""A Kaggle/Severstal RLE CSV (ImageId, ClassId, EncodedPixels; the codec is runtime/rle.py) as training sources."""

from __future__ import annotations

from pathlib import Path

from runtime.rle import read_rows
from training.sources import Source
from utils import LOG, UserError, list_images


def check_rle_classes(rows: dict[str, dict[int, str]], csv_path, num_classes: int) -> None:
    ids = sorted({c for classes in rows.values() for c in classes})
    if num_classes > 1 and ids and ids[-1] >= num_classes:
        raise UserError(f"RAW_RLE_CSV {csv_path} has ClassId {ids[-1]} but CLASSES={num_classes} allows ids "
                        f"1..{num_classes - 1}; set --classes {ids[-1] + 1} (background is class 0)")
    if num_classes == 1 and ids:
        LOG.info("RAW_RLE_CSV %s: ClassIds %s all train as the one foreground class (CLASSES=1); "
                 "--classes %d keeps them apart", csv_path, ids, ids[-1] + 1)


def rle_sources(csv_path: str | Path, image_dir: str | Path, num_classes: int) -> list[Source]:
    """Every image of `image_dir` with its rows of a Severstal-style CSV (runtime/rle.py); an image without rows
    is clean. A row naming an image that is not there is an error."""
    rows = read_rows(csv_path)
    check_rle_classes(rows, csv_path, num_classes)
    images = {p.name: p for p in list_images(image_dir)}
    unknown = sorted(set(rows) - set(images))
    if unknown:
        raise UserError(f"RAW_RLE_CSV {csv_path} names {len(unknown)} images not in RAW_IMG_DIR={image_dir} "
                        f"(e.g. {', '.join(unknown[:3])}); ImageId must be the image's file name")
    if not images:
        raise UserError(f"no images (jpg/png/tif/bmp) in RAW_IMG_DIR={image_dir}")
    return [Source(path.stem, path, rle=tuple(sorted(rows.get(name, {}).items()))) for name, path in images.items()]
