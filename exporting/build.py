"""The steps of an export: a run's fold checkpoints (or a plain state dict) -> one traced ONNX graph with its metadata,
checked against torch, written atomically, then its fp16 / int8 / end-to-end copies. `export.py` is the command line
on top; it imports this module only when something is exported, so `export.py --help` never waits for torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import torch.nn as nn

from exporting.checkpoints import (
    checkpoint_name, find_checkpoints, load_fold_models, load_plain_checkpoint, read_recommended_threshold,
    read_summary,
)
from exporting.checks import verify
from exporting.ensembles import GATE_OUTPUT, ExportEnsemble, GateEnsemble
from exporting.onnx_metadata import add_metadata, build_gate_metadata, build_metadata, set_metadata
from exporting.quantize import int8_plan, write_fp16, write_int8
from training.values import int8_mode
from exporting import check_opset
from exporting.tracing import simplify, to_onnx_bytes, trace_side
from exporting.variants import guard_outputs, guard_overwrite, sibling_path, variant_path, warn_stale_siblings
from model import GATE_ARCH
from runtime.lineage import file_digest
from runtime.metadata import DEFAULT_METADATA, STRIDE, untrained_flips
from runtime.rule import describe_rule, make_rule
from utils import LOG, UserError, atomic_write_bytes


def rule_threshold(value) -> float | str | None:
    """A segmenter's --threshold: None (the cross-validated one), 'adaptive' or a number in (0, 1); else a
    UserError."""
    if value is None or str(value).strip().lower() == "adaptive":
        return None if value is None else "adaptive"
    return make_rule(value)["threshold"]


def gate_threshold(value) -> float | None:
    """A gate's --threshold: None (the out-of-fold one) or a number in [0, 1]; else a UserError."""
    try:
        number = None if value is None else float(value)
    except ValueError:
        number = float("nan")
    if number is not None and not 0 <= number <= 1:  # also NaN
        raise UserError(f"--threshold {value!r} is not valid for a gate (TASK=classify); use a number from 0 to 1")
    return number


def detector_path(output: Path) -> Path:
    """Where the YOLO detector goes: <name>.detector.onnx beside <name>.onnx."""
    return output.with_name(f"{output.stem}.detector.onnx")


def export_onnx(work_dir: str | Path, folds: list[int] | None = None, output: str | Path | None = None,
                threshold: float | str | None = None, min_area: int | None = None, opset: int = 17,
                check: bool = True, tta: str = "none", logits: bool = False, simplify_graph: bool = False,
                fp16: bool = False, int8: str | bool = "off", val_dir: str | Path | None = None,
                calib_count: int = 64, force: bool = False, morphology: dict | None = None,
                end_to_end: bool = False, int8_timing_tries: int | None = None) -> Path:
    """Export the chosen folds of a training run as one averaged ONNX graph; returns its path.

    Without `output` a variant gets its own name (exporting/variants.py). fp16 writes <name>.fp16.onnx beside the
    float32 file; int8 (auto, on or off; quantize.int8_plan) <name>.int8.onnx: export.py and train.py pass auto
    (their default), a Python caller says so; end_to_end <name>.e2e.onnx. A file of another variant is replaced
    only with `force`. The recorded rule (runtime/rule.py): `threshold` (None: the cross-validated one, a number, or
    'adaptive'), `min_area` and `morphology` (close, open, fill_holes, min_component_area, keep_largest).
    """
    check_opset(opset)
    work_dir = Path(work_dir)
    checkpoints = find_checkpoints(work_dir, folds)
    subset = None if set(checkpoints) == set(find_checkpoints(work_dir, None)) else list(checkpoints)
    models, ckpt = load_fold_models(checkpoints)
    ckpt = {**ckpt, "recipe": read_recipe(work_dir)}
    if ckpt["model_args"].get("arch") == GATE_ARCH:
        mode = int8_mode(int8)
        used = (("--tta", tta != "none"), ("--logits", logits), ("--int8", mode == "on"))
        unsupported = [name for name, on in used if on]
        if unsupported:
            raise UserError(f"{', '.join(unsupported)}: not available for a gate (TASK=classify) export; drop it")
        if mode == "auto":
            LOG.info("no int8 copy: not made for a gate (TASK=classify) export")
        if morphology or end_to_end:
            raise UserError("the morphology flags and --end-to-end are for segmenters; drop them for a gate "
                            "(TASK=classify)")
        return export_gate(work_dir, checkpoints, models, ckpt, output, gate_threshold(threshold), opset, check,
                           simplify_graph, fp16, subset, force)
    threshold = rule_threshold(threshold)
    rule = {"threshold": threshold, **(morphology or {})}
    if threshold is None or threshold == "adaptive":
        threshold = read_recommended_threshold(work_dir)
    name = ckpt.get("config", {}).get("name") or "model"
    output = Path(output) if output else variant_path(work_dir, name, subset, tta, logits)
    int8_data = int8_plan(int8, work_dir, list(checkpoints), val_dir, calib_count,
                          *([int8_timing_tries] if int8_timing_tries else []))
    weights = {path.name: file_digest(path) for path in checkpoints.values()}
    return export_segmenter(models, ckpt, list(checkpoints), output, threshold=threshold, min_area=min_area,
                            opset=opset, check=check, tta=tta, logits=logits, simplify_graph=simplify_graph,
                            fp16=fp16, int8_data=int8_data, force=force, rule=rule, weights=weights,
                            end_to_end=end_to_end)


