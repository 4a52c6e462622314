"""Kaggle-style RLE CSVs (Severstal steel defects): read them as masks, write predictions in the same format.

The format, as published for the Severstal competition::

    ImageId,ClassId,EncodedPixels
    0002cc93b.jpg,1,29102 12 29346 24 29602 24

`EncodedPixels` is space-separated (start, length) pairs. Pixels are numbered from 1, top to
bottom, then left to right (column-major): "1 3 10 5" is pixels 1, 2, 3, 10, 11, 12, 13, 14,
and pixel 2 is (row 2, column 1). An image without rows (or with an empty EncodedPixels) has
no defect of that class. ClassId starts at 1; class 0 is the background.

    masks = read_rle_csv("train.csv", {"a.jpg": (256, 1600)})   # image -> (H, W) uint8 class ids
    with RleCsvWriter("submission.csv") as out:
        out.write("a.jpg", class_mask, num_classes=5)             # one row per (image, class)

No torch: the runtime writes submissions with it, the training side reads train.csv with it.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from utils import LOG, UserError

COLUMNS = ("ImageId", "ClassId", "EncodedPixels")


def encode(mask: np.ndarray) -> str:
    """(H, W) bool/0-1 mask -> "start length ..." (1-indexed, column-major); "" for an empty mask."""
    flat = np.asarray(mask, bool).ravel(order="F")
    padded = np.concatenate([[False], flat, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])  # 0-based: run starts, then run ends, alternating
    starts, ends = edges[0::2], edges[1::2]
    return " ".join(f"{s + 1} {e - s}" for s, e in zip(starts, ends))


def decode(text: str, shape: tuple[int, int], where: str = "EncodedPixels") -> np.ndarray:
    """"start length ..." -> (H, W) bool mask. A malformed string is a UserError naming `where`."""
    h, w = shape
    text = (text or "").strip()
    flat = np.zeros(h * w, bool)
    if not text:
        return flat.reshape((h, w), order="F")
    try:
        numbers = np.array([int(v) for v in text.split()], np.int64)
    except ValueError:
        raise UserError(f"{where}: {text[:40]!r}... is not space-separated integers (start length pairs)") from None
    if len(numbers) % 2:
        raise UserError(f"{where}: {len(numbers)} numbers, not (start, length) pairs")
    starts, lengths = numbers[0::2] - 1, numbers[1::2]
    if (starts < 0).any() or (lengths < 1).any():
        raise UserError(f"{where}: starts are 1-indexed and lengths >= 1 (found start {starts.min() + 1}, "
                        f"length {lengths.min()})")
    if (starts + lengths).max() > h * w:
        raise UserError(f"{where}: a run ends at pixel {(starts + lengths).max()} but the image has {h}x{w} = "
                        f"{h * w} pixels; is the image size right (Severstal strips are 256x1600)?")
    delta = np.zeros(h * w + 1, np.int32)
    np.add.at(delta, starts, 1)
    np.add.at(delta, starts + lengths, -1)
    flat = np.cumsum(delta[:-1]) > 0
    return flat.reshape((h, w), order="F")


def read_rows(path: str | os.PathLike) -> dict[str, dict[int, str]]:
    """train.csv -> {ImageId: {ClassId: EncodedPixels}}; images listed only with empty pixels map to {}."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"RLE CSV {path} not found")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path}: needs the columns {', '.join(COLUMNS)}; it has {reader.fieldnames} "
                            f"(missing {', '.join(missing)})")
        rows: dict[str, dict[int, str]] = {}
        for line, row in enumerate(reader, start=2):
            image_id, class_text, pixels = row["ImageId"].strip(), row["ClassId"].strip(), row["EncodedPixels"] or ""
            try:
                class_id = int(class_text)
            except ValueError:
                raise UserError(f"{path} line {line}: ClassId {class_text!r} is not an integer") from None
            if class_id < 1:
                raise UserError(f"{path} line {line}: ClassId {class_id}; classes start at 1 (0 is the background)")
            per_image = rows.setdefault(image_id, {})
            if pixels.strip():
                if class_id in per_image:
                    raise UserError(f"{path} line {line}: {image_id} class {class_id} is listed twice")
                per_image[class_id] = pixels
    return rows


def class_mask(classes: dict[int, str], shape: tuple[int, int], where: str) -> np.ndarray:
    """{ClassId: EncodedPixels} -> (H, W) uint8 class ids. Overlapping classes: the higher id wins, with a warning."""
    mask = np.zeros(shape, np.uint8)
    for class_id in sorted(classes):
        region = decode(classes[class_id], shape, f"{where} class {class_id}")
        overlap = int((region & (mask > 0)).sum())
        if overlap:
            LOG.warning("%s: class %d overlaps an earlier class on %d px; those pixels become class %d",
                        where, class_id, overlap, class_id)
        mask[region] = class_id
    return mask


def encode_row(image_id: str, mask: np.ndarray, num_classes: int) -> list[tuple[str, int, str]]:
    """One (ImageId, ClassId, EncodedPixels) per foreground class of a class-id (or 0/1) mask."""
    if num_classes == 1:
        return [(image_id, 1, encode(mask > 0))]
    return [(image_id, c, encode(mask == c)) for c in range(1, num_classes)]


class RleCsvWriter:
    """Writes predictions as a Severstal-style CSV, row by row (nothing is lost on a crash: each image's
    rows are flushed as they are written)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(f"--rle-csv {self.path} is a folder; give a file name such as submission.csv")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        self._csv.writerow(COLUMNS)

    def write(self, image_id: str, mask: np.ndarray, num_classes: int) -> None:
        self._csv.writerows(encode_row(image_id, mask, num_classes))
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "RleCsvWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def to_csv_text(rows: list[tuple[str, int, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    return buffer.getvalue()
