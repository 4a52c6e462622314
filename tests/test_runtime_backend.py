"""runtime/backend.py: --backend auto|onnxruntime|openvino, and without the OpenVINO extra nothing changes.

The OpenVINO adapter itself and its parity with onnxruntime: tests/test_runtime_openvino.py.
"""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import onnxruntime as ort
import pytest

import inference
from runtime import backend
from runtime.session import CPU
from test_inference import TEST_META, build_model, read_rows, rect_image, records  # noqa: F401  (records: a fixture)
from test_precision import pair  # noqa: F401  (a fixture: horse.onnx and its measured horse.int8.onnx)
from utils import UserError, write_png

VNNI = {"avx2", "avx512f", "avx512_vnni"}
GPU = ["CUDAExecutionProvider", CPU]


@pytest.fixture
def no_openvino(monkeypatch):
    """OpenVINO blocked as if it were not installed (import openvino raises ImportError), on a CPU with VNNI: the
    one place where auto would otherwise pick it."""
    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.setattr(backend, "cpu_flags", lambda text=None: set(VNNI))


@pytest.fixture
def installed(monkeypatch):
    """OpenVINO reported as installed (the choice alone; nothing is opened)."""
    monkeypatch.setattr(backend, "openvino_installed", lambda: True)


def backend_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("backend ")]


# ----------------------------------------------------------------------------- the choice


@pytest.mark.parametrize("precision, providers, flags, name, expected, why", [
    ("int8", [CPU], VNNI, "m.int8.onnx", "openvino", "int8 on a CPU with avx512_vnni, where OpenVINO runs int8 faster"),
    ("int8", [CPU], {"avx2", "amx_int8"}, "m.int8.onnx", "openvino", "with amx_int8"),
    ("int8", [CPU], {"avx2", "avx_vnni"}, "m.int8.onnx", "openvino", "with avx_vnni"),
    ("fp32", [CPU], VNNI, "m.onnx", "onnxruntime", "fp32 runs on onnxruntime, the faster float32 engine"),
    ("fp16", [CPU], VNNI, "m.fp16.onnx", "onnxruntime", "fp16 runs on onnxruntime"),
    ("int8", [CPU], {"avx2", "avx512f"}, "m.int8.onnx", "onnxruntime", "this CPU lists no int8 dot products"),
    ("int8", GPU, VNNI, "m.int8.onnx", "onnxruntime", "CUDAExecutionProvider is onnxruntime's"),
    ("int8", [CPU], VNNI, "m.e2e.onnx", "onnxruntime", "m.e2e.onnx is an end-to-end graph"),
])
def test_auto_takes_openvino_only_for_int8_on_int8_dot_product_cpus(installed, tmp_path, precision, providers, flags,
                                                                     name, expected, why):
    chosen, reason = backend.resolve_backend("auto", tmp_path / name, precision, providers, flags)
    assert chosen == expected and why in reason


def test_auto_without_openvino_is_onnxruntime_and_says_so(no_openvino, tmp_path):
    chosen, reason = backend.resolve_backend("auto", tmp_path / "m.int8.onnx", "int8", [CPU])
    assert chosen == "onnxruntime"
    assert reason == ("OpenVINO is not installed (requirements-openvino.txt; it runs int8 faster on this avx512_vnni "
                      "CPU)")


def test_explicit_backends(installed, tmp_path):
    assert backend.resolve_backend("onnxruntime", tmp_path / "m.int8.onnx", "int8", [CPU], VNNI)[0] == "onnxruntime"
    assert backend.resolve_backend(" OpenVINO ", tmp_path / "m.onnx", "fp32", [CPU], set())[0] == "openvino"
    with pytest.raises(UserError, match="runs on the CPU but the model would run on CUDAExecutionProvider: add "
                                        "--device cpu"):
        backend.resolve_backend("openvino", tmp_path / "m.onnx", "fp32", GPU)
    with pytest.raises(UserError, match="m.e2e.onnx is an end-to-end graph and OpenVINO 2026.4 computes"):
        backend.resolve_backend("openvino", tmp_path / "m.e2e.onnx", "fp32", [CPU])
    with pytest.raises(UserError, match=r"--backend 'tensorflow' is not valid; use one of: auto, onnxruntime, "
                                        "openvino"):
        backend.resolve_backend("tensorflow", tmp_path / "m.onnx", "fp32", [CPU])


def test_an_end_to_end_graph_is_known_by_its_metadata_too(installed, tmp_path):
    path = build_model(tmp_path / "renamed.onnx", {**TEST_META, "end_to_end": True})
    assert backend.is_e2e_file(path) and not backend.is_e2e_file(build_model(tmp_path / "plain.onnx", TEST_META))
    assert backend.resolve_backend("auto", path, "int8", [CPU], VNNI)[0] == "onnxruntime"