def read_recipe(work_dir: Path) -> list[str]:
    """RECIPE=auto's plan lines from WORK_DIR/config.json (`recipe_plan`), or [] (none, or no readable file)."""
    try:
        lines = json.loads((work_dir / "config.json").read_text(encoding="utf-8")).get("recipe_plan") or []
    except (OSError, ValueError, AttributeError):
        return []
    return [str(line) for line in lines] if isinstance(lines, list) else []


def export_checkpoint(path: str | Path, arch: str | None = None, encoder: str | None = None,
                      classes: int | None = None, input_size: int | None = None, class_names: list[str] | None = None,
                      output: str | Path | None = None, trust_pickle: bool = False, int8: str | bool = "off",
                      val_dir: str | Path | None = None, calib_count: int = 64, **options) -> Path:
    """A plain state dict saved by another script (any wrapper model.unwrap_state_dict accepts), exported by the
    same steps as a run's folds. `options`: export_segmenter's (threshold, opset, check, tta, logits, ...)."""
    check_opset(options.get("opset", 17))
    if input_size is not None and (input_size < STRIDE or input_size % STRIDE):
        raise UserError(f"--input-size {input_size} must be a multiple of {STRIDE} (the models' stride), e.g. 512")
    model, ckpt = load_plain_checkpoint(path, arch, encoder, classes, trust_pickle)
    classes = ckpt["model_args"]["classes"]
    if class_names and len(class_names) != classes:
        raise UserError(f"{len(class_names)} class names ({', '.join(class_names)}) for a model with {classes} "
                        "output channel(s); give one name per channel (or --classes N)")
    name = checkpoint_name(Path(path))
    ckpt["config"] = {"name": name, "input_size": input_size or DEFAULT_METADATA["input_size"],
                      "class_names": class_names}
    output = Path(output) if output else variant_path(Path(path).parent, name, None, options.get("tta", "none"),
                                                      options.get("logits", False))
    int8_data = int8_plan(int8, None, [], val_dir, calib_count)
    threshold = rule_threshold(options.get("threshold"))
    options["rule"] = {"threshold": threshold, **(options.pop("morphology", None) or {})}
    options["threshold"] = None if threshold == "adaptive" else threshold
    return export_segmenter([model], ckpt, [], output, int8_data=int8_data,
                            weights={Path(path).name: file_digest(Path(path))}, **options)


