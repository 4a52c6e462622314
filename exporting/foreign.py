"""Models from elsewhere, made self-describing: our metadata written into a foreign ONNX file, and
Hugging Face segmenters (SegFormer, ...) exported to ONNX with it.

    python export.py --describe model.onnx --class-names wall,building,sky --mean 0.485,0.456,0.406 \
        --std 0.229,0.224,0.225 --input-size 512 --no-background
    python export.py --hf path/to/saved_segformer --output segformer.onnx     # a save_pretrained() folder

A described file runs through `inference.py` like our own exports: class names in the legend and
the CSV, the right mean/std and size, and (`--no-background`) an argmax over all classes, for
label sets such as ADE20k where class 0 is "wall", not background.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.foreign import check_io, foreign_metadata, preprocessor_settings
from runtime.metadata import DEFAULT_INPUT_SIZE, decode_metadata
from utils import LOG, UserError, atomic_write_bytes

def _dims(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in value_info.type.tensor_type.shape.dim]


def check_layout(proto) -> tuple[list, list]:
    """(input dims, output dims) of an ONNX proto the engine can feed (runtime.foreign.check_io)."""
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [(i.name, _dims(i)) for i in proto.graph.input if i.name not in initializers]
    return check_io(inputs, [(o.name, _dims(o)) for o in proto.graph.output])


def describe_onnx(model_path: str | Path, output_path: str | Path | None = None, **fields) -> Path:
    """Write our metadata into a foreign ONNX file (in place unless `output_path`); returns the written path.

    `fields`: runtime.foreign.foreign_metadata's (class_names, mean, std, input_size, output kind, background, name).
    """
    import onnx

    from runtime.metadata import METADATA_KEY, encode_metadata

    model_path = Path(model_path)
    if not model_path.is_file():
        raise UserError(f"--describe {model_path}: no such file")
    try:
        proto = onnx.load(str(model_path))
    except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX file
        raise UserError(f"--describe {model_path}: not a readable ONNX file ({type(exc).__name__})") from None
    existing, found = decode_metadata({p.key: p.value for p in proto.metadata_props})
    if found and not existing.get("described"):
        raise UserError(f"{model_path} was exported by export.py and describes itself already")
    dims_in, dims_out = check_layout(proto)
    meta = foreign_metadata(dims_in, dims_out, name=fields.pop("name", None) or model_path.stem, **fields)
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    for key, value in keep + [(METADATA_KEY, encode_metadata(meta))]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    target = Path(output_path) if output_path else model_path
    atomic_write_bytes(target, proto.SerializeToString())
    LOG.info("described %s: %d classes (%s), input %d px, %s output, class 0 %s", target, meta["num_classes"],
             ", ".join(meta["class_names"][:6]) + (" ..." if meta["num_classes"] > 6 else ""), meta["input_size"],
             meta["output"], "is background" if meta["background"] else "is a class like any other")
    return target


# ----------------------------------------------------------------------------- Hugging Face


def load_huggingface(source: str):
    """A transformers semantic-segmentation model from a save_pretrained() folder (or a hub name when online)."""
    try:
        from transformers import AutoModelForSemanticSegmentation
    except ImportError:
        raise UserError("--hf needs transformers: pip install -r requirements-train.txt") from None
    try:
        return AutoModelForSemanticSegmentation.from_pretrained(source).eval()
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load a Hugging Face segmentation model from {source!r} ({str(exc).splitlines()[0]}); "
                        "give a folder written by save_pretrained() (offline, hub names cannot be downloaded)") from None


def export_huggingface(source: str, output: str | Path, input_size: int | None = None, opset: int = 17) -> Path:
    """Export a transformers segmenter as image (N, 3, H, W) -> logits (N, C, H/4, W/4) with our metadata."""
    import onnx
    import torch

    from exporting.tracing import to_onnx_bytes
    from runtime.metadata import METADATA_KEY, encode_metadata

    model = load_huggingface(source)

    class Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, image):  # (N, 3, H, W) -> (N, C, h, w)
            return self.inner(pixel_values=image).logits

    labels = getattr(model.config, "id2label", None) or {}
    names = [str(labels[k]) for k in sorted(labels, key=int)] if labels else None
    settings = {**preprocessor_settings(source), **({"input_size": input_size} if input_size else {})}
    side = int(settings.get("input_size") or DEFAULT_INPUT_SIZE)
    proto = onnx.load_from_string(to_onnx_bytes(Logits(model).eval(), side, opset, "logits"))
    dims_in, dims_out = check_layout(proto)
    meta = foreign_metadata(dims_in, [None, len(names) if names else dims_out[1], None, None], names,
                            settings.get("mean"), settings.get("std"), side, "logits", None,
                            Path(output).stem, type(model).__name__)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, encode_metadata(meta)
    output = Path(output)
    atomic_write_bytes(output, proto.SerializeToString())
    LOG.info("exported %s from %s (%s, %d classes, input %d px)", output, source, meta["arch"], meta["num_classes"], side)
    return output


def torch_argmax(model, image_chw: np.ndarray) -> np.ndarray:
    """Reference for tests and checks: the torch model's class ids at its own output size."""
    import torch

    with torch.inference_mode():
        logits = model(pixel_values=torch.from_numpy(image_chw)[None]).logits[0]
    return logits.argmax(0).numpy()
