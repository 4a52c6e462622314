"""Torch-free helpers shared by the training and the runtime side.

Everything that both sides must agree on lives here, so training and serving cannot drift
apart: image I/O, the resize/pad/normalise rule, metrics and atomic writes (the metadata contract
of the exported ONNX file is runtime/metadata.py). Only numpy, OpenCV and the standard library are
imported, and no module of the training side: the runtime copies this file as it is.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

LOG = logging.getLogger("seg")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
# Files beside the images that are not images, never named as skipped (list_skipped)
NOT_IMAGES = (".txt", ".json", ".csv", ".yaml", ".yml", ".xml", ".md", ".log", ".zip")

# The void label (IGNORE_INDEX): pixels of this value in a mask are left out of the loss, every metric, the
# threshold search and the class weights, as mmseg's and torchvision's VOC 255
IGNORE_INDEX = 255

# ImageNet statistics: every smp/timm encoder was pretrained with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

class UserError(Exception):
    """A mistake in something the user supplied. Entry points print it as one line, exit 2."""


# ----------------------------------------------------------------------------- logging


def setup_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO) -> None:
    """Configure the 'seg' logger once per entry point: console, plus a file when given."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    LOG.setLevel(level)
    LOG.propagate = True  # lets pytest capture; the root logger has no handler of its own
    for handler in list(LOG.handlers):
        LOG.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    LOG.addHandler(console)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(fmt)
        LOG.addHandler(file_handler)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it unwinds like Ctrl-C: `finally` blocks run, DataLoader workers
    and writer threads are joined, temp files are removed, and nothing is left half-written or orphaned."""


def _terminate(signum, frame) -> None:
    raise Terminated()


@contextmanager
def interrupts_deferred():
    """Hold Ctrl-C and SIGTERM until the block ends, then raise them: a step that must finish as a whole (an image's
    mask and its summary.csv row) is never cut in half. Outside the main thread (where signals are not delivered)
    it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in (signal.SIGINT,
                                                                                           signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if caught:
            if caught[0] == signal.SIGTERM and old[signal.SIGTERM] is _terminate:
                raise Terminated()
            if caught[0] == signal.SIGINT and callable(old[signal.SIGINT]):
                raise KeyboardInterrupt()


def run_cli(main_fn) -> None:
    """Run an entry point; a UserError becomes one clear line on stderr and exit code 2. Ctrl-C (SIGINT) and SIGTERM
    stop it cleanly: exit 130 and 143, as a shell reports them."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        main_fn()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print("terminated" if terminated else "interrupted", file=sys.stderr)
        sys.exit(143 if terminated else 130)


# ----------------------------------------------------------------------------- files


def list_images(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under `folder`, sorted, extensions matched case-insensitively."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"image folder not found: {folder} (check the path)")
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def list_skipped(folder: str | os.PathLike) -> list[Path]:
    """Files under `folder` that list_images leaves out and that are not plainly text (e.g. .gif, .heic)."""
    return sorted(p for p in Path(folder).glob("**/*") if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() not in IMAGE_EXTS + NOT_IMAGES)


def mask_stem(path: Path) -> str:
    """The image stem a mask file belongs to: `a.png` and `a_mask.png` both belong to image `a`."""
    return path.stem.removesuffix("_mask")


def index_masks(folder: str | os.PathLike) -> dict[str, Path]:
    """Mask files under `folder` by the image stem they belong to (first one wins)."""
    index: dict[str, Path] = {}
    for path in list_images(folder):
        index.setdefault(mask_stem(path), path)
    return index


def file_sha1(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(path: str | os.PathLike, exc: OSError) -> UserError:
    """The one-line error for a write that ran out of space; the previous file was left as it was."""
    return UserError(f"cannot write {path}: {exc.strerror or exc} (disk full or over quota). The previous "
                     f"version of the file, if any, is intact; free space on {Path(path).parent} and run again")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file.

    Out of space, the temp file is removed and the old `path` stays intact (UserError).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be shared like any written file
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            raise disk_full_error(path, exc) from exc
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


# ----------------------------------------------------------------------------- images


# Decoded-size limit: a small file can claim a huge canvas (a decompression bomb). Checked from
# the header, before anything is decoded. Entry points may override it (inference.py --max-pixels).
MAX_IMAGE_PIXELS = 100_000_000

# Decoding flags. EXIF orientation is applied (as browsers and Label Studio show the photo), so a
# mask drawn on the displayed image lines up; IMREAD_UNCHANGED would ignore it.
IMAGE_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH  # always 3 channels, 8 or 16 bit
MASK_FLAGS = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH  # grey stays grey, ids keep their depth

_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"BM", "BMP"), (b"II*\x00", "TIFF"),
          (b"MM\x00*", "TIFF"), (b"GIF8", "GIF"), (b"RIFF", "WebP"))


def sniff_format(data: bytes) -> str | None:
    """The image format from the first bytes ('PNG', 'JPEG', ...), or None when not recognised."""
    return next((name for magic, name in _MAGIC if data.startswith(magic)), None)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first SOF marker of a JPEG, without decoding."""
    pos = 2
    while pos + 9 < len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return int.from_bytes(data[pos + 7:pos + 9], "big"), int.from_bytes(data[pos + 5:pos + 7], "big")
        pos += 2 + length
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first IFD of a TIFF (tags 256/257)."""
    order = "little" if data[:2] == b"II" else "big"
    ifd = int.from_bytes(data[4:8], order)
    if ifd + 2 > len(data):
        return None
    size = {}
    for i in range(int.from_bytes(data[ifd:ifd + 2], order)):
        entry = data[ifd + 2 + 12 * i: ifd + 14 + 12 * i]
        if len(entry) < 12:
            break
        tag, kind = int.from_bytes(entry[:2], order), int.from_bytes(entry[2:4], order)
        if tag in (256, 257):
            size[tag] = int.from_bytes(entry[8:10] if kind == 3 else entry[8:12], order)
    return (size[256], size[257]) if len(size) == 2 else None


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) an image file claims in its header, or None when it cannot be told cheaply."""
    kind = sniff_format(data)
    if kind == "PNG" and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if kind == "JPEG":
        return _jpeg_size(data)
    if kind == "BMP" and len(data) >= 26:
        return abs(int.from_bytes(data[18:22], "little", signed=True)), abs(int.from_bytes(data[22:26], "little", signed=True))
    if kind == "GIF" and len(data) >= 10:
        return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    if kind == "TIFF":
        return _tiff_size(data)
    if kind == "WebP" and data[8:12] == b"WEBP":
        return _webp_size(data)
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a WebP's first chunk: VP8X (canvas), VP8L (lossless) or VP8 (lossy)."""
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and len(data) >= 30:
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    return None


def _refusal(data: bytes, max_pixels: int) -> str | None:
    """Why `data` must not be decoded (empty, not an image, truncated, too large), or None."""
    if not data:
        return "empty file (0 bytes)"
    kind = sniff_format(data)
    if kind is None and data[:64].lstrip()[:1] == b"<":
        return "not an image: the content is HTML/XML text"
    size = header_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        return (f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels is over the limit of {max_pixels:,} "
                "(a decompression bomb, or raise --max-pixels / MAX_IMAGE_PIXELS if you trust it); not decoded")
    # libjpeg decodes a cut-off JPEG with grey filler and only a warning: refuse it instead.
    if kind == "JPEG" and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        return "truncated JPEG: no end-of-image marker after the image data - the file was cut short"
    return None


def read_file(path: Path) -> bytes:
    """A file's bytes through Python's own open: non-ASCII paths work on every OS (cv2.imread's do not)."""
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    return path.read_bytes()


def _decode(path: Path, flags: int, max_pixels: int | None = None, raw: bytes | None = None) -> np.ndarray:
    """Decode `path` (or `raw`, its bytes, read already) after the header checks of _refusal."""
    raw = read_file(path) if raw is None else raw
    reason = _refusal(raw, MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels))
    image = None if reason else cv2.imdecode(np.frombuffer(raw, np.uint8), flags)
    if image is None:
        if reason is None:
            kind = sniff_format(raw)
            if kind == "PNG" and b"IEND" not in raw[-4096:]:
                reason = "truncated PNG: no IEND chunk at the end - the file was cut short"
            else:
                reason = f"{kind} data that OpenCV cannot decode" if kind else "not a readable image file"
        raise UserError(f"cannot decode image: {path} ({reason}; remove or replace it)")
    return image


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read any supported image as RGB uint8 (H, W, 3), EXIF orientation applied.

    Grey, palette, alpha, CMYK and 16-bit are converted. A file claiming more than `max_pixels`
    (default MAX_IMAGE_PIXELS) is refused from its header, before decoding; so are empty,
    truncated and non-image files. Every refusal is a UserError naming the file and the reason.
    """
    image = _decode(Path(path), IMAGE_FLAGS, max_pixels)
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def binary_threshold(mask: np.ndarray) -> float:
    """Where a binary mask's foreground starts. A value above 127 means a 0/255 mask: above 127 is foreground.
    Otherwise the mask is on a small scale (0/1, also 0/1 saved as JPEG, whose noise gives {0, 1, 2}): its
    "on" level is its most frequent non-zero value (noise is rarer than the level it blurs), and foreground is
    above half of it. A plain 0/1 mask gives > 0.5, as before; an all-zero mask stays empty."""
    top = int(mask.max()) if mask.size else 0
    if top > 127:
        return 127
    if top == 0:
        return 0
    counts = np.bincount(mask.ravel().astype(np.int64), minlength=top + 1)
    return (int(np.argmax(counts[1:])) + 1) / 2


def read_mask(path: str | os.PathLike, num_classes: int = 1, max_pixels: int | None = None,
              ignore_index: int | None = IGNORE_INDEX) -> np.ndarray:
    """Read a mask as uint8 (H, W) class ids, EXIF orientation applied: binary 0/255 or 0/1 -> {0, 1}, multi-class
    ids as they are, palette PNGs by their index; void pixels are `ignore_index`. A mask that cannot be read
    unambiguously (a photo, ids above num_classes - 1, ...) is a UserError: runtime/masks.py has the rules.
    `max_pixels` as in read_image."""
    from runtime.masks import read_class_ids  # the rules import this module

    return read_class_ids(Path(path), num_classes, max_pixels, ignore_index)


# Uncompressed, unfiltered PNG: several times less CPU than the default, about 3x the bytes on photos.
FAST_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 0] + (
    [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE] if hasattr(cv2, "IMWRITE_PNG_FILTER") else [])


def write_png(path: str | os.PathLike, image: np.ndarray, rgb: bool = True, fast: bool = False) -> None:
    """Encode a PNG and write it atomically. `image` is RGB (H, W, 3) or single-channel. fast: FAST_PNG."""
    if image.ndim == 3 and rgb:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image, FAST_PNG if fast else [])
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    atomic_write_bytes(path, buf.tobytes())


# ----------------------------------------------------------------------------- geometry
# One rule for both sides (training's out-of-fold scoring, the runtime's Segmenter and gate):
# resize the long side to `input_size` (keeping the aspect ratio), then pad bottom/right to the
# next multiple of `stride`. A model with a fixed (H, W) input is letterboxed instead: fit inside
# (H, W), pad to exactly (H, W). Padding is zero after normalisation, i.e. the mean colour before it.


def fit_inside(image: np.ndarray, hw: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize to fit inside (H, W), keeping the aspect ratio (one side touches). Masks must pass nearest=True."""
    h, w = image.shape[:2]
    scale = min(hw[0] / h, hw[1] / w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    if (new_h, new_w) == (h, w):
        return image
    if nearest:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (new_w, new_h), interpolation=interp)


