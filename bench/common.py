"""Shared benchmark helpers: timing (warm-up + median), side-by-side rounds, machine info, JSON, tables.

Every figure in BENCHMARKS.md is a median of at least 5 runs after a warm-up; comparisons are
measured in the same run, alternating the contenders round by round so machine noise hits both.
The torch-dependent helpers (sgemm, random models, ONNX export) import torch lazily, so the
torch-free scripts (video, footprint) can use this module from an inference-only install.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils import atomic_write_json  # noqa: E402

RESULTS = ROOT / "bench" / "results"
HORSE = ROOT.parent / "shared" / "data" / "weizmann_horse"
ISBI = ROOT.parent / "shared" / "data" / "isbi_membrane"  # 30 greyscale 512x512 EM slices
LOAD_LIMIT = 1.5  # a 1-minute load average above this at the start: the table is not an idle-machine figure
OTHERS_LIMIT = 0.25  # cores used on average by other processes during the run, above which it was not alone
HOST_DRIFT_LIMIT = 0.15  # the host's matmul rate changing by more than this between start and end: it was not steady


# ----------------------------------------------------------------------------- timing


def time_once(fn: Callable[[], object]) -> float:
    """Seconds one call of fn takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def side_by_side(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each fn: `warmup` untimed rounds, then `repeats` rounds alternating the fns."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_once(fn))
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def summary(seconds: list[float]) -> dict:
    """Median, min and max (ms) and the raw samples of one timed series."""
    return {"median_ms": 1e3 * median(seconds), "min_ms": 1e3 * min(seconds), "max_ms": 1e3 * max(seconds),
            "runs": len(seconds), "samples_ms": [round(1e3 * s, 3) for s in seconds]}


# ----------------------------------------------------------------------------- machine


def cpuinfo_field(name: str) -> str | None:
    """The first `name : value` of /proc/cpuinfo, or None (no such file or field)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_flags() -> list[str]:
    """The SIMD features that decide fp32, int8 and bf16 speed (a VM's "AMD EPYC" can be a Zen 3 without AVX-512
    one day and a Zen 4 with AVX-512 VNNI and BF16 the next)."""
    present = set((cpuinfo_field("flags") or "").split())
    return [flag for flag in SIMD_FLAGS if flag in present]


# int8 operations (2 per multiply-add) one core can issue per cycle, by the best int8 instruction /proc/cpuinfo lists:
# an upper bound (the peak of the instruction, every cycle, every core). (flag, ops/cycle, what it assumes)
INT8_OPS_PER_CYCLE = (
    ("amx_int8", 2048, "AMX: one TDPBUSD tile multiply, 1024 int8 multiply-adds per cycle"),
    ("avx512_vnni", 256, "AVX-512 VNNI: 2 VPDPBUSD zmm per cycle (two 512-bit FMA ports), 64 multiply-adds each"),
    ("avx_vnni", 128, "AVX-VNNI: 2 VPDPBUSD ymm per cycle, 32 multiply-adds each"),
    ("avx2", 43, "AVX2: VPMADDUBSW + VPMADDWD + VPADDD for 32 multiply-adds, 3 instructions on 2 ports"),
)
# AMD family 0x19 with AVX-512 (Zen 4) runs a 512-bit instruction as two 256-bit halves: one VPDPBUSD zmm per cycle.
HALF_RATE_AVX512 = {("AuthenticAMD", "25")}


def cpuinfo_blocks(text: str) -> list[dict]:
    """/proc/cpuinfo's text as one {field: value} dict per logical CPU."""
    return [{k.strip(): v.strip() for k, v in (line.split(":", 1) for line in block.splitlines() if ":" in line)}
            for block in text.strip().split("\n\n") if block.strip()]


def physical_cores(cpus: list[dict]) -> int:
    """Distinct (physical id, core id) pairs: SMT siblings share one core's vector units. Else the CPU count."""
    pairs = {(cpu.get("physical id"), cpu.get("core id")) for cpu in cpus}
    return len(pairs) if cpus and (None, None) not in pairs else len(cpus) or (os.cpu_count() or 1)


def cpu_ghz(text: str) -> tuple[float, str]:
    """(GHz, where from): lscpu's 'CPU max MHz' (the boost clock) when it says, else /proc/cpuinfo's 'cpu MHz' (in a
    VM: the nominal clock; the host may run faster, which the limit then understates)."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        lscpu = ""
    for line in lscpu.splitlines():
        if line.startswith("CPU max MHz:"):
            return round(float(line.split(":", 1)[1]) / 1e3, 3), "lscpu CPU max MHz"
    mhz = [float(line.split(":", 1)[1]) for line in text.splitlines() if line.startswith("cpu MHz")]
    return (round(max(mhz) / 1e3, 3), "/proc/cpuinfo cpu MHz") if mhz else (0.0, "unknown")


def int8_limit(text: str | None = None, ops_per_cycle: float | None = None, ghz: float | None = None) -> dict:
    """This CPU's physical int8 limit: cores x GHz x int8 ops per core per cycle (INT8_OPS_PER_CYCLE), in GOP/s.

    `text`: /proc/cpuinfo's contents (default: read it); `ops_per_cycle` and `ghz` override the table and the clock."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            text = ""
    cpus = cpuinfo_blocks(text)
    first = cpus[0] if cpus else {}
    flags = set(first.get("flags", "").split())
    isa, per_cycle, assumes = next(((f, n, why) for f, n, why in INT8_OPS_PER_CYCLE if f in flags), (None, 0, "none"))
    if isa == "avx512_vnni" and (first.get("vendor_id"), first.get("cpu family")) in HALF_RATE_AVX512:
        per_cycle, assumes = 128, assumes.replace("2 VPDPBUSD zmm per cycle (two 512-bit FMA ports)",
                                                  "1 VPDPBUSD zmm per cycle (AMD Zen 4: two 256-bit halves)")
    if ops_per_cycle is not None:
        per_cycle, assumes = ops_per_cycle, "given (--int8-ops-per-cycle)"
    clock, source = (ghz, "given (--ghz)") if ghz else cpu_ghz(text)
    cores = physical_cores(cpus)
    return {"cores": cores, "ghz": clock, "ghz_source": source, "isa": isa, "int8_ops_per_cycle": per_cycle,
            "assumes": assumes, "int8_gops": round(cores * clock * per_cycle, 1),
            "formula": "cores x GHz x int8 ops per core per cycle (2 per multiply-add)"}


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def wait_quiet(limit: float, most_s: float = 120.0) -> float:
    """Until the 1-minute load average falls below `limit` (a previous run's threads have left), at most most_s;
    returns the load it saw last."""
    end = time.monotonic() + most_s
    while time.monotonic() < end and (load_average() or [0])[0] >= limit:
        time.sleep(5)
    return (load_average() or [0])[0]


def cpu_seconds() -> dict:
    """Busy CPU seconds of the whole machine since boot (/proc/stat: all but idle and iowait) and of this process
    with its reaped children (os.times), with a monotonic clock: two of these tell what other processes used."""
    own = os.times()
    info = {"clock_s": round(time.monotonic(), 3),
            "own_s": round(own.user + own.system + own.children_user + own.children_system, 3)}
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        ticks = os.sysconf("SC_CLK_TCK")
        info["machine_busy_s"] = round((sum(fields[:8]) - fields[3] - fields[4]) / ticks, 3)
    except (OSError, ValueError, IndexError):
        pass
    return info


def host_gflops(n: int = 1024, repeats: int = 5) -> float:
    """The float32 matmul rate this machine gives right now (numpy BLAS, every core), GFLOP/s: a speed probe.

    A virtual machine's host can be busier at one hour than another, and that shows neither in the load average nor
    in this machine's CPU accounting; measured at the start and end of every run, it lets tables taken at different
    times be compared and flags a run during which the host's speed changed."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a  # warm-up: threads started, pages touched
    seconds = side_by_side({"mm": lambda: a @ a}, repeats=repeats, warmup=0)["mm"]
    return round(2 * n**3 / median(seconds) / 1e9, 1)


def machine_info() -> dict:
    """Cores, CPU model, memory, load average and the host's matmul rate at the time of the call, plus package
    versions and CPU seconds."""
    info = {"cores": os.cpu_count(), "cpu": cpu_model(), "cpu_flags": cpu_flags(), "python": platform.python_version(),
            "load_average": load_average(), "time_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "cpu_seconds": cpu_seconds(), "matmul_gflops": host_gflops()}
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    versions = {}
    for name in ("onnxruntime", "openvino", "numpy", "cv2", "torch", "segmentation_models_pytorch"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    info["versions"] = versions
    return info


def machine_line(info: dict) -> str:
    load = info.get("load_average") or ["?"]
    return f"{info['cores']} cores, {info['cpu']}, load average {load[0]} (1 min) at {info['time_utc']}"


# ----------------------------------------------------------------------------- output


def others_cores(start_info: dict | None, end_info: dict) -> float | None:
    """Cores used on average by every other process between the two calls (machine busy time less this process's
    and its children's), or None where /proc/stat is not there."""
    first, last = (start_info or {}).get("cpu_seconds") or {}, end_info.get("cpu_seconds") or {}
    if "machine_busy_s" not in first or "machine_busy_s" not in last:
        return None
    wall = last["clock_s"] - first["clock_s"]
    others = (last["machine_busy_s"] - first["machine_busy_s"]) - (last["own_s"] - first["own_s"])
    return round(max(others, 0.0) / wall, 3) if wall > 0 else None


def host_drift(start_info: dict | None, end_info: dict) -> float | None:
    """How much the host's matmul rate changed between the two calls (end / start - 1), or None if not measured."""
    first, last = (start_info or {}).get("matmul_gflops"), end_info.get("matmul_gflops")
    return round(last / first - 1, 3) if first and last else None


def load_report(start_info: dict | None, end_info: dict) -> dict:
    """The 1-minute load average at the start and end of a run, the cores other processes used meanwhile and the
    host's matmul rate at both ends, printed, with a loud warning when the run was not alone: a start load above
    LOAD_LIMIT, or others above OTHERS_LIMIT cores (without /proc/stat: an end load above LOAD_LIMIT). The end
    load counts the run's own threads (a 2-thread run ends near 2.0 on its own), hence the CPU-time check. A
    second warning when the host's speed drifted by more than HOST_DRIFT_LIMIT."""
    def one_minute(info: dict | None) -> float | None:
        load = (info or {}).get("load_average") or []
        return load[0] if load else None

    start, end = one_minute(start_info), one_minute(end_info)
    others = others_cores(start_info, end_info)
    busy = (start is not None and start > LOAD_LIMIT) or (
        others > OTHERS_LIMIT if others is not None else end is not None and end > LOAD_LIMIT)
    print(f"load average (1 min): {'?' if start is None else start} at start, {'?' if end is None else end} at end "
          f"(own threads included); other processes: {'?' if others is None else others} cores on average")
    if busy:
        print(f"WARNING: not alone (load above {LOAD_LIMIT} at the start, or other processes above {OTHERS_LIMIT} "
              "cores): rerun this table on an idle machine")
    drift = host_drift(start_info, end_info)
    rates = [(info or {}).get("matmul_gflops") for info in (start_info, end_info)]
    if drift is not None:
        print(f"host matmul rate: {rates[0]} GFLOP/s at start, {rates[1]} at end ({drift:+.0%})")
        if abs(drift) > HOST_DRIFT_LIMIT:
            print(f"WARNING: the host's speed changed by {drift:+.0%} during the run (limit {HOST_DRIFT_LIMIT:.0%}): "
                  "the contenders may have run at different speeds; rerun this table")
    return {"start": start, "end": end, "others_cores": others, "limit": LOAD_LIMIT, "others_limit": OTHERS_LIMIT,
            "busy": busy, "matmul_gflops": rates, "host_drift": drift,
            "host_unsteady": drift is not None and abs(drift) > HOST_DRIFT_LIMIT}


def write_result(name: str, result: dict, out: Path | None = None, start_info: dict | None = None) -> Path:
    """bench/results/<name>.json (or `out`), atomically, with the machine before and after the run.

    Prints the load average at the start and end (load_report) and records it as "load" in the JSON.
    """
    path = Path(out) if out else RESULTS / f"{name}.json"
    end_info = machine_info()
    machine = {"start": start_info, "end": end_info} if start_info else end_info
    load = load_report(start_info, end_info)
    atomic_write_json(path, json.loads(relative_paths(json.dumps({"benchmark": name, "machine": machine, "load": load,
                                                                  **result}))))
    print(f"wrote {path}")
    return path


def add_run_args(parser, repeats: int = 5) -> None:
    """The options every timing script shares: --threads, --repeats, --out."""
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads (default: every core)")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed rounds after the warm-up")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: bench/results/<name>.json)")


