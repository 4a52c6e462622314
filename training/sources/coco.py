"""A COCO JSON (what CVAT, Roboflow and the LabelMe converters export) as training sources.

    python train.py --raw-img-dir coco/images --raw-coco-json coco/annotations.json
    python train.py --raw-img-dir coco/images --raw-coco-json coco/annotations.json --classes 3 \\
        --class-names background,horse,rider

- Every entry of `images` is one sample: `file_name` under RAW_IMG_DIR (its relative path, else its base name).
  An image listed without annotations is background; images under RAW_IMG_DIR the JSON does not list are left out
  (the log counts them). `width` and `height` must be the image's size as shown (EXIF orientation applied).
- `segmentation` polygons, uncompressed RLE (`counts` a list) and compressed RLE (`counts` a string) are decoded
  by pycocotools, as its `COCO.annToMask` does. Polygons of fewer than 3 points have no area and are skipped
  (the log counts them).
- Categories map to classes by name when CLASS_NAMES / CLASSES_FILE are given (name i = class i, background
  first; a category an annotation uses that is not among them stops the run, listing them all), else in
  category-id order (the first category is class 1) and CLASSES must be their number + 1. CLASSES=1 trains every
  category as the foreground.
- Larger regions are drawn first, so an object lying on another keeps its class. `iscrowd` regions are void
  (IGNORE_INDEX: left out of the loss and the metrics); with IGNORE_INDEX=none they take their category's class.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.sources import Source, name_classes, unique_keys
from utils import LOG, UserError, list_images

CROWD = -1  # the class of an iscrowd region: void, or its category's class without IGNORE_INDEX


def decode_segmentation(segmentation, hw: tuple[int, int]) -> np.ndarray:
    """One annotation's `segmentation` -> (H, W) uint8 0/1, as pycocotools' COCO.annToMask decodes it."""
    from pycocotools import mask as mask_utils

    h, w = hw
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6 and len(p) % 2 == 0]
        if not polygons:
            return np.zeros(hw, np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        if [int(v) for v in segmentation.get("size", ())] != [h, w]:
            raise ValueError(f"its RLE size {segmentation.get('size')} is not the image's [height, width] {[h, w]}")
        counts = segmentation["counts"]
        rle = mask_utils.frPyObjects(segmentation, h, w) if isinstance(counts, list) else \
            {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
    else:
        raise ValueError("its segmentation is neither polygons nor RLE")
    return np.ascontiguousarray(mask_utils.decode(rle))


@dataclass(frozen=True)
class CocoMask:
    """The annotations of one COCO image, drawn at its size: (class or CROWD, category class, segmentation JSON)."""
    hw: tuple[int, int]  # (height, width) the JSON gives the image
    regions: tuple[tuple[int, int, str], ...]
    name: str
    kind: str = "COCO"
    exif_frame_known: bool = False  # tools differ on EXIF: the data check tells on the pixels

    def render(self, shape: tuple[int, int], ignore_index: int | None) -> np.ndarray:
        if tuple(shape) != self.hw:
            swapped = " (width and height swapped: the photo carries an EXIF rotation the annotation tool did not " \
                      "apply)" if tuple(shape) == self.hw[::-1] else ""
            raise UserError(f"COCO image {self.name}: the JSON says {self.hw[1]}x{self.hw[0]} but the image is "
                            f"{shape[1]}x{shape[0]}{swapped}; use the exact files that were annotated")
        drawn = []
        for index, (cls, category_class, segmentation) in enumerate(self.regions):
            try:
                region = decode_segmentation(json.loads(segmentation), self.hw).astype(bool)
            except (ValueError, TypeError) as exc:
                raise UserError(f"COCO image {self.name}, annotation {index}: {exc}; re-export the annotations") from None
            value = category_class if cls == CROWD and ignore_index is None else ignore_index if cls == CROWD else cls
            drawn.append((-int(region.sum()), index, region, value))
        mask = np.zeros(self.hw, np.uint8)
        for _, _, region, value in sorted(drawn, key=lambda d: d[:2]):  # larger first, then file order
            mask[region] = value
        return mask

    def digest(self) -> str:
        return hashlib.sha1(json.dumps([self.hw, self.regions]).encode()).hexdigest()


def category_classes(categories: list[dict], used: set[int], num_classes: int, class_names: list[str] | None,
                     json_path) -> dict[int, int]:
    """{category id: class id}: by name with `class_names`, else in id order (see the module docstring)."""
    names = {c["id"]: str(c.get("name", c["id"])) for c in sorted(categories, key=lambda c: c["id"])}
    return name_classes(names, used, num_classes, class_names, f"COCO {json_path}")


def _read_json(json_path: Path) -> dict:
    if not json_path.is_file():
        raise UserError(f"RAW_COCO_JSON not found: {json_path} (check the path)")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"RAW_COCO_JSON {json_path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or \
            not isinstance(data.get("annotations"), list) or not isinstance(data.get("categories"), list):
        raise UserError(f"RAW_COCO_JSON {json_path} is not a COCO instances file: it needs 'images', 'annotations' "
                        "and 'categories' lists (export 'COCO' or 'COCO 1.0', with segmentation)")
    return data


def _find_images(images: list[dict], image_dir: Path, json_path) -> list[Path]:
    by_name: dict[str, list[Path]] = {}
    for path in list_images(image_dir):
        by_name.setdefault(path.name, []).append(path)
    found, missing = [], []
    for image in images:
        name = str(image["file_name"]).replace("\\", "/")
        direct = image_dir / name
        matches = [direct] if direct.is_file() else by_name.get(name.rsplit("/", 1)[-1], [])
        if len(matches) > 1:
            raise UserError(f"COCO {json_path}: {name} matches {len(matches)} files under RAW_IMG_DIR "
                            f"({', '.join(str(p) for p in matches[:3])}); keep one file per name")
        (found.append(matches[0]) if matches else missing.append(name))
    if missing:
        raise UserError(f"COCO {json_path} lists {len(missing)} images not under RAW_IMG_DIR={image_dir} (e.g. "
                        f"{', '.join(missing[:3])}); point RAW_IMG_DIR at the annotated images")
    return found


def coco_sources(json_path: str | Path, image_dir: str | Path, num_classes: int,
                 class_names: list[str] | None = None, ignore_index: int | None = 255) -> list[Source]:
    """Every image of a COCO JSON as a Source whose mask is drawn from its annotations (module docstring)."""
    json_path, image_dir = Path(json_path), Path(image_dir)
    data = _read_json(json_path)
    try:
        images = {int(im["id"]): im for im in data["images"]}
        anns = [a for a in data["annotations"] if "segmentation" in a]
        classes = category_classes(data["categories"], {int(a["category_id"]) for a in anns}, num_classes,
                                   class_names, json_path)
        by_image: dict[int, list[dict]] = {i: [] for i in images}
        for ann in anns:
            by_image[int(ann["image_id"])].append(ann)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"COCO {json_path} is malformed ({type(exc).__name__}: {exc}); re-export it") from None
    entries = list(images.values())
    paths = _find_images(entries, image_dir, json_path)
    unlisted = len(list_images(image_dir)) - len(set(paths))
    if unlisted:
        LOG.info("COCO %s: %d images under %s are not in the JSON and are not used", json_path.name, unlisted, image_dir)
    if len(anns) < len(data["annotations"]):
        LOG.warning("COCO %s: %d annotations without a segmentation (boxes only) are not used", json_path.name,
                    len(data["annotations"]) - len(anns))
    degenerate = sum(isinstance(a["segmentation"], list) and any(len(p) < 6 for p in a["segmentation"]) for a in anns)
    if degenerate:
        LOG.warning("COCO %s: %d annotations hold polygons of fewer than 3 points (no area); those polygons are "
                    "skipped", json_path.name, degenerate)
    sources = []
    for key, path, image in zip(unique_keys(paths, image_dir), paths, entries):
        own = [a for a in by_image[int(image["id"])] if int(a["category_id"]) in classes]
        regions = tuple((CROWD if a.get("iscrowd") else classes[int(a["category_id"])], classes[int(a["category_id"])],
                         json.dumps(a["segmentation"])) for a in own)
        recipe = CocoMask((int(image["height"]), int(image["width"])), regions, str(image["file_name"]),
                          kind=_kind(own))
        sources.append(Source(key, path, recipe=recipe))
    return sources


def _kind(annotations: list[dict]) -> str:
    """The encoding the data check reports: COCO polygons, COCO RLE or both, +crowd."""
    forms = sorted({"polygons" if isinstance(a["segmentation"], list) else "RLE" for a in annotations})
    crowd = "+crowd" if any(a.get("iscrowd") for a in annotations) else ""
    return f"COCO {'+'.join(forms) or 'empty'}{crowd}"