def resize_long_side(image: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """Resize so max(H, W) == size. Masks must pass nearest=True."""
    return fit_inside(image, (size, size), nearest)


def normalize(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 (3, H, W), normalised."""
    x = image.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def padded_size(hw: tuple[int, int], stride: int) -> tuple[int, int]:
    """(H, W) rounded up to multiples of `stride`."""
    h, w = hw
    return h + (-h) % stride, w + (-w) % stride


def pad_bottom_right(chw: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Zero-pad (C, h, w) at the bottom/right to (C, H, W)."""
    _, h, w = chw.shape
    if (h, w) == tuple(hw):
        return chw
    return np.pad(chw, ((0, 0), (0, hw[0] - h), (0, hw[1] - w)))


def preprocess(image: np.ndarray, meta: dict, fixed_hw: tuple[int, int] | None = None
               ) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB uint8 image -> ((3, H', W') float32 input, (h, w) of the resized, unpadded image).

    `meta` is the model's metadata (input_size, resize, mean, std, stride). `fixed_hw`: the (H, W)
    of a model exported with a fixed input size (foreign models): letterbox to exactly that size.
    """
    if fixed_hw is not None:
        resized, padded_hw = fit_inside(image, fixed_hw), tuple(fixed_hw)
    else:
        size = int(meta.get("input_size") or 0)
        long_side = size > 0 and meta.get("resize", "long_side") == "long_side"
        resized = resize_long_side(image, size) if long_side else image
        padded_hw = padded_size(resized.shape[:2], int(meta.get("stride", 32)))
    chw = normalize(resized, meta["mean"], meta["std"])  # (3, h, w)
    return pad_bottom_right(chw, padded_hw), resized.shape[:2]


def resize_channels(probs: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(C, h, w) -> (C, H, W), each channel resized bilinearly (a no-op at the same size)."""
    if probs.shape[1:] == tuple(hw):
        return probs
    return np.stack([cv2.resize(p, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR) for p in probs])


def match_input_size(output: np.ndarray, valid_hw: tuple[int, int], input_hw: tuple[int, int]) -> np.ndarray:
    """A (C, h', w') model output at its (H', W') input's size: a smaller (SegFormer-style) output is
    scaled up; one at the input's or at the unpadded (h, w) size is kept as it is."""
    if output.shape[1:] in (tuple(input_hw), tuple(valid_hw)):
        return output
    return resize_channels(output, input_hw)


def restore_size(probs: np.ndarray, valid_hw: tuple[int, int], orig_hw: tuple[int, int], stride: int = 32,
                 input_hw: tuple[int, int] | None = None) -> np.ndarray:
    """(C, H', W') model output -> (C, H, W) at the original size: crop the padding, resize.

    `input_hw` is the (H', W') the input was padded to (default: `valid_hw` rounded up to `stride`).
    """
    input_hw = padded_size(valid_hw, stride) if input_hw is None else input_hw
    h, w = valid_hw
    probs = match_input_size(probs, valid_hw, input_hw)[:, :h, :w]
    return np.ascontiguousarray(resize_channels(probs, orig_hw))


# ----------------------------------------------------------------------------- metrics


def dice_iou(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None) -> tuple[float, float]:
    """Dice and IoU of two binary masks, over the `valid` pixels only (void left out) when given. Both empty
    counts as a perfect match (1.0, 1.0)."""
    pred = pred.astype(bool)
    target = target.astype(bool)
    if valid is not None:
        pred, target = pred & valid, target & valid
    inter = np.logical_and(pred, target).sum(dtype=np.int64)
    total = pred.sum(dtype=np.int64) + target.sum(dtype=np.int64)
    if total == 0:
        return 1.0, 1.0
    union = total - inter
    return float(2 * inter / total), float(inter / union)


def class_counts(pred: np.ndarray, target: np.ndarray, num_classes: int, valid: np.ndarray | None = None
                 ) -> np.ndarray:
    """(K, 3) int64 [intersection, predicted, true] pixels of each foreground class 1..C-1 of two class-id masks,
    over the `valid` pixels only (void left out) when given."""
    if valid is not None:
        pred, target = pred[valid], target[valid]
    pred_n = np.bincount(pred.ravel(), minlength=num_classes)[1:num_classes]
    true_n = np.bincount(target.ravel(), minlength=num_classes)[1:num_classes]
    inter = np.bincount(pred[pred == target].ravel(), minlength=num_classes)[1:num_classes]
    return np.stack([inter, pred_n, true_n], axis=1).astype(np.int64)


def dice_iou_from_counts(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., 3) [intersection, predicted, true] -> (dice, iou) of shape (...); both empty counts as 1."""
    counts = np.asarray(counts, np.float64)
    inter, total = counts[..., 0], counts[..., 1] + counts[..., 2]
    empty = total == 0
    dice = np.where(empty, 1.0, 2 * inter / np.where(empty, 1, total))
    iou = np.where(empty, 1.0, inter / np.where(empty, 1, total - inter))
    return dice, iou


def class_dice_iou(pred: np.ndarray, target: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Dice and IoU (each (C-1,)) of every foreground class of two class-id masks (runtime.metadata.MULTICLASS_RULE)."""
    return dice_iou_from_counts(class_counts(pred, target, num_classes))


def mask_iou(a: np.ndarray, b: np.ndarray, num_classes: int = 1) -> float:
    """How far two predicted masks agree: binary, the IoU of their foregrounds; multi-class, the mean IoU over the
    foreground classes either mask holds. Two empty masks agree fully (1.0)."""
    if num_classes == 1:
        return dice_iou(a > 0, b > 0)[1]
    present = [c for c in range(1, num_classes) if (a == c).any() or (b == c).any()]
    return float(np.mean([dice_iou(a == c, b == c)[1] for c in present])) if present else 1.0


def mask_dice(mask: np.ndarray, truth: np.ndarray, num_classes: int = 1) -> float:
    """An image's Dice against its truth: binary, the foreground's; multi-class, the mean over the foreground
    classes (runtime.metadata.MULTICLASS_RULE)."""
    if num_classes == 1:
        return dice_iou(mask > 0, truth > 0)[0]
    return float(class_dice_iou(mask, truth, num_classes)[0].mean())


# ----------------------------------------------------------------------------- JSON values


def is_int(value) -> bool:
    """A JSON integer (bool excluded)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A JSON number (bool excluded)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
