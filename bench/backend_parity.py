"""OpenVINO vs onnxruntime on a trained model: the engine's masks on both backends, fp32 and int8, and Dice.

    python bench/backend_parity.py runs/horse/horse.onnx --data horse      # the 77 horse val photos
    python bench/backend_parity.py runs/isbi/isbi.onnx --data isbi         # the 30 ISBI slices
    python bench/backend_parity.py MODEL.onnx --images DIR --masks DIR --threshold model --name mine

Needs the OpenVINO extra (pip install -r requirements-openvino.txt). MODEL is the fp32 export; int8 is the
<stem>.int8.onnx export.py wrote beside it (or --int8 FILE; none: fp32 only). For each precision the same
inference.Segmenter settings (--threshold, default the engine's own) run on --backend onnxruntime and
--backend openvino, on the same decoded images, one at a time (--batch-size > 1: OpenVINO's streams):

- parity: per image, IoU between the two backends' masks (binary: foreground; multi-class: the mean over the
  classes either mask holds, as bench/e2e_parity.py), the min and mean, the worst images;
- Dice: mean per-image Dice of each backend against the ground truth, and ΔDice = OpenVINO - onnxruntime.
Target (issue acceptance): |ΔDice| <= 0.005 for int8. Writes bench/results/backend_parity_<name>.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from common import HORSE, ISBI, machine_info, print_table, verdict, write_result
from e2e_parity import load_pairs
from inference import Segmenter
from runtime.precision import int8_sibling
from utils import mask_dice, mask_iou, setup_logging

DATA = {"horse": (HORSE / "images" / "val", HORSE / "masks" / "val"), "isbi": (ISBI / "images", ISBI / "masks")}
BACKENDS = ("onnxruntime", "openvino")
TARGET_DICE = 0.005  # |ΔDice| of int8 on OpenVINO against int8 on onnxruntime


def masks_of(path: Path, precision: str, backend: str, images: list, args) -> tuple[list[np.ndarray], list]:
    """(the engine's masks, [backend, reason]) of `path` on `backend`, `args.batch_size` images per call."""
    segmenter = Segmenter(path, device="cpu", threads=args.threads, precision=precision, backend=backend,
                          threshold=args.threshold)
    masks = []
    for start in range(0, len(images), args.batch_size):
        masks += [result.mask for result in segmenter.predict_batch(images[start:start + args.batch_size])]
    return masks, [segmenter.backend, segmenter.backend_reason]


def compare(path: Path, precision: str, pairs: list, classes: int, args) -> dict:
    images = [image for _, image, _ in pairs]
    masks, ran = {}, {}
    for backend in BACKENDS:
        masks[backend], ran[backend] = masks_of(path, precision, backend, images, args)
    ious = [mask_iou(a, b, classes) for a, b in zip(masks["openvino"], masks["onnxruntime"])]
    dice = {b: [mask_dice(m, truth, classes) for m, (_, _, truth) in zip(masks[b], pairs)] for b in BACKENDS}
    mean = {b: float(np.mean(dice[b])) for b in BACKENDS}
    worst = sorted(zip(ious, (name for name, _, _ in pairs)))[:5]
    return {"file": path.name, "ran": ran, "min_iou": min(ious), "mean_iou": float(np.mean(ious)),
            "images_below_0.99": sum(i < 0.99 for i in ious), "worst": [[n, round(i, 4)] for i, n in worst],
            "mean_dice": mean, "dice_delta": mean["openvino"] - mean["onnxruntime"]}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help="the fp32 .onnx from export.py")
    parser.add_argument("--data", choices=sorted(DATA), default=None, help="horse val or the ISBI slices")
    parser.add_argument("--images", type=Path, default=None, help="image folder (instead of --data)")
    parser.add_argument("--masks", type=Path, default=None, help="ground-truth folder, masks named as the images")
    parser.add_argument("--int8", type=Path, default=None, help="default: <stem>.int8.onnx beside MODEL, if there")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "int8"], default=["fp32", "int8"])
    parser.add_argument("--threshold", default=None, help="the engine's --threshold (default: its own default)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    parser.add_argument("--name", default=None, help="JSON name: backend_parity_<name> (default: --data or 'custom')")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.data:
        args.images, args.masks = args.images or DATA[args.data][0], args.masks or DATA[args.data][1]
    if args.images is None or args.masks is None:
        parser.error("give --data horse|isbi, or --images and --masks")
    return args


def main() -> None:
    args = parse_args()
    setup_logging()
    start_info = machine_info()
    int8 = args.int8 or int8_sibling(args.model)
    files = {"fp32": args.model, **({"int8": int8} if int8.is_file() else {})}
    classes = int(Segmenter(args.model, device="cpu", precision="fp32", backend="onnxruntime").meta["num_classes"])
    pairs = load_pairs(args.images, args.masks, classes, args.limit)
    results = {p: compare(files[p], p, pairs, classes, args) for p in args.precisions if p in files}
    print_table(["precision", "file", "min IoU", "mean IoU", "< 0.99", "Dice onnxruntime", "Dice OpenVINO", "ΔDice"],
                [[p, r["file"], f"{r['min_iou']:.4f}", f"{r['mean_iou']:.4f}", r["images_below_0.99"],
                  f"{r['mean_dice']['onnxruntime']:.4f}", f"{r['mean_dice']['openvino']:.4f}",
                  f"{r['dice_delta']:+.4f}"] for p, r in results.items()])
    target = verdict(abs(results["int8"]["dice_delta"]), TARGET_DICE, higher_is_better=False) \
        if "int8" in results else "not measured (no int8 file)"
    print(f"int8 |ΔDice| OpenVINO vs onnxruntime <= {TARGET_DICE}: {target}")
    name = args.name or args.data or "custom"
    write_result(f"backend_parity_{name}", {"command": "python bench/backend_parity.py",
                                            "args": {k: str(v) for k, v in vars(args).items()},
                                            "images": len(pairs), "results": results, "target": target},
                 args.out, start_info)


if __name__ == "__main__":
    main()
