"""runtime/session.py: execution providers (best first, a CPU fallback) and opening a model file."""

from __future__ import annotations

import logging

import pytest

from runtime import session
from test_inference import records  # noqa: F401  (a fixture)
from utils import UserError


# ----------------------------------------------------------------------------- providers


def test_select_providers_auto_ends_with_cpu():
    providers = session.select_providers("auto")
    assert providers[-1] == "CPUExecutionProvider"
    if not session.can_load_library(session.platform_libs(session.CUDA_DRIVER_LIBS)):
        assert providers == ["CPUExecutionProvider"]


@pytest.mark.parametrize("requested", ["cuda", "tensorrt"])
def test_explicit_gpu_without_driver_falls_back_with_one_warning(monkeypatch, records, requested):
    monkeypatch.setattr(session, "can_load_library", lambda names: False)
    assert session.select_providers(requested) == ["CPUExecutionProvider"]
    warnings = [r for r in records.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "falling back to CPU" in warnings[0].getMessage()


@pytest.mark.parametrize(
    "requested, expected",
    [
        ("auto", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]),
        ("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]),
        ("tensorrt", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]),
        ("cpu", ["CPUExecutionProvider"]),
    ],
)
def test_select_providers_order_when_gpu_usable(monkeypatch, requested, expected):
    all_eps = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(session.ort, "get_available_providers", lambda: all_eps)
    monkeypatch.setattr(session, "can_load_library", lambda names: True)
    assert session.select_providers(requested) == expected


def test_auto_skips_tensorrt_without_libnvinfer(monkeypatch):
    all_eps = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(session.ort, "get_available_providers", lambda: all_eps)
    monkeypatch.setattr(session, "can_load_library", lambda names: not any("nvinfer" in n for n in names))
    assert session.select_providers("auto") == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_unknown_provider_is_a_user_error():
    with pytest.raises(UserError, match="auto, cpu, cuda, tensorrt"):
        session.select_providers("gpu0")
