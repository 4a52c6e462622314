"""A generated corpus of hostile and unusual inputs (no committed binaries) and what each must give.

    cases = write_hostile_folder(tmp_path / "in", outside=tmp_path / "secret")
    cases["truncated.jpg"]  # Case(status="error", reason="truncated JPEG", hw=None)

`status` is the summary.csv status: "good" means ok or no_detection with a mask written; `hw` is the
(height, width) the mask must have (EXIF-rotated images are taller than they are stored).
Pillow is used here only to write formats OpenCV cannot (CMYK, palette, EXIF); the runtime never imports it.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

GOOD = "good"


@dataclass(frozen=True)
class Case:
    status: str  # "good" or "error"
    reason: str = ""  # a substring of the error column
    hw: tuple[int, int] | None = None  # mask (height, width) for good cases


def rect(h: int, w: int) -> np.ndarray:
    """RGB uint8 (h, w, 3): black with a white rectangle in the middle."""
    image = np.zeros((h, w, 3), np.uint8)
    image[h // 4: h - h // 4, w // 4: w - w // 4] = 255
    return image


def encode(image: np.ndarray, ext: str = ".png") -> bytes:
    return cv2.imencode(ext, np.ascontiguousarray(image[..., ::-1]) if image.ndim == 3 else image)[1].tobytes()


def pil_bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def exif_jpeg(image: np.ndarray, orientation: int) -> bytes:
    """A JPEG stored as `image` whose EXIF says to rotate it (6: 90 deg clockwise, 8: counter-clockwise)."""
    pil = Image.fromarray(image)
    exif = pil.getexif()
    exif[0x0112] = orientation
    return pil_bytes(pil, "JPEG", exif=exif)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 50000, height: int = 50000) -> bytes:
    """A ~100-byte PNG whose header claims width x height RGB pixels (7.5 GB decoded at 50000x50000)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def hostile_files() -> dict[str, tuple[bytes, Case]]:
    """name -> (file content, expected outcome), for every case that is a plain file."""
    jpeg = encode(rect(60, 80), ".jpg")
    png = encode(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))  # noise: a long IDAT
    palette = Image.fromarray(rect(24, 30)).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    rgba = np.dstack([rect(25, 25), np.full((25, 25), 128, np.uint8)])
    return {
        "truncated.jpg": (jpeg[: len(jpeg) // 2], Case("error", "truncated JPEG")),
        "truncated.png": (png[: len(png) * 2 // 3], Case("error", "truncated PNG")),
        "zero.png": (b"", Case("error", "empty file (0 bytes)")),
        "text.png": (b"just some text, not a PNG\n", Case("error", "not a readable image file")),
        "page.jpg": (b"<!DOCTYPE html><html><body>404</body></html>", Case("error", "HTML")),
        "bomb.png": (bomb_png(), Case("error", "50000x50000")),
        "deep16.png": (cv2.imencode(".png", rect(20, 30)[..., 0].astype(np.uint16) * 257)[1].tobytes(),
                       Case(GOOD, hw=(20, 30))),
        "cmyk.jpg": (pil_bytes(Image.fromarray(rect(24, 32)).convert("CMYK"), "JPEG"), Case(GOOD, hw=(24, 32))),
        "palette.png": (pil_bytes(palette, "PNG"), Case(GOOD, hw=(24, 30))),
        "rgba.png": (cv2.imencode(".png", rgba)[1].tobytes(), Case(GOOD, hw=(25, 25))),
        "grey.png": (cv2.imencode(".png", rect(30, 20)[..., 0])[1].tobytes(), Case(GOOD, hw=(30, 20))),
        "exif6.jpg": (exif_jpeg(rect(20, 40), 6), Case(GOOD, hw=(40, 20))),
        "exif8.jpg": (exif_jpeg(rect(20, 40), 8), Case(GOOD, hw=(40, 20))),
        "one_pixel.png": (encode(np.full((1, 1, 3), 255, np.uint8)), Case(GOOD, hw=(1, 1))),
        "wide.png": (encode(rect(8, 10000)), Case(GOOD, hw=(8, 10000))),
        "ünïcødé 画像.png": (encode(rect(32, 32)), Case(GOOD, hw=(32, 32))),
        "  many   spaces  .png": (encode(rect(16, 48)), Case(GOOD, hw=(16, 48))),
        "good.jpg": (jpeg, Case(GOOD, hw=(60, 80))),
    }


def write_hostile_folder(folder: Path, outside: Path) -> dict[str, Case]:
    """Write every file case into `folder`, plus a symlink to an image in `outside` (not followed)."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = {}
    for name, (data, case) in hostile_files().items():
        (folder / name).write_bytes(data)
        cases[name] = case
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "secret.png").write_bytes(encode(rect(10, 10)))
    (folder / "link_out.png").symlink_to(outside / "secret.png")
    cases["link_out.png"] = Case("error", "outside the input folder")
    (folder / "link_in.png").symlink_to(folder / "good.jpg")  # stays inside: harmless, read
    cases["link_in.png"] = Case(GOOD, hw=(60, 80))
    return cases


def write_hostile_zip(path: Path) -> dict[str, Case]:
    """Every file case in a ZIP, plus traversal, absolute, nested-ZIP and duplicate entries."""
    cases = {}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, (data, case) in hostile_files().items():
            archive.writestr(f"set/{name}", data)
            cases[f"set/{name}"] = case
        archive.writestr("../../evil.png", encode(rect(8, 8)))
        cases["../../evil.png"] = Case("error", "'..' in the path")
        archive.writestr("/abs/evil.png", encode(rect(8, 8)))
        cases["/abs/evil.png"] = Case("error", "absolute path")
        archive.writestr("inner.zip", b"PK\x05\x06" + bytes(18))
        cases["inner.zip"] = Case("error", "nested archive")
        archive.writestr("dup.png", encode(rect(12, 12)))
        archive.writestr("dup.png", encode(rect(14, 14)))  # zipfile warns, and writes it anyway
        archive.writestr("Case.PNG", encode(rect(18, 18)))  # the same name as case.png on a case-insensitive disk
        cases["Case.PNG"] = Case(GOOD, hw=(18, 18))
        archive.writestr("case.png", encode(rect(20, 20)))
        cases["case.png"] = Case(GOOD, hw=(20, 20))
    return cases


def write_mixed_folder(folder: Path, count: int) -> set[str]:
    """`count` files, every 10th hostile (cycling through the corpus), the rest tiny good PNGs; returns bad names."""
    folder.mkdir(parents=True)
    bad_cases = [(name, data) for name, (data, case) in hostile_files().items() if case.status == "error"]
    good = encode(rect(16, 16))
    bad = set()
    for i in range(count):
        if i % 10 == 9:
            name, data = bad_cases[(i // 10) % len(bad_cases)]
            name = f"f{i:04d}_{name}"
            bad.add(name)
        else:
            name, data = f"f{i:04d}.png", good
        (folder / name).write_bytes(data)
    return bad
