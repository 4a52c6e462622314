"""Model latency per backend: onnxruntime and OpenVINO, fp32 and int8, against torch eager, beside the int8 limit.

    python bench/backends.py                                       # UnetPlusPlus/resnet34 @512, batch 1 (+ batch 2)
    python bench/backends.py --model Unet/resnet34 --repeats 9 --out bench/results/backends_unet.json
    python bench/backends.py --size 64 --model Unet/resnet18 --repeats 1 --batch 2 --out smoke.json   # smoke

Needs the OpenVINO extra (pip install -r requirements-openvino.txt) beside the training side. One random-init
model (BatchNorm calibrated) exported with export.py's code, and its int8 QDQ copy as export.py --int8 writes it
(exporting.quantize.quantize_int8, calibrated on --calib-images horse val photos, smooth random images where they
are missing). Each contender runs the same (1, 3, --size, --size) random input, --threads threads, alternating
round by round after a warm-up (--repeats rounds, medians):

- torch:                       eager, torch.inference_mode (fp32)
- onnxruntime / int8:          the session inference.py opens (runtime.session.create_session), fp32 / int8 file
- openvino / openvino_int8:    the session inference.py --backend openvino opens (runtime.openvino_session:
                               LATENCY hint, float32 precision hint, the dynamic-shape compile it starts with)
- openvino_int8_static:        the same, compiled for this one input shape (what a shape seen STATIC_AFTER times gets)
- openvino_bf16 (--bf16):      OpenVINO's own default precision on a CPU with bfloat16 (not what the engine runs)
- with --batch N (default 2):  per image, N images per call: onnxruntime int8, OpenVINO int8 on one LATENCY compile,
                               and OpenVINO int8 as the engine runs a batch (one image per THROUGHPUT stream; with
                               --threads 1 the engine keeps to the LATENCY compile, so the last two rows coincide)

Each row: median ms, the model's GOP/s (FLOPs from torch.utils.flop_counter, 2 per multiply-add) and its share
of a limit: fp32 rows of this CPU's float32 matmul rate (2048^3 torch.mm, measured in the run), int8 rows of its
physical int8 limit (common.int8_limit: cores x GHz x int8 ops per core per cycle, from /proc/cpuinfo and lscpu;
--ghz and --int8-ops-per-cycle override). max_abs_diff: each OpenVINO output against onnxruntime's of the same file.
The JSON also records what --backend auto picks for each file here and why (runtime.backend.resolve_backend).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import (HORSE, add_run_args, count_flops, export_model, int8_limit, machine_info, ort_session,
                    print_table, quantize_copy, random_model, sgemm_gflops, side_by_side, summary, write_result)
from latency import calibration_images

INT8_ROWS = ("int8", "openvino_int8", "openvino_int8_static")


def build(arch: str, encoder: str, size: int, tmp: Path, calibration: list[Path]):
    """(torch module as exported, fp32 path, int8 path) of one random-init model."""
    from exporting.ensembles import ExportEnsemble

    model = random_model(arch, encoder)
    module = ExportEnsemble([model], 1).eval()  # the exported graph: model + sigmoid
    fp32 = export_model(model, arch, encoder, size, tmp / f"{arch}_{encoder}.onnx")
    return module, fp32, quantize_copy(fp32, fp32.with_suffix(".int8.onnx"), calibration)


def timed_compile(session, mode: str, shape) -> tuple:
    """(compiled model, seconds its compile took) from an OpenVinoSession."""
    start = time.perf_counter()
    compiled = session.compile(mode, shape)
    return compiled, round(time.perf_counter() - start, 3)


def contenders(module, fp32: Path, int8: Path, x: np.ndarray, threads: int, batch: int, bf16: bool):
    """({name: callable returning the output}, {name: what it is compared with}, {compile: seconds})."""
    from runtime.openvino_session import OpenVinoSession

    sessions = {"onnxruntime": ort_session(fp32, threads), "int8": ort_session(int8, threads)}
    start = time.perf_counter()
    ov = {"openvino_int8": OpenVinoSession(int8, threads)}  # reads the file and compiles it for dynamic shapes
    seconds = {"openvino_int8_load": round(time.perf_counter() - start, 3)}
    ov["openvino"] = OpenVinoSession(fp32, threads)
    static, seconds["openvino_int8_static"] = timed_compile(ov["openvino_int8"], "LATENCY", x.shape)
    tx = torch.from_numpy(x)

    def run_torch():
        with torch.inference_mode():
            return module(tx).numpy()

    fns = {"torch": run_torch, **{name: (lambda s=s: s.run(None, {"image": x})[0]) for name, s in sessions.items()},
           **{name: (lambda s=s: s.run(None, {"image": x})[0]) for name, s in ov.items()},
           "openvino_int8_static": lambda: static.infer({"image": x})[0]}
    reference = {"openvino": "onnxruntime", "openvino_int8": "int8", "openvino_int8_static": "int8",
                 "torch": "onnxruntime"}
    if bf16:
        import openvino

        compiled = openvino.Core().compile_model(str(fp32), "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                                    "INFERENCE_NUM_THREADS": threads})
        request = compiled.create_infer_request()
        fns["openvino_bf16"] = lambda: request.infer({0: x})[0]
        reference["openvino_bf16"] = "onnxruntime"
        seconds["openvino_bf16_precision"] = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    if batch > 1:
        xb = np.repeat(x, batch, axis=0)
        latency_b = ov["openvino_int8"].compile("LATENCY", None)
        _, seconds["openvino_int8_throughput"] = timed_compile(ov["openvino_int8"], "THROUGHPUT", None)
        fns.update({f"int8_x{batch}": lambda: sessions["int8"].run(None, {"image": xb})[0],
                    f"openvino_int8_x{batch}_latency": lambda: latency_b.infer({"image": xb})[0],
                    f"openvino_int8_x{batch}_streams": lambda: ov["openvino_int8"].run(None, {"image": xb})[0]})
        reference.update({f"openvino_int8_x{batch}_latency": f"int8_x{batch}",
                          f"openvino_int8_x{batch}_streams": f"int8_x{batch}"})
    return fns, reference, seconds


def rows_of(times: dict, outputs: dict, reference: dict, gflop: float, batch: int, gemm: float, limit: dict) -> list:
    rows = []
    for name, series in times.items():
        images = batch if "_x" in name else 1
        row = {"name": name, "images_per_call": images, **summary(series)}
        row["ms_per_image"] = row["median_ms"] / images
        row["gops"] = gflop / (row["ms_per_image"] / 1e3)
        int8 = name in INT8_ROWS or name.startswith(("int8_x", "openvino_int8_x"))
        row["limit"], ceiling = ("int8", limit["int8_gops"]) if int8 else ("fp32 matmul", gemm)
        row["of_limit"] = row["gops"] / ceiling if ceiling else None
        if name in reference:
            row["vs"] = reference[name]
            row["max_abs_diff"] = float(np.abs(outputs[name] - outputs[reference[name]]).max())
        rows.append(row)
    return rows


def auto_choices(fp32: Path, int8: Path) -> dict:
    from runtime.backend import resolve_backend
    from runtime.session import CPU

    return {precision: list(resolve_backend("auto", path, precision, [CPU]))
            for precision, path in (("fp32", fp32), ("int8", int8))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="UnetPlusPlus/resnet34", help="ARCH/ENCODER (default UnetPlusPlus/resnet34)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2, help="also time N images per call (streams), 0 or 1: skip")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="also time OpenVINO's default precision (bfloat16 where the CPU has it)")
    parser.add_argument("--calib", type=Path, default=HORSE / "images" / "val", help="int8 calibration folder")
    parser.add_argument("--calib-images", type=int, default=4)
    parser.add_argument("--ghz", type=float, default=None, help="clock of the int8 limit (default: lscpu / cpuinfo)")
    parser.add_argument("--int8-ops-per-cycle", type=float, default=None,
                        help="int8 ops per core per cycle of the limit (default: by the CPU's flags)")
    add_run_args(parser, repeats=7)
    args = parser.parse_args()

    start_info = machine_info()
    torch.set_num_threads(args.threads)
    gemm = sgemm_gflops(args.threads)
    limit = int8_limit(ops_per_cycle=args.int8_ops_per_cycle, ghz=args.ghz)
    arch, encoder = args.model.split("/")
    with tempfile.TemporaryDirectory() as tmp:
        images, calibration = calibration_images(args.calib, args.calib_images, Path(tmp))
        module, fp32, int8 = build(arch, encoder, args.size, Path(tmp), images)
        x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size), dtype=np.float32)
        fns, reference, compile_s = contenders(module, fp32, int8, x, args.threads, args.batch, args.bf16)
        outputs = {name: np.asarray(fn()) for name, fn in fns.items()}
        times = side_by_side(fns, repeats=args.repeats)
        gflop = count_flops(module, torch.from_numpy(x)) / 1e9
        auto = auto_choices(fp32, int8)
    rows = rows_of(times, outputs, reference, gflop, args.batch, gemm, limit)
    report(args, rows, gflop, gemm, limit, auto, compile_s, calibration, start_info)


def report(args, rows, gflop, gemm, limit, auto, compile_s, calibration, start_info) -> None:
    by_name = {row["name"]: row for row in rows}
    torch_ms = by_name["torch"]["median_ms"]
    print_table(["contender", "images/call", "ms per image", "vs torch", "GOP/s", "of limit", "max |Δ| vs"],
                [[r["name"], r["images_per_call"], f"{r['ms_per_image']:.1f}", f"{torch_ms / r['ms_per_image']:.2f}x",
                  f"{r['gops']:.0f}", f"{r['of_limit']:.0%} of {r['limit']}" if r["of_limit"] else "?",
                  f"{r['max_abs_diff']:.2g} ({r['vs']})" if "vs" in r else ""] for r in rows])
    ms = {name: row["median_ms"] for name, row in by_name.items()}
    ratios = {"openvino_int8_vs_onnxruntime_int8": ms["int8"] / ms["openvino_int8"],
              "openvino_fp32_vs_onnxruntime_fp32": ms["onnxruntime"] / ms["openvino"],
              "openvino_int8_static_vs_dynamic": ms["openvino_int8"] / ms["openvino_int8_static"]}
    streams, latency = f"openvino_int8_x{args.batch}_streams", f"openvino_int8_x{args.batch}_latency"
    if streams in by_name:
        ratios["openvino_int8_streams_vs_latency_batch"] = ms[latency] / ms[streams]
    print(f"\n{gflop:.1f} GFLOP per image; float32 matmul {gemm:.1f} GFLOP/s; int8 limit {limit['int8_gops']:.0f} "
          f"GOP/s = {limit['cores']} cores x {limit['ghz']} GHz ({limit['ghz_source']}) x "
          f"{limit['int8_ops_per_cycle']} ({limit['assumes']})")
    print("; ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    print(f"compile seconds: {compile_s}; --backend auto here: {auto}")
    write_result("backends", {"command": "python bench/backends.py", "args": {k: str(v) for k, v in vars(args).items()},
                              "model": args.model, "size": args.size, "threads": args.threads, "gflop": gflop,
                              "sgemm_gflops": gemm, "int8_limit": limit, "int8_calibration": calibration,
                              "rows": rows, "ratios": ratios, "compile_s": compile_s, "auto": auto},
                 args.out, start_info)


if __name__ == "__main__":
    main()
