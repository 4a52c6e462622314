"""Proof that an exported graph matches torch: onnxruntime parity (float64 as the referee for rounding), OpenCV DNN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn

from runtime.metadata import STRIDE
from utils import LOG, UserError

PARITY_TOLERANCE = 1e-4  # onnxruntime vs torch, probabilities (logits: relative to their scale)
OPENCV_TOLERANCE = 1e-3  # OpenCV DNN vs onnxruntime


class ParityError(UserError, RuntimeError):
    """The exported graph disagrees with torch: the export is aborted (unless --no-verify)."""


def parity_shape(input_size: int) -> tuple[int, int, int, int]:
    """A batch and shape unlike the export's (1, 3, S, S): proves the dynamic axes work."""
    h = max(STRIDE * 2, (input_size * 3 // 4) // STRIDE * STRIDE)
    return 2, 3, h, input_size + STRIDE


def parity_input(input_size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(parity_shape(input_size), dtype=np.float32)


def run_onnxruntime(model: bytes | str | Path, image: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    source = model if isinstance(model, bytes) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: image})[0]


def max_diff(got: np.ndarray, want: np.ndarray, what: str) -> float:
    if got.shape != want.shape:
        raise ParityError(f"{what}: output shape {got.shape} != {want.shape}")
    return float(np.abs(got.astype(np.float32) - want.astype(np.float32)).max())


def check_parity(module: nn.Module, model_bytes: bytes, input_size: int, seed: int = 0) -> float:
    """Max |onnxruntime - torch| on a new batch/shape; raises ParityError if above tolerance.

    Probabilities use PARITY_TOLERANCE as is; logits relative to their largest magnitude. A
    larger difference still passes when it is float32 rounding, not a wrong graph: onnxruntime
    is then no further from a float64 torch run than float32 torch itself is (deep nets such
    as HRNet, see docs/export_matrix.md).
    """
    x = parity_input(input_size, seed)
    with torch.inference_mode():
        expected = module(torch.from_numpy(x)).numpy()
    got = run_onnxruntime(model_bytes, x)
    diff = max_diff(got, expected, "onnxruntime vs torch")
    tolerance = PARITY_TOLERANCE * max(1.0, float(np.abs(expected).max()))
    if diff <= tolerance:
        return diff
    if np.isfinite(diff):
        ort_error, torch_error = float64_errors(module, x, got, expected)
        if ort_error <= max(2 * torch_error, tolerance):
            LOG.warning("parity: onnxruntime vs torch max abs diff %.2e > %.0e, but it is float32 rounding: vs a "
                        "float64 torch run onnxruntime is off by %.2e and float32 torch by %.2e",
                        diff, tolerance, ort_error, torch_error)
            return diff
    raise ParityError(f"ONNX/torch parity failed: max abs diff {diff:.2e} > {tolerance:.0e} on input "
                      f"{x.shape}; the graph is wrong for this model (export with --no-verify to keep it anyway)")


def float64_errors(module: nn.Module, x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """(max |onnxruntime - torch64|, max |torch32 - torch64|) for the same input."""
    import copy

    with torch.inference_mode():
        reference = copy.deepcopy(module).double()(torch.from_numpy(x).double()).numpy()
    return float(np.abs(got - reference).max()), float(np.abs(expected - reference).max())


def check_opencv(model_bytes: bytes, image: np.ndarray, reference: np.ndarray) -> dict:
    """Run the model in OpenCV DNN; {'status': ok|mismatch|unsupported, 'max_diff', 'note'}.

    OpenCV 5's engine takes dynamic N/H/W as they come. Never raises: OpenCV is a second
    runtime we report on, not one the export depends on.
    """
    import cv2

    if not hasattr(cv2, "dnn"):
        return {"status": "unsupported", "max_diff": None, "note": f"OpenCV {cv2.__version__} has no dnn module"}
    try:
        net = cv2.dnn.readNetFromONNX(np.frombuffer(model_bytes, np.uint8))
        net.setInput(image)
        got = np.asarray(net.forward())
    except cv2.error as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        return {"status": "unsupported", "max_diff": None, "note": lines[-1][:300] if lines else "cv2.error"}
    if got.shape != reference.shape:
        return {"status": "mismatch", "max_diff": None, "note": f"output shape {got.shape} != {reference.shape}"}
    diff = float(np.abs(got - reference).max())
    status = "ok" if diff <= OPENCV_TOLERANCE else "mismatch"
    return {"status": status, "max_diff": diff, "note": ""}


def verify(module: nn.Module, model_bytes: bytes, input_size: int, arch: str = "") -> dict:
    """All checks on a finished graph; raises ParityError on a torch mismatch, warns for OpenCV."""
    onnx.checker.check_model(onnx.load_from_string(model_bytes), full_check=True)
    ort_diff = check_parity(module, model_bytes, input_size)
    x = parity_input(input_size)
    LOG.info("parity: onnxruntime vs torch max abs diff %.2e on shape %s", ort_diff, x.shape)
    opencv = check_opencv(model_bytes, x, run_onnxruntime(model_bytes, x))
    if opencv["status"] == "ok":
        LOG.info("parity: OpenCV DNN vs onnxruntime max abs diff %.2e", opencv["max_diff"])
    elif opencv["status"] == "mismatch":
        LOG.warning("OpenCV DNN runs this %s model but disagrees with onnxruntime (max abs diff %s > %.0e; %s): "
                    "do not deploy it with OpenCV DNN", arch or "", opencv["max_diff"], OPENCV_TOLERANCE,
                    opencv["note"] or "wrong values")
    else:
        LOG.warning("OpenCV DNN cannot load this %s model (%s); onnxruntime is fine", arch or "", opencv["note"])
    return {"onnxruntime_max_diff": ort_diff, "opencv": opencv["status"], "opencv_max_diff": opencv["max_diff"]}
