"""The baseline an smp user writes by hand: one split, no CV, threshold 0.5, square resize.

It is the yardstick for the README's real-data recipe ("better than a plain single-split Unet
trained with the same budget"): smp Unet + encoder from scratch, AdamW + OneCycleLR, Dice + BCE,
horizontal flips, every training image used for training, the last epoch's weights. The val set
is scored as `inference.py --gt` scores it: per-image Dice and IoU at each image's original size.

    python bench/plain_unet.py --train ../shared/data/weizmann_horse/images/train \
        --val ../shared/data/weizmann_horse/images/val --size 192 --epochs 26 \
        --out bench/results/plain_unet_horse.json

Masks are found beside the images' folder: `images/<split>` pairs with `masks/<split>`.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import segmentation_models_pytorch as smp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from utils import dice_iou, list_images, normalize, read_image, read_mask  # noqa: E402


def load(folder: Path, size: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Images resized to size x size (N, 3, S, S) float32, masks (N, 1, S, S), and the original masks."""
    mask_dir = Path(str(folder).replace("/images", "/masks", 1))
    images, masks, originals = [], [], []
    for path in list_images(folder):
        image = read_image(path)
        mask = read_mask(next(mask_dir.glob(path.stem + ".*")))
        images.append(normalize(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)))
        masks.append(cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)[None].astype(np.float32))
        originals.append(mask)
    return np.stack(images), np.stack(masks), originals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--val", type=Path, required=True)
    parser.add_argument("--arch", default="Unet")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--epochs", type=int, default=26)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=Path("bench/results/plain_unet.json"))
    args = parser.parse_args()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    x_train, y_train, _ = load(args.train, args.size)
    x_val, _, val_masks = load(args.val, args.size)
    model = smp.create_model(args.arch, encoder_name=args.encoder, encoder_weights=None, classes=1)
    dice = smp.losses.DiceLoss("binary")
    bce = torch.nn.BCEWithLogitsLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = (len(x_train) + args.batch_size - 1) // args.batch_size
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.epochs * steps)

    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order, total = np.random.permutation(len(x_train)), 0.0
        for i in range(0, len(order), args.batch_size):
            batch = order[i: i + args.batch_size]
            x, y = torch.from_numpy(x_train[batch]), torch.from_numpy(y_train[batch])
            flip = torch.rand(len(batch)) < 0.5
            x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
            logits = model(x)
            loss = 0.5 * dice(logits, y) + 0.5 * bce(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(batch)
        print(f"epoch {epoch + 1}/{args.epochs} loss {total / len(x_train):.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    train_s = time.perf_counter() - start

    model.eval()
    scores = []
    with torch.inference_mode():
        for image, truth in zip(x_val, val_masks):
            prob = torch.sigmoid(model(torch.from_numpy(image[None])))[0, 0].numpy()
            prob = cv2.resize(prob, (truth.shape[1], truth.shape[0]), interpolation=cv2.INTER_LINEAR)
            scores.append(dice_iou(prob > 0.5, truth))
    result = {
        "recipe": vars(args) | {"train": str(args.train), "val": str(args.val), "out": str(args.out)},
        "train_images": len(x_train), "val_images": len(x_val), "train_seconds": round(train_s, 1),
        "val_dice": float(np.mean([s[0] for s in scores])), "val_iou": float(np.mean([s[1] for s in scores])),
        "scored_at": "original resolution, per-image mean, threshold 0.5",
        "machine": {"cpu_threads": torch.get_num_threads(), "python": platform.python_version()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"val dice {result['val_dice']:.4f} iou {result['val_iou']:.4f} after {train_s / 60:.1f} min of training")


if __name__ == "__main__":
    main()
