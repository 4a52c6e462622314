"""ONNX Runtime sessions: which execution providers can run here, and opening a model file. No torch.

    providers = select_providers("auto")        # TensorRT > CUDA > CPU, each only when it can really run
    session = create_session(Path("model.onnx"), providers, threads=4)
    session = create_session(Path("model.onnx"), providers, spinning=True, inter_op_threads=2)  # A/B variants

A GPU provider compiled into onnxruntime is tried only when its libraries load, so a GPU build on a
GPU-less machine starts on the CPU without a wall of errors. A file that is not a model, or one
this onnxruntime cannot load, is a UserError that says what to do.
"""

from __future__ import annotations

import ctypes
import sys
from functools import lru_cache
from pathlib import Path

import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from utils import LOG, UserError

# ----------------------------------------------------------------------------- providers

CPU = "CPUExecutionProvider"
PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": CPU,
}
PROVIDER_CHOICES = ("auto", "cpu", "cuda", "tensorrt")

# What each GPU provider needs besides being compiled into onnxruntime. Checking that the
# libraries load is what keeps a GPU build on a GPU-less machine free of a wall of errors.
CUDA_DRIVER_LIBS = {"win32": ("nvcuda.dll",), "linux": ("libcuda.so.1", "libcuda.so")}
TENSORRT_LIBS = {
    "win32": ("nvinfer_10.dll", "nvinfer.dll"),
    "linux": ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so"),
}


def platform_libs(table: dict) -> tuple[str, ...]:
    """This platform's library names from a {"win32": ..., "linux": ...} table."""
    return table["win32"] if sys.platform == "win32" else table["linux"]


@lru_cache(maxsize=None)
def can_load_library(names: tuple[str, ...]) -> bool:
    """True when any of the shared libraries `names` can be loaded."""
    for name in names:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def gpu_provider_problem(provider: str) -> str | None:
    """Why `provider` cannot run here, or None when it can."""
    if provider not in ort.get_available_providers():
        return "not in this onnxruntime build (pip install onnxruntime-gpu)"
    if not can_load_library(platform_libs(CUDA_DRIVER_LIBS)):
        return "no NVIDIA driver found (libcuda / nvcuda.dll not loadable)"
    if provider == PROVIDER_NAMES["tensorrt"] and not can_load_library(platform_libs(TENSORRT_LIBS)):
        return "TensorRT libraries (libnvinfer) not loadable"
    return None


def select_providers(requested: str = "auto") -> list[str]:
    """Execution providers to try, best first, always ending with the CPU.

    auto: TensorRT > CUDA > CPU, each GPU provider only when it can really run here. An explicit
    GPU request that cannot be met gives one warning and the CPU.
    """
    requested = (requested or "auto").strip().lower()
    if requested not in PROVIDER_CHOICES:
        raise UserError(f"--device {requested!r} is not valid; use one of: {', '.join(PROVIDER_CHOICES)}")
    if requested == "cpu":
        return [CPU]
    gpu_order = [PROVIDER_NAMES["tensorrt"], PROVIDER_NAMES["cuda"]]
    if requested != "auto":
        wanted = PROVIDER_NAMES[requested]
        problem = gpu_provider_problem(wanted)
        if problem is not None:
            LOG.warning("%s requested but unavailable: %s; falling back to CPU", wanted, problem)
            return [CPU]
        gpu_order = gpu_order[gpu_order.index(wanted):]
    return [p for p in gpu_order if gpu_provider_problem(p) is None] + [CPU]


# ----------------------------------------------------------------------------- session

# onnxruntime's own exception types for "this file is not a model it can read".
NOT_ONNX_ERRORS = (ort_state.InvalidProtobuf, ort_state.InvalidArgument, ort_state.Fail, ort_state.NoSuchFile)
LOAD_ERRORS = NOT_ONNX_ERRORS + (ort_state.InvalidGraph, ort_state.NotImplemented, ort_state.RuntimeException)


def folder_hint(folder: Path) -> str:
    """The one-line answer to a model path that is a folder: the .onnx files inside it, if any."""
    found = sorted(folder.glob("*.onnx")) or sorted(folder.glob("*/*.onnx"))
    if not found:
        return f"{folder} is a folder with no .onnx file in it; give the model file itself (export one with export.py)"
    shown = ", ".join(str(p) for p in found[:3]) + (f" (and {len(found) - 3} more)" if len(found) > 3 else "")
    return f"{folder} is a folder, not a model file; give the .onnx file inside it: {shown}"


# Idle intra-op threads sleep instead of spinning: the spinning burns the cores that the decode and
# write threads of runtime/pipeline.py need between runs (BENCHMARKS.md, end to end; measured on a
# loaded machine). bench/session_options.py measures both on an idle one.
DEFAULT_SPINNING = False


def session_options(threads: int = 0, spinning: bool = DEFAULT_SPINNING, inter_op_threads: int = 0
                    ) -> ort.SessionOptions:
    """The SessionOptions of create_session: `threads` intra-op (0: automatic), spin-waiting or not, and
    `inter_op_threads` > 0 runs independent branches in parallel (ORT_PARALLEL) on that many threads."""
    if threads < 0:
        raise UserError(f"--threads {threads} is not valid; use 0 (automatic) or a positive number")
    if inter_op_threads < 0:
        raise UserError(f"inter_op_threads {inter_op_threads} is not valid; use 0 (sequential) or a positive number")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's placement warnings are noise to a user
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if threads > 0:
        options.intra_op_num_threads = threads
    if inter_op_threads > 0:
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        options.inter_op_num_threads = inter_op_threads
        options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
    return options


def check_model_file(model_path: Path) -> None:
    """A model path that is a folder or no file is a UserError saying what to give instead."""
    if model_path.is_dir():
        raise UserError(folder_hint(model_path))
    if not model_path.is_file():
        raise UserError(f"model file not found: {model_path} (check --model, or export one with export.py)")


def create_session(model_path: Path, providers: list[str], threads: int = 0, spinning: bool = DEFAULT_SPINNING,
                   inter_op_threads: int = 0) -> ort.InferenceSession:
    """Open an ONNX file with `providers` (from select_providers); user mistakes become UserError.

    `threads`, `spinning` and `inter_op_threads` are those of session_options."""
    check_model_file(model_path)
    options = session_options(threads, spinning, inter_op_threads)
    try:
        return ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
    except LOAD_ERRORS as exc:
        reason = str(exc).split("failed:", 1)[-1].strip()
        if isinstance(exc, NOT_ONNX_ERRORS):
            raise UserError(f"not an ONNX model: {model_path} (export one with export.py) - {reason}") from exc
        raise UserError(f"cannot load model {model_path}: {reason} (re-export it or upgrade onnxruntime)") from exc
