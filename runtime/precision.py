"""Which file runs: the float32 model or the int8 copy export.py measured beside it. No torch, no onnx.

    path, precision, reason = resolve_precision(Path("horse.onnx"), "auto", select_providers("cpu"))
    # -> horse.int8.onnx, "int8", "horse.int8.onnx (ΔDice -0.0003 on 40 held-back images, 2.1x fp32); ..."

auto (the default) runs <stem>.int8.onnx on the CPU provider when it was made from this very fp32
file (its `int8_source` is the fp32 file's SHA-1, so a re-export makes it stale) and its recorded
`int8_dice_delta` loses at most MAX_DICE_LOSS; on a GPU provider, or otherwise, the fp32 file.
A file given as .int8.onnx, .fp16.onnx or .e2e.onnx, or a model without our metadata, runs as given.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

from runtime.metadata import decode_metadata
from runtime.session import CPU
from utils import LOG, UserError, file_sha1, is_number

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


@lru_cache(maxsize=16)
def _digest(path: str, inode: int, size: int, mtime_ns: int) -> str:
    return file_sha1(path)


def source_digest(path: Path) -> str:
    """SHA-1 of a model file's bytes (what `int8_source` records), cached while the file is unchanged."""
    stat = path.stat()
    return _digest(str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _read_varint(fh) -> int:
    value = shift = 0
    while byte := fh.read(1):
        value |= (byte[0] & 0x7F) << shift
        shift += 7
        if byte[0] < 0x80:
            return value
    raise EOFError("truncated")


def _fields(fh, end: int):
    """(field number, length) of each length-delimited protobuf field before `end`, with `fh` at its payload
    (read it or not: the next step seeks past it). Fields of other wire types are skipped."""
    while fh.tell() < end:
        key = _read_varint(fh)
        wire = key & 7
        if wire == 0:
            _read_varint(fh)
        elif wire in (1, 5):
            fh.seek(8 if wire == 1 else 4, 1)
        elif wire == 2:
            length = _read_varint(fh)
            start = fh.tell()
            yield key >> 3, length
            fh.seek(start + length)
        else:
            raise ValueError(f"protobuf wire type {wire}")


def file_props(path: Path) -> dict:
    """metadata_props of an ONNX file without loading it: ModelProto's field 14 is read, the graph (the weights)
    skipped. An unreadable file gives {}: no measurement, so auto keeps fp32."""
    props = {}
    try:
        with open(path, "rb") as fh:
            for field, length in _fields(fh, path.stat().st_size):
                if field == 14:  # StringStringEntryProto: key = 1, value = 2
                    entry = io.BytesIO(fh.read(length))
                    parts = {number: entry.read(size) for number, size in _fields(entry, length)}
                    props[parts.get(1, b"").decode()] = parts.get(2, b"").decode()
    except (OSError, EOFError, ValueError):  # UnicodeDecodeError is a ValueError
        return {}
    return props


def measurement(meta: dict) -> str:
    """'ΔDice -0.0003 on 40 held-back images, 2.1x fp32' from an int8 file's metadata."""
    text = f"ΔDice {meta['int8_dice_delta']:+.4f} on {meta.get('int8_val_images', '?')} held-back images"
    speedup = meta.get("int8_speedup")
    return text + (f", {speedup:.1f}x fp32" if is_number(speedup) else "")


def int8_problem(fp32: Path, int8: Path) -> tuple[str | None, dict]:
    """(why auto should not run the int8 copy, None when it may; the copy's metadata)."""
    meta, found = decode_metadata(file_props(int8))
    delta = meta.get("int8_dice_delta")
    if not found or not is_number(delta):
        return f"{int8.name} has no recorded Dice measurement (export.py records one when a validation set is at " \
               "hand)", meta
    if fp32.is_file() and meta.get("int8_source") != source_digest(fp32):
        return f"{int8.name} is stale: it was made from an earlier {fp32.name} (export again to refresh it)", meta
    if delta < -MAX_DICE_LOSS:
        return f"{int8.name} lost {-delta:.3f} Dice (limit {MAX_DICE_LOSS})", meta
    speedup = meta.get("int8_speedup")
    if is_number(speedup) and speedup < MIN_SPEEDUP:
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
            raise UserError(f"--precision fp32: no {path.name} beside {given}; give the float32 model itself")
        return path, given_precision(path), f"{path.name}, as asked (--precision fp32)"
    if requested == "int8":
        path = int8_sibling(given)
        if not path.is_file():
            raise UserError(f"--precision int8: no {path.name} beside {given.name}; write one with export.py "
                            "--int8 on --val-dir DIR, or use --precision auto")
        problem, _ = int8_problem(fp32_sibling(path), path)
        if problem:
            LOG.warning("running %s as asked (--precision int8) although %s", path.name, problem)
        return path, "int8", f"{path.name}, as asked (--precision int8)"
    if given.name.endswith(AS_GIVEN) or not given.is_file():
        return given, given_precision(given), f"{given.name}, as given"
    if providers and providers[0] != CPU:
        return given, "fp32", f"{given.name} on {providers[0]} (int8 is the CPU path)"
    sibling = int8_sibling(given)
    if not sibling.is_file():
        return given, "fp32", f"no {sibling.name} beside the model (export.py writes one when a validation set is " \
                              "at hand)"
    problem, meta = int8_problem(given, sibling)
    if problem:
        return given, "fp32", problem
    return sibling, "int8", f"{sibling.name} ({measurement(meta)}); --precision fp32 to force float32"


def choose_precision(model_path: Path, requested: str, providers: list[str]) -> tuple[Path, str, str]:
    """resolve_precision, with the one log line saying which precision runs and why."""
    path, precision, reason = resolve_precision(model_path, requested, providers)
    LOG.info("precision %s: %s", precision, reason)
    return path, precision, reason
