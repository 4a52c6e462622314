"""Dice of each post-processing rule on held-out photos: what changing the default rule does.

    python bench/rule_dice.py --data horse --epochs 6 --size 128          # trains a small model first (minutes)
    python bench/rule_dice.py --data isbi --epochs 40 --size 128 --folds 4
    python bench/rule_dice.py --model runs/horse/horse.onnx --images IMAGES --masks MASKS --name rule_dice_mine

With --data, train.py trains a small Unet/resnet18 from scratch (fold 0 of --folds held back: it picks the best
epoch and the cross-validated threshold; INT8 off) on the training photos, then the exported model is scored on
the held-out ones: horse's val split (77 photos), ISBI's last 6 slices (copies of the rest train). The point is
the difference between rules on one model, not the model's accuracy.

Each image's probabilities are computed once (inference.Segmenter, fp32), then cut by each rule:
- cv: the model's cross-validated threshold (runtime/rule.py: the default rule now);
- fixed 0.5;
- adaptive, total area: the cascade 0.5 -> 0.3 -> 0.15, the first level whose mask holds min_area pixels in all
  (the one definition in Python and in the end-to-end graph now);
- adaptive, largest region: the same cascade, a level counting only when one 8-connected region reaches min_area
  (the Python engine's default before; the end-to-end graph could not compute it).
Reported per rule: mean per-image Dice against the truth, and against the old default (adaptive, largest region)
the min and mean per-image IoU and how many images differ at all. Writes bench/results/<name>.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import HORSE, ISBI, ROOT, machine_info, print_table, write_result  # noqa: E402
from equal_budget import hold_out, masks_of  # noqa: E402
from exporting.evidence import pairs_in  # noqa: E402
from inference import Segmenter  # noqa: E402
from runtime.postprocess import apply_threshold, component_stats  # noqa: E402
from runtime.rule import DEFAULT_CASCADE  # noqa: E402
from utils import mask_dice, mask_iou, read_image, read_mask  # noqa: E402

OLD_DEFAULT = "adaptive, largest region"


def cascade_on_largest_region(probs: np.ndarray, min_area: int, cascade=DEFAULT_CASCADE) -> np.ndarray:
    """The Python engine's cascade before one definition: a level counts when one 8-connected region has min_area
    pixels; else an empty mask."""
    for level in cascade:
        mask = (probs > level).astype(np.uint8)
        if component_stats(mask)[1] >= max(min_area, 1):
            return mask
    return np.zeros(probs.shape, np.uint8)


def rule_masks(probs: np.ndarray, cv: float, min_area: int) -> dict[str, np.ndarray]:
    """(H, W) foreground probabilities -> {rule: {0, 1} mask}."""
    return {"cv (the default)": (probs > cv).astype(np.uint8), "fixed 0.5": (probs > 0.5).astype(np.uint8),
            "adaptive, total area": apply_threshold(probs, "adaptive", min_area)[0],
            OLD_DEFAULT: cascade_on_largest_region(probs, min_area)}


def score(model: Path, pairs: list[tuple[Path, Path]]) -> tuple[dict, dict]:
    """({rule: summary}, the model's cv threshold and min_area)."""
    segmenter = Segmenter(model, device="cpu", precision="fp32")
    cv, min_area = float(segmenter.meta["threshold"]), int(segmenter.meta.get("min_area", 64))
    dice: dict[str, list[float]] = {}
    iou: dict[str, list[float]] = {}
    for image, mask in pairs:
        probs = segmenter.predict_probs(read_image(image))[0]  # (H, W)
        truth = read_mask(mask)
        masks = rule_masks(probs, cv, min_area)
        for name, cut in masks.items():
            dice.setdefault(name, []).append(mask_dice(cut, truth))
            iou.setdefault(name, []).append(mask_iou(cut, masks[OLD_DEFAULT]))
    rules = {name: {"mean_dice": float(np.mean(dice[name])), "min_iou_vs_old_default": float(np.min(iou[name])),
                    "mean_iou_vs_old_default": float(np.mean(iou[name])),
                    "images_differing_from_old_default": int(sum(v < 1.0 for v in iou[name]))} for name in dice}
    return rules, {"cv_threshold": cv, "min_area": min_area, "images": len(pairs)}


def train(train_images: Path, work: Path, args) -> Path:
    """A small model from scratch on `train_images` (masks beside them); returns its ONNX export."""
    env = {**os.environ, "RAW_IMG_DIR": str(train_images), "RAW_MASK_DIR": str(masks_of(train_images)),
           "WORK_DIR": str(work)}
    command = [sys.executable, "train.py", "--name", "rule", "--model", "Unet", "--encoder", "resnet18",
               "--encoder-weights", "none", "--input-size", str(args.size), "--epochs", str(args.epochs),
               "--folds", str(args.folds), "--fold-ids", "0", "--batch-size", "8", "--int8", "off",
               "--seed", str(args.seed)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"train.py failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return work / "rule.onnx"


def command_line(argv: list[str]) -> str:
    """The command as run, less --work (where the run was kept says nothing about the result)."""
    shown = [arg for i, arg in enumerate(argv) if arg != "--work" and (i == 0 or argv[i - 1] != "--work")]
    return "python bench/rule_dice.py " + " ".join(shown)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=("horse", "isbi"), help="train a small model on this data set first")
    parser.add_argument("--model", type=Path, help="or score an existing export")
    parser.add_argument("--images", type=Path, help="with --model: the held-out photos")
    parser.add_argument("--masks", type=Path, help="with --model: their masks")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--size", type=int, default=128, help="INPUT_SIZE of the small model")
    parser.add_argument("--folds", type=int, default=10, help="fold 0 of these is held back for the CV threshold")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work", type=Path, default=None, help="with --data: keep the run (and its model) here")
    parser.add_argument("--name", default=None, help="results name (default rule_dice_<data>)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: bench/results/<name>.json)")
    args = parser.parse_args()
    if bool(args.data) == bool(args.model) or (args.model and not (args.images and args.masks)):
        parser.error("give --data horse|isbi, or --model with --images and --masks")
    return args


def main() -> None:
    args = parse_args()
    start = machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images, masks, model = args.images, args.masks, args.model
        work = args.work or tmp / "work"
        if args.data == "horse":
            images, masks = HORSE / "images" / "val", HORSE / "masks" / "val"
            model = train(HORSE / "images" / "train", work, args)
        elif args.data == "isbi":
            train_images, images = hold_out(ISBI / "images", 6, (args.work or tmp) / "split")
            masks = masks_of(images)
            model = train(train_images, work, args)
        rules, info = score(model, pairs_in(images, masks))
    print(f"{info['images']} held-out images; cv threshold {info['cv_threshold']:.3f}, min_area {info['min_area']}")
    print_table(["rule", "mean Dice", f"min IoU vs {OLD_DEFAULT}", "mean IoU", "images differing"],
                [[name, f"{r['mean_dice']:.4f}", f"{r['min_iou_vs_old_default']:.4f}",
                  f"{r['mean_iou_vs_old_default']:.4f}", r["images_differing_from_old_default"]]
                 for name, r in rules.items()])
    setup = {k: getattr(args, k) for k in ("data", "epochs", "size", "folds", "seed")} if args.data else {
        "model": str(args.model)}
    write_result(args.name or f"rule_dice_{args.data or Path(args.model).stem}",
                 {"command": command_line(sys.argv[1:]), "setup": setup, **info,
                  "rules": rules}, args.out, start)


if __name__ == "__main__":
    main()