def relative_paths(text: str) -> str:
    """Paths of this checkout written relative to it (results are committed; absolute paths are not)."""
    for folder, short in ((ROOT, "."), (ROOT.parent, "..")):
        text = text.replace(json.dumps(str(folder))[1:-1] + "/", short + "/")
    return text


def print_table(headers: list[str], rows: list[list]) -> None:
    """A Markdown table on stdout (pasted as is into BENCHMARKS.md)."""
    def cell(value) -> str:
        return f"{value:.3g}" if isinstance(value, float) and abs(value) < 100 else \
            f"{value:.0f}" if isinstance(value, float) else str(value)

    print("| " + " | ".join(headers) + " |")
    print("| " + " | ".join("---" for _ in headers) + " |")
    for row in rows:
        print("| " + " | ".join(cell(v) for v in row) + " |")


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    met = value >= target if higher_is_better else value <= target
    return f"{'met' if met else 'MISSED'} ({value:.2f} vs target {'>=' if higher_is_better else '<='} {target})"


def run_python(args: list[str], env: dict | None = None, cwd: Path = ROOT) -> float:
    """Seconds a `python ...` subprocess takes (fails loudly with its stderr if it fails)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


# ----------------------------------------------------------------------------- torch side (lazy imports)


def sgemm_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """This CPU's float32 matmul throughput (torch/oneDNN BLAS, `threads` threads): median over repeats."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    seconds = side_by_side({"mm": lambda: torch.mm(a, b)}, repeats=repeats, warmup=2)["mm"]
    return 2 * n**3 / median(seconds) / 1e9


