"""The baseline an smp user writes by hand: one split, no CV, threshold 0.5, square resize.

`--augment full --threshold heldout` gives it the pipeline's augmentation (AUGMENT=full: flips, affine, colour) and
its threshold rule (the threshold with the best Dice on a tenth of the training images held back, as the pipeline's
held-back fold chooses it): what is left of the pipeline's lead over that is its own engineering.

It is the yardstick for the README's real-data recipe ("better than a plain single-split Unet
trained with the same budget"): smp Unet + encoder from scratch, AdamW + OneCycleLR, Dice + BCE,
horizontal flips, every training image used for training, the last epoch's weights. The val set
is scored as `inference.py --gt` scores it: per-image Dice and IoU at each image's original size.

    python bench/plain_unet.py --train ../shared/data/weizmann_horse/images/train \
        --val ../shared/data/weizmann_horse/images/val --size 192 --epochs 26 \
        --out bench/results/plain_unet_horse.json

--time-budget 20m plans the epochs as train.py does (training/budget.py: a few timed steps whose weights are
put back, then OneCycleLR over the planned steps, time kept for the val scoring; --epochs caps them; after a
tenth of them (at least 2) they are corrected to what they took, and again at half the plan on the epochs since,
as train.py does, the schedule rebuilt over them) and stops
at an epoch boundary when the next epoch would not fit, so both sides of an equal-budget comparison stop by
the clock. The JSON records the epochs reached and the wall time from the start of the script.

Masks are found beside the images' folder: `images/<split>` pairs with `masks/<split>`.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import sys
import time
from pathlib import Path

STARTED = time.monotonic()  # --time-budget counts from here, the imports below included, as in train.py

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import segmentation_models_pytorch as smp  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from training.budget import (  # noqa: E402
    PROBE_STEPS, Budget, correction, epoch_estimate, format_duration, parse_duration, plan_epochs, replan,
    later_replan_due, replan_epoch, replay, score_estimate,
)
from utils import dice_iou, dice_iou_from_counts, list_images, normalize, read_image, read_mask  # noqa: E402


def load(folder: Path, size: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Images resized to size x size (N, S, S, 3) uint8, masks (N, 1, S, S) float32, and the original masks."""
    mask_dir = Path(str(folder).replace("/images", "/masks", 1))
    images, masks, originals = [], [], []
    for path in list_images(folder):
        image = read_image(path)
        mask = read_mask(next(mask_dir.glob(path.stem + ".*")))
        images.append(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA))
        masks.append(cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)[None].astype(np.float32))
        originals.append(mask)
    return np.stack(images), np.stack(masks), originals


def as_input(images: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, 3, S, S) float32, ImageNet-normalised."""
    return np.stack([normalize(image) for image in images])


def augmented(images: np.ndarray, masks: np.ndarray, transform) -> tuple[np.ndarray, np.ndarray]:
    """A batch through the pipeline's albumentations transform, sample by sample."""
    out = [transform(image=image, mask=mask[0]) for image, mask in zip(images, masks)]
    return np.stack([o["image"] for o in out]), np.stack([o["mask"][None] for o in out]).astype(np.float32)


def train_step(model, optimizer, loss_fn, x: np.ndarray, y: np.ndarray, transform=None) -> float:
    """One step on uint8 images (N, S, S, 3): horizontal flips (as a user writes it), or `transform` (AUGMENT=full)."""
    if transform is not None:
        x, y = augmented(x, y, transform)
    x, y = torch.from_numpy(as_input(x)), torch.from_numpy(np.ascontiguousarray(y))
    if transform is None:
        flip = torch.rand(len(x)) < 0.5
        x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
    loss = loss_fn(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def build(arch: str, encoder: str, lr: float):
    """The model from scratch, 0.5 Dice + 0.5 BCE, AdamW: (model, loss_fn, optimizer)."""
    model = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=1)
    dice = smp.losses.DiceLoss("binary")
    bce = torch.nn.BCEWithLogitsLoss()
    loss_fn = lambda logits, y: 0.5 * dice(logits, y) + 0.5 * bce(logits, y)  # noqa: E731
    return model, loss_fn, torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)


