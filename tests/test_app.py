"""Tests for app.py: streamlit's AppTest drives every mode with a tiny generated ONNX model, CPU only.

AppTest simulates the uploads (FileUploader.set_value), so the page runs exactly as for a user,
with torch blocked.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import onnx
from onnx import TensorProto, checker, helper, numpy_helper, save

pytest.importorskip("streamlit", reason="streamlit is not installed (pip install -r requirements-app.txt)")
from streamlit.testing.v1 import AppTest  # noqa: E402

from hostile import bomb_png, hostile_files  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app.py"
H, W = 64, 80  # the test image: a white 32x40 rectangle on black, i.e. 25 % of it


def build_model(path: Path, classes: int = 1) -> Path:
    """Conv(3->C, 1x1) + Sigmoid/Softmax with dynamic N/H/W: white pixels are foreground (class 1)."""
    weight = np.full((1, 3, 1, 1), 2.0, np.float32)
    if classes > 1:
        weight = np.zeros((classes, 3, 1, 1), np.float32)
        weight[0], weight[1] = -2.0, 2.0
    act = helper.make_node("Sigmoid", ["logits"], ["probs"]) if classes == 1 else helper.make_node(
        "Softmax", ["logits"], ["probs"], axis=1)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["logits"]), act], "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", classes, "h", "w"])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    names = ["fg"] if classes == 1 else ["background", "horse"] + [f"c{i}" for i in range(2, classes)]
    meta = {"input_size": 64, "stride": 32, "num_classes": classes, "class_names": names, "name": "tiny",
            "arch": "Conv1x1", "threshold": 0.42, "folds": [0, 1]}
    helper.set_model_props(model, {"segmentation": json.dumps(meta)})
    checker.check_model(model)
    save(model, str(path))
    return path


def rect_image() -> np.ndarray:
    image = np.zeros((H, W, 3), np.uint8)
    image[H // 4: H - H // 4, W // 4: W - W // 4] = 255
    return image


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


@pytest.fixture
def model(tmp_path) -> Path:
    return build_model(tmp_path / "tiny.onnx")


@pytest.fixture
def app(model, monkeypatch) -> AppTest:
    """The page with MODEL_PATH pointing at the tiny model; torch is blocked for the whole run."""
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setenv("MODEL_PATH", str(model))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def errors(at: AppTest) -> str:
    assert not at.exception, at.exception  # a traceback would be an exception element
    return " ".join(e.value for e in at.error)


def choose(at: AppTest, mode: str) -> AppTest:
    at.radio(key="mode").set_value(mode).run()
    return at


# ----------------------------------------------------------------------------- import and sidebar


def test_import_without_torch():
    code = "import sys; sys.modules['torch'] = None; import app; assert 'torch' not in sys.modules or " \
           "sys.modules['torch'] is None"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_sidebar_reads_model_path_from_env_and_shows_metadata(app, model):
    assert app.text_input(key="model_path").value == str(model)
    shown = " ".join(m.value for m in app.sidebar.markdown)
    assert "Conv1x1" in shown and "0.42" in shown and "[0, 1]" in shown
    assert not app.error


def test_missing_model_is_a_readable_error(app, tmp_path):
    app.text_input(key="model_path").set_value(str(tmp_path / "nope.onnx")).run()
    assert "model file not found" in errors(app)


def test_not_an_onnx_file_is_a_readable_error(app, tmp_path):
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"not a model")
    app.text_input(key="model_path").set_value(str(fake)).run()
    assert "not an ONNX model" in errors(app)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_the_backend_select_reaches_the_engine(app, backend):
    if backend == "openvino":
        pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install -r requirements-openvino.txt)")
    app.selectbox(key="backend").set_value(backend).run()
    shown = " ".join(m.value for m in app.sidebar.markdown)
    assert f"**backend**: {backend} (as asked (--backend {backend}))" in shown and not errors(app)
    app.file_uploader(key="image_upload").set_value(("rect.png", png(rect_image()), "image/png")).run()
    assert metrics(app)["Area"] == "1280 px"


def test_openvino_without_the_extra_is_a_readable_error(app, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    app.selectbox(key="backend").set_value("openvino").run()
    assert "pip install -r requirements-openvino.txt" in errors(app)


# ----------------------------------------------------------------------------- single image


def test_single_image_shows_area_threshold_and_downloads(app):
    app.file_uploader(key="image_upload").set_value(("rect.png", png(rect_image()), "image/png")).run()
    assert not errors(app)
    shown = metrics(app)
    assert shown["Area"] == "1280 px" and shown["Area %"] == "25.00 %"
    assert shown["Threshold used"] == "0.420"  # the model's rule: its cross-validated threshold, as inference.py
    assert [c for el in app.image for c in el.captions][1:] == ["Mask", "Overlay"]  # after "Input 80x64"
    assert [b.label for b in app.get("download_button")] == ["Download mask PNG", "Download overlay PNG"]


def test_fixed_threshold_and_post_options_reach_the_engine(app):
    app.file_uploader(key="image_upload").set_value(("rect.png", png(rect_image()), "image/png"))
    app.radio(key="threshold_mode").set_value("fixed").run()
    app.slider(key="threshold").set_value(0.7).run()
    assert metrics(app)["Threshold used"] == "0.700"
    app.number_input(key="open").set_value(81).run()  # an opening wider than the rectangle removes it
    assert metrics(app)["Area"] == "0 px"
    assert any("Nothing detected" in w.value for w in app.warning)


def test_the_adaptive_cascade_is_one_choice_away(app):
    app.file_uploader(key="image_upload").set_value(("rect.png", png(rect_image()), "image/png"))
    app.radio(key="threshold_mode").set_value("adaptive").run()
    assert metrics(app)["Threshold used"] == "0.500"  # the cascade's first level
    app.radio(key="threshold_mode").set_value("model's rule").run()
    assert metrics(app)["Threshold used"] == "0.420"


def with_sibling(model: Path, suffix: str, made_from: Path, **meta) -> Path:
    """A copy of `model` as <stem><suffix> recording `made_from` (its bytes now) as its source (runtime/lineage.py)."""
    from runtime.lineage import source_record

    proto = onnx.load(str(model))
    old = json.loads(proto.metadata_props[0].value)
    del proto.metadata_props[:]
    made = suffix.strip(".").split(".")[0]
    helper.set_model_props(proto, {"segmentation": json.dumps({**old, "source": source_record(made_from, made),
                                                               **meta})})
    path = model.with_name(model.stem + suffix)
    save(proto, str(path))
    return path


def test_the_file_that_runs_is_shown_and_fp32_is_one_choice_away(app, model):
    with_sibling(model, ".int8.onnx", model, precision="int8", int8_dice_delta=-0.001, int8_speedup=2.0,
                 int8_val_images=9)
    app.text_input(key="model_path").set_value(str(model)).run()  # reload: the int8 copy is new
    shown = " ".join(c.value for c in app.caption)
    assert "Running **tiny.int8.onnx** (int8: tiny.int8.onnx: ΔDice -0.0010 on 9 held-back images" in shown
    assert "Choose fp32 under Precision" in shown and "Rule: threshold 0.42 (cross-validated)" in shown
    app.selectbox(key="precision").set_value("fp32").run()
    shown = " ".join(c.value for c in app.caption)
    assert "Running **tiny.onnx** (fp32: tiny.onnx, as asked (precision fp32))" in shown
    assert "--precision" not in shown  # the page has no such flag: the hint names its own switch


def test_a_retrained_model_names_its_stale_siblings(app, model):
    """A retrain + re-export rewrites tiny.onnx; the e2e and fp16 files made from the old one announce themselves."""
    for suffix in (".e2e.onnx", ".fp16.onnx"):
        with_sibling(model, suffix, model)
    app.run()
    assert not app.warning  # all made from this very tiny.onnx
    proto = onnx.load(str(model))  # the re-export: the same name, other bytes
    helper.set_model_props(proto, {"segmentation": json.dumps({**json.loads(proto.metadata_props[0].value),
                                                               "created": "a retrain"})})
    save(proto, str(model))
    app.run()
    warned = [w.value for w in app.warning]
    assert any(w.startswith("tiny.e2e.onnx was made from another tiny.onnx") for w in warned), warned
    assert any(w.startswith("tiny.fp16.onnx was made from another tiny.onnx") for w in warned), warned


def test_image_max_long_side_downscales(app):
    app.file_uploader(key="image_upload").set_value(("rect.png", png(rect_image()), "image/png"))
    app.number_input(key="image_max_side").set_value(40).run()  # 80x64 -> 40x32
    assert metrics(app)["Area"] == "320 px" and metrics(app)["Area %"] == "25.00 %"
    assert any("Downscaled from 80x64" in c.value for c in app.caption)


def test_ground_truth_gives_dice_and_iou(app):
    gt = np.zeros((H, W), np.uint8)
    gt[H // 4: H - H // 4, W // 4: W // 2] = 255  # the left half of the predicted rectangle
    app.file_uploader(key="image_upload").set_value(("rect.png", png(rect_image()), "image/png"))
    app.file_uploader(key="gt_upload").set_value(("rect_mask.png", png(gt), "image/png")).run()
    shown = metrics(app)
    assert shown["Dice"] == "0.6667" and shown["IoU"] == "0.5000"  # 2*640/(1280+640), 640/1280


def test_ground_truth_of_another_size_is_a_readable_error(app):
    app.file_uploader(key="image_upload").set_value(("rect.png", png(rect_image()), "image/png"))
    app.file_uploader(key="gt_upload").set_value(("gt.png", png(np.zeros((10, 10), np.uint8)), "image/png")).run()
    assert "ground-truth mask is 10x10 but the image is 80x64" in errors(app)


def test_multi_class_model_shows_a_legend(app, tmp_path):
    app.text_input(key="model_path").set_value(str(build_model(tmp_path / "multi.onnx", classes=3)))
    app.file_uploader(key="image_upload").set_value(("rect.png", png(rect_image()), "image/png")).run()
    assert metrics(app)["Area %"] == "25.00 %" and metrics(app)["Threshold used"] == "n/a (argmax)"
    captions = [c for el in app.image for c in el.captions]
    assert "Class colours" in captions


def build_foreign(path: Path) -> Path:
    """build_model's 3-class logits (no softmax) without our metadata: a model from elsewhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    build_model(path, classes=3)
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    proto.graph.node.pop()  # the Softmax: raw logits, as Hugging Face exports give
    proto.graph.output[0].name = "logits"
    onnx.save(proto, str(path))
    return path


