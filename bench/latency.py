"""Model latency: onnxruntime (CPU) vs torch eager on the same random-init weights, side by side.

    python bench/latency.py                                   # the default table (3 models x batch 1, 4 @512)
    python bench/latency.py --models UnetPlusPlus/resnet34 --batches 1 --repeats 9
    python bench/latency.py --size 64 --models Unet/resnet18 --batches 1 --repeats 1 --out smoke.json  # smoke

Both run the graph export.py writes (model + sigmoid): torch eager under torch.inference_mode, and
onnxruntime's CPU provider with graph optimisation ORT_ENABLE_ALL, both with --threads intra-op
threads (default: every core). Each row alternates the two for --repeats rounds after a warm-up
and reports medians. Effective GFLOP/s = the model's FLOPs (torch.utils.flop_counter) / median
time, shown as a fraction of this CPU's float32 matmul throughput measured in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from common import (add_run_args, count_flops, export_model, machine_info, ort_session, print_table, random_model,
                    sgemm_gflops, side_by_side, summary, verdict, write_result)

MODELS = ("UnetPlusPlus/resnet34", "Unet/resnet34", "Unet/mobilenet_v2")
TARGET = 1.6  # onnxruntime / torch eager on the default model, batch 1


def measure(arch: str, encoder: str, size: int, batches: list[int], threads: int, repeats: int, tmp: Path) -> list[dict]:
    import export

    model = random_model(arch, encoder)
    module = export.ExportEnsemble([model], 1).eval()  # the exported graph: model + sigmoid
    session = ort_session(export_model(model, arch, encoder, size, tmp / f"{arch}_{encoder}.onnx"), threads)
    rows = []
    for batch in batches:
        x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
        tx = torch.from_numpy(x)

        def run_torch():
            with torch.inference_mode():
                return module(tx)

        def run_ort():
            return session.run(None, {"image": x})

        diff = float(np.abs(run_ort()[0] - run_torch().numpy()).max())
        times = side_by_side({"torch": run_torch, "onnxruntime": run_ort}, repeats=repeats)
        flops = count_flops(module, tx)
        rows.append({"model": f"{arch}/{encoder}", "size": size, "batch": batch, "gflop": flops / 1e9,
                     "max_abs_diff": diff, "torch": summary(times["torch"]), "onnxruntime": summary(times["onnxruntime"])})
        print(f"{arch}/{encoder} batch {batch}: torch {rows[-1]['torch']['median_ms']:.0f} ms, "
              f"onnxruntime {rows[-1]['onnxruntime']['median_ms']:.0f} ms", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="ARCH/ENCODER pairs")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    add_run_args(parser)
    args = parser.parse_args()

    start_info = machine_info()
    torch.set_num_threads(args.threads)
    gemm = sgemm_gflops(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            arch, encoder = name.split("/")
            rows += measure(arch, encoder, args.size, args.batches, args.threads, args.repeats, Path(tmp))
    table = []
    for row in rows:
        torch_ms, ort_ms = row["torch"]["median_ms"], row["onnxruntime"]["median_ms"]
        row["speedup"] = torch_ms / ort_ms
        row["ort_gflops"] = row["gflop"] / (ort_ms / 1e3)
        row["torch_gflops"] = row["gflop"] / (torch_ms / 1e3)
        row["ort_fraction_of_sgemm"] = row["ort_gflops"] / gemm
        table.append([row["model"], row["batch"], f"{row['gflop']:.1f}", f"{torch_ms:.0f}", f"{ort_ms:.0f}",
                      f"{row['speedup']:.2f}x", f"{row['torch_gflops']:.1f} ({row['torch_gflops'] / gemm:.0%})",
                      f"{row['ort_gflops']:.1f} ({row['ort_fraction_of_sgemm']:.0%})"])
    print(f"\nsgemm (2048^3 float32, {args.threads} threads): {gemm:.1f} GFLOP/s")
    print_table(["model", "batch", "GFLOP", "torch ms", "onnxruntime ms", "ORT speed-up",
                 "torch GFLOP/s (of sgemm)", "ORT GFLOP/s (of sgemm)"], table)
    head = next((r for r in rows if r["model"] == "UnetPlusPlus/resnet34" and r["batch"] == 1), None)
    target = verdict(head["speedup"], TARGET) if head else "not measured"
    print(f"target onnxruntime >= {TARGET}x torch eager on UnetPlusPlus/resnet34 batch 1: {target}")
    write_result("latency", {"command": "python bench/latency.py", "args": {k: str(v) for k, v in vars(args).items()},
                             "threads": args.threads, "sgemm_gflops": gemm, "rows": rows, "target": target},
                 args.out, start_info)


if __name__ == "__main__":
    main()
