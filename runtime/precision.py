"""Which file runs: the float32 model or the int8 copy export.py measured beside it. No torch, no onnx.

    path, precision, reason = resolve_precision(Path("horse.onnx"), "auto", select_providers("cpu"))
    # -> horse.int8.onnx, "int8", "horse.int8.onnx: ΔDice -0.0003, min IoU 0.991 vs fp32 on 40 held-back images,
    #    2.1x fp32 (median of 7 alternating rounds, load 0.4 on 2 cores)"

auto (the default) runs <stem>.int8.onnx on the CPU provider when it was made from this very fp32 file (its
`source` records the fp32 file's SHA-256; older copies an `int8_source` SHA-1, still read: runtime/lineage.py),
its recorded `int8_dice_delta` loses at most MAX_DICE_LOSS, and a speed-up of at least MIN_SPEEDUP was measured
and stored (export.py stores none it measured under load). On a GPU provider, or otherwise, the fp32 file.
A file given as .int8.onnx, .fp16.onnx or .e2e.onnx, or a model without our metadata, runs as given. The reasons
name no flag: the CLI (--precision), Segmenter(precision=...) and the app (its Precision box) each say it their way.
"""

from __future__ import annotations

from pathlib import Path

from runtime.lineage import file_metadata, file_props, source_problem  # noqa: F401 - file_props: imported from here
from runtime.session import CPU
from utils import LOG, UserError, is_number

PRECISIONS = ("auto", "fp32", "int8")
MAX_DICE_LOSS = 0.01  # auto runs int8 only when it loses at most this much mean Dice on the held-back images
MIN_SPEEDUP = 1.0  # ... and was faster than float32 where export.py measured it (a CPU without int8 dot products)
AS_GIVEN = (".int8.onnx", ".fp16.onnx", ".e2e.onnx")  # a file the user picked a precision or graph for


def fp32_sibling(path: Path) -> Path:
    """horse.onnx for horse.int8.onnx / horse.fp16.onnx; the path itself otherwise."""
    for suffix in (".int8.onnx", ".fp16.onnx"):
        if path.name.endswith(suffix):
            return path.with_name(path.name[:-len(suffix)] + ".onnx")
    return path


def int8_sibling(path: Path) -> Path:
    return fp32_sibling(path).with_suffix(".int8.onnx")


def measurement(meta: dict) -> str:
    """'ΔDice -0.0003, min IoU 0.991 vs fp32 on 40 held-back images, 2.1x fp32 (...)' from an int8 file's
    metadata."""
    iou = meta.get("int8_min_iou")
    text = f"ΔDice {meta['int8_dice_delta']:+.4f}" + (f", min IoU {iou:.3f} vs fp32" if is_number(iou) else "")
    text += f" on {meta.get('int8_val_images', '?')} held-back images"
    speedup, timing = meta.get("int8_speedup"), meta.get("int8_timing") or {}
    if is_number(speedup):
        load = max(timing.get("load_1m") or [0])
        how = (f" (median of {timing['rounds']} alternating rounds, 1-minute load {load:g} on {timing.get('cores')} "
               "cores)" if timing.get("rounds") else "")
        text += f", {speedup:.1f}x fp32{how}"
    return text


def int8_problem(fp32: Path, int8: Path) -> tuple[str | None, dict]:
    """(why auto should not run the int8 copy, None when it may; the copy's metadata)."""
    meta = file_metadata(int8) or {}
    delta = meta.get("int8_dice_delta")
    if not is_number(delta):
        return f"{int8.name} has no recorded Dice measurement (export.py records one when held-back images are " \
               "at hand)", meta
    if fp32.is_file() and (meta.get("source") or meta.get("int8_source")) and (stale := source_problem(int8, meta)):
        return stale, meta
    if delta < -MAX_DICE_LOSS:
        return f"{int8.name} lost {-delta:.3f} Dice (limit {MAX_DICE_LOSS})", meta
    speedup = meta.get("int8_speedup")
    if not is_number(speedup):
        why = (meta.get("int8_timing") or {}).get("not_stored") or "none was stored"
        return f"{int8.name} has no measured speed-up ({why}); export again on an idle machine", meta
    if speedup < MIN_SPEEDUP:
        return f"{int8.name} was no faster than float32 where it was measured ({speedup:.2f}x)", meta
    return None, meta


def given_precision(path: Path) -> str:
    return "int8" if path.name.endswith(".int8.onnx") else "fp16" if path.name.endswith(".fp16.onnx") else "fp32"


def resolve_precision(model_path: Path, requested: str, providers: list[str]) -> tuple[Path, str, str]:
    """(the file to run, its precision, why) for --precision auto|fp32|int8 on `providers` (select_providers)."""
    requested = (requested or "auto").strip().lower()
    if requested not in PRECISIONS:
        raise UserError(f"--precision {requested!r} is not valid; use one of: {', '.join(PRECISIONS)}")
    given = Path(model_path)
    if requested == "fp32":
        path = fp32_sibling(given) if given.name.endswith(".int8.onnx") else given
        if path != given and not path.is_file():
            raise UserError(f"precision fp32: no {path.name} beside {given}; give the float32 model itself")
        return path, given_precision(path), f"{path.name}, as asked (precision fp32)"
    if requested == "int8":
        path = int8_sibling(given)
        if not path.is_file():
            raise UserError(f"precision int8: no {path.name} beside {given.name}; write one with export.py "
                            "--int8 on (held-back images in the run, or --val-dir DIR), or use precision auto")
        problem, _ = int8_problem(fp32_sibling(path), path)
        if problem:
            LOG.warning("running %s as asked (precision int8) although %s", path.name, problem)
        return path, "int8", f"{path.name}, as asked (precision int8)"
    if given.name.endswith(AS_GIVEN) or not given.is_file():
        return given, given_precision(given), f"{given.name}, as given"
    if providers and providers[0] != CPU:
        return given, "fp32", f"{given.name} on {providers[0]} (int8 is the CPU path)"
    sibling = int8_sibling(given)
    if not sibling.is_file():
        return given, "fp32", f"no {sibling.name} beside the model (export.py writes one when held-back images " \
                              "are at hand)"
    problem, meta = int8_problem(given, sibling)
    if problem:
        return given, "fp32", problem
    return sibling, "int8", f"{sibling.name}: {measurement(meta)}; precision fp32 runs {given.name}"


def choose_precision(model_path: Path, requested: str, providers: list[str]) -> tuple[Path, str, str]:
    """resolve_precision, with the one log line saying which precision runs and why."""
    path, precision, reason = resolve_precision(model_path, requested, providers)
    LOG.info("precision %s: %s", precision, reason)
    return path, precision, reason