def time_steps(model, optimizer, loss_fn, x_train, y_train, x_val, batch_size: int, transform=None
               ) -> tuple[float, float]:
    """(seconds per training step, seconds per val image) from PROBE_STEPS real steps after a warm-up one;
    the weights, the optimizer and torch's random state are then put back."""
    saved = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()), torch.get_rng_state()
    pick, marks = np.random.default_rng(0), []
    for _ in range(PROBE_STEPS + 1):
        batch = pick.choice(len(x_train), min(batch_size, len(x_train)), replace=False)
        train_step(model, optimizer, loss_fn, x_train[batch], y_train[batch], transform)
        marks.append(time.perf_counter())
    model.eval()
    with torch.inference_mode():
        start = time.perf_counter()
        model(torch.from_numpy(as_input(x_val[:1])))
        image_s = time.perf_counter() - start
    model.load_state_dict(saved[0])
    optimizer.load_state_dict(saved[1])
    torch.set_rng_state(saved[2])
    return (marks[-1] - marks[0]) / PROBE_STEPS, image_s


@torch.inference_mode()
def predict(model, images: np.ndarray, truths: list[np.ndarray]) -> list[np.ndarray]:
    """Each image's foreground probability at its truth's (original) size."""
    probs = []
    for image, truth in zip(images, truths):
        prob = torch.sigmoid(model(torch.from_numpy(as_input(image[None]))))[0, 0].numpy()
        probs.append(cv2.resize(prob, (truth.shape[1], truth.shape[0]), interpolation=cv2.INTER_LINEAR))
    return probs


