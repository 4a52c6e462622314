"""Where labelled samples come from: one `Source` per image, whatever the annotation format.

    sources = collect_sources(cfg.raw_img_dir, cfg.raw_mask_dir, cfg.raw_json_path, ...)

Each reader turns one format into `Source`s (a unique key, the image path and how to load its mask):

    folders      image and mask folders paired by file stem
    labelstudio  a Label Studio JSON export (brush RLE, polygons)
    rle          a Kaggle/Severstal RLE CSV (ImageId, ClassId, EncodedPixels)

`dataset.build_cache` then writes every source into the disk cache. No torch here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.rle import class_mask
from utils import UserError, file_sha1, read_mask


@dataclass(frozen=True)
class Source:
    """One labelled sample before caching. The mask comes from a file or from memory."""
    key: str
    image_path: Path
    mask_path: Path | None = None
    mask: np.ndarray | None = None
    rle: tuple[tuple[int, str], ...] | None = None  # RAW_RLE_CSV: (ClassId, EncodedPixels) pairs, decoded on load

    def load_mask(self, num_classes: int, max_pixels: int | None = None,
                  shape: tuple[int, int] | None = None) -> np.ndarray:
        """(H, W) uint8 class ids; `shape` (the image's H, W) is needed for an RLE source."""
        if self.mask is not None:
            return self.mask
        if self.rle is not None:
            mask = class_mask(dict(self.rle), shape, f"RAW_RLE_CSV {self.image_path.name}")
            return (mask > 0).astype(np.uint8) if num_classes == 1 else mask
        return read_mask(self.mask_path, num_classes, max_pixels)

    def content_hash(self) -> str:
        digest = hashlib.sha1(file_sha1(self.image_path).encode())
        if self.rle is not None:
            digest.update(json.dumps(self.rle).encode())
        elif self.mask is not None:
            digest.update(np.ascontiguousarray(self.mask).tobytes())
            digest.update(str(self.mask.shape).encode())
        else:
            digest.update(file_sha1(self.mask_path).encode())
        return digest.hexdigest()


def collect_sources(raw_img_dir: str | None, raw_mask_dir: str | None, raw_json_path: str | None,
                    max_pixels: int | None = None, class_map: dict[str, int] | None = None,
                    raw_rle_csv: str | None = None, num_classes: int = 1) -> list[Source]:
    """The labelled sources; `max_pixels` (MAX_IMAGE_PIXELS) bounds the Label Studio images read for their size.
    `class_map` (labelstudio_class_map) maps Label Studio labels to class ids; None: every label is class 1."""
    if not raw_img_dir:
        raise UserError("RAW_IMG_DIR is not set: point it (or --raw-img-dir) at the training images")
    if not Path(raw_img_dir).is_dir():
        raise UserError(f"RAW_IMG_DIR not found: {raw_img_dir} (check the path)")
    given = [n for n, v in (("RAW_MASK_DIR", raw_mask_dir), ("RAW_JSON_PATH", raw_json_path),
                            ("RAW_RLE_CSV", raw_rle_csv)) if v]
    if len(given) > 1:
        raise UserError(f"{' and '.join(given)} are set together: give one source of masks")
    if raw_rle_csv:
        from training.sources.rle import rle_sources

        return rle_sources(raw_rle_csv, raw_img_dir, num_classes)
    if raw_json_path:
        from training.sources.labelstudio import labelstudio_sources

        return labelstudio_sources(raw_json_path, raw_img_dir, class_map, max_pixels=max_pixels)
    if not raw_mask_dir:
        raise UserError("set RAW_MASK_DIR (mask folder), RAW_JSON_PATH (Label Studio export) or RAW_RLE_CSV "
                        "(Severstal-style RLE CSV)")
    from training.sources.folders import pair_by_stem

    return pair_by_stem(raw_img_dir, raw_mask_dir)
