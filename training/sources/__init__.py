"""Where labelled samples come from: one `Source` per image, whatever the annotation format.

    sources = sources_from_config(cfg)      # or collect_sources(raw_img_dir, raw_mask_dir, ...)

Each reader turns one format into `Source`s, all under one contract: a unique key (the file stem, or the path
relative to the image folder where stems collide), the image path, and a mask loader returning (H, W) uint8 class
ids at the image's size as read_image decodes it (EXIF orientation applied), void pixels = IGNORE_INDEX:

    folders      image and mask folders paired by file stem (grey, palette PNG or colour masks: runtime/masks.py)
    labelstudio  a Label Studio JSON export (brush RLE, polygons)
    rle          a Kaggle/Severstal RLE CSV (ImageId, ClassId, EncodedPixels)
    coco         a COCO JSON (polygons and RLE, through pycocotools)
    yolo         an Ultralytics YOLO-seg data.yaml (polygon labels, rasterised as Ultralytics does)

training/datacheck.py then looks at them as a whole and `dataset.build_cache` writes them into the disk cache.
No torch here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from runtime.rle import class_mask
from utils import IGNORE_INDEX, LOG, UserError, file_sha1, read_image, read_mask

if TYPE_CHECKING:
    from config import Config


class MaskRecipe(Protocol):
    """A mask drawn from annotations at the image's size (COCO, YOLO-seg): training/sources/coco.py, yolo.py."""

    kind: str  # what the data check reports as the encoding, e.g. "COCO polygons"

    def render(self, shape: tuple[int, int], ignore_index: int | None) -> np.ndarray: ...
    def digest(self) -> str: ...


@dataclass(frozen=True)
class Source:
    """One labelled sample before caching. The mask comes from a file, from memory, RLE rows or a recipe."""
    key: str
    image_path: Path
    mask_path: Path | None = None
    mask: np.ndarray | None = None
    rle: tuple[tuple[int, str], ...] | None = None  # RAW_RLE_CSV: (ClassId, EncodedPixels) pairs, decoded on load
    recipe: MaskRecipe | None = None

    def load_mask(self, num_classes: int, max_pixels: int | None = None, shape: tuple[int, int] | None = None,
                  ignore_index: int | None = IGNORE_INDEX) -> np.ndarray:
        """(H, W) uint8 class ids at the image's (EXIF-applied) size, void = ignore_index. `shape` (the image's
        H, W) saves decoding the image again where the mask is drawn (RLE rows, recipes)."""
        if self.mask is not None:
            return self.mask
        if self.mask_path is not None:
            return read_mask(self.mask_path, num_classes, max_pixels, ignore_index)
        shape = tuple(shape) if shape is not None else read_image(self.image_path, max_pixels).shape[:2]
        if self.recipe is not None:
            return self.recipe.render(shape, ignore_index)
        mask = class_mask(dict(self.rle or ()), shape, f"RAW_RLE_CSV {self.image_path.name}")
        return (mask > 0).astype(np.uint8) if num_classes == 1 else mask

    def describe(self) -> str:
        """Where the mask comes from, for the manifest and the data report."""
        if self.mask_path is not None:
            return str(self.mask_path)
        if self.recipe is not None:
            return f"<{self.recipe.kind}>"
        return "<rle csv>" if self.rle is not None else "<labelstudio>"

    def content_hash(self) -> str:
        digest = hashlib.sha1(file_sha1(self.image_path).encode())
        if self.rle is not None:
            digest.update(json.dumps(self.rle).encode())
        elif self.recipe is not None:
            digest.update(self.recipe.digest().encode())
        elif self.mask is not None:
            digest.update(np.ascontiguousarray(self.mask).tobytes())
            digest.update(str(self.mask.shape).encode())
        else:
            digest.update(file_sha1(self.mask_path).encode())
        return digest.hexdigest()


def unique_keys(paths: list[Path], root: Path) -> list[str]:
    """A key per path: its stem, or its path relative to `root` (suffix kept) where stems collide, so `a.jpg` and
    `a.png`, or `s1/x.jpg` and `s2/x.jpg`, never share a cache entry."""
    stems: dict[str, int] = {}
    for path in paths:
        stems[path.stem] = stems.get(path.stem, 0) + 1
    return [path.stem if stems[path.stem] == 1 else _relative(path, root) for path in paths]


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix().lstrip("/")


def check_unique_keys(sources: list[Source]) -> None:
    """Two sources with one key would share a cache entry: one silently replacing the other."""
    seen: dict[str, Source] = {}
    for source in sources:
        other = seen.setdefault(source.key, source)
        if other is not source:
            raise UserError(f"two samples share the key {source.key!r} ({other.image_path} and {source.image_path}): "
                            "one would replace the other; rename one of the files or drop the duplicate annotation")


