"""Label Studio on the runtime side: the brush RLE codec, and predictions as Label Studio tasks.

The usual loop is: label 50 images, train, pre-annotate the next 500, let people correct them,
retrain. `inference.py --labelstudio OUT.json` writes one task per image with the model's
prediction as brush RLE (pixel-exact) and, with `--labelstudio-polygons`, as polygons; Label
Studio imports the file as tasks with predictions (Import, or the API), and `labelstudio.py`
reads the corrected export back for training.

Brush RLE ("rle-pack", label-studio-sdk's `converter.brush.encode_rle`/`decode_rle`): the RGBA
canvas flattened (H*W*4 bytes), as a bit stream of a 32-bit value count, a 5-bit word size - 1,
four 4-bit run-length widths - 1, then tokens [1-bit repeat flag, 2-bit width index, run length
- 1, word]. `encode_brush` writes the same bytes as the SDK's `mask2rle`.

The labelling config decides the names in each result: `from_name` (the BrushLabels or
PolygonLabels tag), `to_name` (the Image tag) and the data key (`$image`). Pass the project's
config (`--labelstudio-config config.xml`) or let the model's class names imply one
(`label_config`). No torch here.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import quote
from dataclasses import dataclass, field

import cv2
import numpy as np

from utils import UserError


class _BitReader:
    """Reads big-endian bit fields from a byte string (rle-pack is MSB first)."""

    def __init__(self, data: bytes):
        self._data = data
        self._bits: np.ndarray | None = None  # unpacked lazily, only for literal runs
        self.pos = 0

    def read(self, nbits: int) -> int:
        end_bit = self.pos + nbits
        if end_bit > len(self._data) * 8:
            raise UserError(
                f"brush RLE is truncated: needs bit {end_bit} but has only {len(self._data) * 8} bits; "
                "re-export the annotation from Label Studio"
            )
        start, end = self.pos >> 3, (end_bit + 7) >> 3
        chunk = int.from_bytes(self._data[start:end], "big")
        self.pos = end_bit
        return (chunk >> (end * 8 - end_bit)) & ((1 << nbits) - 1)

    def read_words(self, count: int, word_size: int) -> np.ndarray:
        """`count` consecutive `word_size`-bit values, vectorised (literal runs are long)."""
        end_bit = self.pos + count * word_size
        if end_bit > len(self._data) * 8:
            raise UserError(
                f"brush RLE is truncated: needs bit {end_bit} but has only {len(self._data) * 8} bits; "
                "re-export the annotation from Label Studio"
            )
        if self._bits is None:
            self._bits = np.unpackbits(np.frombuffer(self._data, dtype=np.uint8))
        bits = self._bits[self.pos : end_bit].reshape(count, word_size)  # (count, word_size)
        self.pos = end_bit
        weights = (1 << np.arange(word_size - 1, -1, -1, dtype=np.int64)).astype(np.int64)
        return bits.astype(np.int64) @ weights


def _rle_bytes(rle) -> bytes:
    try:
        return bytes(rle)
    except (TypeError, ValueError) as exc:
        raise UserError(f"brush RLE must be a list of byte values 0..255 ({exc}); re-export the annotation") from None


def decode_rle_values(rle) -> np.ndarray:
    """Decode Label Studio's rle-pack stream into its flat uint8 values (RGBA for brushes).

    Layout: 32-bit value count, 5-bit word size - 1, four 4-bit run-length widths - 1, then
    tokens of [1 bit repeat flag, 2 bit width index, run length - 1, word(s)].
    """
    reader = _BitReader(_rle_bytes(rle))
    count = reader.read(32)
    word_size = reader.read(5) + 1
    run_widths = [reader.read(4) + 1 for _ in range(4)]
    out = np.zeros(count, dtype=np.uint8)
    i = 0
    while i < count:
        repeat = reader.read(1)
        run = 1 + reader.read(run_widths[reader.read(2)])
        j = min(i + run, count)  # a corrupt final run must not write past the end
        if repeat:
            out[i:j] = reader.read(word_size)
        else:
            out[i:j] = reader.read_words(run, word_size)[: j - i]
        i += run
    return out


def decode_brush_rle(rle, height: int, width: int) -> np.ndarray:
    """Brush RLE -> alpha channel as uint8 (height, width); 0 = not painted."""
    values = decode_rle_values(rle)
    expected = height * width * 4
    if values.size != expected:
        raise UserError(
            f"brush RLE decodes to {values.size} values but an RGBA image of {width}x{height} needs "
            f"{expected} (= H*W*4); original_width/original_height do not belong to this RLE, "
            "re-export the annotation from Label Studio"
        )
    return values.reshape(height, width, 4)[:, :, 3].copy()


RUN_WIDTHS = (3, 4, 8, 16)  # the SDK's rle_sizes: run lengths up to 8, 16, 256 and 65536 per token


def encode_rle_values(values: np.ndarray) -> list[int]:
    """Flat uint8 values -> rle-pack bytes, as label-studio-sdk's encode_rle (word size 8) writes them."""
    values = np.asarray(values, np.uint8).ravel()
    bits = [f"{values.size:032b}", f"{8 - 1:05b}", "".join(f"{w - 1:04b}" for w in RUN_WIDTHS)]
    if values.size:
        ends = np.append(np.flatnonzero(values[1:] != values[:-1]), values.size - 1)
        lengths = np.diff(np.append(-1, ends))
        for length, value in zip(lengths.tolist(), values[ends].tolist()):
            bits.append(_run_bits(length, value))
    stream = "".join(bits)
    stream += "0" * (8 - len(stream) % 8)  # the SDK always pads, a whole zero byte when already aligned
    return list(int(stream, 2).to_bytes(len(stream) // 8, "big"))


def _run_bits(length: int, value: int) -> str:
    if length == 1:
        return f"000000{value:08b}"  # literal flag 0, width index 0, run field 000, the value
    out = []
    while length > 2 ** 16:  # the SDK splits very long runs into 65536-long ones
        out.append(f"111{2 ** 16 - 1:016b}{value:08b}")
        length -= 2 ** 16
    for index, width in enumerate(RUN_WIDTHS):
        if length <= 2 ** width:
            out.append(f"1{index:02b}{length - 1:0{width}b}{value:08b}")
            break
    return "".join(out)


def encode_brush(mask: np.ndarray) -> list[int]:
    """(H, W) bool/0-1 mask -> brush RLE of its RGBA canvas (every channel 255 where painted)."""
    painted = np.where(np.asarray(mask) > 0, 255, 0).astype(np.uint8)
    return encode_rle_values(np.repeat(painted.ravel(), 4))


def mask_polygons(mask: np.ndarray, min_points: int = 3) -> list[list[list[float]]]:
    """Outer contours of a bool mask as polygons in percent of the width/height (Label Studio's unit)."""
    h, w = mask.shape
    contours, _ = cv2.findContours(np.asarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [[[float(x) * 100.0 / w, float(y) * 100.0 / h] for x, y in c.reshape(-1, 2)]
            for c in contours if len(c) >= min_points]


# ----------------------------------------------------------------------------- labelling config


@dataclass
class LabelConfig:
    """The names a prediction must use to land on the right tag of a Label Studio project."""

    from_name: str = "tag"
    to_name: str = "image"
    data_key: str = "image"
    labels: list[str] = field(default_factory=list)
    kind: str = "brushlabels"  # or polygonlabels
    polygon_from_name: str | None = None  # a PolygonLabels tag, when the config has one too


def label_config(class_names: list[str], polygons: bool = False) -> str:
    """The labelling config a model's class names imply (background, class 0 of a multi-class model, is no label)."""
    labels = class_names[1:] if len(class_names) > 1 else class_names
    tags = "".join(f'<Label value="{_xml_escape(n)}"/>' for n in labels)
    extra = f'<PolygonLabels name="polygon" toName="image">{tags}</PolygonLabels>' if polygons else ""
    return (f'<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">{tags}'
            f"</BrushLabels>{extra}</View>")


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


def parse_label_config(xml: str) -> LabelConfig:
    """Read from_name/to_name/data key/labels from a Label Studio labelling config (XML)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise UserError(f"the Label Studio labelling config is not valid XML ({exc})") from None
    brush = root.find(".//BrushLabels")
    polygon = root.find(".//PolygonLabels")
    tag = brush if brush is not None else polygon
    if tag is None:
        raise UserError("the Label Studio labelling config has no <BrushLabels> or <PolygonLabels> tag; "
                        "add one (see `label_config`) so predictions have a place to go")
    to_name = tag.get("toName", "image")
    image = next((el for el in root.iter("Image") if el.get("name") == to_name), None)
    data_key = (image.get("value", "$image") if image is not None else "$image").lstrip("$")
    labels = [el.get("value") for el in tag.iter("Label") if el.get("value")]
    return LabelConfig(tag.get("name", "tag"), to_name, data_key, labels,
                       "brushlabels" if tag is brush else "polygonlabels",
                       polygon.get("name") if brush is not None and polygon is not None else None)


# ----------------------------------------------------------------------------- prediction tasks


def check_labels(config: LabelConfig, class_names: list[str]) -> list[str]:
    """The label of each foreground class; a class the config does not list stops with one line."""
    names = class_names[1:] if len(class_names) > 1 else class_names[:1]
    if config.labels and len(class_names) == 1 and len(config.labels) == 1:
        return config.labels  # a binary model: its one class is the project's one label, whatever its name
    missing = [n for n in names if config.labels and n not in config.labels]
    if missing:
        raise UserError(f"the model's classes {missing} are not labels of the Label Studio config "
                        f"(it has {config.labels}); rename them (--class-names) or add them to the config")
    return names


def prediction_task(image_ref: str, mask: np.ndarray, labels: list[str], config: LabelConfig,
                    model_version: str, score: float | None = None, polygons: bool = False) -> dict:
    """One Label Studio task: the image reference in `data` and the mask as a prediction.

    `mask`: (H, W) class ids (0 = nothing) or 0/1 for a binary model; `labels[k]` names class k+1."""
    h, w = mask.shape
    results = []
    for class_id, label in enumerate(labels, start=1):
        region = mask == class_id
        if not region.any():
            continue
        base = {"to_name": config.to_name, "original_width": w, "original_height": h, "image_rotation": 0}
        if config.kind == "brushlabels":
            results.append({**base, "from_name": config.from_name, "type": "brushlabels",
                            "value": {"format": "rle", "rle": encode_brush(region), "brushlabels": [label]}})
        if polygons or config.kind == "polygonlabels":
            from_name = config.from_name if config.kind == "polygonlabels" else config.polygon_from_name
            if from_name is None:
                raise UserError("--labelstudio-polygons needs a <PolygonLabels> tag in the labelling config")
            results += [{**base, "from_name": from_name, "type": "polygonlabels",
                         "value": {"points": points, "closed": True, "polygonlabels": [label]}}
                        for points in mask_polygons(region)]
    prediction = {"model_version": model_version, "result": results}
    if score is not None:
        prediction["score"] = round(float(score), 4)
    return {"data": {config.data_key: image_ref}, "predictions": [prediction]}


def mask_score(mask: np.ndarray, probs: np.ndarray | None) -> float | None:
    """The prediction's confidence for Label Studio's `score`: the mean winning probability over the predicted
    pixels (1.0 for an empty mask: nothing is confidently nothing), None without probabilities."""
    if probs is None:
        return None
    region = mask > 0
    if not region.any():
        return 1.0
    winning = probs[0] if probs.shape[0] == 1 else probs.max(axis=0)  # (H, W)
    return float(winning[region].mean())


class LabelStudioWriter:
    """Collects one prediction task per image and writes them as one JSON list that Label Studio imports.

    `image_prefix` + the image's path relative to the source is what Label Studio opens: the default
    suits local-files storage (`/data/local-files/?d=`); an http(s) or s3 prefix works as well."""

    def __init__(self, path, class_names: list[str], config_xml: str | None = None, model_version: str = "segpipe",
                 polygons: bool = False, image_prefix: str = "/data/local-files/?d="):
        from pathlib import Path

        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(f"--labelstudio {self.path} is a folder; give a file name such as predictions.json")
        self.config = parse_label_config(config_xml or label_config(class_names, polygons))
        self.labels = check_labels(self.config, class_names)
        self.model_version, self.polygons, self.image_prefix = model_version, polygons, image_prefix
        self.tasks: list[dict] = []

    def add(self, relative_name: str, mask: np.ndarray, probs: np.ndarray | None = None) -> None:
        # URL-encoded as Label Studio writes its own references (urllib's quote): `a+b.jpg`, `c&d.jpg` and
        # `e#f.jpg` would otherwise be read back as `a b.jpg`, `c` and `e`
        ref = self.image_prefix + quote(relative_name.replace("\\", "/"), safe="/")
        self.tasks.append(prediction_task(ref, mask, self.labels, self.config, self.model_version,
                                          mask_score(mask, probs), self.polygons))

    def close(self) -> None:
        import json

        from utils import atomic_write_bytes

        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, json.dumps(self.tasks).encode("utf-8"))
