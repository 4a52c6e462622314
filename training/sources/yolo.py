"""An Ultralytics YOLO-seg dataset (Ultralytics and Roboflow exports) as training sources.

    python train.py --raw-yolo-yaml datasets/horses/data.yaml --classes 2

data.yaml, in the Ultralytics layout:

    path: .                 # the dataset root, relative to the yaml's folder (default: that folder)
    train: images/train     # a folder, a list of folders, or a .txt list of images, under the root
    val: images/val
    names: {0: horse}       # or a list

- The label of `images/<split>/x.jpg` is `labels/<split>/x.txt` (the last `images` folder becomes `labels`, as
  Ultralytics' img2label_paths has it): one object a line, `class x1 y1 x2 y2 ...`, normalised to 0-1. An image
  without a label file is background, as Ultralytics counts it. A line of 4 coordinates is a box (a detection
  label, not a segment) and stops the run, as do coordinates outside 0-1.
- Polygons are rasterised exactly as `ultralytics.data.utils.polygon2mask` does (x width, y height, truncated to
  int32, cv2.fillPoly), on the image as shown (EXIF applied, as Ultralytics reads it); larger objects first, so a
  small one lying on a large one keeps its class (Ultralytics' overlap masks).
- YOLO class k is class k + 1 (class 0 is the background) and CLASSES must be len(names) + 1; with CLASS_NAMES /
  CLASSES_FILE, classes map by name. CLASSES=1 trains every class as the foreground.
- The split is not kept: train and val images are pooled for K-fold cross-validation (the test split is left out).
  RAW_IMG_DIR is not used: the yaml names the image folders.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from training.sources import Source, name_classes, unique_keys
from utils import IMAGE_EXTS, LOG, UserError, list_images

SPLITS = ("train", "val")  # pooled; "test" stays out


def polygon_region(coords: tuple[float, ...], hw: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 0/1 of one normalised polygon, as ultralytics.data.utils.polygon2mask draws it at full size."""
    h, w = hw
    points = np.asarray(coords, np.float32).reshape(-1, 2)  # float32, as Ultralytics parses and denormalises
    points[:, 0] *= w
    points[:, 1] *= h
    points = points.astype(np.int32)  # truncated, as polygon2mask's np.asarray(..., dtype=np.int32)
    mask = np.zeros(hw, np.uint8)
    cv2.fillPoly(mask, [points], color=1)
    return mask


@dataclass(frozen=True)
class YoloMask:
    """The polygons of one image's label file: (class id, normalised x1 y1 x2 y2 ...)."""
    polygons: tuple[tuple[int, tuple[float, ...]], ...]
    kind: str = "YOLO polygons"
    exif_frame_known: bool = True  # Ultralytics reads images with EXIF applied

    def render(self, shape: tuple[int, int], ignore_index: int | None) -> np.ndarray:
        regions = [polygon_region(coords, tuple(shape)) for _, coords in self.polygons]
        order = sorted(range(len(regions)), key=lambda i: (-int(regions[i].sum()), i))  # larger first
        mask = np.zeros(tuple(shape), np.uint8)
        for i in order:
            mask[regions[i] > 0] = self.polygons[i][0]
        return mask

    def digest(self) -> str:
        return hashlib.sha1(json.dumps(self.polygons).encode()).hexdigest()


