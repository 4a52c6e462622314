"""Models trained elsewhere, described for the runtime: class names, mean/std, size and whether class 0 is background.

A foreign ONNX file has no metadata of ours. Its description comes, in this order, from the
flags (`inference.py --class-names ... --mean ... --std ... --input-size ... --no-background`),
from files beside it (`labels.txt`, one name per line; a Hugging Face `config.json` with
`id2label`; `preprocessor_config.json` with `image_mean`, `image_std` and `size`), then from the
defaults. The class count comes from the model's output shape. `export.py --describe` writes the
same description into the file itself. No torch here.
"""

from __future__ import annotations

import json
from pathlib import Path

from runtime.metadata import DEFAULT_METADATA, METADATA_VERSION, check_metadata
from utils import IMAGENET_MEAN, IMAGENET_STD, LOG, UserError

BACKGROUND_NAMES = ("background", "_background_", "bg", "__background__")


def parse_floats(text: str | None, what: str) -> list[float] | None:
    """'0.485,0.456,0.406' -> 3 floats on a 0..1 scale (0..255 values are divided by 255, with a line saying so)."""
    if text is None:
        return None
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        raise UserError(f"{what} {text!r} must be 3 comma-separated numbers, e.g. 0.485,0.456,0.406") from None
    if len(values) != 3:
        raise UserError(f"{what} {text!r} must be 3 comma-separated numbers (R,G,B), got {len(values)}")
    if max(values) > 1.0:
        LOG.info("%s %s looks like a 0..255 scale: divided by 255", what, values)
        values = [v / 255.0 for v in values]
    return values


def check_io(inputs: list[tuple[str, list]], outputs: list[tuple[str, list]]) -> tuple[list, list]:
    """(input dims, output dims) of a model the engine can feed: one NCHW 3-channel float input and a
    (N, C, h, w) first output. Anything else stops at load with one line (not an error row per image)."""
    if len(inputs) != 1:
        raise UserError(f"the model has {len(inputs)} inputs ({[n for n, _ in inputs]}); segpipe feeds one image tensor")
    (name, dims_in), (out_name, dims_out) = inputs[0], outputs[0]
    if len(dims_in) != 4:
        raise UserError(f"the model's input {name!r} has shape {dims_in}; segpipe feeds (N, 3, H, W)")
    if dims_in[1] != 3 and dims_in[3] == 3:
        raise UserError(f"the model's input {name!r} is NHWC {dims_in}; segpipe feeds NCHW (N, 3, H, W): "
                        "re-export it channels-first (or put a Transpose in front)")
    if isinstance(dims_in[1], int) and dims_in[1] not in (0, 3):
        raise UserError(f"the model's input {name!r} has {dims_in[1]} channels; segpipe feeds RGB (3)")
    if len(dims_out) != 4:
        raise UserError(f"the model's output {out_name!r} has shape {dims_out}; segpipe reads (N, C, h, w) scores")
    return list(dims_in), list(dims_out)


def foreign_metadata(dims_in: list, dims_out: list, class_names: list[str] | None = None, mean=None, std=None,
                     input_size: int | None = None, output: str = "logits", background: bool | None = None,
                     name: str = "model", arch: str = "foreign") -> dict:
    """Our metadata for a model we did not train. The class count comes from the output shape, else the names."""
    classes = dims_out[1] if isinstance(dims_out[1], int) and dims_out[1] > 0 else None
    if class_names and classes and len(class_names) != classes:
        raise UserError(f"{len(class_names)} class names for a model with {classes} output channels; give one "
                        "name per channel")
    classes = classes or (len(class_names) if class_names else None)
    if classes is None:
        raise UserError("the model's output has no fixed class count; give --class-names (one per channel)")
    if not class_names:
        class_names = ["foreground"] if classes == 1 else [f"class_{i}" for i in range(classes)]
    if background is None:
        background = classes == 1 or class_names[0].strip().lower() in BACKGROUND_NAMES
    fixed = [d for d in dims_in[2:] if isinstance(d, int) and d > 0]
    if input_size is None:
        input_size = max(fixed) if len(fixed) == 2 else DEFAULT_METADATA["input_size"]
    meta = {**DEFAULT_METADATA, "format_version": METADATA_VERSION, "task": "segment", "name": name, "arch": arch,
            "encoder": "unknown", "num_classes": classes, "class_names": list(class_names),
            "input_size": int(input_size), "mean": list(mean or IMAGENET_MEAN), "std": list(std or IMAGENET_STD),
            "output": output, "background": bool(background), "tta": "none", "precision": "fp32", "folds": [],
            "described": True}
    check_metadata(meta, what="the description")
    return meta


def preprocessor_settings(source: str | Path) -> dict:
    """mean/std/size from the folder's preprocessor_config.json, where there is one."""
    path = Path(source) / "preprocessor_config.json"
    if not path.is_file():
        return {}
    config = json.loads(path.read_text())
    size = config.get("size") or {}
    side = max(size.values()) if isinstance(size, dict) and size else size if isinstance(size, int) else None
    return {k: v for k, v in (("mean", config.get("image_mean")), ("std", config.get("image_std")),
                              ("input_size", side)) if v}



def sidecar_description(model_path: str | Path) -> dict:
    """What the files beside a foreign model say: class_names (labels.txt or config.json id2label), mean, std,
    input_size (preprocessor_config.json). Empty when there are none."""
    folder = Path(model_path).parent
    found: dict = {}
    labels = folder / "labels.txt"
    config = folder / "config.json"
    if labels.is_file():
        found["class_names"] = [line.strip() for line in labels.read_text().splitlines() if line.strip()]
    elif config.is_file():
        try:
            id2label = json.loads(config.read_text()).get("id2label") or {}
        except (json.JSONDecodeError, AttributeError):
            id2label = {}
        if id2label:
            found["class_names"] = [str(id2label[k]) for k in sorted(id2label, key=int)]
    found.update(preprocessor_settings(folder))
    if found:
        LOG.info("model description from files beside %s: %s", Path(model_path).name, ", ".join(sorted(found)))
    return found
