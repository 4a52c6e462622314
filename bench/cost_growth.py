"""Cost growth: folds x TTA views (expect linear), input side (expect ~quadratic), batched vs one-by-one TTA.

    python bench/cost_growth.py                                  # Unet/resnet34, onnxruntime CPU
    python bench/cost_growth.py --arch UnetPlusPlus --encoder resnet34 --repeats 7
    python bench/cost_growth.py --encoder resnet18 --base 64 --sizes 64 128 --repeats 1 --out smoke.json  # smoke

Two graphs are exported with export.py's code: one model, and a 5-fold ensemble of five different
random-init models (identical folds would be merged by onnxruntime's common-subexpression
elimination). TTA views run as the engine runs them: V flipped copies stacked into one batch
(V = 1 none, 2 hflip, 4 flips). Rows time one session.run (medians after a warm-up):

- folds x TTA at --base px: time relative to 1 fold / no TTA, against the expected folds x V
- side 256/512/1024, 1 fold: log-log slope of time vs side (2.0 = quadratic)
- TTA flips: one batched run of 4 copies vs 4 runs of one copy
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from common import (add_run_args, export_model, machine_info, median, ort_session, print_table, random_model,
                    side_by_side, summary, write_result)

VIEWS = {"none": 1, "hflip": 2, "flips": 4}


def flipped(x: np.ndarray, views: int) -> np.ndarray:
    """(1, 3, H, W) -> (V, 3, H, W): the engine's TTA views (none, hflip, vflip, both) stacked."""
    copies = [x, x[..., ::-1], x[..., ::-1, :], x[..., ::-1, ::-1]][:views]
    return np.ascontiguousarray(np.concatenate(copies))


def timed(session, batch: np.ndarray, repeats: int) -> list[float]:
    return side_by_side({"run": lambda: session.run(None, {"image": batch})}, repeats=repeats)["run"]


def folds_tta(sessions: dict, x: np.ndarray, repeats: int) -> list[dict]:
    rows = []
    for folds, session in sessions.items():
        for tta, views in VIEWS.items():
            rows.append({"folds": folds, "tta": tta, "units": folds * views,
                         **summary(timed(session, flipped(x, views), repeats))})
            print(f"folds {folds} tta {tta}: {rows[-1]['median_ms']:.0f} ms", flush=True)
    return rows


def sides(session, sizes: list[int], repeats: int) -> list[dict]:
    rows = []
    for side in sizes:
        x = np.random.default_rng(side).standard_normal((1, 3, side, side), dtype=np.float32)
        rows.append({"side": side, **summary(timed(session, x, repeats))})
        print(f"side {side}: {rows[-1]['median_ms']:.0f} ms", flush=True)
    return rows


def batched_vs_one_by_one(session, sizes: list[int], repeats: int) -> list[dict]:
    rows = []
    for side in sizes:
        x = np.random.default_rng(side).standard_normal((1, 3, side, side), dtype=np.float32)
        views = flipped(x, 4)
        singles = [np.ascontiguousarray(v[None]) for v in views]
        times = side_by_side({"batched": lambda: session.run(None, {"image": views}),
                              "one_by_one": lambda: [session.run(None, {"image": v}) for v in singles]},
                             repeats=repeats)
        rows.append({"side": side, "batched": summary(times["batched"]), "one_by_one": summary(times["one_by_one"]),
                     "gain": median(times["one_by_one"]) / median(times["batched"])})
    return rows


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    lx, ly = np.log(xs), np.log(ys)
    return float(np.polyfit(lx, ly, 1)[0])


def report(grid: list[dict], side_rows: list[dict], tta_rows: list[dict]) -> dict:
    base = grid[0]["median_ms"]
    print_table(["folds", "TTA", "expected x (folds x views)", "median ms", "measured x"],
                [[r["folds"], r["tta"], r["units"], f"{r['median_ms']:.0f}", f"{r['median_ms'] / base:.2f}"]
                 for r in grid])
    units, ms = [r["units"] for r in grid], [r["median_ms"] for r in grid]
    linear = slope(units, ms)
    print(f"log-log slope of time vs folds x views: {linear:.2f} (1.00 = linear)\n")
    print_table(["side", "median ms", "x vs smallest", "x expected (side ratio squared)"],
                [[r["side"], f"{r['median_ms']:.0f}", f"{r['median_ms'] / side_rows[0]['median_ms']:.2f}",
                  f"{(r['side'] / side_rows[0]['side']) ** 2:.0f}"] for r in side_rows])
    quadratic = slope([r["side"] for r in side_rows], [r["median_ms"] for r in side_rows]) if len(side_rows) > 1 \
        else math.nan
    print(f"log-log slope of time vs side: {quadratic:.2f} (2.00 = quadratic)\n")
    print_table(["side", "4 flips batched ms", "4 flips one by one ms", "batched gain"],
                [[r["side"], f"{r['batched']['median_ms']:.0f}", f"{r['one_by_one']['median_ms']:.0f}",
                  f"{r['gain']:.2f}x"] for r in tta_rows])
    return {"folds_tta_slope": linear, "side_slope": quadratic}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="Unet")
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--base", type=int, default=256, help="side of the folds x TTA grid")
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512, 1024])
    parser.add_argument("--tta-sizes", nargs="+", type=int, default=[256, 512])
    add_run_args(parser)
    args = parser.parse_args()

    start_info = machine_info()
    torch.set_num_threads(args.threads)
    models = [random_model(args.arch, args.encoder, seed) for seed in range(args.folds)]
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {count: ort_session(export_model(models[:count], args.arch, args.encoder, args.base,
                                                    Path(tmp) / f"folds{count}.onnx"), args.threads)
                    for count in sorted({1, args.folds})}
    x = np.random.default_rng(0).standard_normal((1, 3, args.base, args.base), dtype=np.float32)
    grid = folds_tta(sessions, x, args.repeats)
    side_rows = sides(sessions[1], args.sizes, args.repeats)
    tta_rows = batched_vs_one_by_one(sessions[1], args.tta_sizes, args.repeats)
    slopes = report(grid, side_rows, tta_rows)
    write_result("cost_growth", {"command": "python bench/cost_growth.py",
                                 "args": {k: str(v) for k, v in vars(args).items()}, "model": f"{args.arch}/{args.encoder}",
                                 "folds_tta": grid, "sides": side_rows, "tta_batching": tta_rows, **slopes},
                 args.out, start_info)


if __name__ == "__main__":
    main()