def test_foreign_model_takes_its_names_from_config_json_and_the_sidebar(app, tmp_path):
    """A SegFormer-like export with its Hugging Face config.json beside it: the names show, class 0 is a class."""
    model = build_foreign(tmp_path / "hf" / "segformer.onnx")
    (model.parent / "config.json").write_text(json.dumps({"id2label": {"0": "wall", "1": "sky", "2": "tree"}}))
    app.text_input(key="model_path").set_value(str(model))
    app.file_uploader(key="image_upload").set_value(("rect.png", png(rect_image()), "image/png")).run()
    shown = " ".join(m.value for m in app.sidebar.markdown)
    assert "3 (wall, sky, tree); class 0 is a class (no background)" in shown
    assert metrics(app)["Area %"] == "100.00 %" and "Class colours" in [c for el in app.image for c in el.captions]
    bare = build_foreign(tmp_path / "bare.onnx")
    app.text_input(key="model_path").set_value(str(bare)).run()
    assert "3 (class_0, class_1, class_2)\n" in " ".join(m.value for m in app.sidebar.markdown)
    app.text_input(key="class_names").set_value("road,car,person")
    app.checkbox(key="no_background").set_value(True).run()
    assert "3 (road, car, person); class 0 is a class" in " ".join(m.value for m in app.sidebar.markdown)
    assert not errors(app)


