"""The shared horse set in the formats annotated data arrives in, written with the reference libraries (pycocotools'
RLE for COCO, Ultralytics' mask-to-YOLO-seg converter, Pillow's palette PNGs), each read back through train.py:

    python bench/horse_formats.py --out bench/results/horse_formats.json                # --check-data on each format
    python bench/horse_formats.py --train --out bench/results/horse_formats.json        # + a 1-epoch, 2-fold training

For each format: the wall time of `train.py --check-data` and what its report found; the cached masks against the
cache of the PNG masks (COCO RLE and palette: pixel-equal; YOLO polygons: equal to Ultralytics' own polygon2mask
reading of the labels, and their IoU with the PNG masks, since a polygon traces a mask's outline only); with
--train the CV dice of a tiny run (Unet resnet18, random init, INPUT_SIZE 64, 1 epoch, 2 folds). --limit N takes
the first N images (tests/test_horse_formats.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils import atomic_write_json, list_images, read_mask  # noqa: E402

HORSE = ROOT.parent / "shared" / "data" / "weizmann_horse"
TINY = ["--model", "Unet", "--encoder", "resnet18", "--encoder-weights", "none", "--input-size", "64", "--epochs", "1",
        "--folds", "2", "--batch-size", "8", "--workers", "0", "--export", "false", "--int8", "off"]


def pairs(images: Path, masks: Path, limit: int | None = None) -> list[tuple[Path, Path]]:
    found = [(p, masks / f"{p.stem}.png") for p in list_images(images)]
    return found[:limit] if limit else found


def write_coco(pairs_: list[tuple[Path, Path]], out: Path) -> Path:
    """annotations.json: one 'horse' annotation per image (file_name: its name), pycocotools' compressed RLE of its
    PNG mask."""
    from pycocotools import mask as mask_utils

    entries, anns = [], []
    for i, (image, mask_path) in enumerate(pairs_, 1):
        mask = read_mask(mask_path)
        entries.append({"id": i, "file_name": image.name, "height": mask.shape[0],
                        "width": mask.shape[1]})
        rle = mask_utils.encode(np.asfortranarray(mask))
        anns.append({"id": i, "image_id": i, "category_id": 1, "iscrowd": 0, "area": int(mask_utils.area(rle)),
                     "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    out.mkdir(parents=True, exist_ok=True)
    path = out / "annotations.json"
    path.write_text(json.dumps({"images": entries, "annotations": anns,
                                "categories": [{"id": 1, "name": "horse"}]}))
    return path


def write_palette(pairs_: list[tuple[Path, Path]], out: Path) -> Path:
    """Palette PNGs (index 1 = horse, VOC's colours) written by Pillow."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    for image, mask_path in pairs_:
        palette = Image.fromarray(read_mask(mask_path), "P")
        palette.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
        palette.save(out / f"{image.stem}.png")
    return out


def write_yolo(pairs_: list[tuple[Path, Path]], out: Path) -> Path:
    """images/train (links to the photos), labels/train from Ultralytics' convert_segment_masks_to_yolo_seg, data.yaml."""
    from ultralytics.data.converter import convert_segment_masks_to_yolo_seg

    ids = out / "masks_class_ids"
    (out / "images" / "train").mkdir(parents=True, exist_ok=True)
    ids.mkdir(parents=True, exist_ok=True)
    for image, mask_path in pairs_:
        link = out / "images" / "train" / image.name
        if not link.exists():
            link.symlink_to(image.resolve())
        cv2.imwrite(str(ids / f"{image.stem}.png"), read_mask(mask_path))  # the converter's pixel value = class + 1
    convert_segment_masks_to_yolo_seg(str(ids), str(out / "labels" / "train"), classes=1)
    (out / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/train\nnames:\n  0: horse\n")
    return out / "data.yaml"


def write_formats(images: Path, masks: Path, out: Path, limit: int | None = None) -> dict[str, list[str]]:
    """The train.py flags of each format's run: png (the masks as they are), coco, palette and yolo."""
    found = pairs(images, masks, limit)
    if limit:  # a subset: the PNG run and the others must see the same images
        (out / "png" / "images").mkdir(parents=True, exist_ok=True)
        for image, _ in found:
            link = out / "png" / "images" / image.name
            if not link.exists():
                link.symlink_to(image.resolve())
        images = out / "png" / "images"
    return {
        "png": ["--raw-img-dir", str(images), "--raw-mask-dir", str(masks)],
        "coco": ["--raw-img-dir", str(images), "--raw-coco-json", str(write_coco(found, out / "coco"))],
        "palette": ["--raw-img-dir", str(images), "--raw-mask-dir", str(write_palette(found, out / "palette"))],
        "yolo": ["--raw-yolo-yaml", str(write_yolo(found, out / "yolo"))],
    }


def train_py(args: list[str], work: Path) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *args, "--work-dir", str(work)], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "INT8": "off"})
    if done.returncode:
        raise SystemExit(f"train.py {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done, time.monotonic() - start


def cached(work: Path) -> dict[str, np.ndarray]:
    return {p.stem: cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in (work / "masks").glob("*.png")}


def yolo_against_ultralytics(yaml_path: Path, masks: Path) -> dict:
    """Our YOLO masks against Ultralytics' polygon2mask of the same labels (exact) and against the PNG masks (IoU)."""
    from ultralytics.data.utils import polygons2masks_overlap

    from training.sources.yolo import label_path, read_label, yolo_sources
    from utils import dice_iou

    equal, ious = 0, []
    sources = yolo_sources(yaml_path, 1)
    for source in sources:
        ours = source.load_mask(1)
        label = label_path(source.image_path)
        segments = [np.float32(c).reshape(-1, 2) * np.float32([ours.shape[1], ours.shape[0]])
                    for _, c in (read_label(label) if label.is_file() else [])]
        reference = (polygons2masks_overlap(ours.shape, segments)[0] > 0) if segments else np.zeros(ours.shape, bool)
        equal += np.array_equal(ours > 0, reference)
        ious.append(dice_iou(ours > 0, read_mask(masks / f"{source.image_path.stem}.png") > 0)[1])
    return {"images": len(sources), "equal_to_ultralytics": equal, "iou_to_png_mean": float(np.mean(ious)),
            "iou_to_png_min": float(np.min(ious))}


def run(images: Path, masks: Path, out: Path, limit: int | None, train: bool) -> dict:
    formats = write_formats(images, masks, out / "data", limit)
    results = {}
    for name, flags in formats.items():
        done, seconds = train_py([*flags, "--check-data"], out / "check" / name)
        report = json.loads((out / "check" / name / "data_report.json").read_text())
        results[name] = {"check_data_s": round(seconds, 2), "check_s": report["seconds"], "images": report["images"],
                         "encodings": report["mask_encodings"], "class_fractions": report["class_fractions"]}
        if train:
            _, seconds = train_py([*flags, *TINY], out / "train" / name)
            summary = json.loads((out / "train" / name / "cv_summary.json").read_text())
            results[name].update(train_s=round(seconds, 1), cv_dice=round(summary["mean_dice"], 4),
                                 oof_dice=round(summary["oof_dice"], 4))
    if train:
        png = cached(out / "train" / "png")
        for name in ("coco", "palette", "yolo"):
            theirs = cached(out / "train" / name)
            results[name]["cached_masks_equal_png"] = sum(np.array_equal(png[k], theirs.get(k)) for k in png)
            results[name]["cached_masks"] = len(theirs)
    results["yolo"]["against_ultralytics"] = yolo_against_ultralytics(Path(formats["yolo"][1]), masks)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="train", help="the horse split: train or val")
    parser.add_argument("--limit", type=int, default=None, help="the first N images only")
    parser.add_argument("--train", action="store_true", help="also a 1-epoch, 2-fold tiny training per format")
    parser.add_argument("--work", default="runs/horse_formats", help="folder for the formats and the runs")
    parser.add_argument("--out", default="bench/results/horse_formats.json")
    args = parser.parse_args(argv)
    images, masks = HORSE / "images" / args.split, HORSE / "masks" / args.split
    results = {"split": args.split, "limit": args.limit,
               "formats": run(images, masks, Path(args.work), args.limit, args.train)}
    atomic_write_json(args.out, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
