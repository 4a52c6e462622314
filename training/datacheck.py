"""The data check: what a run is about to train on, looked at as a whole before anything trains.

    python train.py --check-data --raw-img-dir data/images --raw-mask-dir data/masks   # report only, no training

It runs before every training (train.prepare) and alone with --check-data (no torch imported). Every image header
and every mask is read once; WORK_DIR/data_report.json gets the report and the log a short table: images, sizes
and aspects, the mask encodings found (0/255, 0/1, class ids, palette, void, COCO, YOLO, ...), class pixel
fractions, empty masks, the smallest objects and duplicate images. It stops with one line (UserError) on what it
cannot read unambiguously:

- a mask the rules of runtime/masks.py refuse (a photo, a colour-coded mask, class ids above CLASSES - 1 or while
  CLASSES=1, 0/1/255 while IGNORE_INDEX is not 255), or a set whose masks contradict each other;
- a mask of another size than its image; an EXIF-rotated photo whose mask matches its stored, unrotated pixels
  (by size, or where the turn keeps the size, by where the mask's edges fall: training/exif.py);
- an unreadable image (empty, truncated, not an image, over MAX_IMAGE_PIXELS).

Colliding keys and labels that map to no class stop earlier, in the readers (training/sources/).
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from runtime.masks import check_encodings, inspect_mask
from training.exif import SWAPS, TURNS, drawn_frame, exif_orientation, shown_size, to_stored
from training.sources import Source
from utils import LOG, UserError, _refusal, atomic_write_json, header_size, read_file, read_image, setup_logging

if TYPE_CHECKING:
    from config import Config

REPORT_NAME = "data_report.json"
SMALLEST = 5  # objects listed per class


class Tally:
    """What the check has seen so far: sizes, encodings, pixels per class, empty masks, objects, file hashes."""

    def __init__(self, cfg: Config):
        self.classes, self.names, self.ignore_index = cfg.classes, cfg.names(), cfg.ignore_index
        self.sizes: list[tuple[int, int]] = []
        self.turned = 0
        self.encodings: Counter = Counter()
        self.file_encodings: dict[str, str] = {}  # mask files: what runtime.masks.check_encodings compares
        self.pixels = np.zeros(256, np.int64)
        self.empty: list[str] = []
        self.objects: dict[int, list[tuple[int, str]]] = {}
        self.hashes: dict[str, list[str]] = {}
        self.shapes: dict[int, list[tuple[np.ndarray, float]]] = {}  # per mask: object areas / image, thickness

    def add(self, source: Source, ids: np.ndarray, encoding: str, shown_wh: tuple[int, int], digest: str,
            orientation: int) -> None:
        self.sizes.append(shown_wh)
        self.turned += orientation != 1
        self.encodings[encoding] += 1
        counts = np.bincount(ids.ravel(), minlength=256)
        self.pixels += counts
        present = [c for c in range(1, max(self.classes, 2)) if counts[c]]
        if not present:
            self.empty.append(source.key)
        # every class's regions (the background's too: the gaps between objects, such as membranes between cells,
        # can be the thin structure), 8-connected; the smallest of each foreground class are listed
        for c in ([0] if counts[0] else []) + present:
            region = (ids == c).astype(np.uint8)
            _, _, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=8)
            areas = stats[1:, cv2.CC_STAT_AREA]
            self.shapes.setdefault(c, []).append((areas / ids.size, thickness(region)))
            if c:
                found = self.objects.setdefault(c, [])
                found += [(int(a), source.key) for a in sorted(areas)[:SMALLEST]]
                found.sort()
                del found[SMALLEST:]
        self.hashes.setdefault(digest, []).append(source.key)

    def report(self, origin: str, seconds: float) -> dict:
        widths, heights = (np.array(v) for v in zip(*self.sizes)) if self.sizes else (np.zeros(1), np.zeros(1))
        aspects = Counter(f"{w / h:.2f}" for w, h in self.sizes)
        classes = self.pixels[:max(self.classes, 2)]
        void = int(self.pixels[self.ignore_index]) if self.ignore_index is not None else 0
        labelled = max(int(classes.sum()) + void, 1)
        names = self.names if self.classes > 1 else ["background", self.names[-1]]
        duplicates = [keys for keys in self.hashes.values() if len(keys) > 1]
        return {
            "source": origin, "images": len(self.sizes), "seconds": round(seconds, 2),
            "classes": self.classes, "class_names": names, "ignore_index": self.ignore_index,
            "sizes": {"width": _spread(widths), "height": _spread(heights),
                      "aspects": dict(aspects.most_common(5)), "exif_turned": self.turned},
            "mask_encodings": dict(self.encodings.most_common()),
            "class_fractions": {n: round(int(p) / labelled, 6) for n, p in zip(names, classes)},
            "void_fraction": round(void / labelled, 6),
            "empty_masks": {"count": len(self.empty), "examples": self.empty[:5]},
            "smallest_objects": {names[c]: [{"pixels": a, "key": k} for a, k in objs]
                                 for c, objs in sorted(self.objects.items())},
            "objects": {names[c]: object_stats(found) for c, found in sorted(self.shapes.items())},
            "duplicate_images": {"groups": len(duplicates), "examples": duplicates[:5]},
        }


def thickness(region: np.ndarray) -> float:
    """The typical width in pixels of a class's regions in one mask: 2 x area / boundary pixels (a strip w pixels
    wide gives w, a disc of radius r gives about r). What a resize must keep above a few pixels."""
    boundary = int(np.count_nonzero(region & ~cv2.erode(region, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT,
                                                          borderValue=0)))
    return 2.0 * int(np.count_nonzero(region)) / max(boundary, 1)


def object_stats(found: list[tuple[np.ndarray, float]]) -> dict:
    """Per class: how many regions, their area as a fraction of their image (10th percentile, median) and the
    width of the class's regions per mask (10th percentile, median), for the recipe's plan (training/recipe.py)."""
    areas = np.concatenate([a for a, _ in found]) if found else np.zeros(0)
    widths = np.array([t for _, t in found])
    pct = lambda v, q: round(float(np.percentile(v, q)), 6) if v.size else None  # noqa: E731
    return {"count": int(areas.size), "area_fraction": {"p10": pct(areas, 10), "median": pct(areas, 50)},
            "thickness_px": {"p10": pct(widths, 10), "median": pct(widths, 50)}}


def _spread(values: np.ndarray) -> dict:
    return {"min": int(values.min()), "median": int(np.median(values)), "max": int(values.max())}


def _image_header(source: Source, max_pixels: int) -> tuple[bytes, tuple[int, int], int]:
    """(file bytes, stored (width, height), EXIF orientation); an unreadable image stops with one line."""
    raw = read_file(source.image_path)
    reason = _refusal(raw, max_pixels)
    if reason:
        raise UserError(f"cannot decode image: {source.image_path} ({reason}; remove or replace it)")
    orientation = exif_orientation(raw)
    stored = header_size(raw)
    if stored is None:  # no cheap header (some TIFFs): decode it
        h, w = read_image(source.image_path, max_pixels).shape[:2]
        stored = shown_size((w, h), orientation)
    return raw, stored, orientation


def _turn_advice(orientation: int) -> str:
    return (f"the photo carries EXIF orientation {orientation} and is shown {TURNS[orientation]}: turn the mask "
            f"the same way ({TURNS[orientation]}), or save the photo with the turn applied and no EXIF orientation")


def check_frame(source: Source, ids: np.ndarray, stored_wh: tuple[int, int], orientation: int,
                max_pixels: int) -> None:
    """The mask must fit the photo as shown (EXIF applied), not as stored (module docstring)."""
    shown_wh = shown_size(stored_wh, orientation)
    mask_wh = (ids.shape[1], ids.shape[0])
    if mask_wh != shown_wh:
        if orientation in SWAPS and mask_wh == stored_wh:
            raise UserError(f"the mask of {source.image_path} ({source.describe()}) is {mask_wh[0]}x{mask_wh[1]}, the "
                            f"photo's stored, unturned size, but {_turn_advice(orientation)}")
        raise UserError(f"mask size {mask_wh[0]}x{mask_wh[1]} differs from image {shown_wh[0]}x{shown_wh[1]} for "
                        f"{source.image_path} ({source.describe()})")
    trusted = source.mask is not None or getattr(source.recipe, "exif_frame_known", False)
    if orientation == 1 or trusted or stored_wh != shown_wh or ids.min() == ids.max():
        return
    if np.array_equal(to_stored(ids, orientation), ids):  # the turn leaves the mask as it is: nothing to tell
        return
    shown = read_image(source.image_path, max_pixels)
    frame = drawn_frame(shown, np.ascontiguousarray(to_stored(shown, orientation)), ids)
    if frame == "stored":
        raise UserError(f"the mask of {source.image_path} follows the photo's stored, unturned pixels, but "
                        f"{_turn_advice(orientation)}")
    if frame is None:
        raise UserError(f"{source.image_path} carries EXIF orientation {orientation} (shown {TURNS[orientation]}) and "
                        "keeps its size when turned, so its mask cannot tell whether it was drawn on the photo as "
                        "shown or as stored: save the photo with the turn applied and no EXIF orientation")


def inspect_source(source: Source, cfg: Config, tally: Tally) -> None:
    raw, stored_wh, orientation = _image_header(source, cfg.max_image_pixels)
    shown_wh = shown_size(stored_wh, orientation)
    if source.mask_path is not None:
        read = inspect_mask(source.mask_path, cfg.classes, cfg.max_image_pixels, cfg.ignore_index)
        ids, encoding = read.ids, read.encoding
        tally.file_encodings[str(source.mask_path)] = encoding
    else:
        ids = source.load_mask(cfg.classes, cfg.max_image_pixels, (shown_wh[1], shown_wh[0]), cfg.ignore_index)
        encoding = source.recipe.kind if source.recipe is not None else \
            "RLE CSV" if source.rle is not None else "Label Studio"
    check_frame(source, ids, stored_wh, orientation, cfg.max_image_pixels)
    tally.add(source, ids, encoding, shown_wh, hashlib.sha1(raw).hexdigest(), orientation)


def origin(cfg: Config) -> str:
    """Which setting the masks come from, as the report names it."""
    for env, name in (("RAW_YOLO_YAML", "raw_yolo_yaml"), ("RAW_COCO_JSON", "raw_coco_json"),
                      ("RAW_RLE_CSV", "raw_rle_csv"), ("RAW_JSON_PATH", "raw_json_path"), ("RAW_MASK_DIR", "raw_mask_dir")):
        if getattr(cfg, name):
            return f"{env}={getattr(cfg, name)}"
    return "none"


def check_data(cfg: Config, sources: list[Source], log_table: bool = True) -> dict:
    """Check every source (module docstring), write WORK_DIR/data_report.json, log the table; the report."""
    start = time.monotonic()
    tally = Tally(cfg)
    for source in sources:
        inspect_source(source, cfg, tally)
    check_encodings(tally.file_encodings, cfg.classes, cfg.ignore_index)
    report = tally.report(origin(cfg), time.monotonic() - start)
    path = Path(cfg.work_dir) / REPORT_NAME
    atomic_write_json(path, report)
    for line in format_table(report, path).splitlines() if log_table else ():
        LOG.info("%s", line)
    if report["duplicate_images"]["groups"]:
        LOG.warning("%d groups of identical images (e.g. %s): a copy in the training folds and one in the validation "
                    "folds inflates the scores", report["duplicate_images"]["groups"],
                    ", ".join(report["duplicate_images"]["examples"][0]))
    return report


def format_table(report: dict, path: Path | str) -> str:
    """The short table the log (and --check-data) shows."""
    size = report["sizes"]
    aspects = ", ".join(f"{a} x{n}" for a, n in size["aspects"].items())
    fractions = "  ".join(f"{n} {f:.2%}" for n, f in report["class_fractions"].items())
    void = f"  void {report['void_fraction']:.2%}" if report["void_fraction"] else ""
    smallest = "; ".join(f"{n} {objs[0]['pixels']} px ({objs[0]['key']})"
                         for n, objs in report["smallest_objects"].items() if objs) or "none"
    empty = report["empty_masks"]
    rows = [
        f"data check: {report['images']} images, {report['source']} ({report['seconds']:.1f} s) -> {path}",
        f"  sizes       W {size['width']['min']}..{size['width']['max']} (median {size['width']['median']}), "
        f"H {size['height']['min']}..{size['height']['max']} (median {size['height']['median']}); aspects {aspects}"
        + (f"; {size['exif_turned']} EXIF-turned" if size["exif_turned"] else ""),
        "  masks       " + ", ".join(f"{e} x{n}" for e, n in report["mask_encodings"].items()),
        f"  classes     {fractions}{void}",
        f"  empty       {empty['count']} masks" + (f" (e.g. {', '.join(empty['examples'][:3])})" if empty["count"] else ""),
        f"  smallest    {smallest}",
        f"  duplicates  {report['duplicate_images']['groups']} groups of identical images",
    ]
    return "\n".join(rows)


def check_only(cfg: Config) -> dict:
    """train.py --check-data: the sources, the check and its table on stdout; nothing trains, torch is not imported."""
    from training.sources import sources_from_config

    setup_logging()
    report = check_data(cfg, sources_from_config(cfg), log_table=False)
    print(format_table(report, Path(cfg.work_dir) / REPORT_NAME))
    return report
