"""A Kaggle/Severstal RLE CSV (ImageId, ClassId, EncodedPixels; the codec is runtime/rle.py) as training sources."""

from __future__ import annotations

from pathlib import Path

from runtime.rle import read_rows
from training.sources import Source, unique_keys
from utils import IMAGE_EXTS, LOG, UserError, list_images


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
    is clean. A row naming an image that is not there, or a name two files under `image_dir` share, is an error."""
    rows = read_rows(csv_path)
    check_rle_classes(rows, csv_path, num_classes)
    paths = list_images(image_dir)
    if not paths:
        raise UserError(f"no images ({'/'.join(e[1:] for e in IMAGE_EXTS)}) in RAW_IMG_DIR={image_dir}")
    by_name: dict[str, list[Path]] = {}
    for path in paths:
        by_name.setdefault(path.name, []).append(path)
    unknown = sorted(set(rows) - set(by_name))
    if unknown:
        raise UserError(f"RAW_RLE_CSV {csv_path} names {len(unknown)} images not in RAW_IMG_DIR={image_dir} "
                        f"(e.g. {', '.join(unknown[:3])}); ImageId must be the image's file name")
    shared = sorted(name for name in rows if len(by_name[name]) > 1)
    if shared:
        files = ", ".join(str(p) for p in by_name[shared[0]][:3])
        raise UserError(f"RAW_RLE_CSV {csv_path} names {shared[0]!r}, which {len(by_name[shared[0]])} files under "
                        f"RAW_IMG_DIR share ({files}): ImageId cannot tell them apart; keep one file per name")
    keys = unique_keys(paths, Path(image_dir))
    return [Source(key, path, rle=tuple(sorted(rows.get(path.name, {}).items()))) for key, path in zip(keys, paths)]
