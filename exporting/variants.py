"""Where an export goes: each variant has its own name, and no export silently replaces another variant.

    model.onnx                 all folds, no TTA, probabilities (the default, unchanged)
    model.fold0.onnx           --fold 0            model.folds0_2.onnx   --folds 0,2
    model.tta-flips.onnx       --tta flips         model.logits.onnx     --logits
    model.fold0.fp16.onnx      --fold 0 --fp16     (fp16 / int8 copies sit beside their fp32 file)

An existing file is replaced only when its metadata says it is the same variant (a re-export), or with --force.
"""

from __future__ import annotations

from pathlib import Path

from runtime.metadata import decode_metadata, read_props
from utils import LOG, UserError

VARIANT_DEFAULTS = {"task": "segment", "folds": [], "tta": "none", "output": "probs", "precision": "fp32"}
PRECISION_SUFFIXES = {"fp16": ".fp16.onnx", "int8": ".int8.onnx"}


def variant_path(folder: Path, name: str, folds: list[int] | None = None, tta: str = "none",
                 logits: bool = False) -> Path:
    """folder/<name>[.fold0|.folds0_2][.tta-<mode>][.logits].onnx; `folds` None means all folds."""
    parts = [name]
    if folds is not None:
        parts.append(f"fold{folds[0]}" if len(folds) == 1 else "folds" + "_".join(str(k) for k in folds))
    if tta != "none":
        parts.append(f"tta-{tta}")
    if logits:
        parts.append("logits")
    return Path(folder) / (".".join(parts) + ".onnx")


def sibling_path(output: Path, precision: str) -> Path:
    """<name>.fp16.onnx / <name>.int8.onnx beside <name>.onnx."""
    return output.with_suffix(PRECISION_SUFFIXES[precision])


def variant(meta: dict) -> dict:
    """What makes two exports interchangeable (fold order aside; keys older files lack take their defaults)."""
    found = {key: meta.get(key) or default for key, default in VARIANT_DEFAULTS.items()}
    return {**found, "folds": sorted(found["folds"])}


def describe_variant(meta: dict) -> str:
    return "{task}, folds {folds}, tta {tta}, {output}, {precision}".format(**variant(meta))


def existing_variant(path: Path) -> dict | None:
    """The metadata of an existing ONNX file; None for a file without ours (or not ONNX at all)."""
    try:
        meta, found = decode_metadata(read_props(path))
    except Exception:  # not ONNX, truncated, unreadable: not one of our variants either way
        return None
    return meta if found else None


def guard_overwrite(path: Path, metadata: dict, force: bool = False) -> None:
    """Refuse to replace `path` when it holds another variant than `metadata` (checked before anything is written)."""
    if force or not path.exists():
        return
    old = existing_variant(path)
    if old is not None and variant(old) == variant(metadata):
        return
    what = describe_variant(old) if old is not None else "not an export of ours"
    raise UserError(f"{path} exists and holds another export ({what}); this one is {describe_variant(metadata)}: "
                    "give another --output, or --force to replace it")


def guard_outputs(output: Path, metadata: dict, precisions: list[str], force: bool = False) -> None:
    """guard_overwrite for the fp32 file and each fp16/int8 copy this export writes."""
    guard_overwrite(output, metadata, force)
    for precision in precisions:
        guard_overwrite(sibling_path(output, precision), {**metadata, "precision": precision}, force)


def warn_stale_siblings(output: Path, written: list[str]) -> None:
    """An fp16/int8 copy left from an earlier export beside a new fp32 file no longer matches it: say so."""
    for precision in PRECISION_SUFFIXES:
        sibling = sibling_path(output, precision)
        if precision not in written and sibling.exists():
            LOG.warning("%s is left from an earlier export and no longer matches %s: add --%s to rewrite it, "
                        "or delete it", sibling, output.name, "int8 on" if precision == "int8" else precision)
