"""The baseline: the folder-inference script a segmentation-models-pytorch user writes, in plain PyTorch eager.

    python bench/eager_baseline.py --weights model.pt --source images/ --output preds/ [--threshold 0.5 --close 5]

One image at a time: read (OpenCV, as 3-channel colour: a greyscale PNG becomes RGB with three equal
channels, as the engine's utils.read_image does), resize the long side to --size (skipped when it
already is), normalise, pad to a multiple of 32, model under torch.inference_mode, sigmoid, crop,
resize back (skipped likewise), threshold, morphological
closing, red overlay, write masks/ and overlays/ PNGs and a summary.csv row. --weights is a
torch.save'd {"model_args": {arch, encoder, classes}, "state_dict": ...} (bench/end_to_end.py
writes one beside the ONNX export of the same weights). This is the reference bench/end_to_end.py
compares inference.py against; it deliberately uses nothing from this repository.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import cv2
import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def load_model(path: Path) -> torch.nn.Module:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    args = ckpt["model_args"]
    model = smp.create_model(args["arch"], encoder_name=args["encoder"], encoder_weights=None, classes=args["classes"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def predict(model: torch.nn.Module, rgb: np.ndarray, size: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> foreground probability (H, W) float32 at the image's size."""
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    nh, nw = round(h * scale), round(w * scale)
    if (nh, nw) == (h, w):  # already the model's size (ISBI's 512x512 slices at 512): nothing to resize
        resized = rgb
    else:
        resized = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    x = torch.from_numpy(resized).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, nh, nw)
    x = (x - MEAN) / STD
    x = F.pad(x, (0, (-nw) % 32, 0, (-nh) % 32))
    with torch.inference_mode():
        probs = torch.sigmoid(model(x))[:, :, :nh, :nw]
        if (nh, nw) != (h, w):
            probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
    return probs[0, 0].numpy()


def run_folder(model: torch.nn.Module, paths: list[Path], output: Path, size: int = 512, threshold: float = 0.5,
               close: int = 5, alpha: float = 0.5) -> None:
    """Segment `paths` one by one: OUTPUT/masks, OUTPUT/overlays, OUTPUT/summary.csv."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (close, close)) if close else None
    for name in ("masks", "overlays"):
        (output / name).mkdir(parents=True, exist_ok=True)
    with open(output / "summary.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "status", "area_px", "ms"])
        for path in paths:
            t0 = time.perf_counter()
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)  # greyscale files come back as 3 equal channels
            if bgr is None:
                writer.writerow([path.name, "error", "", ""])
                continue
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            mask = (predict(model, rgb, size) > threshold).astype(np.uint8)
            if kernel is not None:
                mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
            overlay = bgr.copy()
            red = np.zeros_like(bgr)
            red[:] = (0, 0, 255)
            blended = cv2.addWeighted(bgr, 1 - alpha, red, alpha, 0)
            overlay[mask > 0] = blended[mask > 0]
            out_name = path.with_suffix(".png").name
            cv2.imwrite(str(output / "masks" / out_name), mask * 255)
            cv2.imwrite(str(output / "overlays" / out_name), overlay)
            writer.writerow([path.name, "ok", int(mask.sum()), round((time.perf_counter() - t0) * 1e3, 1)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", required=True, type=Path)
    parser.add_argument("--source", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--size", type=int, default=512, help="long side the model sees")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--close", type=int, default=5, help="closing kernel (px), 0 = off")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model = load_model(args.weights)
    paths = sorted(p for p in args.source.rglob("*") if p.suffix.lower() in EXTENSIONS)
    start = time.perf_counter()
    run_folder(model, paths, args.output, args.size, args.threshold, args.close, args.alpha)
    print(f"{len(paths)} images in {time.perf_counter() - start:.1f} s")

if __name__ == "__main__":
    main()
