"""Torch-free helpers shared by the training and the runtime side.

Everything that both sides must agree on lives here, so training and serving cannot drift
apart: image I/O, the resize/pad/normalise rule, the metadata contract of the exported ONNX
file, metrics and atomic writes. Only numpy, OpenCV and the standard library are imported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

LOG = logging.getLogger("seg")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")

# ImageNet statistics: every smp/timm encoder was pretrained with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The ONNX metadata_props key holding our JSON document, and its format version.
METADATA_KEY = "segmentation"
METADATA_VERSION = 1

# What the runtime assumes for a model without our metadata (with a warning).
DEFAULT_METADATA = {
    "format_version": METADATA_VERSION,
    "name": "model",
    "arch": "unknown",
    "encoder": "unknown",
    "num_classes": 1,
    "class_names": ["foreground"],
    "input_size": 512,
    "resize": "long_side",
    "mean": list(IMAGENET_MEAN),
    "std": list(IMAGENET_STD),
    "stride": 32,
    "output": "probs",
    "threshold": 0.5,
    "thresholds": [0.5, 0.3, 0.15],
    "min_area": 64,
    "folds": [],
    "crop_mode": "off",
    "detector": None,
}


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


def run_cli(main_fn) -> None:
    """Run an entry point; a UserError becomes one clear line on stderr and exit code 2."""
    try:
        main_fn()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


# ----------------------------------------------------------------------------- files


def list_images(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under `folder`, sorted, extensions matched case-insensitively."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"image folder not found: {folder} (check the path)")
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def file_sha1(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be shared like any written file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


# ----------------------------------------------------------------------------- images


def _decode(path: Path, flags: int) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    # np.fromfile + imdecode instead of imread: handles non-ASCII paths on every OS.
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None:
        raise UserError(f"cannot decode image: {path} (not a readable image file; remove or replace it)")
    return image


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read any supported image as RGB uint8 (H, W, 3); grey, alpha and 16-bit are converted."""
    image = _decode(Path(path), cv2.IMREAD_UNCHANGED)
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path: str | os.PathLike, num_classes: int = 1) -> np.ndarray:
    """Read a mask as uint8 (H, W). Binary: 0/255 or 0/1 -> {0, 1}. Multi-class: class ids."""
    mask = _decode(Path(path), cv2.IMREAD_UNCHANGED)
    if mask.ndim == 3:
        # Colour-saved masks: any channel set counts (alpha ignored).
        mask = mask[..., :3].max(axis=2)
    if num_classes == 1:
        return (mask > (127 if mask.max() > 1 else 0)).astype(np.uint8)
    if mask.max() >= num_classes:
        raise UserError(
            f"mask {path} has class id {int(mask.max())} but num_classes={num_classes}; "
            "fix the mask or raise --classes"
        )
    return mask.astype(np.uint8)


def write_png(path: str | os.PathLike, image: np.ndarray, rgb: bool = True) -> None:
    """Encode a PNG and write it atomically. `image` is RGB (H, W, 3) or single-channel."""
    if image.ndim == 3 and rgb:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    atomic_write_bytes(path, buf.tobytes())


# ----------------------------------------------------------------------------- geometry
# One rule for both sides: resize the long side to `input_size` (keeping the aspect ratio),
# then pad bottom/right. Training pads to a square, the runtime to the next multiple of
# `stride`. Padding is zero after normalisation, i.e. the mean colour before it.


def resize_long_side(image: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """Resize so max(H, W) == size. Masks must pass nearest=True."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    if (new_h, new_w) == (h, w):
        return image
    if nearest:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (new_w, new_h), interpolation=interp)


def normalize(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 (3, H, W), normalised."""
    x = image.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def pad_to_multiple(chw: np.ndarray, stride: int) -> np.ndarray:
    """Zero-pad (C, H, W) at the bottom/right so H and W are multiples of `stride`."""
    _, h, w = chw.shape
    ph, pw = (-h) % stride, (-w) % stride
    if ph == 0 and pw == 0:
        return chw
    return np.pad(chw, ((0, 0), (0, ph), (0, pw)))


def preprocess(image: np.ndarray, meta: dict) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB uint8 image -> ((3, H', W') float32 input, (h, w) of the resized, unpadded image)."""
    size = int(meta.get("input_size") or 0)
    resized = resize_long_side(image, size) if size > 0 and meta.get("resize", "long_side") == "long_side" else image
    chw = normalize(resized, meta["mean"], meta["std"])  # (3, h, w)
    return pad_to_multiple(chw, int(meta.get("stride", 32))), resized.shape[:2]


def restore_size(
    probs: np.ndarray, valid_hw: tuple[int, int], orig_hw: tuple[int, int], stride: int = 32
) -> np.ndarray:
    """(C, H', W') model output -> (C, H, W) at the original size: crop the padding, resize."""
    c, out_h, out_w = probs.shape
    h, w = valid_hw
    padded_h, padded_w = h + (-h) % stride, w + (-w) % stride
    if (out_h, out_w) != (padded_h, padded_w) and (out_h, out_w) != (h, w):
        # Output smaller than the input (SegFormer-style): scale it to the padded input first.
        probs = np.stack([cv2.resize(p, (padded_w, padded_h), interpolation=cv2.INTER_LINEAR) for p in probs])
    probs = probs[:, :h, :w]
    oh, ow = orig_hw
    if (h, w) == (oh, ow):
        return np.ascontiguousarray(probs)
    return np.stack([cv2.resize(p, (ow, oh), interpolation=cv2.INTER_LINEAR) for p in probs])


# ----------------------------------------------------------------------------- metrics


def dice_iou(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two binary masks. Both empty counts as a perfect match (1.0, 1.0)."""
    pred = pred.astype(bool)
    target = target.astype(bool)
    inter = np.logical_and(pred, target).sum(dtype=np.int64)
    total = pred.sum(dtype=np.int64) + target.sum(dtype=np.int64)
    if total == 0:
        return 1.0, 1.0
    union = total - inter
    return float(2 * inter / total), float(inter / union)


# ----------------------------------------------------------------------------- metadata


def encode_metadata(meta: dict) -> str:
    return json.dumps(meta, sort_keys=True)


def decode_metadata(props: dict) -> tuple[dict, bool]:
    """Our metadata from an ONNX `metadata_props` dict -> (metadata with defaults filled, found).

    JSON only: metadata is data, never code, so it is never eval'd.
    """
    raw = props.get(METADATA_KEY)
    meta = dict(DEFAULT_METADATA)
    if raw is None:
        return meta, False
    try:
        loaded = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"model metadata '{METADATA_KEY}' is not valid JSON ({exc}); re-export the model")
    if not isinstance(loaded, dict):
        raise UserError(f"model metadata '{METADATA_KEY}' must be a JSON object; re-export the model")
    meta.update(loaded)
    return meta, True
