"""Where an export goes: each variant has its own name, and no export silently replaces another variant.

    model.onnx                 all folds, no TTA, probabilities (the default, unchanged)
    model.fold0.onnx           --fold 0            model.folds0_2.onnx   --folds 0,2
    model.tta-flips.onnx       --tta flips         model.logits.onnx     --logits
    model.fold0.fp16.onnx      --fold 0 --fp16     (fp16 / int8 copies sit beside their fp32 file)

An existing file is replaced only when its metadata says it is the same variant (a re-export), or with --force:
one guard (guard_overwrite) for every writer, export.py, its fp16/int8/e2e copies, python -m exporting.e2e and the
Triton repository. The same variant: the same folds, TTA, output, precision, end-to-end form and rule (runtime/rule.py;
the cross-validated value may move, a retrain moves it).
"""

from __future__ import annotations

from pathlib import Path

from runtime.lineage import lineage_problems
from runtime.metadata import decode_metadata, read_props
from runtime.rule import describe_rule, identity, recorded_rule
from utils import LOG, UserError

VARIANT_DEFAULTS = {"task": "segment", "folds": [], "tta": "none", "output": "probs", "precision": "fp32",
                    "end_to_end": False, "e2e_tta": "none", "io": {}}
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
    rule = identity(recorded_rule(meta)[0]) if meta.get("task", "segment") == "segment" else None
    return {**found, "folds": sorted(found["folds"]), "rule": rule}


def describe_variant(meta: dict, rule: bool = False) -> str:
    """'segment, folds [0], tta none, probs, fp32' (+ the end-to-end form, + the rule when `rule`)."""
    text = "{task}, folds {folds}, tta {tta}, {output}, {precision}".format(**variant(meta))
    if meta.get("end_to_end"):
        text += f", end-to-end (tta {meta.get('e2e_tta') or 'none'}, {'N images' if batch_io(meta) else 'one image'})"
    return text + (f", rule {describe_rule(recorded_rule(meta)[0])}" if rule else "")


def batch_io(meta: dict) -> bool:
    return "(N," in str((meta.get("io") or {}).get("inputs"))


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
    rules = old is not None and variant(old)["rule"] != variant(metadata)["rule"]  # name them where they differ
    what = describe_variant(old, rules) if old is not None else "not an export of ours"
    raise UserError(f"{path} exists and holds another export ({what}); this one is "
                    f"{describe_variant(metadata, rules)}: give another --output, or --force to replace it")


def guard_outputs(output: Path, metadata: dict, precisions: list[str], force: bool = False) -> None:
    """guard_overwrite for the fp32 file and each fp16/int8 copy this export writes."""
    guard_overwrite(output, metadata, force)
    for precision in precisions:
        guard_overwrite(sibling_path(output, precision), {**metadata, "precision": precision}, force)


def warn_stale_siblings(output: Path) -> list[str]:
    """Every file beside a new export that no longer belongs with it (runtime/lineage.py: an fp16/int8/e2e copy
    made from the earlier bytes, a variant of other weights), one warning each, once everything is written."""
    problems = lineage_problems(output)
    for problem in problems:
        LOG.warning("%s", problem)
    return problems