def test_cpu_flags_come_from_the_flags_line():
    text = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_vnni\nbugs\t\t: none\n"
    assert backend.cpu_flags(text) == {"fpu", "avx2", "avx512_vnni"}
    assert backend.cpu_flags("processor\t: 0\n") == set()


# ----------------------------------------------------------------------------- without the extra


def test_without_openvino_auto_runs_the_int8_file_on_onnxruntime_with_no_warning(no_openvino, pair, records):
    fp32, int8 = pair
    segmenter = inference.Segmenter(fp32, device="cpu")  # every default: precision auto picks the int8 copy
    assert (segmenter.model_path, segmenter.precision, segmenter.backend) == (int8, "int8", "onnxruntime")
    assert isinstance(segmenter.session, ort.InferenceSession) and segmenter.providers == [CPU]
    assert backend_lines(records) == ["backend onnxruntime: OpenVINO is not installed (requirements-openvino.txt; it "
                                      "runs int8 faster on this avx512_vnni CPU)"]
    assert not [r for r in records.records if r.levelno >= logging.WARNING]
    image, mask = rect_image(40, 60)
    result = segmenter.predict(image)
    assert np.array_equal(result.mask, mask) and result.info["backend"] == "onnxruntime"


def test_without_openvino_a_folder_run_is_the_onnxruntime_run(no_openvino, pair, tmp_path):
    fp32, _ = pair
    images = tmp_path / "images"
    images.mkdir()
    for i, (h, w) in enumerate([(40, 60), (64, 64), (30, 90)]):
        write_png(images / f"r{i}.png", rect_image(h, w)[0])
    common = ["--model", str(fp32), "--source", str(images), "--device", "cpu", "--batch-size", "2"]
    inference.main([*common, "--output", str(tmp_path / "auto")])
    inference.main([*common, "--output", str(tmp_path / "ort"), "--backend", "onnxruntime"])
    rows = [[{k: v for k, v in row.items() if k != "ms"} for row in read_rows(tmp_path / run / "summary.csv")]
            for run in ("auto", "ort")]
    assert rows[0] == rows[1] and {row["backend"] for row in rows[0]} == {"onnxruntime"}
    for name in ("r0.png", "r1.png", "r2.png"):
        assert (tmp_path / "auto" / "masks" / name).read_bytes() == (tmp_path / "ort" / "masks" / name).read_bytes()


def test_without_openvino_asking_for_it_says_what_to_install(no_openvino, pair):
    with pytest.raises(UserError, match=r"^--backend openvino needs OpenVINO, which is not installed: pip install -r "
                                        r"requirements-openvino.txt \(or use --backend auto\)$"):
        inference.Segmenter(pair[0], device="cpu", backend="openvino")


# ----------------------------------------------------------------------------- where the backend is recorded


def test_the_backend_is_in_the_segmenter_the_csv_and_metrics_json(tmp_path):
    model = build_model(tmp_path / "m.onnx", TEST_META)
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    image, mask = rect_image(40, 60)
    write_png(images / "a.png", image)
    write_png(masks / "a.png", mask * 255)
    inference.main(["--model", str(model), "--source", str(images), "--output", str(tmp_path / "out"),
                    "--gt", str(masks), "--backend", "onnxruntime"])
    assert read_rows(tmp_path / "out" / "summary.csv")[0]["backend"] == "onnxruntime"
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["backend"] == "onnxruntime"
    given = inference.Segmenter(model, session=ort.InferenceSession(str(model), providers=[CPU]))
    assert (given.backend, given.backend_reason) == ("onnxruntime", "session given")
    assert inference.OtsuSegmenter().backend == "none"


def test_the_ray_engine_passes_the_backend_to_its_actors(monkeypatch, tmp_path):
    model = build_model(tmp_path / "m.onnx", TEST_META)
    (tmp_path / "images").mkdir()
    write_png(tmp_path / "images" / "a.png", rect_image(40, 60)[0])
    built = []
    monkeypatch.setattr(inference, "run_items_ray", lambda make, *args, **kwargs: built.append(make()))
    args = inference.parse_args(["--model", str(model), "--source", str(tmp_path / "images"), "--output",
                                 str(tmp_path / "out"), "--engine", "ray", "--backend", "onnxruntime"])
    inference.run_ray(args, inference.run_options(args))
    assert [(s.backend, s.backend_reason) for s in built] == [("onnxruntime", "as asked (--backend onnxruntime)")]
