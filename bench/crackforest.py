"""CrackForest (CFD): road photos with thin cracks, as a binary set; optionally assembled into large mosaics.

    git clone --depth 1 https://github.com/cuilimeng/CrackForest-dataset ../CrackForest-dataset
    python bench/crackforest.py --source ../CrackForest-dataset --out ../data/cfd                # 480x320 photos
    python bench/crackforest.py --source ../CrackForest-dataset --out ../data/cfd_mosaic --mosaic 3

The source holds image/NNN.jpg (155 photos, 480x320) and groundTruth/NNN.mat (118 of them annotated: a MATLAB
struct whose Segmentation is 1 = road, 2 = crack). The annotated photos in order of their number: the first two
thirds (001-079 where all are present) are the train split, the rest the test split. Writes
<out>/images/{train,test}/<stem>.jpg (the photo byte for byte), <out>/masks/{train,test}/<stem>.png (8-bit, 0/255)
and <out>/SOURCE.txt. Cracks are 1-6 px wide and cover about 1.5 % of a photo: a thin-structure set.

--mosaic N tiles N x N photos of a split (in order, without repeats) into one image of N*480 x N*320 px and its mask:
the same real pixels and the same thin cracks, seen as large images, the case where a resize to INPUT_SIZE erases
the cracks and sliding-window (tiled) inference at native resolution does not.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import cv2
import numpy as np

LICENCE = ("github.com/cuilimeng/CrackForest-dataset, README section '2.License': \"The dataset is made available for "
           "non-commercial research purposes only.\" Cite Shi, Cui, Qi, Meng, Chen, \"Automatic road crack detection "
           "using random structured forests\", IEEE T-ITS 17(12), 2016. Non-commercial research use only.")
TRAIN_SHARE = 2 / 3


def read_truth(path: Path) -> np.ndarray:
    """(H, W) uint8 0/255 from a CFD groundTruth .mat (Segmentation 2 = crack)."""
    from scipy.io import loadmat

    segmentation = loadmat(str(path))["groundTruth"][0, 0]["Segmentation"]
    return np.where(segmentation == 2, 255, 0).astype(np.uint8)


def annotated(source: Path) -> list[tuple[Path, Path]]:
    """(photo, truth) pairs in order of their number; SystemExit when the folders are not CFD's."""
    images, truths = source / "image", source / "groundTruth"
    if not images.is_dir() or not truths.is_dir():
        raise SystemExit(f"{source} has no image/ and groundTruth/ folders: give the CrackForest-dataset checkout")
    pairs = [(images / f"{mat.stem}.jpg", mat) for mat in sorted(truths.glob("*.mat"))]
    missing = [str(p) for p, _ in pairs if not p.is_file()]
    if missing or not pairs:
        raise SystemExit(f"{len(missing)} annotated photos are missing (e.g. {missing[:3]}); is the checkout whole?")
    return pairs


def mosaic(pairs: list[tuple[Path, Path]], n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """n x n photos (and truths) side by side, in order; the last incomplete group is left out."""
    out = []
    for start in range(0, len(pairs) - n * n + 1, n * n):
        group = pairs[start:start + n * n]
        photos = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p, _ in group]
        truths = [read_truth(t) for _, t in group]
        rows = [np.hstack(photos[r * n:(r + 1) * n]) for r in range(n)]
        masks = [np.hstack(truths[r * n:(r + 1) * n]) for r in range(n)]
        out.append((np.vstack(rows), np.vstack(masks)))
    return out


def write_split(out: Path, split: str, pairs: list[tuple[Path, Path]], n: int) -> dict:
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    (out / "masks" / split).mkdir(parents=True, exist_ok=True)
    if n > 1:
        items = mosaic(pairs, n)
        for i, (photo, truth) in enumerate(items):
            cv2.imwrite(str(out / "images" / split / f"m{i:03d}.png"), photo)
            cv2.imwrite(str(out / "masks" / split / f"m{i:03d}.png"), truth)
        fractions = [float((t > 0).mean()) for _, t in items]
        return {"images": len(items), "size": f"{items[0][0].shape[1]}x{items[0][0].shape[0]}" if items else "-",
                "crack_fraction": round(float(np.mean(fractions)), 4) if fractions else None}
    fractions = []
    for photo, mat in pairs:
        shutil.copyfile(photo, out / "images" / split / photo.name)
        truth = read_truth(mat)
        cv2.imwrite(str(out / "masks" / split / f"{mat.stem}.png"), truth)
        fractions.append(float((truth > 0).mean()))
    return {"images": len(pairs), "size": "480x320", "crack_fraction": round(float(np.mean(fractions)), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="the CrackForest-dataset checkout")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--mosaic", type=int, default=1, help="N: assemble N x N photos into one large image")
    args = parser.parse_args()
    pairs = annotated(args.source)
    cut = round(len(pairs) * TRAIN_SHARE)
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; remove it or choose another --out")
    stats = {split: write_split(args.out, split, part, args.mosaic)
             for split, part in (("train", pairs[:cut]), ("test", pairs[cut:]))}
    lines = [f"CrackForest (CFD) as a binary crack set{f', {args.mosaic}x{args.mosaic} mosaics' if args.mosaic > 1 else ''}.",
             "Made by: python bench/crackforest.py --source <CrackForest-dataset> --out <out>"
             + (f" --mosaic {args.mosaic}" if args.mosaic > 1 else ""),
             f"Split: the {len(pairs)} annotated photos in order of their number, the first {cut} train, the rest test.",
             *(f"{split}: {s['images']} images of {s['size']} px, cracks {s['crack_fraction']:.2%} of the pixels"
               for split, s in stats.items()),
             f"Licence: {LICENCE}"]
    (args.out / "SOURCE.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
