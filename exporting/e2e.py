"""End-to-end ONNX: an RGB uint8 image in, the mask and the probabilities out. Standard ONNX ops, no torch.

Run book:
    python -m exporting.e2e runs/exp1/model.onnx                 # -> runs/exp1/model.e2e.onnx
    python -m exporting.e2e model.onnx --tta flips                # flip TTA baked in (one model run)
    python -m exporting.e2e model.onnx --threshold 0.4            # a fixed threshold (default: the model's rule)
    python -m exporting.e2e model.onnx --threshold adaptive       # the cascade (see below)
    python -m exporting.e2e model.onnx --batch                    # (N, H, W, 3) of equal-size images
    python -m exporting.e2e model.onnx --threshold 0.3 --force    # replace an e2e file of another rule or TTA
    python export.py --work-dir runs/exp1 --end-to-end            # the same, right after the plain export

The graph wraps the plain export (input `image` float32 (N, 3, H', W'), output `probs` or `logits`)
with the engine's own pre- and post-processing (utils.preprocess / inference.Segmenter):

    image uint8 (H, W, 3) -> resize the long side to input_size (exporting/e2e_ops.py): exact area
    averaging when shrinking (cv2.INTER_AREA, from integer prefix sums), bilinear half-pixel when enlarging
    (cv2.INTER_LINEAR), rounded to whole grey levels as cv2 does -> (x / 255 - mean) / std -> flip
    views (TTA) -> pad bottom/right to the stride -> the model, once for all views -> sigmoid/softmax
    (logits models) -> crop the padding -> flip back, average -> bilinear resize to (H, W)
    -> probs float32 (C, H, W); mask uint8 (H, W): 0/255 (binary, probs > threshold) or class ids (argmax).

Threshold: the plain model's recorded rule (runtime/rule.py; its cross-validated threshold unless export.py
recorded another), or --threshold T / adaptive. The cascade is baked in as the rule defines it everywhere
(ReduceSum of each level's area, a chain of Where picks the level): the first level whose mask holds at least
min_area pixels in all wins, else an empty mask. Morphology has no ONNX form (no connected components), so a rule
with any is refused. The file records the rule it applies (`rule`) and the SHA-256 of the plain file it was made
from (`source`), and replaces an existing file only when that holds the same variant (--force otherwise).

The model keeps its own opset (13 or more): every added op exists since opset 13. Resize's opset-18
antialias is not used: antialiased bilinear is not cv2's INTER_AREA (bench/e2e_parity.py measures both).
No If node: OpenCV's DNN importer cannot load one, so the engine's choice of interpolation is a Where.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from exporting.e2e_ops import INPUT, MIN_OPSET, Builder, resize_image
from exporting.variants import guard_overwrite
from runtime.lineage import source_record
from runtime.metadata import METADATA_KEY, decode_metadata, encode_metadata, untrained_flips
from runtime.rule import apply_overrides, describe_rule, graph_problem, make_rule, recorded_rule
from utils import LOG, UserError, atomic_write_bytes, run_cli, setup_logging

TTA_VIEWS = {"none": [()], "hflip": [(), (3,)], "flips": [(), (3,), (2,), (2, 3)]}  # NCHW axes flipped per view
MASK, PROBS = "mask", "probs"


# ----------------------------------------------------------------------------- preprocessing


def preprocess(b: Builder, meta: dict, image: str, batch: bool) -> tuple[str, str]:
    """uint8 image -> ((N, 3, h, w) normalised float32, (h, w)), as utils.preprocess before padding."""
    x = image if batch else b.op("Unsqueeze", image, b.const([0]))  # (N, H, W, 3) uint8
    size = int(meta.get("input_size") or 0)
    if size > 0 and meta.get("resize", "long_side") == "long_side":
        x, hw = resize_image(b, x, size)
    else:
        hw, x = b.dims(x, 1, 3), b.cast(b.op("Transpose", x, perm=[0, 3, 1, 2]), TensorProto.FLOAT)  # (N, 3, H, W)
    mean = b.const(np.reshape(meta["mean"], (1, 3, 1, 1)), np.float32)
    std = b.const(np.reshape(meta["std"], (1, 3, 1, 1)), np.float32)
    return b.op("Div", b.op("Sub", b.op("Div", x, b.const(255.0, np.float32)), mean), std), hw


def padded_views(b: Builder, x: str, hw: str, stride: int, views: list) -> tuple[str, str]:
    """Each flip view padded bottom/right to the stride, stacked on the batch axis; (batch, padded (H', W'))."""
    s = b.const([stride])
    pad_hw = b.op("Mod", b.op("Sub", s, b.op("Mod", hw, s)), s)
    pads = b.op("Concat", b.const([0] * 6), pad_hw, axis=0)
    batch = [b.op("Pad", b.flip(x, axes), pads) for axes in views]
    stacked = batch[0] if len(batch) == 1 else b.op("Concat", *batch, axis=0)  # (V*N, 3, H', W')
    return stacked, b.op("Add", hw, pad_hw)


# ----------------------------------------------------------------------------- postprocessing


def to_probs(b: Builder, out: str, meta: dict, num_classes: int) -> str:
    if meta.get("output", "probs") != "logits":
        return out
    return b.op("Sigmoid", out) if num_classes == 1 else b.op("Softmax", out, axis=1)


def merge_views(b: Builder, probs: str, views: list) -> str:
    """(V*N, C, h, w) -> (N, C, h, w): each view flipped back, then the mean (as the engine's TTA)."""
    if len(views) == 1:
        return probs
    shape = b.op("Concat", b.const([len(views), -1]), b.dims(probs, 1, 4), axis=0)
    stacked = b.op("Reshape", probs, shape)  # (V, N, C, h, w)
    parts = [b.flip(b.op("Gather", stacked, b.const(i), axis=0), axes) for i, axes in enumerate(views)]
    return b.op("Div", b.op("Sum", *parts), b.const(float(len(views)), np.float32))


def make_mask(b: Builder, probs: str, num_classes: int, rule: dict) -> str:
    """(N, C, H, W) probs -> (N, H, W) uint8: class ids, or 0/255 by a fixed threshold or the cascade."""
    if num_classes > 1:
        return b.cast(b.op("ArgMax", probs, axis=1, keepdims=0), TensorProto.UINT8)
    fg = b.op("Squeeze", probs, b.const([1]))  # (N, H, W)
    on, off = b.const(255, np.uint8), b.const(0, np.uint8)
    if rule["mode"] != "adaptive":  # cv or fixed: one cut
        return b.op("Where", b.op("Greater", fg, b.const(rule["threshold"], np.float32)), on, off)
    cut, need = b.const(2.0, np.float32), b.const(float(max(int(rule["min_area"]), 1)), np.float32)  # 2: empty mask
    for level in reversed(rule["cascade"]):  # per image: the first level whose mask holds min_area pixels
        level = b.const(float(level), np.float32)
        area = b.op("ReduceSum", b.cast(b.op("Greater", fg, level), TensorProto.FLOAT), b.const([1, 2]), keepdims=1)
        cut = b.op("Where", b.op("GreaterOrEqual", area, need), level, cut)  # (N, 1, 1)
    return b.op("Where", b.op("Greater", fg, cut), on, off)


def postprocess(b: Builder, out: str, meta: dict, sizes: dict, views: list, rule: dict, batch: bool) -> None:
    """Model output -> the graph outputs `probs` (C, H, W) and `mask` (H, W) (with N in front for a batch)."""
    num_classes = int(meta["num_classes"])
    padded = b.op("Concat", b.dims(out, 0, 2), sizes["padded_hw"], axis=0)
    out = b.resize(out, padded)  # a no-op unless the model's output is smaller (SegFormer-style)
    probs = to_probs(b, out, meta, num_classes)
    probs = b.op("Slice", probs, b.const([0, 0]), sizes["hw"], b.const([2, 3]))
    probs = merge_views(b, probs, views)
    probs = b.resize(probs, b.op("Concat", b.dims(probs, 0, 2), sizes["image_hw"], axis=0))  # (N, C, H, W)
    mask = make_mask(b, probs, num_classes, rule)
    if batch:
        b.op("Identity", probs, out=PROBS)
        b.op("Identity", mask, out=MASK)
    else:
        b.op("Squeeze", probs, b.const([0]), out=PROBS)
        b.op("Squeeze", mask, b.const([0]), out=MASK)


# ----------------------------------------------------------------------------- the whole graph


def plain_metadata(plain: onnx.ModelProto) -> dict:
    """The plain model's metadata, refused with one line when the model cannot be wrapped."""
    meta, found = decode_metadata({p.key: p.value for p in plain.metadata_props})
    if not found:
        raise UserError(f"the model has no '{METADATA_KEY}' metadata; export it with export.py first")
    if meta.get("end_to_end"):
        raise UserError("the model is already end-to-end (uint8 image in, mask out); give the plain .onnx")
    if meta.get("task", "segment") != "segment":
        raise UserError(f"task {meta.get('task')!r}: only segmentation models can be made end-to-end")
    if meta.get("crop_mode", "off") != "off":
        raise UserError("smart-crop models (crop_mode 'person') need their detector, which an end-to-end graph "
                        "does not hold; serve them with inference.py")
    if meta.get("tile"):
        size = meta["tile"]["size"]
        raise UserError(f"the model runs large images as {size[0]}x{size[1]} tiles (it was trained on native-size "
                        "patches), which an end-to-end graph does not do: serve it with inference.py or Segmenter")
    return meta


def check_plain_graph(plain: onnx.ModelProto) -> int:
    """The model's input element type; refuses graphs the wrapper cannot feed."""
    opset = next((o.version for o in plain.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise UserError(f"the model uses opset {opset}; re-export it with --opset {MIN_OPSET} or higher")
    inits = {i.name for i in plain.graph.initializer}
    inputs = [i for i in plain.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise UserError(f"the model has {len(inputs)} inputs; one image input (N, 3, H, W) is needed")
    tensor = inputs[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    if len(dims) != 4 or dims[1] not in (3, None) or dims[2] is not None or dims[3] is not None:
        raise UserError(f"the model input has shape {dims}; an end-to-end graph needs (N, 3, H, W) with dynamic "
                        "H and W (export.py's default)")
    if tensor.elem_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
        raise UserError("the model input is not float32/float16; give the plain exported .onnx")
    return tensor.elem_type


def resolve_rule(meta: dict, threshold) -> dict:
    """The rule the graph applies: the plain model's recorded one (runtime/rule.py), its threshold replaced by
    `threshold` when given ('model', 'adaptive' or a number); refused when the graph cannot apply it."""
    rule = recorded_rule(meta)[0]
    if threshold is not None:
        text = str(threshold).strip().lower()
        if text not in ("model", "adaptive"):
            threshold = make_rule(threshold)["threshold"]  # a UserError unless a number in (0, 1)
        rule = apply_overrides(rule, {"threshold": threshold}, meta)
        rule["mode"] = "fixed" if rule["mode"] == "given" else rule["mode"]
    if problem := graph_problem(rule):
        raise UserError(f"no end-to-end graph: {problem}")
    return rule


def io_types(meta: dict, batch: bool) -> tuple[list, list]:
    """Graph inputs and outputs with their types and named dims."""
    lead = ["batch"] if batch else []
    classes = int(meta["num_classes"])
    inputs = [helper.make_tensor_value_info(INPUT, TensorProto.UINT8, lead + ["height", "width", 3])]
    outputs = [helper.make_tensor_value_info(MASK, TensorProto.UINT8, lead + ["height", "width"]),
               helper.make_tensor_value_info(PROBS, TensorProto.FLOAT, lead + [classes, "height", "width"])]
    return inputs, outputs


def planned_metadata(meta: dict, tta: str = "none", threshold=None, batch: bool = False) -> dict:
    """The metadata convert() will write for a plain model's `meta` (for the overwrite guard, before export)."""
    return e2e_metadata(meta, tta, resolve_rule(meta, threshold), batch)


def e2e_metadata(meta: dict, tta: str, rule: dict, batch: bool, source: dict | None = None) -> dict:
    lead = "N, " if batch else ""
    binary = int(meta["num_classes"]) == 1
    meta = {k: v for k, v in meta.items() if k != "e2e_mask"}  # an old file's rule key; `rule` replaces it
    return {**meta, "end_to_end": True, "e2e_tta": tta, "rule": rule, "inner_output": meta.get("output", "probs"),
            **({"source": source} if source else {}), "output": "probs", "io": {
                "inputs": {INPUT: f"uint8 ({lead}H, W, 3) RGB, any size"},
                "outputs": {MASK: f"uint8 ({lead}H, W): " + ("0/255" if binary else "class ids (argmax)"),
                            PROBS: f"float32 ({lead}C, H, W) probabilities at the image size"}}}


def build_e2e(plain: onnx.ModelProto, tta: str = "none", threshold=None, batch: bool = False,
              source: dict | None = None) -> onnx.ModelProto:
    """The end-to-end graph around `plain` (not modified): uint8 image in, `mask` and `probs` out; `source`
    (runtime.lineage.source_record of the plain file) goes into its metadata."""
    meta = plain_metadata(plain)
    inner_type = check_plain_graph(plain)
    if tta not in TTA_VIEWS:
        raise UserError(f"--tta {tta!r} is not valid; use one of: {', '.join(TTA_VIEWS)}")
    if tta != "none" and str(meta.get("tta") or "none") != "none":
        LOG.warning("model already applies '%s' TTA inside its graph; adding '%s' on top as asked", meta["tta"], tta)
    if warning := untrained_flips(meta, tta):
        LOG.warning("%s", warning)
    rule, views = resolve_rule(meta, threshold), TTA_VIEWS[tta]
    inner = onnx.compose.add_prefix(plain, "model/")
    b = Builder()
    x, hw = preprocess(b, meta, INPUT, batch)
    x, padded_hw = padded_views(b, x, hw, int(meta.get("stride", 32)), views)
    inner_input = next(i.name for i in inner.graph.input if i.name not in {t.name for t in inner.graph.initializer})
    b.op("Identity", x if inner_type == TensorProto.FLOAT else b.cast(x, inner_type), out=inner_input)
    pre_nodes, b.nodes, b.stage = b.nodes, [], "post/"
    out = inner.graph.output[0]
    out = out.name if out.type.tensor_type.elem_type == TensorProto.FLOAT else b.cast(out.name, TensorProto.FLOAT)
    image_hw = b.dims(INPUT, 1, 3) if batch else b.dims(INPUT, 0, 2)
    sizes = {"hw": hw, "padded_hw": padded_hw, "image_hw": image_hw}
    postprocess(b, out, meta, sizes, views, rule, batch)
    inputs, outputs = io_types(meta, batch)
    graph = helper.make_graph(pre_nodes + list(inner.graph.node) + b.nodes, "segpipe_e2e", inputs, outputs,
                              initializer=list(inner.graph.initializer) + b.constants,
                              value_info=list(inner.graph.value_info))
    model = helper.make_model(graph, opset_imports=list(plain.opset_import), producer_name="segpipe-e2e",
                              ir_version=plain.ir_version)
    model.functions.extend(inner.functions)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, encode_metadata(e2e_metadata(meta, tta, rule, batch, source))
    onnx.checker.check_model(model)
    return model


# ----------------------------------------------------------------------------- files and CLI


def e2e_path(plain_path: str | Path) -> Path:
    """<name>.e2e.onnx beside <name>.onnx."""
    plain_path = Path(plain_path)
    return plain_path.with_name(f"{plain_path.stem}.e2e.onnx")


def smoke_check(path: Path, meta: dict, batch: bool) -> dict:
    """Run the written file once on an odd-sized image: the outputs must have the contracted shapes."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    mask, probs = session.run([MASK, PROBS], {INPUT: image[None] if batch else image})
    want = (int(meta["num_classes"]), 37, 53)
    lead = (1,) if batch else ()
    if mask.shape != lead + want[1:] or mask.dtype != np.uint8 or probs.shape != lead + want:
        raise UserError(f"the end-to-end graph returned mask {mask.shape} {mask.dtype} and probs {probs.shape} for a "
                        f"37x53 image; expected {want[1:]} uint8 and {want}: please report this model")
    return {"onnxruntime": "ok"}


def convert(plain_path: str | Path, output: str | Path | None = None, tta: str = "none", threshold=None,
            batch: bool = False, check: bool = True, force: bool = False) -> Path:
    """Write the end-to-end graph of an exported .onnx (default <name>.e2e.onnx beside it); returns its path. An
    existing file holding another variant (TTA, rule, batch form, weights' folds) is replaced only with `force`."""
    plain_path = Path(plain_path)
    if not plain_path.is_file():
        raise UserError(f"model file not found: {plain_path} (export one with export.py)")
    try:
        plain = onnx.load(str(plain_path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own types
        raise UserError(f"not an ONNX model: {plain_path} ({type(exc).__name__}); give the plain exported .onnx")
    model = build_e2e(plain, tta, threshold, batch, source_record(plain_path, "e2e"))
    output = Path(output) if output else e2e_path(plain_path)
    meta = json.loads(next(p.value for p in model.metadata_props if p.key == METADATA_KEY))
    guard_overwrite(output, meta, force)
    atomic_write_bytes(output, model.SerializeToString())
    if check:
        smoke_check(output, meta, batch)
    LOG.info("exported %s (end-to-end: uint8 image in, mask + probs out; tta %s, rule: %s, %.1f MB)", output, tta,
             describe_rule(meta["rule"]), output.stat().st_size / 1e6)
    return output


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Wrap an exported .onnx into an end-to-end graph: uint8 RGB image "
                                     "in, mask and probabilities out (written as <name>.e2e.onnx).")
    parser.add_argument("model", help="the plain .onnx written by export.py")
    parser.add_argument("--output", default=None, help="output path (default: <name>.e2e.onnx beside the model)")
    parser.add_argument("--tta", default="none", choices=list(TTA_VIEWS), help="flip views averaged in the graph")
    parser.add_argument("--threshold", default=None,
                        help="a number in (0, 1), 'adaptive' (the cascade) or 'model' (the CV threshold); default: "
                        "the model's recorded rule")
    parser.add_argument("--batch", action="store_true", help="input (N, H, W, 3) of equal-size images")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime run of the written file")
    parser.add_argument("--force", action="store_true", help="replace an existing file that holds another variant")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging()
    convert(args.model, args.output, args.tta, args.threshold, args.batch, check=not args.no_verify, force=args.force)


if __name__ == "__main__":
    run_cli(main)
