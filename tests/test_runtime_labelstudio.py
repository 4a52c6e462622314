"""runtime/labelstudio.py: the brush RLE codec against label-studio-sdk's, and predictions Label Studio imports."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from training.sources.labelstudio import load_labelstudio
from runtime.labelstudio import (
    LabelConfig, check_labels, decode_brush_rle, decode_rle_values, encode_brush, encode_rle_values, label_config,
    parse_label_config, prediction_task,
)
from utils import UserError, dice_iou

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def sdk_brush():
    """label-studio-sdk's own converter/brush.py, loaded as a file: it needs only numpy and Pillow, while the
    package's __init__ pulls in its HTTP client (requirements-test.txt installs the SDK without its dependencies)."""
    spec = importlib.util.find_spec("label_studio_sdk")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("label-studio-sdk is not installed (make install puts it in .venv from requirements-test.txt)")
    path = Path(next(iter(spec.submodule_search_locations))) / "converter" / "brush.py"
    module_spec = importlib.util.spec_from_file_location("ls_sdk_brush", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def blob_mask(h=61, w=83, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), np.uint8)
    for _ in range(3):
        cv2.circle(mask, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(3, 20)), 1, -1)
    mask[0, :5] = 1  # runs of 1 and of every length class
    mask[-1, -1] = 1
    return mask


@pytest.mark.parametrize("shape", [(61, 83), (300, 300)])  # 300x300x4: one run longer than 65536 values
def test_our_brush_rle_is_byte_identical_to_the_sdk_and_decodes_both_ways(shape):
    brush = sdk_brush()
    mask = blob_mask(*shape) if shape[0] < 100 else np.ones(shape, np.uint8)
    ours = encode_brush(mask)
    assert ours == brush.mask2rle((mask * 255).astype(np.uint8))
    sdk_values = brush.decode_rle(ours)
    assert np.array_equal(sdk_values.reshape(*shape, 4)[:, :, 3] > 0, mask > 0)
    assert np.array_equal(decode_brush_rle(ours, *shape) > 0, mask > 0)


def test_rle_values_round_trip_with_literals_and_every_run_width():
    values = np.concatenate([np.arange(7, dtype=np.uint8), np.full(9, 3), np.full(200, 5), np.full(70000, 1),
                             [9]]).astype(np.uint8)
    assert np.array_equal(decode_rle_values(encode_rle_values(values)), values)


def test_the_real_label_studio_config_is_read():
    config = parse_label_config((SHARED_DATA / "labelstudio_brush" / "config.xml").read_text())
    assert (config.from_name, config.to_name, config.data_key, config.kind) == ("tag", "img", "image", "brushlabels")
    assert config.labels == ["Planet", "Moonwalker"]
    with pytest.raises(UserError, match="no <BrushLabels> or <PolygonLabels>"):
        parse_label_config("<View><Image name='i' value='$image'/></View>")


def test_class_names_must_be_labels_of_the_config():
    config = LabelConfig(labels=["horse", "rider"])
    assert check_labels(config, ["background", "horse", "rider"]) == ["horse", "rider"]
    assert check_labels(LabelConfig(labels=["Planet"]), ["foreground"]) == ["Planet"]  # binary: the one label
    with pytest.raises(UserError, match=r"\['cat'\] are not labels"):
        check_labels(config, ["background", "horse", "cat"])


def test_predictions_round_trip_pixel_exact_through_our_importer(tmp_path):
    names = ["background", "horse", "rider"]
    config = parse_label_config(label_config(names))
    images, tasks, truth = tmp_path / "images", [], {}
    images.mkdir()
    for i in range(3):
        mask = blob_mask(seed=i)
        mask[blob_mask(seed=10 + i) > 0] = 2
        cv2.imwrite(str(images / f"p{i}.png"), np.zeros((*mask.shape, 3), np.uint8))
        truth[f"p{i}.png"] = mask
        tasks.append(prediction_task(f"/data/local-files/?d=images/p{i}.png", mask, check_labels(config, names),
                                     config, "unet-v1", score=0.9))
    (tmp_path / "pre.json").write_text(json.dumps(tasks))
    assert tasks[0]["predictions"][0]["model_version"] == "unet-v1" and tasks[0]["predictions"][0]["score"] == 0.9
    assert load_labelstudio(tmp_path / "pre.json", images, {"horse": 1, "rider": 2}) == []  # nobody reviewed them
    items = load_labelstudio(tmp_path / "pre.json", images, {"horse": 1, "rider": 2}, predictions=True)
    assert len(items) == 3
    for item in items:
        assert np.array_equal(item.mask, truth[item.image_path.name])


def test_polygons_cover_the_mask(tmp_path):
    mask = np.zeros((80, 120), np.uint8)
    cv2.circle(mask, (60, 40), 25, 1, -1)
    config = parse_label_config(label_config(["foreground"], polygons=True))
    task = prediction_task("x.png", mask, ["foreground"], config, "v", polygons=True)
    kinds = [r["type"] for r in task["predictions"][0]["result"]]
    assert kinds == ["brushlabels", "polygonlabels"]
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "x.png"), np.zeros((80, 120, 3), np.uint8))
    polygon_only = {**task, "predictions": [{"result": task["predictions"][0]["result"][1:]}]}
    (tmp_path / "p.json").write_text(json.dumps([polygon_only]))
    [item] = load_labelstudio(tmp_path / "p.json", tmp_path / "images", predictions=True)
    assert dice_iou(item.mask, mask)[0] > 0.97


def test_writer_uses_the_projects_config_and_scores_each_prediction(tmp_path):
    from runtime.labelstudio import LabelStudioWriter

    xml = (SHARED_DATA / "labelstudio_brush" / "config.xml").read_text()
    writer = LabelStudioWriter(tmp_path / "out" / "pre.json", ["Planet"], xml, model_version="m1",
                               image_prefix="/data/local-files/?d=batch2/")
    mask = blob_mask()
    probs = np.where(mask > 0, 0.8, 0.1).astype(np.float32)[None]
    writer.add("sub/a.png", mask, probs)
    writer.add("b.png", np.zeros_like(mask), probs)
    writer.close()
    tasks = json.loads((tmp_path / "out" / "pre.json").read_text())
    assert [t["data"]["image"] for t in tasks] == ["/data/local-files/?d=batch2/sub/a.png", "/data/local-files/?d=batch2/b.png"]
    [result] = tasks[0]["predictions"][0]["result"]
    assert (result["from_name"], result["to_name"], result["value"]["brushlabels"]) == ("tag", "img", ["Planet"])
    assert tasks[0]["predictions"][0]["score"] == pytest.approx(0.8) and tasks[1]["predictions"][0]["result"] == []
    with pytest.raises(UserError, match="is a folder"):
        LabelStudioWriter(tmp_path, ["foreground"])


def test_writer_url_encodes_references_as_label_studio_does(tmp_path):
    from urllib.parse import quote

    from runtime.labelstudio import LabelStudioWriter

    writer = LabelStudioWriter(tmp_path / "tasks.json", ["foreground"])
    names = ["sub/a+b c.jpg", "c&d.jpg", "e#f.jpg", "h%20.jpg"]
    for name in names:
        writer.add(name, np.zeros((4, 4), np.uint8))
    writer.close()
    refs = [t["data"]["image"] for t in json.loads((tmp_path / "tasks.json").read_text())]
    # Label Studio's local-files storage: f"/data/local-files/?d={quote(relative_path)}"
    assert refs == [f"/data/local-files/?d={quote(n)}" for n in names]
    assert refs[0] == "/data/local-files/?d=sub/a%2Bb%20c.jpg"
