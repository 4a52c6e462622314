"""Import Label Studio JSON exports as (image, mask) pairs.

Label Studio stores two kinds of segmentation results that we read:

- ``brushlabels``: a bit-packed run-length encoding ("rle-pack", as in
  label-studio-converter's ``brush.decode_rle``) of the RGBA canvas, H*W*4 bytes. The
  alpha channel carries the stroke; anti-aliased edges have alpha between 1 and 254, and any
  alpha > 0 counts as painted.
- ``polygonlabels``: vertices in percent of the image width/height.

Uploaded files are renamed to ``/data/upload/<project>/<8 hex>-<name>``, so images are
found in ``image_dir`` by their original name, not by the path in the export. This is also the
safety rule for untrusted exports: a reference (``../x.png``, ``/etc/x.png``, a URL) only ever
contributes its base name, looked up among the files under ``image_dir``; no other path is opened.

Usage::

    items = load_labelstudio("export.json", "raw/images")               # binary: any label -> 1
    items = load_labelstudio("export.json", "raw/images", {"scratch": 1, "dent": 2})
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import cv2
import numpy as np

from runtime.labelstudio import decode_brush_rle  # noqa: F401  (the codec lives with its encoder)
from training.sources import Source, unique_keys
from utils import IMAGE_EXTS, LOG, UserError, list_images, read_image

# Label Studio prefixes every uploaded file with 8 hex characters and a dash.
_UPLOAD_PREFIX = re.compile(r"^[0-9a-fA-F]{8}-")
_UPLOAD_DIR = re.compile(r"(^|/)data/upload/")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
_RESULT_TYPES = ("brushlabels", "polygonlabels")


@dataclass
class LabelStudioItem:
    """One annotated task: the image file and its mask of class ids (uint8, H x W)."""

    image_path: Path
    mask: np.ndarray
    task_id: int | str | None


# ----------------------------------------------------------------------------- polygons


def polygon_to_mask(points_pct, height: int, width: int) -> np.ndarray:
    """Polygon with vertices in percent of the image size -> uint8 (height, width) mask of 0/1."""
    points = np.asarray(points_pct, dtype=np.float64).reshape(-1, 2)
    mask = np.zeros((height, width), dtype=np.uint8)
    if len(points) < 3:
        return mask
    # Percent * size recovers the pixel coordinates the annotator clicked; rounding keeps
    # vertices that were drawn on pixel centres exact.
    pixels = np.round(points * (width / 100.0, height / 100.0)).astype(np.int32)
    cv2.fillPoly(mask, [pixels], 1)
    return mask


# ----------------------------------------------------------------------------- names


def reference_paths(reference: str) -> tuple[str, str]:
    """(decoded, literal) POSIX paths of an image reference. Decoded is what Label Studio serves: the `?d=` query
    value of ``/data/local-files/?d=dir/name`` (URL-decoded, as Label Studio writes it with urllib's quote), the
    URL-decoded path of uploads and URLs (``https://``, ``s3://``), or a plain POSIX or Windows path. Literal is the
    same reference not decoded: how a file written without URL-encoding (``a+b.jpg``, ``c&d.jpg``) named it."""
    ref = reference.strip()
    if _WINDOWS_DRIVE.match(ref):  # urlparse would read "C:" as a URL scheme
        decoded, literal = unquote(ref), ref
    else:
        parsed = urlparse(ref)
        local = parse_qs(parsed.query).get("d")
        # /data/local-files/?d=dir/name keeps the file in the query (parse_qs already decodes it).
        decoded = local[0] if local else unquote(parsed.path)
        literal = ref.split("?d=", 1)[1] if "?d=" in ref else ref.split("://", 1)[-1]
        if "://" in ref and "?d=" not in ref:
            literal = literal.split("/", 1)[-1]  # the host is no folder
    return tuple(path.replace("\\", "/").rstrip("/") for path in (decoded, literal))


def _base_name(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return _UPLOAD_PREFIX.sub("", name, count=1) if _UPLOAD_DIR.search(path) else name


def original_name(upload_path: str) -> str:
    """The original file name behind a Label Studio image reference (see reference_paths); names are URL-decoded
    and uploads (``/data/upload/<project>/<8 hex>-<name>``) lose their prefix."""
    return _base_name(reference_paths(upload_path)[0])


# ----------------------------------------------------------------------------- export parsing


def _read_tasks(json_path: Path) -> list[dict]:
    if not json_path.is_file():
        raise UserError(f"Label Studio export not found: {json_path} (check RAW_JSON_PATH / the path given)")
    try:
        with open(json_path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{json_path} is not valid JSON ({exc}); export the project again as 'JSON'") from None
    if isinstance(data, dict) and any(key in data for key in _ANNOTATION_KEYS):
        data = [data]  # a single task, as the Label Studio frontend stores it
    if not isinstance(data, list) or not all(_is_task(t) for t in data):
        raise UserError(
            f"{json_path} is not a Label Studio export: expected a JSON list of tasks, each with "
            "'data' and 'annotations' (or 'predictions'); export with the 'JSON' format (not JSON-MIN, CSV or COCO)"
        )
    return data


_ANNOTATION_KEYS = ("annotations", "completions", "predictions")


def _is_task(task) -> bool:
    return isinstance(task, dict) and isinstance(task.get("data"), dict) and any(k in task for k in _ANNOTATION_KEYS)


def _latest_annotation(task: dict, predictions: bool = False) -> dict | None:
    """The newest annotation that was not cancelled (skipped), or None. With `predictions`, a
    task's model predictions count when no person annotated it."""
    annotations = task.get("annotations", task.get("completions")) or []
    if predictions and not annotations:
        annotations = task.get("predictions") or []
    candidates = [
        (str(a.get("updated_at") or a.get("created_at") or ""), index, a)
        for index, a in enumerate(annotations)
        if isinstance(a, dict) and not a.get("was_cancelled", False)
    ]
    if not candidates:
        return None
    # Equal or missing timestamps fall back to list order: Label Studio appends new ones.
    return max(candidates, key=lambda c: (c[0], c[1]))[2]


def _image_reference(task: dict) -> str:
    data = task["data"]
    if isinstance(data.get("image"), str):
        return data["image"]
    for value in data.values():
        if isinstance(value, str) and original_name(value).lower().endswith(IMAGE_EXTS):
            return value
    raise UserError(
        f"task {task.get('id')}: no image reference in data (keys: {sorted(data)}); "
        "the export must come from an image labelling project"
    )


def _index_images(image_dir: Path) -> dict[str, list[Path]]:
    index: dict[str, list[Path]] = {}
    for path in list_images(image_dir):
        index.setdefault(path.name, []).append(path)
        if path.name.lower() != path.name:
            index.setdefault(path.name.lower(), []).append(path)
    return index


def _candidates(index: dict[str, list[Path]], path: str, image_dir: Path) -> list[Path]:
    """The files a reference path names: by base name, narrowed by its folders where the name is not unique."""
    name = _base_name(path)
    matches = index.get(name) or index.get(name.lower()) or []
    if len(matches) > 1:  # s1/x.jpg and s2/x.jpg: the reference's folders tell them apart
        narrowed = [m for m in matches if ("/" + path).endswith("/" + m.relative_to(image_dir).as_posix())]
        matches = narrowed or matches
    return matches


def _find_image(index: dict[str, list[Path]], reference: str, task_id, image_dir: Path) -> Path:
    decoded, literal = reference_paths(reference)
    found = _candidates(index, decoded, image_dir)
    if literal != decoded:
        raw = _candidates(index, literal, image_dir)
        if raw and found and raw != found:
            raise UserError(
                f"task {task_id}: image reference {reference!r} names {found[0].name!r} (URL-decoded, as Label Studio "
                f"reads it) and {raw[0].name!r} (as written), and both are in {image_dir}; export the tasks with "
                "URL-encoded references (inference.py --labelstudio writes them so) or rename one file"
            )
        found = found or raw
    if not found:
        raise UserError(
            f"task {task_id}: image '{_base_name(decoded)}' not found in {image_dir} (searched recursively by file "
            "name); put the annotated images there or point the image folder at them"
        )
    if len(found) > 1:
        listed = ", ".join(str(p) for p in found[:3])
        raise UserError(
            f"task {task_id}: image name '{found[0].name}' is ambiguous in {image_dir} ({listed}); "
            "keep one file per name"
        )
    return found[0]


# ----------------------------------------------------------------------------- rasterising


def _class_id(labels: list, class_map: dict[str, int] | None, task_id) -> int:
    if class_map is None:
        return 1
    label = labels[0] if labels else None
    if label not in class_map:
        raise UserError(
            f"task {task_id}: label {label!r} is not in the class map; known labels: "
            f"{sorted(class_map)}; add it to the class names or fix the annotation"
        )
    return int(class_map[label])


def _check_size(result: dict, image_hw: tuple[int, int], task_id, image_path: Path) -> None:
    h, w = image_hw
    ow, oh = result.get("original_width"), result.get("original_height")
    if ow is None or oh is None or (int(ow), int(oh)) == (w, h):
        return
    hint = " (width and height swapped: the photo probably carries an EXIF rotation)" if (ow, oh) == (h, w) else ""
    raise UserError(
        f"task {task_id}: the annotation was drawn on a {ow}x{oh} image but {image_path} is {w}x{h}{hint}; "
        "use the exact files that were uploaded to Label Studio"
    )


def _result_region(result: dict, height: int, width: int) -> np.ndarray:
    """Pixels covered by one brush or polygon result, as a bool (height, width) array."""
    value = result.get("value") or {}
    if result["type"] == "brushlabels":
        if "rle" not in value:
            raise UserError(
                f"brush result {result.get('id')} has no 'rle' (format {value.get('format')!r} is not supported); "
                "export the project as Label Studio JSON"
            )
        return decode_brush_rle(value["rle"], height, width) > 0
    return polygon_to_mask(value.get("points") or [], height, width) > 0


def rasterize_annotation(
    annotation: dict, image_hw: tuple[int, int], class_map: dict[str, int] | None, task_id, image_path: Path
) -> np.ndarray:
    """All brush/polygon results of one annotation -> uint8 mask of class ids; later results win."""
    height, width = image_hw
    mask = np.zeros((height, width), dtype=np.uint8)
    ignored: set[str] = set()
    for result in annotation.get("result") or []:
        kind = result.get("type")
        if kind not in _RESULT_TYPES:
            ignored.add(str(kind))
            continue
        _check_size(result, image_hw, task_id, image_path)
        class_id = _class_id((result.get("value") or {}).get(kind) or [], class_map, task_id)
        try:
            mask[_result_region(result, height, width)] = class_id
        except UserError as exc:  # a malformed RLE or polygon: say which task holds it
            raise UserError(f"task {task_id}, {kind} result {result.get('id')!r}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise UserError(f"task {task_id}, {kind} result {result.get('id')!r} is malformed ({exc}); "
                            "re-export the annotation from Label Studio") from None
    if ignored:
        LOG.warning("task %s: ignored result types %s (only %s are read)", task_id, sorted(ignored), _RESULT_TYPES)
    return mask


def _check_class_map(class_map: dict[str, int] | None) -> None:
    if class_map is None:
        return
    bad = {k: v for k, v in class_map.items() if not isinstance(v, (int, np.integer)) or not 0 <= v <= 255}
    if bad:
        raise UserError(f"class map ids must be integers 0..255, got {bad}; fix the class map")


def export_labels(json_path: str | os.PathLike, predictions: bool = False) -> dict[str, int]:
    """{label: number of regions} over the annotations load_labelstudio would read, to check a class map
    against the whole export at once (one error listing every label, not one per task)."""
    counts: dict[str, int] = {}
    for task in _read_tasks(Path(json_path)):
        annotation = _latest_annotation(task, predictions) or {}
        for result in annotation.get("result") or []:
            kind = result.get("type")
            labels = (result.get("value") or {}).get(kind) if kind in _RESULT_TYPES else None
            if labels:
                counts[str(labels[0])] = counts.get(str(labels[0]), 0) + 1
    return counts


def load_labelstudio(
    json_path: str | os.PathLike,
    image_dir: str | os.PathLike,
    class_map: dict[str, int] | None = None,
    max_pixels: int | None = None,
    predictions: bool = False,
) -> list[LabelStudioItem]:
    """Read a Label Studio JSON export into image paths and class-id masks.

    `class_map` maps label names to class ids; None means binary (every label -> 1). Tasks
    without a usable annotation are skipped and counted. A non-cancelled annotation with no
    regions is kept as an empty mask: the annotator saw nothing there. Images claiming more than
    `max_pixels` (default utils.MAX_IMAGE_PIXELS) are refused, as read_image refuses them. Model
    predictions are read only with `predictions=True` (tasks no person reviewed are never trained on).
    """
    json_path, image_dir = Path(json_path), Path(image_dir)
    _check_class_map(class_map)
    tasks = _read_tasks(json_path)
    index = _index_images(image_dir)
    items: list[LabelStudioItem] = []
    seen: dict[Path, object] = {}
    skipped = 0
    for task in tasks:
        annotation = _latest_annotation(task, predictions)
        if annotation is None:
            skipped += 1
            continue
        task_id = task.get("id")
        image_path = _find_image(index, _image_reference(task), task_id, image_dir)
        if image_path in seen:
            raise UserError(f"tasks {seen[image_path]} and {task_id} both annotate {image_path}: one would replace "
                            "the other; delete the duplicate task in Label Studio and export again")
        seen[image_path] = task_id
        image_hw = read_image(image_path, max_pixels).shape[:2]
        mask = rasterize_annotation(annotation, image_hw, class_map, task_id, image_path)
        items.append(LabelStudioItem(image_path=image_path, mask=mask, task_id=task_id))
    LOG.info(
        "Label Studio export %s: %d tasks, %d loaded, %d skipped (no annotation or all cancelled)",
        json_path.name, len(tasks), len(items), skipped,
    )
    return items


def labelstudio_class_map(class_names: list[str], num_classes: int) -> dict[str, int] | None:
    """Label -> class id for a Label Studio export: name i is id i. None for a binary run (every label -> 1)."""
    return None if num_classes == 1 else {name: i for i, name in enumerate(class_names)}


def check_export_labels(json_path: str | Path, class_map: dict[str, int]) -> None:
    """Every label of the export must be a configured class name; one line lists them all."""
    found = export_labels(json_path)
    unknown = sorted(set(found) - set(class_map))
    if unknown:
        raise UserError(f"Label Studio export {json_path} uses the labels {sorted(found)} but CLASS_NAMES/CLASSES_FILE "
                        f"configure {list(class_map)}: {unknown} not among them; name every label there "
                        "(class i = name i, background first) or fix the annotations")


def labelstudio_sources(json_path: str | Path, image_dir: str | Path, class_map: dict | None = None,
                        max_pixels: int | None = None) -> list[Source]:
    if class_map is not None:
        check_export_labels(json_path, class_map)
    items = load_labelstudio(json_path, image_dir, class_map, max_pixels)
    if not items:
        tasks = _read_tasks(Path(json_path))
        predicted = sum(bool(t.get("predictions")) for t in tasks)
        why = (f": its {predicted} tasks with regions hold model predictions only, which are never trained on; review "
               "them in Label Studio (submit each as an annotation) and export again" if predicted else
               " (every task unannotated or cancelled); annotate them in Label Studio and export again")
        raise UserError(f"no annotated tasks in {json_path}{why}")
    paths = [Path(it.image_path) for it in items]
    return [Source(key, path, mask=it.mask) for key, path, it in zip(unique_keys(paths, Path(image_dir)), paths, items)]
