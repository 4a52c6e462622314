"""Smart crop: the person ROI rule and the YOLO-seg ONNX decoder, shared by training and inference. No torch.

Both sides run the same steps, so a model is served on exactly the crops it was trained on:

1. Find people with a YOLO11-seg model: ultralytics at training time (training/smartcrop.py), this module's
   numpy decoder of the exported ONNX file at inference time. Both give one binary mask per person
   at the image's own size.
2. `select_person`: the person with the LARGEST MASK AREA (pixels); ties go to the higher
   confidence, then to the earlier detection. The same rule everywhere.
3. `person_box`: from that mask, the head top (first mask row) and the person height (first to
   last mask row) give the upper-body band, rows [top + 0.2 h, top + 0.5 h). The torso centre is
   the centroid of the mask pixels inside the band, the torso size the larger of the band's height
   and the mask's width inside it. The ROI is a square of side max(roi_factor * torso size,
   min_size), centred on the torso centre. It may leave the image: that part is padded.
4. No person: the whole image, letterboxed (a square of side max(H, W) at the top-left corner,
   padded bottom/right), status "fallback".
5. `crop_square`: crop the box (padding outside the image), resize to INPUT_SIZE. `paste_back`
   maps a prediction on the crop onto the original image.

Boxes are (x0, y0, x1, y1) integer pixels of the original image, end exclusive, always square.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from runtime.metadata import DEFAULT_INPUT_SIZE
from utils import LOG, UserError

PERSON_CLASS = 0  # COCO class id of "person" in the YOLO models
BAND = (0.2, 0.5)  # the upper-body band, as fractions of the person height below the head top
DETECTOR_SIZE = 640  # YOLO input side when the ONNX file does not fix one
NMS_IOU = 0.7  # ultralytics' predict default
MAX_DET = 300
MAX_NMS = 30000


@dataclass(frozen=True)
class CropSettings:
    """Everything that decides a crop. Saved with each cache entry and in the ONNX metadata."""

    mode: str = "off"
    conf: float = 0.25
    roi_factor: float = 2.5
    min_size: int = 256
    pad_value: int = 114
    input_size: int = DEFAULT_INPUT_SIZE

    @property
    def enabled(self) -> bool:
        return self.mode == "person"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, cfg) -> "CropSettings":
        """From the training settings (config.Config): CROP, CROP_CONF, ..., INPUT_SIZE."""
        return cls(cfg.crop, cfg.crop_conf, cfg.crop_roi_factor, cfg.crop_min_size, cfg.crop_pad_value, cfg.input_size)

    @classmethod
    def from_dict(cls, data: dict) -> "CropSettings":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class Crop:
    """A square crop resized to INPUT_SIZE, the box it came from and how it was found."""

    image: np.ndarray  # (S, S, 3) uint8
    box: tuple[int, int, int, int]
    status: str  # "ok" (a person) or "fallback" (no person: whole image)


# ----------------------------------------------------------------------------- geometry


def select_person(masks: np.ndarray, scores: np.ndarray) -> int | None:
    """Index of the person to crop around: largest mask area, then higher score, then first. None if none."""
    if len(masks) == 0:
        return None
    areas = np.asarray(masks, dtype=bool).reshape(len(masks), -1).sum(axis=1)
    order = sorted(range(len(masks)), key=lambda i: (-int(areas[i]), -float(scores[i]), i))
    return order[0] if areas[order[0]] > 0 else None


def person_box(mask: np.ndarray, roi_factor: float, min_size: int) -> tuple[int, int, int, int] | None:
    """The square ROI around the torso of one person mask (H, W); None when the mask is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    top, height = int(rows[0]), int(rows[-1] - rows[0] + 1)  # head top, person height
    band_start = top + int(math.floor(BAND[0] * height))
    band_end = max(top + int(math.floor(BAND[1] * height)), band_start + 1)
    ys, xs = np.nonzero(mask[band_start:band_end])
    if ys.size == 0:  # a mask with a hole where the band is: use the whole mask
        ys, xs = np.nonzero(mask)
        band_start = 0
    cy, cx = float(ys.mean()) + band_start, float(xs.mean())
    torso = max(int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1))
    side = max(int(round(roi_factor * torso)), int(min_size), 1)
    x0, y0 = int(math.floor(cx - side / 2 + 0.5)), int(math.floor(cy - side / 2 + 0.5))
    return x0, y0, x0 + side, y0 + side


