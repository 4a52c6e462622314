"""Masks as class ids, by one set of rules for both sides: training's sources and data check, inference.py --gt.

A mask file is grey (0/255, 0/1, class ids), a palette PNG (the palette index is the class, as PASCAL VOC and
CVAT's "Segmentation mask" export write them) or a colour image. `inspect_mask` decodes it, names its encoding
and returns class ids with void pixels = IGNORE_INDEX; `check_encodings` looks at a whole set, whose masks must
not contradict each other. What cannot be read unambiguously stops with one line (UserError) naming the file,
what it holds and what to set:

- a photo (many grey levels or colours, few equal neighbouring pixels), a colour-coded mask of several colours;
- class ids above CLASSES - 1, or class ids while CLASSES=1 (set --classes);
- {0, 1, 255} while IGNORE_INDEX is not 255 (is 255 void?); in one set, 0/1/255 masks (255 = void) beside
  0/255 masks (255 = foreground); a multi-class set whose masks hold nothing but 0 and void.

OpenCV expands a palette PNG to its colours. The indices are read by decoding the file with its PLTE chunk
swapped for a grey ramp (entry i = (i, i, i)): OpenCV then decodes the index itself, with no Pillow on the
runtime side. numpy, OpenCV and utils only.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from utils import IGNORE_INDEX, MASK_FLAGS, UserError, _decode, binary_threshold, read_file, sniff_format

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PALETTE = 3  # the PNG colour type of an indexed image
# A photo: more grey levels (or colours) than this and fewer equal horizontal neighbours than PHOTO_FLATNESS
# (masks of the shared sets: 0.95-0.998 equal; their photos 0.02-0.36).
PHOTO_LEVELS = 16
PHOTO_FLATNESS = 0.6
COLOUR_SPREAD = 24  # a pixel is coloured when its channels differ by more (JPEG noise on grey stays below)
MAJOR_SHARE = 0.005  # a colour (lossy masks: a level) counts when it holds at least this share of the pixels
SMALL_IDS = 32  # non-binary values all below this look like class ids


@dataclass(frozen=True)
class MaskRead:
    """One mask read by the rules: class ids (H, W) uint8, void = ignore_index, and the encoding found."""
    ids: np.ndarray
    encoding: str  # e.g. "0/255", "0/1+void", "class ids", "palette class ids+void", "JPEG binary", "empty"


def _chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def palette_as_grey(raw: bytes) -> bytes | None:
    """A palette PNG's bytes with a grey-ramp PLTE (and no tRNS), which OpenCV decodes to the indices; None for
    any other file."""
    if not raw.startswith(PNG_MAGIC) or len(raw) < 33 or raw[12:16] != b"IHDR" or raw[25] != PALETTE:
        return None
    ramp = np.repeat(np.arange(2 ** min(raw[24], 8), dtype=np.uint8), 3).tobytes()
    out, pos = [raw[:8]], 8
    while pos + 12 <= len(raw):
        length, kind = int.from_bytes(raw[pos:pos + 4], "big"), raw[pos + 4:pos + 8]
        end = pos + 12 + length
        if kind == b"PLTE":
            out.append(_chunk(kind, ramp))
        elif kind != b"tRNS":
            out.append(raw[pos:end])
        pos = end
        if kind == b"IEND":
            break
    return b"".join(out)


def decode_mask(path: Path, max_pixels: int | None = None) -> tuple[np.ndarray, str]:
    """(pixels, kind): kind is palette (the indices, (H, W)), grey or lossy (JPEG/lossy WebP, (H, W)) or colour
    ((H, W, 3), channels that differ). EXIF orientation is applied, as to the images."""
    raw = read_file(path)
    grey = palette_as_grey(raw)
    if grey is not None:
        return _decode(path, cv2.IMREAD_COLOR, max_pixels, grey)[..., 0], "palette"
    pixels = _decode(path, MASK_FLAGS, max_pixels, raw)
    lossy = sniff_format(raw) == "JPEG" or (raw[12:16] == b"VP8 " and sniff_format(raw) == "WebP")
    if pixels.dtype != np.uint8:
        if pixels.max() > 255:
            raise UserError(f"mask {path} is a {pixels.dtype} image with values up to {int(pixels.max())}; "
                            "class ids go up to 255: save the mask as 8-bit grey or palette PNG")
        pixels = pixels.astype(np.uint8)
    if pixels.ndim == 3:
        pixels = pixels[..., :3]  # alpha ignored
        spread = pixels.max(axis=2).astype(np.int16) - pixels.min(axis=2)
        if np.mean(spread > COLOUR_SPREAD) <= MAJOR_SHARE:  # grey saved as colour
            return pixels.max(axis=2), "lossy" if lossy else "grey"
        return pixels, "colour-lossy" if lossy else "colour"
    return pixels, "lossy" if lossy else "grey"


def flatness(pixels: np.ndarray) -> float:
    """The share of horizontally neighbouring pixels that are equal: ~1 for masks, low for photos."""
    same = pixels[:, 1:] == pixels[:, :-1]
    return float(np.mean(same.all(axis=-1) if same.ndim == 3 else same)) if pixels.shape[1] > 1 else 1.0


def _colours(pixels: np.ndarray, lossy: bool) -> tuple[np.ndarray, np.ndarray]:
    """(distinct colours as packed ints, their pixel counts); lossy masks quantised to 8 levels a channel."""
    q = (pixels >> 5) if lossy else pixels
    packed = (q[..., 0].astype(np.uint32) << 16) | (q[..., 1].astype(np.uint32) << 8) | q[..., 2]
    return np.unique(packed, return_counts=True)


def _photo(path: Path, levels: int, flat: float, what: str) -> UserError:
    return UserError(f"mask {path} looks like a photo ({levels} {what}, only {flat:.0%} of neighbouring pixels "
                     "equal; masks have a few values and long runs): point the mask folder (RAW_MASK_DIR, --gt) at "
                     "the masks, not at the images")


def classify_values(values: list[int], num_classes: int, ignore_index: int | None) -> str:
    """The encoding of a lossless mask holding exactly `values` (sorted); ValueError says why it is ambiguous."""
    fg = [v for v in values if v != 0]
    void = ignore_index is not None and ignore_index in values
    if not fg:
        return "empty"
    if num_classes == 1:
        return _binary_encoding(fg, ignore_index)
    over = [v for v in values if v >= num_classes and v != ignore_index]
    if over:
        if values == [0, 255]:
            hint = "a binary 0/255 mask? train it with --classes 1, or write class ids 1..CLASSES-1"
        elif max(over) == 255 and ignore_index is None:
            hint = "if 255 marks void (VOC's border), set IGNORE_INDEX=255; else fix the mask"
        else:
            hint = f"set --classes {max(over) + 1} (and one --class-names per class) or fix the mask"
        allowed = f"0..{num_classes - 1}" + (f" and {ignore_index} = void" if ignore_index is not None else "")
        raise ValueError(f"has class id {max(over)} but CLASSES={num_classes} allows {allowed}: {hint}")
    if void and not [v for v in fg if v != ignore_index]:
        return "void only"
    return "class ids+void" if void else "class ids"


def _binary_encoding(fg: list[int], ignore_index: int | None) -> str:
    if len(fg) == 1:  # one level: the foreground, 255 included (0/255 is the binary convention)
        return f"0/{fg[0]}"
    if fg == [1, 255]:
        if ignore_index == 255:
            return "0/1+void"
        raise ValueError(f"holds 0, 1 and 255: 255 is void (VOC's border) only with IGNORE_INDEX=255 (it is "
                         f"{ignore_index}); set IGNORE_INDEX=255 if so, or write 0/1 or 0/255 masks")
    ids = [v for v in fg if v != ignore_index]
    if ids and max(ids) < SMALL_IDS:
        void = " and void" if len(ids) < len(fg) else ""
        raise ValueError(f"holds class ids {[0, *ids]}{void} but CLASSES=1 (binary): set --classes {max(ids) + 1} "
                         "and --class-names (one name per class, background first)")
    raise ValueError(f"holds the values {[0, *fg][:8]}{' ...' if len(fg) > 7 else ''}: not a binary mask "
                     "(0/255, 0/1, or 0/1 with 255 = void); write 0/255 masks, or class ids with --classes")


def _to_ids(pixels: np.ndarray, encoding: str) -> np.ndarray:
    scheme = encoding.rsplit(" ", 1)[-1] if encoding.startswith(("palette", "colour")) else encoding
    if scheme == "empty":
        return np.zeros(pixels.shape[:2], np.uint8)
    if scheme.startswith("0/") and "+" not in scheme:  # one level: that level is class 1
        return (pixels == int(scheme[2:])).astype(np.uint8)
    return np.ascontiguousarray(pixels, np.uint8)


def _lossy_ids(path: Path, pixels: np.ndarray, num_classes: int, ignore_index: int | None) -> MaskRead:
    """A JPEG (or lossy WebP) mask: binary by its own scale (utils.binary_threshold); multi-class ids as they are."""
    counts = np.bincount(pixels.ravel(), minlength=256)
    if num_classes == 1:
        major = [v for v in range(1, 128) if counts[v] >= 0.02 * pixels.size]
        if len(major) > 1 and pixels.max() < 128:
            raise UserError(f"mask {path} holds class ids {[0, *major]} (JPEG) but CLASSES=1 (binary): set --classes "
                            f"{max(major) + 1}; and save class-id masks as PNG (JPEG changes ids near edges)")
        return MaskRead((pixels > binary_threshold(pixels)).astype(np.uint8), "JPEG binary")
    over = [v for v in np.flatnonzero(counts) if v >= num_classes and v != ignore_index]
    if over:
        raise UserError(f"mask {path} has class id {int(max(over))} but CLASSES={num_classes} (JPEG: lossy compression "
                        "changes ids near edges); save masks as PNG, or raise --classes")
    return MaskRead(np.ascontiguousarray(pixels), "JPEG class ids")


def inspect_mask(path: str | Path, num_classes: int = 1, max_pixels: int | None = None,
                 ignore_index: int | None = IGNORE_INDEX) -> MaskRead:
    """Read one mask file by the rules above: its class ids and encoding, or a one-line UserError."""
    path = Path(path)
    pixels, kind = decode_mask(path, max_pixels)
    if kind.startswith("colour"):
        colours = len(_colours(pixels, False)[0])
        if colours > PHOTO_LEVELS and flatness(pixels) < PHOTO_FLATNESS:
            raise _photo(path, colours, flatness(pixels), "colours")
        counts = _colours(pixels, kind == "colour-lossy")[1]
        major = int(np.sum(counts >= MAJOR_SHARE * counts.sum()))
        if major > 2:
            raise UserError(f"mask {path} is a colour image of {major} colours: colour-coded classes are not read; "
                            "write class ids (grey, or a palette PNG whose index is the class)")
        pixels, kind = pixels.max(axis=2), "lossy" if kind == "colour-lossy" else "colour"  # one colour on black
    values = np.flatnonzero(np.bincount(pixels.ravel(), minlength=256)).tolist()
    if len(values) > PHOTO_LEVELS and flatness(pixels) < PHOTO_FLATNESS:
        raise _photo(path, len(values), flatness(pixels), "grey levels")
    if kind == "lossy":
        return _lossy_ids(path, pixels, num_classes, ignore_index)
    try:
        scheme = classify_values(values, num_classes, ignore_index)
    except ValueError as exc:
        raise UserError(f"mask {path} {exc}") from None
    encoding = scheme if kind == "grey" else f"{kind} {scheme}"
    return MaskRead(_to_ids(pixels, encoding), encoding)


def read_class_ids(path: Path, num_classes: int = 1, max_pixels: int | None = None,
                   ignore_index: int | None = IGNORE_INDEX) -> np.ndarray:
    """utils.read_mask: the class ids of inspect_mask."""
    return inspect_mask(path, num_classes, max_pixels, ignore_index).ids


def check_encodings(encodings: dict[str, str], num_classes: int, ignore_index: int | None, what: str = "masks"
                    ) -> None:
    """Stop when the masks of one set ({path: encoding}) contradict each other: 255 void in some binary masks and
    foreground in others; a multi-class set whose masks hold nothing but 0 and void."""
    def scheme(enc: str) -> str:
        return enc.split(" ", 1)[1] if enc.startswith(("palette ", "colour ")) else enc

    if num_classes == 1:
        _check_levels(encodings, scheme, what)
        voided = [p for p, e in encodings.items() if scheme(e) == "0/1+void"]
        plain = [p for p, e in encodings.items() if scheme(e) == "0/255"]
        if voided and plain:
            raise UserError(f"{len(voided)} {what} hold 0/1/255 (1 = foreground, 255 = void, e.g. {Path(voided[0]).name}) "
                            f"but {len(plain)} hold only 0 and 255 (e.g. {Path(plain[0]).name}), where 255 would be the "
                            "foreground: write every mask one way (0/1 with 255 = void, or 0/255 with no void)")
        return
    kinds = {scheme(e) for e in encodings.values()} - {"empty"}
    if kinds == {"void only"}:
        raise UserError(f"every non-empty one of the {len(encodings)} {what} holds only 0 and {ignore_index} (void "
                        f"with IGNORE_INDEX={ignore_index}): no pixel has a class 1..{num_classes - 1}. Binary 0/255 "
                        "masks? train them with --classes 1")


def _check_levels(encodings: dict[str, str], scheme, what: str) -> None:
    """Binary masks of one level each: 0/1 beside 0/255 is two scales, 0/1 beside 0/2 is class ids."""
    by_level: dict[int, str] = {}
    for path, enc in encodings.items():
        level = scheme(enc)[2:]
        if scheme(enc).startswith("0/") and level.isdigit() and int(level) < SMALL_IDS:
            by_level.setdefault(int(level), path)
    if len(by_level) > 1:
        ids = sorted(by_level)
        seen = ", ".join(f"{v} in {Path(by_level[v]).name}" for v in ids[:3])
        raise UserError(f"the {what} hold class ids {[0, *ids]} across the set ({seen}) but CLASSES=1 (binary): "
                        f"set --classes {ids[-1] + 1} and --class-names (one name per class, background first)")


def check_mask_files(paths: list[Path], num_classes: int, ignore_index: int | None = IGNORE_INDEX,
                     max_pixels: int | None = None, what: str = "masks") -> dict[str, str]:
    """Read every mask of a set by the rules (inspect_mask, check_encodings); {path: encoding}."""
    encodings = {str(p): inspect_mask(p, num_classes, max_pixels, ignore_index).encoding for p in paths}
    check_encodings(encodings, num_classes, ignore_index, what)
    return encodings