def best_threshold(model, images: np.ndarray, truths: list[np.ndarray]) -> float:
    """The threshold of 0.05, 0.10, ... 0.95 with the best mean per-image Dice on held-back images."""
    probs = predict(model, images, truths)
    grid = np.round(np.arange(0.05, 0.96, 0.05), 2)
    dice = [np.mean([dice_iou(p > t, m > 0)[0] for p, m in zip(probs, truths)]) for t in grid]
    return float(grid[int(np.argmax(dice))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--val", type=Path, required=True)
    parser.add_argument("--arch", default="Unet")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--epochs", type=int, default=26, help="epochs; with --time-budget, the most it may plan")
    parser.add_argument("--time-budget", type=parse_duration, default=0,
                        help="wall-clock budget from the script's start (90s, 20m, 1h30m; 0 = off)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--augment", choices=("flip", "full"), default="flip",
                        help="flip: horizontal flips (as a user writes it); full: the pipeline's AUGMENT=full")
    parser.add_argument("--threshold", default="0.5", help="0.5 (as a user writes it), or heldout: the threshold "
                        "with the best mean Dice on a tenth of the training images, held back from training")
    parser.add_argument("--out", type=Path, default=Path("bench/results/plain_unet.json"))
    args = parser.parse_args()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    x_train, y_train, train_masks = load(args.train, args.size)
    x_val, _, val_masks = load(args.val, args.size)
    held = []
    if args.threshold == "heldout":  # every tenth image of a seeded order: the pipeline's held-back fold
        order = np.random.default_rng(args.seed).permutation(len(x_train))
        held, kept = sorted(order[::10]), sorted(set(order) - set(order[::10]))
        x_held, held_masks = x_train[held], [train_masks[i] for i in held]
        x_train, y_train = x_train[kept], y_train[kept]
    transform = None
    if args.augment == "full":
        import albumentations as A

        from dataset import augmentations

        transform = A.Compose(augmentations("full"), seed=args.seed)
    model, loss_fn, optimizer = build(args.arch, args.encoder, args.lr)
    steps = (len(x_train) + args.batch_size - 1) // args.batch_size
    epochs, budget, train_end = args.epochs, None, 0.0
    if args.time_budget:
        step_s, image_s = time_steps(model, optimizer, loss_fn, x_train, y_train, x_val, args.batch_size, transform)
        budget = Budget(args.time_budget, STARTED)
        budget.plan = plan_epochs(args.time_budget, budget.elapsed(), step_s, steps, 0.0, 0.0, 1,
                                  score_estimate(len(x_val) * image_s, len(x_val), len(x_val)), 0.0, args.epochs)
        epochs = budget.plan.epochs
        if not budget.plan.fits:
            print(f"warning: {budget.plan.shortfall()}", flush=True)
        print(f"{budget.plan.headline()} ({steps} steps of {step_s:.2f} s; {format_duration(budget.elapsed())} "
              f"spent, {format_duration(budget.plan.score_s)} kept for the val scoring)", flush=True)
        train_end = budget.fold_end(1)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=epochs * steps)

    start, times, stopped, epoch = time.perf_counter(), [], "", 0
    made, since = 0, 0  # corrections made; times[since:]: the epochs since the last one
    while epoch < epochs:
        if budget and epoch and not budget.next_epoch_fits(train_end, epoch_estimate(budget.plan.epoch_s, times)):
            stopped = f"stopped by the clock after {epoch} of {epochs} epochs: the next one would not fit"
            print(stopped, flush=True)
            break
        model.train()
        order, total, epoch_start = np.random.permutation(len(x_train)), 0.0, time.perf_counter()
        for i in range(0, len(order), args.batch_size):
            batch = order[i: i + args.batch_size]
            total += train_step(model, optimizer, loss_fn, x_train[batch], y_train[batch], transform) * len(batch)
            scheduler.step()
        times.append(time.perf_counter() - epoch_start)
        print(f"epoch {epoch + 1}/{epochs} loss {total / len(x_train):.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
        epoch += 1
        first = budget and not made and epoch == replan_epoch(epochs)  # as train.py: at a tenth, half, three quarters
        later = budget and later_replan_due(epochs, epoch, len(times) - since, made)  # of the plan
        if first or later:
            epoch_s, margin = correction(budget.plan.epoch_s, times[since:] if later else times, bool(later))
            planned, made, since = epochs, made + 1, epoch
            epochs = replan(epochs, epoch, epoch_s, train_end - budget.clock(), args.epochs, margin)
            if epochs != planned:
                print(f"epochs take {format_duration(epoch_s)}, planned {format_duration(budget.plan.epoch_s)}: "
                      f"{epochs} epochs instead of {planned}", flush=True)
                scheduler = replay(torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=epochs * steps),
                                   epoch * steps)
    train_s = time.perf_counter() - start

    model.eval()
    threshold = 0.5 if not held else best_threshold(model, x_held, held_masks)
    scores, pooled = [], np.zeros(3, np.int64)  # pooled: [intersection, predicted, true] over every val pixel
    for prob, truth in zip(predict(model, x_val, val_masks), val_masks):
        pred, true = prob > threshold, truth > 0
        scores.append(dice_iou(pred, true))
        pooled += (np.logical_and(pred, true).sum(), pred.sum(), true.sum())
    result = {
        "recipe": vars(args) | {"train": str(args.train), "val": str(args.val), "out": str(args.out)},
        "train_images": len(x_train), "val_images": len(x_val), "train_seconds": round(train_s, 1),
        "val_dice": float(np.mean([s[0] for s in scores])), "val_iou": float(np.mean([s[1] for s in scores])),
        "val_pixel_dice": float(dice_iou_from_counts(pooled)[0]),
        "scored_at": f"original resolution, per-image mean (val_pixel_dice: pooled over all pixels), threshold "
                     f"{threshold:g}" + (f" (best on {len(held)} held-back training images)" if held else ""),
        "threshold": threshold, "held_back_images": len(held),
        "epochs_planned": epochs, "epochs_reached": len(times), "stopped_early": stopped,
        "time_budget_seconds": args.time_budget, "wall_seconds": round(time.monotonic() - STARTED, 1),
        "machine": {"cpu_threads": torch.get_num_threads(), "python": platform.python_version()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"val dice {result['val_dice']:.4f} iou {result['val_iou']:.4f} after {len(times)} epochs "
          f"({train_s / 60:.1f} min of training, {result['wall_seconds']:.0f} s wall time"
          f"{f' of a {args.time_budget} s budget' if args.time_budget else ''})")


if __name__ == "__main__":
    main()