def whole_image_box(hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """The no-person box: the whole image letterboxed into a square, padded bottom/right."""
    side = max(int(hw[0]), int(hw[1]), 1)
    return 0, 0, side, side


def crop_square(image: np.ndarray, box, size: int, pad_value: int = 0, nearest: bool = False) -> np.ndarray:
    """Cut `box` out of `image` (H, W[, C]), padding with `pad_value` outside it, then resize to size x size."""
    x0, y0, x1, y1 = box
    h, w = image.shape[:2]
    out = np.full((y1 - y0, x1 - x0) + image.shape[2:], pad_value, dtype=image.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    if out.shape[:2] == (size, size):
        return out
    if nearest:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if out.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(out, (size, size), interpolation=interp)


def paste_back(crop_values: np.ndarray, box, orig_hw: tuple[int, int], fill=0.0, nearest: bool = False) -> np.ndarray:
    """Map a prediction on a crop, (C, s, s) or (s, s), back onto the original (C, H, W) or (H, W) image.

    Outside the box gets `fill` (a scalar, or one value per channel: e.g. probs of background 1).
    """
    x0, y0, x1, y1 = box
    h, w = orig_hw
    squeeze = crop_values.ndim == 2
    values = crop_values[None] if squeeze else crop_values  # (C, s, s)
    side = x1 - x0
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    resized = values if values.shape[1:] == (side, side) else \
        np.stack([cv2.resize(v, (side, side), interpolation=interp) for v in values])
    out = np.empty((len(values), h, w), dtype=values.dtype)
    out[:] = np.asarray(fill, dtype=values.dtype).reshape(-1, 1, 1)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[:, sy0:sy1, sx0:sx1] = resized[:, sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0]
    return out[0] if squeeze else out


def crop_from_masks(image: np.ndarray, masks: np.ndarray, scores: np.ndarray, settings: CropSettings) -> Crop:
    """The one ROI rule: person masks (N, H, W) of `image` -> Crop (fallback when no person)."""
    index = select_person(masks, scores)
    box = None if index is None else person_box(np.asarray(masks[index], bool), settings.roi_factor, settings.min_size)
    status = "ok" if box is not None else "fallback"
    box = box or whole_image_box(image.shape[:2])
    return Crop(crop_square(image, box, settings.input_size, settings.pad_value), box, status)


# ----------------------------------------------------------------------------- YOLO-seg decoder
# Mirrors ultralytics' predict path (LetterBox, non_max_suppression, process_mask_native) so the
# runtime finds the same people as training did.


@dataclass
class Detections:
    boxes: np.ndarray  # (N, 4) float32 xyxy in original image pixels
    scores: np.ndarray  # (N,)
    classes: np.ndarray  # (N,) int
    masks: np.ndarray  # (N, H, W) bool at the original image size


def letterbox(image: np.ndarray, shape: tuple[int, int], pad_value: int = 114) -> np.ndarray:
    """ultralytics LetterBox(auto=False, center=True): RGB (H, W, 3) -> (1, 3, h, w) float32 in [0, 1]."""
    h, w = image.shape[:2]
    r = min(shape[0] / h, shape[1] / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = (shape[1] - new_w) / 2, (shape[0] - new_h) / 2
    if (w, h) != (new_w, new_h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom, left, right = round(dh - 0.1), round(dh + 0.1), round(dw - 0.1), round(dw + 0.1)
    image = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 3)
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0  # (1, 3, h, w)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy NMS as torchvision.ops.nms: indices kept, by descending score."""
    order = np.argsort(-scores, kind="stable")
    x0, y0, x1, y1 = boxes.T
    areas = (x1 - x0) * (y1 - y0)
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        iw = np.clip(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0, None)
        ih = np.clip(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0, None)
        inter = iw * ih
        order = rest[inter / (areas[i] + areas[rest] - inter + 1e-12) <= iou]
    return np.asarray(keep, dtype=np.int64)


def scale_boxes(boxes: np.ndarray, input_hw: tuple[int, int], orig_hw: tuple[int, int]) -> np.ndarray:
    """Letterbox-input xyxy boxes -> original image pixels, clipped (ultralytics ops.scale_boxes)."""
    gain = min(input_hw[0] / orig_hw[0], input_hw[1] / orig_hw[1])
    new_h, new_w = (max(round(x * gain), 1) for x in orig_hw)
    pad_x, pad_y = round((input_hw[1] - new_w) / 2 - 0.1), round((input_hw[0] - new_h) / 2 - 0.1)
    out = boxes.astype(np.float32).copy()
    out[:, [0, 2]] = ((out[:, [0, 2]] - pad_x) / (new_w / orig_hw[1])).clip(0, orig_hw[1])
    out[:, [1, 3]] = ((out[:, [1, 3]] - pad_y) / (new_h / orig_hw[0])).clip(0, orig_hw[0])
    return out


def _unletterbox(logits: np.ndarray, orig_hw: tuple[int, int]) -> np.ndarray:
    """(mh, mw) mask logits on the letterboxed input -> (H, W) on the original image (ultralytics scale_masks)."""
    (mh, mw), (h, w) = logits.shape, orig_hw
    gain = min(mh / h, mw / w)
    pad_w, pad_h = (mw - max(round(w * gain), 1)) / 2, (mh - max(round(h * gain), 1)) / 2
    top, left = round(pad_h - 0.1), round(pad_w - 0.1)
    bottom, right = top + max(round(h * gain), 1), left + max(round(w * gain), 1)
    return cv2.resize(np.ascontiguousarray(logits[top:bottom, left:right]), (w, h), interpolation=cv2.INTER_LINEAR)


def instance_masks(protos: np.ndarray, coefs: np.ndarray, boxes: np.ndarray, orig_hw: tuple[int, int]) -> np.ndarray:
    """Coefficients (N, 32) x prototypes (32, mh, mw) -> (N, H, W) bool masks, cropped to their boxes.

    As ultralytics' process_mask_native: upsample by 1, 2 or 4 so the letterbox padding falls on whole
    pixels, cut it off, resize to the image, threshold the logits at 0, zero outside the box.
    """
    c, mh, mw = protos.shape
    h, w = orig_hw
    logits = (coefs.astype(np.float32) @ protos.reshape(c, -1).astype(np.float32)).reshape(-1, mh, mw)
    gain = min(4 * mh / h, 4 * mw / w)
    pad = (4 * mh - max(round(h * gain), 1)) | (4 * mw - max(round(w * gain), 1))
    f = 4 // math.gcd(4, pad | pad // 2)
    cols, rows = np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)
    masks = np.zeros((len(logits), h, w), dtype=bool)
    for i, (logit, (x0, y0, x1, y1)) in enumerate(zip(logits, boxes)):
        if f > 1:
            logit = cv2.resize(logit, (mw * f, mh * f), interpolation=cv2.INTER_LINEAR)
        mask = _unletterbox(logit, orig_hw) > 0
        mask &= ((cols >= x0) & (cols < x1))[None, :]
        mask &= ((rows >= y0) & (rows < y1))[:, None]
        masks[i] = mask
    return masks


def decode_yolo_seg(output0: np.ndarray, protos: np.ndarray, input_hw: tuple[int, int], orig_hw: tuple[int, int],
                    conf: float, classes: tuple[int, ...] | None = (PERSON_CLASS,), iou: float = NMS_IOU,
                    max_det: int = MAX_DET) -> Detections:
    """Decode one image of YOLO11-seg ONNX output.

    output0 (4 + nc + 32, N): cx, cy, w, h in input pixels, nc class scores (sigmoid applied),
    32 mask coefficients; protos (32, H/4, W/4). Best class per box, `classes` filter, NMS.
    """
    nc = output0.shape[0] - 4 - protos.shape[0]
    pred = output0.T.astype(np.float32)  # (N, 4 + nc + 32)
    cls_scores = pred[:, 4:4 + nc]
    best = cls_scores.argmax(axis=1)
    score = cls_scores[np.arange(len(pred)), best]
    keep = score > conf
    if classes is not None:
        keep &= np.isin(best, classes)
    pred, score, best = pred[keep], score[keep], best[keep]
    if len(pred) > MAX_NMS:
        top = np.argsort(-score, kind="stable")[:MAX_NMS]
        pred, score, best = pred[top], score[top], best[top]
    cx, cy, bw, bh = pred[:, 0], pred[:, 1], pred[:, 2], pred[:, 3]
    xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
    kept = nms(xyxy + best[:, None] * 7680.0, score, iou)[:max_det]  # class offset: NMS within a class
    boxes = scale_boxes(xyxy[kept], input_hw, orig_hw)
    masks = instance_masks(protos, pred[kept, 4 + nc:], boxes, orig_hw)
    has_pixels = masks.any(axis=(1, 2))  # ultralytics drops detections with an empty mask
    return Detections(boxes[has_pixels], score[kept][has_pixels], best[kept][has_pixels], masks[has_pixels])


class PersonDetector:
    """Owns a YOLO11-seg ONNX Runtime session (injected): RGB image -> person Detections."""

    def __init__(self, session, conf: float = 0.25):
        self.session, self.conf = session, conf
        model_input = session.get_inputs()[0]
        self.input_name = model_input.name
        shape = model_input.shape
        fixed = len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int)
        self.input_hw = (shape[2], shape[3]) if fixed else (DETECTOR_SIZE, DETECTOR_SIZE)

    def detect(self, image: np.ndarray) -> Detections:
        x = letterbox(image, self.input_hw)  # (1, 3, h, w)
        output0, protos = self.session.run(None, {self.input_name: x})[:2]
        return decode_yolo_seg(output0[0], protos[0], self.input_hw, image.shape[:2], self.conf)

    def crop(self, image: np.ndarray, settings: CropSettings) -> Crop:
        found = self.detect(image)
        return crop_from_masks(image, found.masks, found.scores, settings)


def background_fill(num_classes: int) -> list[float]:
    """What `paste_back` puts outside the crop for probabilities: background everywhere."""
    return [0.0] if num_classes == 1 else [1.0] + [0.0] * (num_classes - 1)


# ----------------------------------------------------------------------------- runtime stage


class CropStage:
    """Inference with smart crop: detect -> crop each image -> (the segmenter runs) -> paste probs back."""

    def __init__(self, detector: PersonDetector, settings: CropSettings, path: Path | None = None):
        self.detector, self.settings, self.path = detector, settings, path

    def crop(self, images: list[np.ndarray]) -> list[Crop]:
        return [self.detector.crop(image, self.settings) for image in images]

    @staticmethod
    def paste(probs: np.ndarray, crop: Crop, orig_hw: tuple[int, int]) -> np.ndarray:
        """(C, S, S) probabilities on the crop -> (C, H, W) on the original image, background outside."""
        return np.ascontiguousarray(paste_back(probs, crop.box, orig_hw, background_fill(len(probs))), np.float32)

    @staticmethod
    def crop_columns(crop: Crop) -> dict:
        """The crop columns of a summary.csv row."""
        return {"crop_status": crop.status, "crop_box": " ".join(str(v) for v in crop.box)}


def load_crop_stage(meta: dict, model_path, make_session, detector: str | Path | None = None) -> CropStage | None:
    """The CropStage a model's metadata asks for (crop_mode 'person'), else None.

    The detector is `detector` when given, else the file the metadata names, beside the model.
    `make_session(path)` builds its ONNX Runtime session (same providers as the segmenter).
    """
    if meta.get("crop_mode", "off") != "person":
        if detector:
            LOG.warning("--detector %s ignored: the model was not trained with smart crop", detector)
        return None
    if detector is None:
        if not meta.get("detector") or model_path is None:
            raise UserError("the model was trained with smart crop (CROP=person) but names no detector file; "
                            "pass --detector PATH to its YOLO11-seg .onnx")
        detector = Path(model_path).parent / str(meta["detector"])
    detector = Path(detector)
    if not detector.is_file():
        raise UserError(f"the model was trained with smart crop (CROP=person) and needs its person detector "
                        f"{detector}: export.py writes it beside the model as <name>.detector.onnx; copy it there "
                        "or pass --detector PATH")
    settings = CropSettings.from_dict({**(meta.get("crop") or {}), "mode": "person"})
    LOG.info("smart crop: detector %s, roi_factor %s, min_size %s", detector, settings.roi_factor, settings.min_size)
    return CropStage(PersonDetector(make_session(detector), settings.conf), settings, detector)
