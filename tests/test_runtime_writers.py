"""runtime/writers.py through inference.py: --labelstudio and --rle-csv, read back pixel-exact against the masks
the same run wrote (Label Studio through the project's own importer, labelstudio.load_labelstudio)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import inference  # noqa: E402
from conftest import build_gate_onnx  # noqa: E402
from training.sources.labelstudio import load_labelstudio  # noqa: E402
from runtime import rle  # noqa: E402
from runtime.writers import WriterOptions, model_version  # noqa: E402
from test_inference import save_graph  # noqa: E402
from utils import UserError, read_image, write_png  # noqa: E402

NAMES = ["background", "horse", "rider"]
CLASS_MAP = {"horse": 1, "rider": 2}

# Conv 1x1 on the ImageNet-normalised RGB: class 0 wins on black, class 1 on red, class 2 on green.
WEIGHTS = np.array([[-1, -1, -1], [2, -1, -1], [-1, 2, -1]], np.float32)


def build_model(path: Path, meta: dict | None = None, binary: bool = False) -> Path:
    weight = (WEIGHTS[1:2] if binary else WEIGHTS).reshape(-1, 3, 1, 1)
    act = helper.make_node("Sigmoid", ["x"], ["probs"]) if binary else helper.make_node(
        "Softmax", ["x"], ["probs"], axis=1)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["x"]), act], "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", weight.shape[0], "h", "w"])],
        initializer=[numpy_helper.from_array(weight, "w")])
    return save_graph(graph, path, {"input_size": 0, "stride": 32, "name": "tiny", "min_area": 1, **(meta or {}),
                                    "num_classes": 1 if binary else 3, "class_names": ["horse"] if binary else NAMES})


@pytest.fixture
def folder(tmp_path) -> Path:
    """Red rectangles (horse) and green discs (rider) on black, odd sizes, one in a subfolder, one empty."""
    src = tmp_path / "images"
    for i, (rel, (h, w)) in enumerate({"a.png": (45, 67), "sub/b.png": (80, 51), "c.png": (33, 90),
                                       "empty.png": (20, 30)}.items()):
        image = np.zeros((h, w, 3), np.uint8)
        if rel != "empty.png":
            cv2.rectangle(image, (3 + i, 4), (w // 2, h // 2), (255, 0, 0), -1)
            cv2.circle(image, (w - 12, h - 12), 8 - i, (0, 255, 0), -1)
        write_png(src / rel, image)
    return src


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "inference.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def written_mask(out: Path, image: Path, src: Path) -> np.ndarray:
    return cv2.imread(str(out / "masks" / image.relative_to(src).with_suffix(".png")), cv2.IMREAD_UNCHANGED)


def test_cli_labelstudio_and_rle_round_trip_the_written_masks(tmp_path, folder):
    model, out = build_model(tmp_path / "horses.onnx"), tmp_path / "out"
    tasks, csv_path = tmp_path / "tasks.json", tmp_path / "submission.csv"
    done = run_cli("--model", str(model), "--source", str(folder), "--output", str(out), "--device", "cpu",
                   "--labelstudio", str(tasks), "--rle-csv", str(csv_path))
    assert done.returncode == 0, done.stderr
    assert f"written:     {tasks}" in done.stdout
    items = load_labelstudio(tasks, folder, CLASS_MAP, predictions=True)
    assert len(items) == 4
    seen = set()
    for item in items:
        mask = written_mask(out, item.image_path, folder)
        assert np.array_equal(item.mask, mask), item.image_path  # brush RLE: pixel-exact
        seen |= set(np.unique(mask).tolist())
    assert seen == {0, 1, 2}
    raw = json.loads(tasks.read_text())
    assert "/data/local-files/?d=sub/b.png" in [t["data"]["image"] for t in raw]  # the path relative to the source
    prediction = raw[0]["predictions"][0]
    assert prediction["model_version"] == "horses-tiny" and 0 < prediction["score"] <= 1
    assert {r["value"]["brushlabels"][0] for r in prediction["result"]} == {"horse", "rider"}
    assert next(t for t in raw if t["data"]["image"].endswith("empty.png"))["predictions"][0]["result"] == []
    rows = rle.read_rows(csv_path)
    assert sorted(rows) == ["a.png", "c.png", "empty.png", "sub/b.png"]
    assert csv_path.read_text().count("\n") == 1 + 4 * 2  # one row per (image, class), the empty ones too
    for image_id, classes in rows.items():
        mask = written_mask(out, folder / image_id, folder)
        assert np.array_equal(rle.class_mask(classes, mask.shape, image_id), mask)


def test_binary_model_rle_keeps_the_original_extension_and_labelstudio_its_one_label(tmp_path, folder):
    cv2.imwrite(str(folder / "sub" / "d.jpg"), cv2.imread(str(folder / "a.png")))
    out = tmp_path / "out"
    inference.main(["--model", str(build_model(tmp_path / "m.onnx", binary=True)), "--source", str(folder),
                    "--output", str(out), "--rle-csv", str(tmp_path / "s.csv"), "--labelstudio",
                    str(tmp_path / "t.json"), "--model-version", "v7", "--labelstudio-image-prefix", "s3://bucket/"])
    rows = rle.read_rows(tmp_path / "s.csv")
    assert "sub/d.jpg" in rows and all(set(classes) <= {1} for classes in rows.values())
    for image_id, classes in rows.items():
        assert np.array_equal(rle.class_mask(classes, (read_image(folder / image_id).shape[:2]), image_id),
                              written_mask(out, folder / image_id, folder) // 255)
    raw = json.loads((tmp_path / "t.json").read_text())
    assert raw[0]["data"]["image"] == "s3://bucket/a.png" and raw[0]["predictions"][0]["model_version"] == "v7"
    for item in load_labelstudio(tmp_path / "t.json", folder, predictions=True):
        assert np.array_equal(item.mask, written_mask(out, item.image_path, folder) // 255)


def test_labelstudio_config_names_and_polygons(tmp_path, folder):
    config = tmp_path / "config.xml"
    config.write_text('<View><Image name="img" value="$photo"/><BrushLabels name="paint" toName="img">'
                      '<Label value="horse"/><Label value="rider"/></BrushLabels><PolygonLabels name="poly" '
                      'toName="img"><Label value="horse"/><Label value="rider"/></PolygonLabels></View>')
    inference.main(["--model", str(build_model(tmp_path / "m.onnx")), "--source", str(folder), "--output",
                    str(tmp_path / "out"), "--labelstudio", str(tmp_path / "t.json"), "--labelstudio-config",
                    str(config), "--labelstudio-polygons"])
    task = json.loads((tmp_path / "t.json").read_text())[0]
    assert set(task["data"]) == {"photo"}
    results = task["predictions"][0]["result"]
    assert {(r["from_name"], r["to_name"], r["type"]) for r in results} == {
        ("paint", "img", "brushlabels"), ("poly", "img", "polygonlabels")}


def test_gated_clean_image_gets_an_empty_prediction(tmp_path):
    src = tmp_path / "src"
    dark = np.zeros((40, 60, 3), np.uint8)
    dark[5:15, 5:20] = (255, 0, 0)  # a horse the segmenter would find, on an image the gate calls clean
    write_png(src / "dark.png", dark)
    write_png(src / "bright.png", np.full((40, 60, 3), (255, 0, 0), np.uint8))
    model = build_model(tmp_path / "m.onnx")
    assert inference.Segmenter(model, device="cpu").predict(dark).mask.any()
    inference.main(["--model", str(model), "--gate", str(build_gate_onnx(tmp_path / "gate.onnx")), "--source",
                    str(src), "--output", str(tmp_path / "out"), "--labelstudio", str(tmp_path / "t.json"),
                    "--rle-csv", str(tmp_path / "s.csv")])
    raw = json.loads((tmp_path / "t.json").read_text())
    tasks = {t["data"]["image"].rsplit("=", 1)[-1]: t["predictions"][0] for t in raw}
    assert tasks["dark.png"]["result"] == [] and tasks["bright.png"]["result"]
    assert rle.read_rows(tmp_path / "s.csv")["dark.png"] == {}


def test_interrupted_run_still_writes_what_it_did(tmp_path, folder, monkeypatch):
    class Interrupt:
        def __init__(self, label):
            pass

        def __call__(self, done, total):
            if done == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(inference, "ProgressBar", Interrupt)
    for i in range(12):  # more images than the reader, the model and the writer hold in flight at once
        write_png(folder / f"more{i:02d}.png", cv2.imread(str(folder / "a.png")))
    total = len(list(folder.rglob("*.png")))
    with pytest.raises(KeyboardInterrupt):
        inference.main(["--model", str(build_model(tmp_path / "m.onnx")), "--source", str(folder), "--output",
                        str(tmp_path / "out"), "--labelstudio", str(tmp_path / "t.json"), "--rle-csv",
                        str(tmp_path / "s.csv")])
    # what was written before the stop, and the images already being written when it came: every mask on disk, and
    # no image the run never reached
    masks = sorted(p.name for p in (tmp_path / "out" / "masks").rglob("*.png"))
    assert 2 <= len(masks) < total
    assert len(json.loads((tmp_path / "t.json").read_text())) == len(masks)
    assert len(rle.read_rows(tmp_path / "s.csv")) == len(masks)


def test_no_background_model_writes_every_class_one_up(tmp_path):
    src = tmp_path / "src"
    image = np.zeros((30, 40, 3), np.uint8)
    image[:, 20:] = (255, 0, 0)
    write_png(src / "x.png", image)
    model = build_model(tmp_path / "m.onnx", {"background": False})
    inference.main(["--model", str(model), "--source", str(src), "--output", str(tmp_path / "out"), "--class-names",
                    "wall,sky,tree", "--rle-csv", str(tmp_path / "s.csv"), "--labelstudio", str(tmp_path / "t.json")])
    mask = cv2.imread(str(tmp_path / "out" / "masks" / "x.png"), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(mask)) == {0, 1}
    rows = rle.read_rows(tmp_path / "s.csv")["x.png"]
    assert np.array_equal(rle.class_mask(rows, mask.shape, "x"), mask + 1)  # ClassId k is class k-1
    items = load_labelstudio(tmp_path / "t.json", src, {"wall": 0, "sky": 1, "tree": 2}, predictions=True)
    assert np.array_equal(items[0].mask, mask)


@pytest.mark.parametrize("kwargs, match", [
    ({"labelstudio_config": "nope.xml", "labelstudio": "t.json"}, "no such file"),
    ({"labelstudio_polygons": True}, "need --labelstudio"),
    ({"rle_csv": "."}, "is a folder"),
])
def test_writer_options_fail_before_the_model_loads(kwargs, match):
    with pytest.raises(UserError, match=match):
        WriterOptions(**kwargs)


def test_writers_refuse_videos_and_ray(tmp_path):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (32, 32))
    writer.write(np.zeros((32, 32, 3), np.uint8))
    writer.release()
    model = build_model(tmp_path / "m.onnx")
    with pytest.raises(UserError, match="one entry per image"):
        inference.main(["--model", str(model), "--source", str(video), "--output", str(tmp_path / "o"),
                        "--rle-csv", str(tmp_path / "s.csv")])
    with pytest.raises(UserError, match="--engine local"):
        inference.main(["--model", str(model), "--source", str(tmp_path), "--output", str(tmp_path / "o2"),
                        "--labelstudio", str(tmp_path / "t.json"), "--engine", "ray"])


def test_model_version_is_the_stem_and_the_metadata_name():
    assert model_version("runs/horses.onnx", {"name": "tiny"}) == "horses-tiny"
    assert model_version("runs/horses.onnx", {"name": "horses"}) == "horses" == model_version("horses.onnx", {})
    assert model_version(None, {}) == "otsu"