def count_flops(model, x) -> float:
    """Forward FLOPs (2 x multiply-adds) counted by torch.utils.flop_counter for input x."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(x)
    return float(counter.get_total_flops())


def random_model(arch: str, encoder: str, seed: int = 0, calibrate_size: int = 128):
    """A random-init model (no download) with BatchNorm statistics calibrated as training would."""
    from export_matrix import build_random, calibrate_batchnorm

    return calibrate_batchnorm(build_random(arch, encoder, seed), calibrate_size)


def export_model(model, arch: str, encoder: str, input_size: int, onnx_path: Path, weights_path: Path | None = None,
                 tta: str = "none") -> Path:
    """Export with export.py's own code (ensemble wrapper, metadata); optionally save the state dict too.

    `model` may be a list: the fold models of an ensemble. They must have different weights, or
    onnxruntime's common-subexpression elimination merges the identical branches into one.
    """
    import torch

    from exporting.ensembles import ExportEnsemble
    from exporting.onnx_metadata import add_metadata, build_metadata
    from exporting.tracing import to_onnx_bytes
    from model import model_args
    from utils import atomic_write_bytes

    models = model if isinstance(model, list) else [model]
    ckpt = {"model_args": model_args(arch, encoder, 1), "config": {"input_size": input_size, "name": "bench"}}
    metadata = build_metadata(ckpt, list(range(len(models))), None, None, tta)
    ensemble = ExportEnsemble(models, 1, tta).eval()
    proto = add_metadata(to_onnx_bytes(ensemble, input_size, 17), metadata)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(onnx_path, proto.SerializeToString())
    if weights_path is not None:
        torch.save({"model_args": ckpt["model_args"], "state_dict": models[0].state_dict()}, weights_path)
    return onnx_path


def ort_session(path: Path, threads: int):
    """An onnxruntime CPU session as inference.py builds it (graph optimisation all, `threads` intra-op)."""
    from runtime.session import create_session

    return create_session(Path(path), ["CPUExecutionProvider"], threads)


def quantize_copy(fp32_path: Path, int8_path: Path, images: list[Path]) -> Path:
    """The static int8 QDQ copy export.py --int8 writes (exporting.quantize.quantize_int8: per-channel int8
    weights, uint8 activations, MinMax), calibrated on `images` preprocessed as the engine feeds them."""
    import logging

    from exporting.onnx_metadata import set_metadata
    from exporting.quantize import quantize_int8
    from runtime.metadata import read_metadata

    handlers = list(logging.root.handlers)
    try:
        meta = read_metadata(str(fp32_path))
        proto = quantize_int8(Path(fp32_path), list(images), meta)
        Path(int8_path).write_bytes(set_metadata(proto, {**meta, "precision": "int8"}).SerializeToString())
        return Path(int8_path)
    finally:  # onnxruntime.quantization calls logging.basicConfig: undo it, as export.py does
        for handler in set(logging.root.handlers) - set(handlers):
            logging.root.removeHandler(handler)