def test_multi_class_ground_truth_is_scored_per_class_like_inference(app, tmp_path):
    """The rectangle labelled class 2 while the model says class 1: both classes miss (0), not a foreground hit (1)."""
    app.text_input(key="model_path").set_value(str(build_model(tmp_path / "multi.onnx", classes=3)))
    truth = (rect_image()[..., 0] > 0).astype(np.uint8) * 2
    app.file_uploader(key="image_upload").set_value(("rect.png", png(rect_image()), "image/png"))
    app.file_uploader(key="gt_upload").set_value(("gt.png", png(truth), "image/png")).run()
    assert metrics(app)["Dice"] == "0.0000"
    app.file_uploader(key="gt_upload").set_value(("gt.png", png(truth // 2), "image/png")).run()
    assert metrics(app)["Dice"] == "1.0000"  # class 1 right, class 2 absent from both: 1


@pytest.mark.parametrize("name, data, expected", [
    ("notes.png", b"this is not an image", "cannot decode image: notes.png"),
    ("huge.png", b"\0" * (26 * 2**20), "more than the 25 MB limit"),
    ("bomb.png", bomb_png(), "bomb.png (50000x50000 = 2,500,000,000 pixels is over the limit"),
    ("cut.jpg", hostile_files()["truncated.jpg"][0], "cut.jpg (truncated JPEG"),
])
def test_bad_image_uploads_are_readable_errors(app, name, data, expected):
    app.file_uploader(key="image_upload").set_value((name, data, "image/png")).run()
    assert expected in errors(app)
    assert "segapp-" not in errors(app)  # our temporary folder stays hidden


# ----------------------------------------------------------------------------- batch ZIP


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_zip_mode_gives_a_table_and_predictions_zip(app):
    choose(app, "Batch ZIP")
    data = zip_bytes({"a.png": png(rect_image()), "sub/b.jpg": cv2.imencode(".jpg", rect_image())[1].tobytes(),
                      "broken.png": b"junk", "readme.txt": b"ignored"})
    app.file_uploader(key="zip_upload").set_value(("batch.zip", data, "application/zip")).run()
    assert not errors(app)
    assert metrics(app) == {"Images": "3", "OK": "2", "No detection": "0", "Errors": "1"}
    table = app.dataframe[0].value.set_index("file")
    assert table.loc["a.png", "area_pct"] == 25.0 and table.loc["broken.png", "status"] == "error"
    assert [b.label for b in app.get("download_button")] == ["Download predictions.zip"]
    stored = app.session_state["last_run"]
    names = zipfile.ZipFile(io.BytesIO(stored["zip"])).namelist()
    assert {"masks/a.png", "overlays/sub/b.png", "summary.csv"} <= set(names)
    assert app.progress[0].value == 100


def test_corrupt_zip_is_a_readable_error(app):
    choose(app, "Batch ZIP")
    app.file_uploader(key="zip_upload").set_value(("batch.zip", b"PK not really a zip", "application/zip")).run()
    text = errors(app)
    assert "cannot open ZIP batch.zip" in text and "segapp-" not in text
    assert not app.get("download_button")


# ----------------------------------------------------------------------------- video


def video_bytes(tmp_path: Path, frames: int = 6) -> bytes:
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (W, H))
    assert writer.isOpened()
    for _ in range(frames):
        writer.write(rect_image())
    writer.release()
    return path.read_bytes()


def test_video_mode_plays_the_annotated_video(app, tmp_path):
    choose(app, "Video")
    app.number_input(key="vid_stride").set_value(2)
    app.file_uploader(key="video_upload").set_value(("clip.mp4", video_bytes(tmp_path), "video/mp4")).run()
    assert not errors(app)
    assert any(c.value.startswith("6 frames, 3 inferred, 0 errors") for c in app.caption)
    assert len(app.get("video")) == 1
    assert [b.label for b in app.get("download_button")] == ["Download clip.mp4"]
    table = app.dataframe[0].value
    assert list(table["inferred"]) == [1, 0, 1, 0, 1, 0] and set(table["area_pct"]) == {25.0}


def test_undecodable_video_is_a_readable_error(app):
    choose(app, "Video")
    app.file_uploader(key="video_upload").set_value(("clip.mp4", b"\0junk" * 100, "video/mp4")).run()
    text = errors(app)
    assert "Cannot decode the video clip.mp4" in text and "segapp-" not in text
    assert not app.get("video")


# ----------------------------------------------------------------------------- the clean/defect gate


@pytest.fixture
def gated_app(model, tmp_path, monkeypatch) -> AppTest:
    """The page with GATE_PATH set: black images are judged clean, images with a white quarter are not."""
    from conftest import build_gate_onnx

    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setenv("MODEL_PATH", str(model))
    monkeypatch.setenv("GATE_PATH", str(build_gate_onnx(tmp_path / "gate.onnx")))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def test_gate_path_from_env_gates_clean_images(gated_app):
    assert gated_app.text_input(key="gate_path").value.endswith("gate.onnx")
    black = np.zeros((H, W, 3), np.uint8)
    gated_app.file_uploader(key="image_upload").set_value(("black.png", png(black), "image/png")).run()
    assert not errors(gated_app)
    shown = metrics(gated_app)
    assert float(shown["Gate prob"]) < 0.5 and shown["Area"] == "0 px" and shown["Threshold used"] == "n/a (gated)"
    assert any("gated_clean" in i.value for i in gated_app.info)
    gated_app.file_uploader(key="image_upload").set_value(("rect.png", png(rect_image()), "image/png")).run()
    shown = metrics(gated_app)
    assert float(shown["Gate prob"]) >= 0.5 and shown["Area"] == "1280 px"
    assert not any("gated_clean" in i.value for i in gated_app.info)


def test_gate_threshold_override_and_zip_counts(gated_app):
    gated_app.checkbox(key="gate_override").check().run()
    gated_app.slider(key="gate_threshold").set_value(0.0).run()  # every image is segmented
    choose(gated_app, "Batch ZIP")
    data = zip_bytes({"a.png": png(rect_image()), "black.png": png(np.zeros((H, W, 3), np.uint8))})
    gated_app.file_uploader(key="zip_upload").set_value(("batch.zip", data, "application/zip")).run()
    assert metrics(gated_app)["Gated clean"] == "0"
    gated_app.checkbox(key="gate_override").uncheck().run()  # back to the gate's own 0.5
    assert metrics(gated_app) == {"Images": "2", "OK": "1", "No detection": "0", "Gated clean": "1", "Errors": "0"}
    table = gated_app.dataframe[0].value.set_index("file")
    assert table.loc["black.png", "status"] == "gated_clean" and table.loc["black.png", "gate_prob"] < 0.5


def test_missing_gate_file_is_a_readable_error(gated_app, tmp_path):
    gated_app.text_input(key="gate_path").set_value(str(tmp_path / "nope.onnx")).run()
    assert "gate file not found" in errors(gated_app)