def export_segmenter(models: list[nn.Module], ckpt: dict, folds: list[int], output: Path, *,
                     threshold: float | None = None, min_area: int | None = None, opset: int = 17, check: bool = True,
                     tta: str = "none", logits: bool = False, simplify_graph: bool = False, fp16: bool = False,
                     int8_data: tuple | None = None, force: bool = False, rule: dict | None = None,
                     weights: dict | None = None, end_to_end: bool = False) -> Path:
    """The steps every segmenter export shares: metadata (with the rule and the weights' digests), the overwrite
    guard, the detector, trace, checks, write, then the fp16/int8/e2e copies (int8_data: quantize.int8_plan,
    checked by the caller beforehand), then a warning for each file beside it that no longer matches."""
    from exporting.e2e import convert, e2e_path, planned_metadata

    kind = "logits" if logits else "probs"
    metadata = build_metadata(ckpt, folds, threshold, min_area, tta, kind, detector_path(output).name, rule, weights)
    if warning := untrained_flips(metadata, tta):
        LOG.warning("%s", warning)
    precisions = [name for name, on in (("fp16", fp16), ("int8", int8_data is not None)) if on]
    guard_outputs(output, metadata, precisions, force)  # before anything is written
    if end_to_end:
        guard_overwrite(e2e_path(output), planned_metadata(metadata), force)
    if metadata["crop_mode"] == "person":  # first: a missing detector fails before the long export
        from training.smartcrop import export_detector

        export_detector(ckpt["config"]["crop_model"], detector_path(output))
    ensemble = ExportEnsemble(models, metadata["num_classes"], tta, kind).eval()
    side = trace_side(ckpt)
    proto = add_metadata(to_onnx_bytes(ensemble, side, opset, kind), metadata)
    proto = finish_export(proto, ensemble, metadata, output, check, simplify_graph, side)
    LOG.info("exported %s (folds %s, tta %s, %s, %.1f MB, rule: %s)", output, folds, tta, kind,
             output.stat().st_size / 1e6, describe_rule(metadata["rule"]))
    if fp16:
        write_fp16(proto, sibling_path(output, "fp16"), metadata, check, side, source=output)
    if int8_data is not None:
        write_int8(output, metadata, *int8_data)
    if end_to_end:
        convert(output, check=check, force=force)
    warn_stale_siblings(output)
    return output


def finish_export(proto: onnx.ModelProto, module: nn.Module, metadata: dict, output: Path, check: bool,
                  simplify_graph: bool, side: int | None = None) -> onnx.ModelProto:
    """Simplify (optional), verify against `module` at a `side` square (default INPUT_SIZE; the results go
    into the metadata) and write atomically."""
    if simplify_graph:
        proto = simplify(proto)
    if check:
        metadata["checks"] = verify(module, proto.SerializeToString(), side or metadata["input_size"], metadata["arch"])
        proto = set_metadata(proto, metadata)
    atomic_write_bytes(output, proto.SerializeToString())
    return proto


def export_gate(work_dir: Path, checkpoints: dict[int, Path], models: list[nn.Module], ckpt: dict, output,
                threshold: float | None, opset: int, check: bool, simplify_graph: bool, fp16: bool,
                subset: list[int] | None = None, force: bool = False) -> Path:
    """A gate run's folds as one graph: image (N, 3, H, W) -> prob (N, 1), with the gate's metadata."""
    metadata = build_gate_metadata(ckpt, list(checkpoints), read_summary(work_dir), threshold)
    output = Path(output) if output else variant_path(work_dir, metadata["name"], subset)
    guard_outputs(output, metadata, ["fp16"] if fp16 else [], force)
    ensemble = GateEnsemble(models).eval()
    proto = to_onnx_bytes(ensemble, metadata["input_size"], opset, GATE_OUTPUT, {0: "batch"})
    proto = finish_export(add_metadata(proto, metadata), ensemble, metadata, output, check, simplify_graph)
    LOG.info("exported gate %s (folds %s, %.1f MB, threshold %.6g)", output, list(checkpoints),
             output.stat().st_size / 1e6, metadata["threshold"])
    if fp16:
        write_fp16(proto, sibling_path(output, "fp16"), metadata, check, source=output)
    warn_stale_siblings(output)
    return output
