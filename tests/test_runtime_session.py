"""runtime/session.py: execution providers (best first, a CPU fallback), opening a model file, session options."""

from __future__ import annotations

import logging

import pytest

import inference
from runtime import session
from test_inference import TEST_META, build_model, records  # noqa: F401  (records is a fixture)
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


def test_model_folder_suggests_the_onnx_files_inside(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(UserError, match="no .onnx file in it"):
        session.create_session(tmp_path / "run", ["CPUExecutionProvider"])
    (tmp_path / "run" / "horse.onnx").write_bytes(b"")
    (tmp_path / "run" / "horse.fp16.onnx").write_bytes(b"")
    with pytest.raises(UserError, match=r"is a folder, not a model file; give the .onnx file inside it: .*horse\.fp16"
                                        r"\.onnx, .*horse\.onnx$"):
        session.create_session(tmp_path / "run", ["CPUExecutionProvider"])


# ----------------------------------------------------------------------------- session options


@pytest.fixture
def opened(monkeypatch):
    """The SessionOptions of every onnxruntime session opened while it is active (the sessions are real)."""
    real, seen = session.ort.InferenceSession, []

    def capture(path, sess_options=None, providers=None):
        seen.append(sess_options)
        return real(path, sess_options=sess_options, providers=providers)

    monkeypatch.setattr(session.ort, "InferenceSession", capture)
    return seen


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("m") / "m.onnx", TEST_META)


def spinning_of(options, pool: str = "intra_op") -> str:
    return options.get_session_config_entry(f"session.{pool}.allow_spinning")


@pytest.mark.parametrize("threads, spinning, inter_op", [(0, False, 0), (2, True, 0), (1, True, 2), (2, False, 2)])
def test_session_options_reach_onnxruntime(opened, model, threads, spinning, inter_op):
    session.create_session(model, [session.CPU], threads, spinning=spinning, inter_op_threads=inter_op)
    [options] = opened
    assert spinning_of(options) == ("1" if spinning else "0") and options.intra_op_num_threads == threads
    parallel = session.ort.ExecutionMode.ORT_PARALLEL if inter_op else session.ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.execution_mode == parallel and options.inter_op_num_threads == inter_op
    if inter_op:  # the inter-op pool spins (or not) as the intra-op one does
        assert spinning_of(options, "inter_op") == spinning_of(options)
    else:
        with pytest.raises(RuntimeError, match="inter_op.allow_spinning"):
            spinning_of(options, "inter_op")
    assert options.graph_optimization_level == session.ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_the_default_spinning_is_the_module_constant(opened, model):
    session.create_session(model, [session.CPU])
    assert spinning_of(opened[0]) == ("1" if session.DEFAULT_SPINNING else "0")


def test_negative_inter_op_threads_is_a_user_error(model):
    with pytest.raises(UserError, match="inter_op_threads -1 is not valid"):
        session.create_session(model, [session.CPU], inter_op_threads=-1)


@pytest.mark.parametrize("spinning, expected", [(None, "1" if session.DEFAULT_SPINNING else "0"), (True, "1"),
                                                (False, "0")])
def test_segmenter_passes_spinning_to_its_session(opened, model, spinning, expected):
    segmenter = inference.Segmenter(model, device="cpu", threads=1, spinning=spinning)
    assert [spinning_of(options) for options in opened] == [expected] and segmenter.spinning == (expected == "1")
    assert opened[0].intra_op_num_threads == 1


@pytest.mark.parametrize("flag, expected", [([], "1" if session.DEFAULT_SPINNING else "0"),
                                            (["--ort-spinning", "on"], "1"), (["--ort-spinning", "off"], "0")])
def test_ort_spinning_flag_reaches_the_session(opened, model, tmp_path, flag, expected):
    args = inference.parse_args(["--model", str(model), "--source", str(tmp_path), "--output", str(tmp_path / "out"),
                                 "--device", "cpu", *flag])
    inference.build_segmenter(args)
    assert [spinning_of(options) for options in opened] == [expected]


def test_ort_spinning_flag_refuses_other_values(capsys):
    with pytest.raises(SystemExit):
        inference.parse_args(["--source", "x", "--output", "y", "--ort-spinning", "yes"])
    assert "--ort-spinning" in capsys.readouterr().err
