"""What `--source` names, and the list of images it stands for. Standard library + utils only.

Detection order: a webcam index ("0"), a stream URL (rtsp://, http(s)://...), then a file by its
suffix (.zip, .txt, a video, an image), a folder, and last a glob.
"""

from __future__ import annotations

import glob
import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from utils import IMAGE_EXTS, LOG, UserError, list_images

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
ARCHIVE_EXTS = (".zip",)

# ZIP limits, checked on the central directory before anything is extracted.
ZIP_MAX_BYTES = 2 << 30  # total uncompressed size
ZIP_MAX_RATIO = 200  # uncompressed / compressed, per entry (zip bombs reach 1000+)
ZIP_MAX_ENTRIES = 100_000


@dataclass(frozen=True)
class Item:
    """One input image: `name` for summary.csv, `path` to read, `out` the relative .png output path.

    `error` set means the item is known bad before reading (unsafe ZIP entry, missing list entry).
    """

    name: str
    path: Path | None
    out: Path
    error: str = ""


def has_magic(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def detect_source(source) -> str:
    """'webcam', 'stream', 'zip', 'list', 'video', 'image', 'folder' or 'glob'; 'paths' for several values."""
    if isinstance(source, (list, tuple)):
        if len(source) != 1:
            return "paths"
        source = source[0]
    text = str(source).strip()
    if text.isdigit():
        return "webcam"
    if text.lower().startswith(STREAM_SCHEMES):
        return "stream"
    path = Path(text)
    suffix = path.suffix.lower()
    if path.is_dir():
        return "folder"
    if path.is_file():
        if suffix in ARCHIVE_EXTS:
            return "zip"
        if suffix == ".txt":
            return "list"
        if suffix in VIDEO_EXTS:
            return "video"
        return "image"
    if suffix in VIDEO_EXTS:
        return "video"  # reported as an unopenable video, not as 'not found'
    if has_magic(text):
        return "glob"
    raise UserError(
        f"source not found: {source} (give an image, a folder, a glob, a .txt list, a .zip, a video, "
        "a stream URL or a webcam index)"
    )


def collect_images(source: str, exclude: Path | None = None) -> tuple[Path, list[Path]]:
    """(root that output names are relative to, sorted image paths) for a file, folder or glob."""
    path = Path(source)
    if path.is_file():
        return path.parent, [path]  # a wrong suffix is reported per item, not here
    if path.is_dir():
        root, images = path, list_images(path)
    elif has_magic(source):
        first_magic = next(i for i, part in enumerate(path.parts) if has_magic(part))
        root = Path(*path.parts[:first_magic]) if first_magic else Path(".")
        images = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).suffix.lower() in IMAGE_EXTS)
    else:
        raise UserError(f"source not found: {source} (give an image file, a folder or a glob)")
    if exclude is not None:
        # An output folder inside the source must not feed last run's masks back in.
        images = [p for p in images if not p.resolve().is_relative_to(exclude.resolve())]
    if not images:
        raise UserError(f"no images found in {source} (looked for {', '.join(IMAGE_EXTS)})")
    return root, images


def output_names(images: list[Path], root: Path) -> list[tuple[str, Path]]:
    """(name for summary.csv, relative .png output path) per image, output paths kept unique."""
    names, seen = [], set()
    for path in images:
        rel = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
        out = rel.with_suffix(".png")
        if out in seen:  # a.jpg and a.png side by side: keep both
            out = rel.with_name(rel.name + ".png")
            LOG.warning("%s shares its name with another image; its outputs are named %s", rel, out.name)
        seen.add(out)
        names.append((rel.as_posix(), out))
    return names


def image_items(source, exclude: Path | None = None, follow_symlinks: bool = False) -> list[Item]:
    """Items of an image file, a folder (recursive) or a glob.

    A symlink whose target lies outside the folder is an error item unless `follow_symlinks`:
    an upload folder must not become a way to read any file on the machine.
    """
    root, images = collect_images(str(source), exclude)
    items = []
    for path, (name, out) in zip(images, output_names(images, root)):
        error = "" if follow_symlinks or Path(source).is_file() else escaping_link(path, root)
        items.append(Item(name, path, out, error))
    return items


