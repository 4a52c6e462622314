"""EXIF orientation, and which frame a mask was drawn on: for the data check (training/datacheck.py).

read_image applies a photo's EXIF orientation, as browsers, Label Studio and Ultralytics show it, so a mask must
be drawn on the photo as shown. A mask drawn on the stored pixels instead is caught by its size where the turn
swaps width and height; where it does not (a square photo, a mirror), by where the mask's edges fall: on the
photo's edges in the frame it was drawn on (`drawn_frame`).
"""

from __future__ import annotations

import cv2
import numpy as np

from utils import sniff_format

# What each orientation does to the stored pixels to show them (EXIF 2.32, tag 0x0112)
TURNS = {2: "mirrored left-right", 3: "rotated 180 degrees", 4: "mirrored top-bottom",
         5: "mirrored along its diagonal", 6: "rotated 90 degrees clockwise", 7: "mirrored along its anti-diagonal",
         8: "rotated 90 degrees counter-clockwise"}
SWAPS = (5, 6, 7, 8)  # orientations that swap width and height
MARGIN = 1.25  # edge contrast one frame needs over the other for `drawn_frame` to decide
LONG_SIDE = 512  # drawn_frame works on images this size at most


def _tiff_orientation(blob: bytes) -> int:
    """Tag 0x0112 of the first IFD of a TIFF-structured blob (EXIF, or a TIFF file); 1 when absent."""
    if blob[:2] not in (b"II", b"MM") or len(blob) < 8:
        return 1
    order = "little" if blob[:2] == b"II" else "big"
    ifd = int.from_bytes(blob[4:8], order)
    count = int.from_bytes(blob[ifd:ifd + 2], order) if ifd + 2 <= len(blob) else 0
    for i in range(count):
        entry = blob[ifd + 2 + 12 * i: ifd + 14 + 12 * i]
        if len(entry) == 12 and int.from_bytes(entry[:2], order) == 0x0112:
            value = int.from_bytes(entry[8:10], order)
            return value if 1 <= value <= 8 else 1
    return 1


def _exif_blob(data: bytes) -> bytes | None:
    """The EXIF block of a JPEG (APP1), PNG (eXIf) or WebP (EXIF chunk), or a TIFF file itself."""
    kind = sniff_format(data)
    if kind == "TIFF":
        return data
    if kind == "JPEG":
        pos = 2
        while pos + 4 <= len(data) and data[pos] == 0xFF and data[pos + 1] not in (0xDA, 0xD9):
            length = int.from_bytes(data[pos + 2:pos + 4], "big")
            if length < 2:  # not a marker segment: no EXIF to be found reliably
                return None
            if data[pos + 1] == 0xE1 and data[pos + 4:pos + 10] == b"Exif\0\0":
                return data[pos + 10:pos + 2 + length]
            pos += 2 + length
        return None
    if kind not in ("PNG", "WebP"):
        return None
    png = kind == "PNG"
    pos = 8 if png else 12
    while pos + 8 <= len(data):
        if png:  # length, type, body, CRC
            length, name = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        else:  # RIFF: fourcc, length, body padded to an even size
            name, length = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        body = data[pos + 8:pos + 8 + length]
        if name in (b"eXIf", b"EXIF"):
            return body[6:] if body.startswith(b"Exif\0\0") else body
        pos += 8 + length + (4 if png else length % 2)
    return None


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of an image file's bytes; 1 when it has none."""
    blob = _exif_blob(data)
    return _tiff_orientation(blob) if blob else 1


def shown_size(stored_wh: tuple[int, int], orientation: int) -> tuple[int, int]:
    """(width, height) as shown: swapped by orientations 5-8."""
    return stored_wh[::-1] if orientation in SWAPS else stored_wh


def edge_contrast(grey: np.ndarray, mask: np.ndarray) -> float:
    """How much stronger the photo's gradient is on the mask's edges than on average (1: no relation)."""
    gradient = cv2.magnitude(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    ids = np.ascontiguousarray(mask, np.uint8)
    edges = cv2.morphologyEx(ids, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    if not edges.any():
        return 1.0
    return float(gradient[edges].mean() / max(float(gradient.mean()), 1e-6))


def drawn_frame(shown: np.ndarray, stored: np.ndarray, mask: np.ndarray) -> str | None:
    """'shown' or 'stored': the frame whose photo edges the mask's edges follow clearly better, else None.
    `shown` and `stored` are the photo (RGB) with and without its EXIF orientation, both the mask's size."""
    scale = min(1.0, LONG_SIDE / max(mask.shape))
    size = (max(1, round(mask.shape[1] * scale)), max(1, round(mask.shape[0] * scale)))

    def prepare(rgb: np.ndarray) -> np.ndarray:
        return cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), size, interpolation=cv2.INTER_AREA)

    small = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
    on_shown, on_stored = edge_contrast(prepare(shown), small), edge_contrast(prepare(stored), small)
    if on_shown >= MARGIN * on_stored:
        return "shown"
    if on_stored >= MARGIN * on_shown:
        return "stored"
    return None


def to_stored(shown: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels as stored, from the pixels as shown: the inverse of the EXIF orientation's turn."""
    if orientation == 2:
        return shown[:, ::-1]
    if orientation == 3:
        return shown[::-1, ::-1]
    if orientation == 4:
        return shown[::-1]
    if orientation == 5:
        return shown.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(shown, 1)  # shown = stored turned clockwise: turn back counter-clockwise
    if orientation == 7:
        return shown[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(shown, -1)
    return shown
