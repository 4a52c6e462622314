"""Model latency: onnxruntime (CPU, fp32 and int8) vs torch eager on the same random-init weights, side by side.

    python bench/latency.py                                   # the default table (3 models x batch 1, 4 @512)
    python bench/latency.py --models UnetPlusPlus/resnet34 --batches 1 --repeats 9
    python bench/latency.py --no-int8                         # fp32 and torch only
    python bench/latency.py --size 64 --models Unet/resnet18 --batches 1 --repeats 1 --out smoke.json  # smoke

Both run the graph export.py writes (model + sigmoid): torch eager under torch.inference_mode, and
onnxruntime's CPU provider with graph optimisation ORT_ENABLE_ALL, both with --threads intra-op
threads (default: every core). Each row alternates the two for --repeats rounds after a warm-up
and reports medians. Effective GFLOP/s = the model's FLOPs (torch.utils.flop_counter) / median
time, shown as a fraction of this CPU's float32 matmul throughput measured in the same run.

int8 (on by default, --no-int8 to skip): the exported graph quantized by the repo's own code, as
export.py --int8 writes it (exporting.quantize.quantize_int8: static QDQ, per-channel int8 weights,
uint8 activations, MinMax), timed in the same alternating rounds as torch and fp32. Calibration
data: --calib-images real photos spread over --calib (default: the horse val photos), preprocessed
as the engine feeds them (long side resized to --size, ImageNet normalisation); where that folder
is missing, smooth random images (blurred noise, written to a temp folder) stand in. The weights are
random-init, so only the int8 latency means something, not its accuracy; the timed input is the same
random tensor for all three (int8 kernels cost the same whatever the values). Accuracy of int8 on a
trained model: bench/quantization.py.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from common import (HORSE, add_run_args, count_flops, export_model, machine_info, ort_session, print_table,
                    quantize_copy, random_model, sgemm_gflops, side_by_side, summary, verdict, write_result)

MODELS = ("UnetPlusPlus/resnet34", "Unet/resnet34", "Unet/mobilenet_v2")
TARGET = 1.6  # onnxruntime / torch eager on the default model, batch 1


def calibration_images(folder: Path, count: int, tmp: Path) -> tuple[list[Path], str]:
    """(count images spread over `folder`, a description); smooth random PNGs in tmp when it is missing."""
    import cv2

    from exporting.quantize import spread
    from utils import list_images

    images = list_images(folder) if folder.is_dir() else []
    if images:
        return spread(images, count), f"{min(count, len(images))} images spread over {folder}"
    rng = np.random.default_rng(0)
    out = tmp / "calibration"
    out.mkdir(exist_ok=True)
    for i in range(count):
        noise = cv2.GaussianBlur(rng.random((256, 256, 3), dtype=np.float32), (0, 0), 8)
        noise = cv2.normalize(noise, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        cv2.imwrite(str(out / f"noise{i}.png"), noise)
    return sorted(out.iterdir()), f"{count} smooth random images ({folder} not found)"


def measure(arch: str, encoder: str, size: int, batches: list[int], threads: int, repeats: int, tmp: Path,
            calibration: list[Path] | None = None) -> list[dict]:
    from exporting.ensembles import ExportEnsemble

    model = random_model(arch, encoder)
    module = ExportEnsemble([model], 1).eval()  # the exported graph: model + sigmoid
    onnx_path = export_model(model, arch, encoder, size, tmp / f"{arch}_{encoder}.onnx")
    session = ort_session(onnx_path, threads)
    int8 = None
    if calibration:
        int8 = ort_session(quantize_copy(onnx_path, onnx_path.with_suffix(".int8.onnx"), calibration), threads)
    rows = []
    for batch in batches:
        x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
        tx = torch.from_numpy(x)

        def run_torch():
            with torch.inference_mode():
                return module(tx)

        def run_ort():
            return session.run(None, {"image": x})

        fns = {"torch": run_torch, "onnxruntime": run_ort}
        if int8 is not None:
            fns["int8"] = lambda: int8.run(None, {"image": x})
        diff = float(np.abs(run_ort()[0] - run_torch().numpy()).max())
        times = side_by_side(fns, repeats=repeats)
        flops = count_flops(module, tx)
        rows.append({"model": f"{arch}/{encoder}", "size": size, "batch": batch, "gflop": flops / 1e9,
                     "max_abs_diff": diff, **{name: summary(t) for name, t in times.items()}})
        print(f"{arch}/{encoder} batch {batch}: " + ", ".join(
            f"{name} {rows[-1][name]['median_ms']:.0f} ms" for name in times), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="ARCH/ENCODER pairs")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the int8 QDQ copy (default: on)")
    parser.add_argument("--calib", type=Path, default=HORSE / "images" / "val",
                        help="int8 calibration folder (default: horse val photos; random images if missing)")
    parser.add_argument("--calib-images", type=int, default=4, help="int8 calibration images (default 4)")
    add_run_args(parser)
    args = parser.parse_args()

    start_info = machine_info()
    torch.set_num_threads(args.threads)
    gemm = sgemm_gflops(args.threads)
    rows, calibration = [], "none (--no-int8)"
    with tempfile.TemporaryDirectory() as tmp:
        images = None
        if args.int8:
            images, calibration = calibration_images(args.calib, args.calib_images, Path(tmp))
        for name in args.models:
            arch, encoder = name.split("/")
            rows += measure(arch, encoder, args.size, args.batches, args.threads, args.repeats, Path(tmp), images)
    table = []
    for row in rows:
        torch_ms, ort_ms = row["torch"]["median_ms"], row["onnxruntime"]["median_ms"]
        row["speedup"] = torch_ms / ort_ms
        row["ort_gflops"] = row["gflop"] / (ort_ms / 1e3)
        row["torch_gflops"] = row["gflop"] / (torch_ms / 1e3)
        row["ort_fraction_of_sgemm"] = row["ort_gflops"] / gemm
        line = [row["model"], row["batch"], f"{row['gflop']:.1f}", f"{torch_ms:.0f}", f"{ort_ms:.0f}"]
        if "int8" in row:
            int8_ms = row["int8"]["median_ms"]
            row["int8_vs_fp32"], row["int8_vs_torch"] = ort_ms / int8_ms, torch_ms / int8_ms
            line += [f"{int8_ms:.0f}"]
        line += [f"{row['speedup']:.2f}x"]
        if "int8" in row:
            line += [f"{row['int8_vs_fp32']:.2f}x", f"{row['int8_vs_torch']:.2f}x"]
        table.append(line + [f"{row['torch_gflops']:.1f} ({row['torch_gflops'] / gemm:.0%})",
                             f"{row['ort_gflops']:.1f} ({row['ort_fraction_of_sgemm']:.0%})"])
    print(f"\nsgemm (2048^3 float32, {args.threads} threads): {gemm:.1f} GFLOP/s")
    int8_headers = ["int8 ms"] if args.int8 else []
    int8_ratios = ["int8 vs fp32", "int8 vs torch"] if args.int8 else []
    print_table(["model", "batch", "GFLOP", "torch ms", "onnxruntime ms", *int8_headers, "ORT speed-up", *int8_ratios,
                 "torch GFLOP/s (of sgemm)", "ORT GFLOP/s (of sgemm)"], table)
    if args.int8:
        print(f"int8 calibration: {calibration}")
    head = next((r for r in rows if r["model"] == "UnetPlusPlus/resnet34" and r["batch"] == 1), None)
    target = verdict(head["speedup"], TARGET) if head else "not measured"
    print(f"target onnxruntime >= {TARGET}x torch eager on UnetPlusPlus/resnet34 batch 1: {target}")
    write_result("latency", {"command": "python bench/latency.py", "args": {k: str(v) for k, v in vars(args).items()},
                             "threads": args.threads, "sgemm_gflops": gemm, "int8_calibration": calibration,
                             "rows": rows, "target": target},
                 args.out, start_info)


if __name__ == "__main__":
    main()
