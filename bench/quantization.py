"""int8 vs fp32: latency measured side by side in one run, and Dice on a labelled folder.

    python export.py --work-dir runs/horse --int8          # writes runs/horse/horse.int8.onnx
    python bench/quantization.py --fp32 runs/horse/horse.onnx --int8 runs/horse/horse.int8.onnx \
        --val-dir ../shared/data/weizmann_horse --split val
    python bench/quantization.py ... --size 512          # plus the latency on a (1, 3, 512, 512) input

Latency: one preprocessed image, a warm-up, then ROUNDS rounds that alternate the two models so that
machine noise hits both alike; the table shows medians and the ratio. With --size N, the same again
on a (1, 3, N, N) input (the first image letterboxed to N x N, as the engine feeds a fixed-size model),
in its own alternating rounds: the int8 gain at a serving size other than the model's own. Dice: mean
per-image Dice under the model's recorded rule over every image of the folder, and the lowest per-image IoU
between the two files' masks (exporting/evidence.py, as export.py measures it; the model sees each image at its
own input size; Dice is taken at the image's original size; --size does not change it). Writes JSON to --out,
with the load average at the start and end.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort

from common import machine_info, side_by_side, write_result
from exporting.evidence import compare_masks, pairs_in
from runtime.metadata import decode_metadata
from utils import preprocess, read_image


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def side_by_side_ms(paths: dict[str, Path], x: np.ndarray, rounds: int, threads: int) -> dict[str, list[float]]:
    sessions = {name: session(p, threads) for name, p in paths.items()}
    fns = {name: (lambda s=s: s.run(None, {"image": x})) for name, s in sessions.items()}
    return {name: [1000 * t for t in times] for name, times in side_by_side(fns, repeats=rounds).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fp32", required=True, type=Path)
    parser.add_argument("--int8", required=True, type=Path)
    parser.add_argument("--val-dir", required=True, type=Path, help="folder with images/ and masks/")
    parser.add_argument("--split", default="", help="subfolder of images/ and masks/, e.g. val")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=None,
                        help="also time fp32 vs int8 on a (1, 3, N, N) input (e.g. 512); default: own size only")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/quantization.json")
    args = parser.parse_args()

    start_info = machine_info()
    meta, _ = decode_metadata(session(args.fp32, 1).get_modelmeta().custom_metadata_map)
    pairs = pairs_in(args.val_dir / "images" / args.split, args.val_dir / "masks" / args.split)
    x = preprocess(read_image(pairs[0][0]), meta)[0][None]  # (1, 3, H, W)
    models = {"fp32": args.fp32, "int8": args.int8}
    times = side_by_side_ms(models, x, args.rounds, args.threads)
    masks = compare_masks(args.fp32, args.int8.read_bytes(), pairs, int(meta["num_classes"]))
    dice = {"fp32": masks["dice_fp32"], "int8": masks["dice_int8"]}
    median = {name: float(np.median(t)) for name, t in times.items()}
    result = {"input_shape": list(x.shape), "rounds": args.rounds, "threads": args.threads, "images": len(pairs),
              "median_ms": median, "samples_ms": times, "speedup": median["fp32"] / median["int8"], "dice": dice,
              "dice_delta": dice["int8"] - dice["fp32"], "min_iou": masks["int8_min_iou"]}
    headers = [f"median ms ({args.rounds} rounds, input {tuple(x.shape)})"]
    if args.size:
        n = args.size
        xn = preprocess(read_image(pairs[0][0]), {**meta, "input_size": n}, fixed_hw=(n, n))[0][None]  # (1, 3, N, N)
        times_n = side_by_side_ms(models, xn, args.rounds, args.threads)
        median_n = {name: float(np.median(t)) for name, t in times_n.items()}
        result["at_size"] = {"size": n, "input_shape": list(xn.shape), "median_ms": median_n, "samples_ms": times_n,
                             "speedup": median_n["fp32"] / median_n["int8"]}
        headers.append(f"median ms (input {tuple(xn.shape)})")
    print("| model | " + " | ".join(headers) + f" | Dice ({len(pairs)} images) |")
    print("| --- | " + " | ".join("---" for _ in headers) + " | --- |")
    for name in models:
        at_size = f" {result['at_size']['median_ms'][name]:.1f} |" if args.size else ""
        print(f"| {name} | {median[name]:.1f} |{at_size} {dice[name]:.4f} |")
    print(f"speed-up int8/fp32: {result['speedup']:.2f}x   Dice change: {result['dice_delta']:+.4f}")
    if args.size:
        print(f"speed-up int8/fp32 at {args.size}x{args.size}: {result['at_size']['speedup']:.2f}x")
    write_result("quantization", result, args.out, start_info)


if __name__ == "__main__":
    main()