def path_items(sources, exclude: Path | None = None) -> list[Item]:
    """Items of several image files, e.g. an unquoted `--source dir/*.jpg` the shell expanded; names are
    relative to their common folder. Anything but an image file among them is a UserError saying to quote."""
    paths = [Path(s) for s in sources]
    bad = next((p for p in paths if not p.is_file() or p.suffix.lower() not in IMAGE_EXTS), None)
    if bad is not None:
        raise UserError(f"--source got {len(paths)} values and {bad} is not an image file; several values are "
                        f"image files only (what an unquoted glob expands to). Quote a glob (--source \"dir/*.jpg\") "
                        "or give one folder, .txt list, ZIP or video")
    paths = [p.absolute() for p in paths]
    if exclude is not None:
        paths = [p for p in paths if not p.resolve().is_relative_to(exclude.resolve())]
    if not paths:
        raise UserError(f"every --source file lies inside the output folder {exclude}; choose another --output")
    root = Path(os.path.commonpath([p.parent for p in paths]))
    return [Item(name, path, out) for path, (name, out) in zip(paths, output_names(paths, root))]


def escaping_link(path: Path, root: Path) -> str:
    """An error when `path` is a symlink (itself or a parent below `root`) leading outside `root`, else ''."""
    if not any(p.is_symlink() for p in [path, *path.parents] if p.is_relative_to(root) and p != root):
        return ""
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # a dangling link or a loop
        return f"broken symbolic link ({exc}); not followed"
    if target.is_relative_to(root.resolve()):
        return ""
    return "symbolic link to a file outside the input folder; not followed (use --follow-symlinks to allow)"


def list_items(list_file: Path) -> list[Item]:
    """Items of a .txt list: one path a line, relative to the list's folder, '#' starts a comment."""
    lines = Path(list_file).read_text(encoding="utf-8", errors="replace").splitlines()
    entries = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not entries:
        raise UserError(f"the list {list_file} names no files (one image path per line)")
    paths = [Path(entry) if Path(entry).is_absolute() else Path(list_file).parent / entry for entry in entries]
    items, seen = [], set()
    for entry, path in zip(entries, paths):
        out = Path(Path(entry).name).with_suffix(".png")
        index = 1
        while out in seen:  # same file name from two folders
            out = out.with_name(f"{Path(entry).stem}_{index}.png")
            index += 1
        seen.add(out)
        error = "" if path.is_file() else f"file not found: {path}"
        items.append(Item(entry, path, out, error))
    return items


# ----------------------------------------------------------------------------- zip


def unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    """Why a ZIP entry must not be extracted, or None when it is safe."""
    name = info.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return f"unsafe ZIP entry {info.filename!r}: absolute path (not extracted)"
    if ".." in parts:
        return f"unsafe ZIP entry {info.filename!r}: '..' in the path (not extracted)"
    if stat.S_ISLNK(info.external_attr >> 16):
        return f"unsafe ZIP entry {info.filename!r}: symbolic link (not extracted)"
    if Path(name).suffix.lower() in ARCHIVE_EXTS:
        return f"nested archive {info.filename!r} is not expanded"
    return None


def check_zip_limits(archive: zipfile.ZipFile, max_bytes: int, max_ratio: float, max_entries: int) -> None:
    """Refuse (UserError) an archive over the limits, from its directory alone: nothing is written yet."""
    infos = archive.infolist()
    if len(infos) > max_entries:
        raise UserError(f"ZIP has {len(infos)} entries, more than the limit of {max_entries} (--zip-max-entries)")
    total = sum(info.file_size for info in infos)
    if total > max_bytes:
        raise UserError(
            f"ZIP would expand to {total / 1e6:.1f} MB, more than the limit of {max_bytes / 1e6:.1f} MB "
            "(raise --zip-max-mb if you trust it)"
        )
    for info in infos:
        if info.file_size > 1 << 20 and info.file_size > max_ratio * max(info.compress_size, 1):
            raise UserError(
                f"ZIP entry {info.filename!r} expands {info.file_size / max(info.compress_size, 1):.0f}x, more than "
                f"the limit of {max_ratio:.0f}x (looks like a zip bomb; raise --zip-max-ratio if you trust it)"
            )


