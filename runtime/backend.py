"""Which engine runs the model: onnxruntime (always there) or OpenVINO (an optional extra, CPU only). No torch.

    backend, reason = choose_backend("auto", Path("horse.int8.onnx"), "int8", select_providers("cpu"))
    session = open_session(backend, Path("horse.int8.onnx"), ["CPUExecutionProvider"], threads=2)

`--backend auto` (the default) runs OpenVINO only where it was measured faster, onnxruntime otherwise:
- the model runs on the CPU provider (a GPU provider is onnxruntime's);
- the file is int8: float32 stays on onnxruntime, the faster float32 engine where both were timed;
- this CPU has int8 dot products (avx512_vnni, avx_vnni or amx_int8 among the flags of /proc/cpuinfo), which
  OpenVINO's int8 kernels are built on; elsewhere (another OS, an older CPU) ask for it with --backend openvino;
- OpenVINO is installed (requirements-openvino.txt); without it auto is onnxruntime, as before the extra existed;
- the file is not an end-to-end graph, whose resize OpenVINO computes wrong (refused even when asked for).
The timings behind the rule: bench/backends.py (docs/inference.md#backends). One log line says which and why.
"""

from __future__ import annotations

from pathlib import Path

from runtime.e2e import is_end_to_end
from runtime.metadata import decode_metadata
from runtime.openvino_session import MISSING, OpenVinoSession
from runtime.precision import file_props
from runtime.session import CPU, check_model_file, create_session
from utils import LOG, UserError

BACKENDS = ("auto", "onnxruntime", "openvino")
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # VNNI (AVX-512 or AVX), AMX: int8 dot products
E2E_PROBLEM = ("OpenVINO 2026.4 computes its resize size wrong (the masks differ from onnxruntime's whenever the "
               "image is resized)")


def e2e_refusal(model_path: Path) -> UserError:
    return UserError(f"--backend openvino: {model_path.name} is an end-to-end graph and {E2E_PROBLEM}; run it with "
                     "--backend onnxruntime")


def cpu_flags(text: str | None = None) -> set[str]:
    """The flags of /proc/cpuinfo (or of `text`, its contents); empty where there is no such file."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[-1].split())
    return set()


def openvino_installed() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def is_e2e_file(path: Path) -> bool:
    """An end-to-end graph by its name or its metadata (read without loading the weights)."""
    return path.name.endswith(".e2e.onnx") or bool(decode_metadata(file_props(path))[0].get("end_to_end"))


def resolve_backend(requested: str, model_path: Path, precision: str, providers: list[str],
                    flags: set[str] | None = None) -> tuple[str, str]:
    """(the backend to run, why) for --backend auto|onnxruntime|openvino; `flags`: this CPU's (cpu_flags())."""
    requested = (requested or "auto").strip().lower()
    if requested not in BACKENDS:
        raise UserError(f"--backend {requested!r} is not valid; use one of: {', '.join(BACKENDS)}")
    model_path = Path(model_path)
    if requested == "onnxruntime":
        return "onnxruntime", "as asked (--backend onnxruntime)"
    if requested == "openvino":
        if providers and providers[0] != CPU:
            raise UserError(f"--backend openvino runs on the CPU but the model would run on {providers[0]}: add "
                            "--device cpu, or use --backend onnxruntime for the GPU")
        if not openvino_installed():
            raise UserError(MISSING)
        if is_e2e_file(model_path):
            raise e2e_refusal(model_path)
        return "openvino", "as asked (--backend openvino)"
    if providers and providers[0] != CPU:
        return "onnxruntime", f"{providers[0]} is onnxruntime's (OpenVINO runs on the CPU)"
    if precision == "fp32":
        return "onnxruntime", "fp32 runs on onnxruntime, the faster float32 engine"
    if precision != "int8":
        return "onnxruntime", f"{precision} runs on onnxruntime (auto takes OpenVINO for int8 only)"
    found = sorted(set(INT8_DOT_FLAGS) & (cpu_flags() if flags is None else flags))
    if not found:
        return "onnxruntime", f"this CPU lists no int8 dot products ({', '.join(INT8_DOT_FLAGS)})"
    if not openvino_installed():
        return "onnxruntime", f"OpenVINO is not installed (requirements-openvino.txt; it runs int8 faster on " \
                              f"this {found[0]} CPU)"
    if is_e2e_file(model_path):
        return "onnxruntime", f"{model_path.name} is an end-to-end graph and {E2E_PROBLEM}"
    return "openvino", f"int8 on a CPU with {', '.join(found)}, where OpenVINO runs int8 faster than onnxruntime " \
                       "(bench/backends.py); --backend onnxruntime to force onnxruntime"


def choose_backend(requested: str, model_path: Path, precision: str, providers: list[str]) -> tuple[str, str]:
    """resolve_backend, with the one log line saying which backend runs and why."""
    backend, reason = resolve_backend(requested, model_path, precision, providers)
    LOG.info("backend %s: %s", backend, reason)
    return backend, reason


def open_session(backend: str, model_path: Path, providers: list[str], threads: int = 0, spinning: bool = False):
    """An onnxruntime InferenceSession, or an OpenVinoSession with the same interface (CPU, `threads`)."""
    if backend != "openvino":
        return create_session(model_path, providers, threads, spinning)
    check_model_file(model_path)
    session = OpenVinoSession(model_path, threads)
    if is_end_to_end(session):  # one without the name or metadata that says so: its uint8 input
        raise e2e_refusal(model_path)
    return session


def session_backend(session) -> str:
    """'openvino' or 'onnxruntime' for a session given to the Segmenter."""
    return "openvino" if isinstance(session, OpenVinoSession) else "onnxruntime"
