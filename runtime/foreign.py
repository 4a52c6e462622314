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

from runtime.metadata import DEFAULT_METADATA, METADATA_VERSION, check_metadata, decode_metadata, read_props
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
        raise UserError(f"the model's input {name!r} has shape {dims_in}: {dims_in[1]} channels; segpipe feeds RGB "
                        "(N, 3, H, W)")
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


# ----------------------------------------------------------------------------- the runtime's view

DESCRIPTION_KEYS = ("class_names", "mean", "std", "input_size", "background")


def session_io(session) -> tuple[list, list]:
    """(input dims, output dims) of an onnxruntime session, checked by check_io at load. A session that does
    not list its outputs (an injected stand-in) or an output of unknown rank passes the output check; a
    (N, h, w) output is a single-channel map that dropped its C axis."""
    inputs = [(arg.name, list(arg.shape)) for arg in session.get_inputs()]
    outputs = [(arg.name, list(arg.shape or [])) for arg in session.get_outputs()] if hasattr(
        session, "get_outputs") else []
    name, dims = outputs[0] if outputs else ("output", [])
    if len(dims) == 3:
        dims = [dims[0], 1, *dims[1:]]
    return check_io(inputs, [(name, dims or [None] * 4)])


def describe_model(meta: dict, found: bool, dims: tuple[list, list], model_path, flags: dict | None = None) -> dict:
    """The metadata the runtime runs a model with.

    Our own (or export.py --describe'd) metadata as written, with any of DESCRIPTION_KEYS that `flags` sets
    replacing its value; a model without metadata: flags > files beside it (sidecar_description) > defaults,
    its class count from the output shape. Without names, class 0 of a foreign model stays the background.
    """
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    assert set(flags) <= set(DESCRIPTION_KEYS), f"unknown description keys {set(flags) - set(DESCRIPTION_KEYS)}"
    name = Path(model_path).stem if model_path is not None else "model"
    if found:
        return override_metadata(meta, flags, name)
    given = {**(sidecar_description(model_path) if model_path is not None else {}), **flags}
    background = given.get("background", None if given.get("class_names") else True)
    # output 'probs': the Segmenter still guesses logits from the values of a model without metadata
    return foreign_metadata(*dims, given.get("class_names"), given.get("mean"), given.get("std"),
                            given.get("input_size"), "probs", background, name=name)


def load_segmenter_metadata(session, model_path, description: dict | None = None, probe=None) -> tuple[dict, bool]:
    """(the segmenter's checked metadata, found) from its session.

    A gate model is refused: it goes to --gate, not --model. The model must be one the engine can feed
    (runtime.foreign.check_io: one NCHW 3-channel input, a (N, C, h, w) output), else one line at load.
    Without our metadata the model is described by `description` (--class-names, --mean, --std,
    --input-size, --no-background), the files beside it, then the defaults, with one warning; its class
    count comes from the output shape, or from one `probe()` run when that shape does not say.
    """
    meta, found = decode_metadata(read_props(session))
    if meta.get("task") == "gate":
        raise UserError(f"{model_path} is a gate classifier (task 'gate'), not a segmentation model: pass it as "
                        "--gate and give the segmenter as --model")
    dims_in, dims_out = session_io(session)
    if not found and not isinstance(dims_out[1], int) and probe is not None:
        dims_out = [dims_out[0], probe(), *dims_out[2:]]
    meta = describe_model(meta, found, (dims_in, dims_out), model_path, description)
    if not found:
        names = ", ".join(meta["class_names"][:6]) + (" ..." if meta["num_classes"] > 6 else "")
        LOG.warning(
            "model %s has no 'segmentation' metadata; running it as %d class(es) (%s%s), input_size %s, mean %s, "
            "std %s, stride %s, output kind guessed from its values. Describe it with --class-names/--mean/--std/"
            "--input-size/--no-background, labels.txt or config.json beside it, or export.py --describe",
            model_path, meta["num_classes"], names, "" if meta["background"] else "; no background",
            meta["input_size"], meta["mean"], meta["std"], meta["stride"],
        )
    check_metadata(meta)
    return meta, found


def override_metadata(meta: dict, flags: dict, name: str) -> dict:
    """A model's own metadata with the description flags the user gave in place of its values."""
    if not flags:
        return meta
    names = flags.get("class_names")
    if names is not None and len(names) != meta["num_classes"]:
        raise UserError(f"--class-names gives {len(names)} names ({','.join(names)}) but {name} has "
                        f"{meta['num_classes']} classes; give one name per class")
    LOG.info("%s: %s from the command line replace the model's metadata", name, ", ".join(sorted(flags)))
    meta = {**meta, **flags}
    check_metadata(meta, what="the model's metadata with the flags given")
    return meta


def parse_class_names(text: str | None) -> list[str] | None:
    """'wall,sky,tree' -> ['wall', 'sky', 'tree']; an empty name is a UserError."""
    if text is None:
        return None
    names = [n.strip() for n in str(text).split(",")]
    if not names or any(not n for n in names):
        raise UserError(f"--class-names {text!r} must be comma-separated names, one per output channel, "
                        "e.g. background,horse,rider (class 0 first)")
    return names