def label_path(image: Path) -> Path:
    """Ultralytics' img2label_paths: the last /images/ becomes /labels/, the suffix .txt."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return Path(sb.join(os.fspath(image).rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt")


def read_label(path: Path) -> list[tuple[int, tuple[float, ...]]]:
    """(class, coordinates) per line of a YOLO-seg label file; a box, an odd or short line, or coordinates
    outside 0-1 stop with one line."""
    objects = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            cls, coords = int(float(parts[0])), tuple(np.array(parts[1:], dtype=np.float32).tolist())
        except ValueError:
            raise UserError(f"YOLO label {path} line {number} is not numbers: {line[:60]!r}") from None
        if len(coords) == 4:
            raise UserError(f"YOLO label {path} line {number} is a box (class x y w h), a detection label: "
                            "segmentation needs polygons (class x1 y1 x2 y2 ...); export the dataset as YOLO-seg")
        if len(coords) < 6 or len(coords) % 2:
            raise UserError(f"YOLO label {path} line {number} has {len(coords)} coordinates: a polygon needs pairs "
                            "of x y, at least 3")
        if min(coords) < 0 or max(coords) > 1:
            raise UserError(f"YOLO label {path} line {number} has coordinates outside 0-1 (e.g. {max(coords):g}): "
                            "YOLO-seg labels are normalised to the image size")
        objects.append((cls, coords))
    return objects


def _load_yaml(yaml_path: Path) -> dict:
    import yaml

    if not yaml_path.is_file():
        raise UserError(f"RAW_YOLO_YAML not found: {yaml_path} (check the path)")
    try:
        data = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"RAW_YOLO_YAML {yaml_path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or "names" not in data or not any(data.get(s) for s in SPLITS):
        raise UserError(f"RAW_YOLO_YAML {yaml_path} is not an Ultralytics data.yaml: it needs 'names' and 'train' "
                        "(and 'val') image folders")
    return data


def class_names_of(data: dict) -> list[str]:
    names = data["names"]
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=int)]
    return [str(n) for n in names]


def _split_images(entry, root: Path) -> list[Path]:
    """The images one split names: folders, .txt lists of images (relative to the list's folder), or a list of both."""
    images = []
    for item in entry if isinstance(entry, list) else [entry]:
        path = root / str(item)
        if not path.exists() and str(item).startswith("../"):  # Roboflow's data.yaml, as Ultralytics reads it
            path = root / str(item)[3:]
        if path.is_dir():
            images += list_images(path)
        elif path.is_file() and path.suffix == ".txt":
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            images += [p if p.is_absolute() else (path.parent / p) for p in map(Path, lines)]
        else:
            raise UserError(f"RAW_YOLO_YAML: the split {item!r} is neither a folder nor a .txt list under {root}")
    return [p for p in images if p.suffix.lower() in IMAGE_EXTS]


def yolo_classes(names: list[str], num_classes: int, class_names: list[str] | None, used: set[int],
                 yaml_path) -> dict[int, int]:
    """{YOLO class: our class}: k -> k + 1, by name with `class_names`, all -> 1 when CLASSES=1."""
    bad = sorted(c for c in used if not 0 <= c < len(names))
    if bad:
        raise UserError(f"YOLO labels of {yaml_path} use class {bad[0]} but names has {len(names)} entries "
                        f"({names}); add the name or fix the labels")
    return name_classes(dict(enumerate(names)), used, num_classes, class_names, f"YOLO {yaml_path}", "classes")


def yolo_sources(yaml_path: str | Path, num_classes: int, class_names: list[str] | None = None,
                 raw_img_dir: str | None = None) -> list[Source]:
    """The train and val images of a YOLO-seg data.yaml with their polygon labels (module docstring)."""
    yaml_path = Path(yaml_path)
    data = _load_yaml(yaml_path)
    if raw_img_dir:
        LOG.warning("RAW_IMG_DIR=%s is not used with RAW_YOLO_YAML: %s names the image folders", raw_img_dir, yaml_path)
    root = yaml_path.parent / str(data.get("path") or ".")
    if not root.is_dir():
        root = Path(str(data["path"]))
    images = sorted({p for split in SPLITS if data.get(split) for p in _split_images(data[split], root)})
    if not images:
        raise UserError(f"RAW_YOLO_YAML {yaml_path}: no images in its train/val folders under {root}")
    labels = {image: read_label(label_path(image)) if label_path(image).is_file() else [] for image in images}
    unlabelled = sum(not label_path(image).is_file() for image in images)
    if unlabelled:
        LOG.info("YOLO %s: %d of %d images have no label file: background, as Ultralytics counts them",
                 yaml_path.name, unlabelled, len(images))
    names = class_names_of(data)
    classes = yolo_classes(names, num_classes, class_names, {c for objs in labels.values() for c, _ in objs}, yaml_path)
    keys = unique_keys(images, root)
    return [Source(key, image, recipe=YoloMask(tuple((classes[c], coords) for c, coords in labels[image])))
            for key, image in zip(keys, images)]
