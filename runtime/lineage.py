"""Which file a model came from, and whether the files beside it still belong together. No torch, no onnx.

Every derived file records `source`: {"file": "horse.onnx", "sha256": ..., "made": "int8" | "fp16" | "e2e" |
"triton"}, the SHA-256 of the bytes it was made from. Every export from checkpoints records `weights_sha256`:
{"fold0_best.pt": ..., ...}. A retrain and re-export rewrites horse.onnx; whatever was made from the old one
(an int8 or fp16 copy, the .e2e.onnx that Node and browser users run, a TTA or logits variant) no longer
matches it, and `lineage_problems` names each such file:

    problems = lineage_problems(Path("runs/horse/horse.onnx"))
    # ['horse.e2e.onnx was made from another horse.onnx (sha256 1a2b3c4d recorded, 5e6f7a8b now): ...']

inference.py and the app warn with these lines; inference.py --strict refuses to start. int8 files exported
before `source` existed carry `int8_source`, a SHA-1 of their fp32 file: still read, so old models keep working.
Metadata is read straight from the protobuf (`file_props`): field 14 of ModelProto, the graph skipped.
"""

from __future__ import annotations

import hashlib
import io
from functools import lru_cache
from pathlib import Path

from runtime.metadata import decode_metadata
from utils import LOG, UserError

SHOWN = 8  # hex digits of a digest shown in messages
REMEDY = {"int8": "export.py writes it again (--int8 on)", "fp16": "export.py --fp16 writes it again",
          "e2e": "export.py --end-to-end (or python -m exporting.e2e) writes it again",
          "triton": "export.py --triton-repo writes it again"}
MAX_SIBLINGS = 200  # .onnx files read beside a model; a folder with more is not searched


# ----------------------------------------------------------------------------- digests


@lru_cache(maxsize=32)
def _digest(path: str, algorithm: str, inode: int, size: int, mtime_ns: int) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes, cached while the file is unchanged (inode, size, mtime)."""
    stat = Path(path).stat()
    return _digest(str(path), algorithm, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def source_record(path: Path, made: str) -> dict:
    """The `source` entry a file derived from `path` records."""
    return {"file": Path(path).name, "sha256": file_digest(path), "made": made}


# ----------------------------------------------------------------------------- metadata without onnx


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
    skipped. An unreadable file gives {}."""
    props = {}
    try:
        with open(path, "rb") as fh:
            for field, length in _fields(fh, Path(path).stat().st_size):
                if field == 14:  # StringStringEntryProto: key = 1, value = 2
                    entry = io.BytesIO(fh.read(length))
                    parts = {number: entry.read(size) for number, size in _fields(entry, length)}
                    props[parts.get(1, b"").decode()] = parts.get(2, b"").decode()
    except (OSError, EOFError, ValueError):  # UnicodeDecodeError is a ValueError
        return {}
    return props


def file_metadata(path: Path) -> dict | None:
    """Our metadata of an ONNX file (None without it, or when it is not valid JSON)."""
    try:
        meta, found = decode_metadata(file_props(path))
    except Exception:  # noqa: BLE001 - a broken neighbour is not this model's problem
        return None
    return meta if found else None


# ----------------------------------------------------------------------------- sources


def recorded_source(path: Path, meta: dict) -> tuple[str, str, str, str] | None:
    """(source file name, digest, algorithm, what was made) a derived file records, or None. Old int8 files: their
    `int8_source` SHA-1 of <stem>.onnx."""
    source = meta.get("source")
    if isinstance(source, dict) and source.get("file") and source.get("sha256"):
        return str(source["file"]), str(source["sha256"]), "sha256", str(source.get("made") or "")
    if meta.get("int8_source") and Path(path).name.endswith(".int8.onnx"):
        return Path(path).name[:-len(".int8.onnx")] + ".onnx", str(meta["int8_source"]), "sha1", "int8"
    return None


def source_problem(path: Path, meta: dict) -> str | None:
    """Why the derived file `path` no longer matches the source file beside it; None when it does, when it is not
    derived, or when its source is not there to compare."""
    found = recorded_source(path, meta)
    if found is None:
        return None
    name, digest, algorithm, made = found
    source = Path(path).with_name(name)
    if not source.is_file():
        return None
    now = file_digest(source, algorithm)
    if now == digest:
        return None
    remedy = REMEDY.get(made, "export it again")
    return (f"{Path(path).name} was made from another {name} ({algorithm} {digest[:SHOWN]} recorded, "
            f"{now[:SHOWN]} now): it gives the old model's answers; {remedy}, or delete it")


def weights_problem(path: Path, meta: dict, other: Path, other_meta: dict) -> str | None:
    """Two exports of checkpoints with the same name whose recorded digests differ: different trainings."""
    mine, theirs = meta.get("weights_sha256"), other_meta.get("weights_sha256")
    if not isinstance(mine, dict) or not isinstance(theirs, dict):
        return None
    differ = sorted(name for name in set(mine) & set(theirs) if mine[name] != theirs[name])
    if not differ:
        return None
    dates = (str(meta.get("created") or ""), str(other_meta.get("created") or ""))
    older = Path(path).name if dates[0] < dates[1] else other.name if dates[1] < dates[0] else None
    which = f"{older} is the older export" if older else "one of them is from an earlier training"
    verb = "differs" if len(differ) == 1 else "differ"
    return (f"{Path(path).name} and {other.name} came from different trainings ({', '.join(differ)} {verb}): "
            f"{which}; export it again, or delete it")


# ----------------------------------------------------------------------------- a model and its neighbours


def siblings(path: Path) -> list[Path]:
    """The other .onnx files beside `path` (none when the folder holds more than MAX_SIBLINGS)."""
    try:
        found = sorted(p for p in Path(path).parent.glob("*.onnx") if p.name != Path(path).name and p.is_file())
    except OSError:
        return []
    return found if len(found) <= MAX_SIBLINGS else []


def lineage_problems(path: Path, meta: dict | None = None) -> list[str]:
    """One line per file that no longer belongs with `path`: `path` itself when its source beside it changed, each
    file made from `path` that was made from other bytes, each export of other weights of the same checkpoints."""
    path = Path(path)
    meta = file_metadata(path) if meta is None else meta
    if meta is None:
        return []
    problems = [problem] if (problem := source_problem(path, meta)) else []
    own_source = (recorded_source(path, meta) or ("",))[0]
    for other in siblings(path):
        other_meta = file_metadata(other) if other.name != own_source else None  # the source: checked above
        if other_meta is None:
            continue
        found = recorded_source(other, other_meta)
        if found is not None and found[0] == path.name:
            problem = source_problem(other, other_meta)
        else:
            problem = weights_problem(path, meta, other, other_meta)
        if problem:
            problems.append(problem)
    return problems


def check_lineage(given: Path, running: Path, strict: bool = False) -> list[str]:
    """lineage_problems of the model given and of the file that runs (an int8 copy, say), each logged as a warning;
    `strict` (inference.py --strict) turns them into one UserError."""
    problems = list(dict.fromkeys(lineage_problems(given) + (lineage_problems(running) if running != given else [])))
    for problem in problems:
        LOG.warning("%s", problem)
    if strict and problems:
        more = f" (and {len(problems) - 1} more, in the warnings above)" if len(problems) > 1 else ""
        raise UserError(f"--strict: {problems[0]}{more}")
    return problems