def extract_zip(
    zip_path: Path, dest: Path, max_bytes: int = ZIP_MAX_BYTES, max_ratio: float = ZIP_MAX_RATIO,
    max_entries: int = ZIP_MAX_ENTRIES,
) -> list[Item]:
    """Safely extract the images of `zip_path` under `dest`; returns their items, unsafe ones as errors.

    Never writes outside `dest`: absolute paths, '..' and symlinks are refused per entry, and the
    bytes actually written are counted against `max_bytes` (headers can lie).
    """
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"cannot open ZIP {zip_path}: {exc}") from exc
    items, written, seen_names, seen_outs, seen_targets = [], 0, set(), set(), set()
    dest = dest.resolve()
    with archive:
        check_zip_limits(archive, max_bytes, max_ratio, max_entries)
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            if info.is_dir():
                continue
            name = info.filename.replace("\\", "/")
            out = Path(name).with_suffix(".png")
            reason = unsafe_reason(info)
            if reason is None and Path(name).suffix.lower() not in IMAGE_EXTS:
                continue  # a readme or a .DS_Store: not an input
            if reason is None and name in seen_names:  # a ZIP may hold the same name twice
                reason = f"duplicate ZIP entry name {info.filename!r}: only the first one is used"
            seen_names.add(name)
            target = (dest / name).resolve()
            if reason is None and not target.is_relative_to(dest):
                reason = f"unsafe ZIP entry {info.filename!r}: leaves the extraction folder (not extracted)"
            if reason is not None:
                LOG.warning("%s", reason)
                items.append(Item(name, None, Path(Path(name).name).with_suffix(".png"), reason))
                continue
            # a.jpg beside a.png, or Dup.PNG beside dup.png (distinct here, one file on a case-insensitive disk such
            # as macOS's or Windows', or in predictions.zip unpacked there): both are processed, the later one's
            # outputs named after its full entry name; distinct() settles anything still colliding.
            if out.as_posix().casefold() in seen_outs:
                out = Path(name + ".png")
            out = distinct(out, seen_outs)
            target = dest / distinct(Path(name), seen_targets)
            written += copy_entry(archive, info, target, max_bytes - written)
            items.append(Item(name, target, out))
    if not items:
        raise UserError(f"no images found in {zip_path} (looked for {', '.join(IMAGE_EXTS)})")
    return items


def distinct(path: Path, seen: set[str]) -> Path:
    """`path`, or `<stem>~N<suffix>` when a path equal to it ignoring case is in `seen`; records the one returned."""
    candidate, n = path, 1
    while candidate.as_posix().casefold() in seen:
        n += 1
        candidate = path.with_name(f"{path.stem}~{n}{path.suffix}")
    if candidate != path:
        LOG.warning("ZIP entry %s differs from an earlier one only by case: written as %s", path, candidate)
    seen.add(candidate.as_posix().casefold())
    return candidate


def copy_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int) -> int:
    """Stream one entry to `target`, stopping past `budget` bytes; returns the bytes written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with archive.open(info) as src, open(target, "wb") as dst:
        while block := src.read(1 << 20):
            written += len(block)
            if written > budget:
                dst.close()
                os.remove(target)
                raise UserError(f"ZIP entry {info.filename!r} expands past the size limit (--zip-max-mb)")
            dst.write(block)
    return written


def pack_outputs(output: Path, archive_path: Path, folders=("masks", "masks_color", "overlays", "probs"),
                 files=("summary.csv", "metrics.json", "legend.png")) -> Path:
    """Zip the result folders and files of `output` into `archive_path` (masks/, overlays/, summary.csv...)."""
    with zipfile.ZipFile(archive_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for folder in folders:
            for path in sorted((output / folder).rglob("*")) if (output / folder).is_dir() else []:
                if path.is_file():
                    archive.write(path, path.relative_to(output).as_posix())
        for name in files:
            if (output / name).is_file():
                archive.write(output / name, name)
    return archive_path