def name_classes(names: dict[int, str], used: set[int], num_classes: int, class_names: list[str] | None,
                 what: str, kind: str = "categories") -> dict[int, int]:
    """{category: class id} of a format's named categories (COCO's, YOLO's names), `names` in their order: every
    one -> 1 with CLASSES=1; by name with `class_names` (one that `used` holds but no name matches stops, listing
    them all); else the i-th -> i + 1, and CLASSES must be their number + 1. `what` names the file in messages."""
    if num_classes == 1:
        if len(names) > 1:
            LOG.info("%s: %s %s all train as the one foreground class (CLASSES=1); --classes %d and --class-names "
                     "keep them apart", what, kind, list(names.values()), len(names) + 1)
        return dict.fromkeys(names, 1)
    if class_names:
        unknown = sorted({names[c] for c in used} - set(class_names))
        if unknown:
            raise UserError(f"{what} uses the {kind} {sorted({names[c] for c in used})} but CLASS_NAMES/CLASSES_FILE "
                            f"configure {class_names}: {unknown} not among them; name every one there (class i = "
                            "name i, background first) or fix the annotations")
        return {c: class_names.index(n) for c, n in names.items() if n in class_names}
    if len(names) + 1 != num_classes:
        raise UserError(f"{what} has {len(names)} {kind} ({', '.join(names.values())}) but CLASSES={num_classes}; set "
                        f"--classes {len(names) + 1} (background is class 0), or --class-names to map them by name")
    return {c: i + 1 for i, c in enumerate(names)}


SOURCE_SETTINGS = (("RAW_MASK_DIR", "raw_mask_dir"), ("RAW_JSON_PATH", "raw_json_path"),
                   ("RAW_RLE_CSV", "raw_rle_csv"), ("RAW_COCO_JSON", "raw_coco_json"),
                   ("RAW_YOLO_YAML", "raw_yolo_yaml"))


def collect_sources(raw_img_dir: str | None, raw_mask_dir: str | None, raw_json_path: str | None,
                    max_pixels: int | None = None, class_map: dict[str, int] | None = None,
                    raw_rle_csv: str | None = None, num_classes: int = 1, raw_coco_json: str | None = None,
                    raw_yolo_yaml: str | None = None, class_names: list[str] | None = None,
                    ignore_index: int | None = IGNORE_INDEX) -> list[Source]:
    """The labelled sources; `max_pixels` (MAX_IMAGE_PIXELS) bounds the images read for their size.
    `class_map` (labelstudio_class_map) maps Label Studio labels to class ids; None: every label is class 1.
    `class_names`: the names the user gave (CLASS_NAMES/CLASSES_FILE), which COCO and YOLO map categories by."""
    values = {"raw_mask_dir": raw_mask_dir, "raw_json_path": raw_json_path, "raw_rle_csv": raw_rle_csv,
              "raw_coco_json": raw_coco_json, "raw_yolo_yaml": raw_yolo_yaml}
    given = [env for env, name in SOURCE_SETTINGS if values[name]]
    if len(given) > 1:
        raise UserError(f"{' and '.join(given)} are set together: give one source of masks")
    if raw_yolo_yaml:
        from training.sources.yolo import yolo_sources

        return _checked(yolo_sources(raw_yolo_yaml, num_classes, class_names, raw_img_dir))
    _check_image_dir(raw_img_dir)
    if raw_coco_json:
        from training.sources.coco import coco_sources

        return _checked(coco_sources(raw_coco_json, raw_img_dir, num_classes, class_names, ignore_index))
    if raw_rle_csv:
        from training.sources.rle import rle_sources

        return _checked(rle_sources(raw_rle_csv, raw_img_dir, num_classes))
    if raw_json_path:
        from training.sources.labelstudio import labelstudio_sources

        return _checked(labelstudio_sources(raw_json_path, raw_img_dir, class_map, max_pixels=max_pixels))
    if not raw_mask_dir:
        raise UserError("set RAW_MASK_DIR (mask folder), RAW_JSON_PATH (Label Studio export), RAW_RLE_CSV "
                        "(Severstal-style RLE CSV), RAW_COCO_JSON (COCO JSON) or RAW_YOLO_YAML (YOLO-seg data.yaml)")
    from training.sources.folders import pair_by_stem

    return _checked(pair_by_stem(raw_img_dir, raw_mask_dir))


def _check_image_dir(raw_img_dir: str | None) -> None:
    if not raw_img_dir:
        raise UserError("RAW_IMG_DIR is not set: point it (or --raw-img-dir) at the training images")
    if not Path(raw_img_dir).is_dir():
        raise UserError(f"RAW_IMG_DIR not found: {raw_img_dir} (check the path)")


def _checked(sources: list[Source]) -> list[Source]:
    check_unique_keys(sources)
    return sources


def given_class_names(cfg: Config) -> list[str] | None:
    """The class names the user set (CLASS_NAMES or CLASSES_FILE), None when the defaults stand."""
    return cfg.names() if cfg.class_names.strip() or cfg.classes_file else None


def sources_from_config(cfg: Config) -> list[Source]:
    """collect_sources with the run's settings."""
    from training.sources.labelstudio import labelstudio_class_map

    return collect_sources(cfg.raw_img_dir, cfg.raw_mask_dir, cfg.raw_json_path, cfg.max_image_pixels,
                           class_map=labelstudio_class_map(cfg.names(), cfg.classes), raw_rle_csv=cfg.raw_rle_csv,
                           num_classes=cfg.classes, raw_coco_json=cfg.raw_coco_json, raw_yolo_yaml=cfg.raw_yolo_yaml,
                           class_names=given_class_names(cfg), ignore_index=cfg.ignore_index)
