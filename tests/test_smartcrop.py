"""training/smartcrop.py and the crop-aware cache: missing weights, cache invalidation, the real ultralytics path,
bad inputs, and train -> export -> inference end to end."""

from __future__ import annotations

import csv
import json
import logging
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import ROOT, tiny_argv, write_blobs
from hostile import encode, exif_jpeg, rect

from config import load_config
from dataset import MANIFEST_NAME, build_cache
from training.sources import Source
from training.sources.folders import pair_by_stem
from runtime.crop import CropSettings, crop_from_masks, crop_square
from utils import UserError, read_mask


class FakeCropper:
    """SmartCropper's interface without YOLO: the 'person' is every bright pixel."""

    def __init__(self, settings: CropSettings, detector_hash: str = "fake-detector"):
        self.settings, self.detector_hash, self.calls = settings, detector_hash, 0

    def crop(self, image):
        self.calls += 1
        person = image.mean(axis=2) > 200
        return crop_from_masks(image, person[None], np.ones(1), self.settings)


def crop_counts(caplog) -> tuple[int, int, int]:
    """(computed, cached, fallback) from the last 'crop: ...' log line."""
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("crop: ")][-1]
    return tuple(int(v) for v in re.match(r"crop: (\d+) computed, (\d+) cached, (\d+) fallback", line).groups())


def settings(**kw) -> CropSettings:
    return CropSettings(**{"mode": "person", "roi_factor": 2.0, "min_size": 16, "input_size": 64, **kw})


# ----------------------------------------------------------------------------- missing weights


def test_missing_weights_fail_at_start_with_where_to_put_them(tmp_path):
    argv = ["--crop", "person", "--crop-model", str(tmp_path / "weights" / "yolo11n-seg.pt")]
    with pytest.raises(UserError, match=r"CROP=person needs YOLO11-seg weights at CROP_MODEL=.*yolo11n-seg\.pt.*put"):
        load_config(argv, environ={})
    assert load_config([], environ={}).crop == "off"  # the default needs no weights


def test_missing_weights_cli_is_one_line_and_exit_2(tmp_path):
    data = write_blobs(tmp_path / "data", 2)
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *tiny_argv(data, tmp_path / "work"),
                           "--crop", "person"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "weights/yolo11n-seg.pt" in lines[0] and "nothing is downloaded" in lines[0]
    assert not (tmp_path / "weights").exists() and not (tmp_path / "work").exists()


def test_smartcropper_never_hands_a_missing_name_to_ultralytics(tmp_path, monkeypatch):
    import ultralytics

    from training import smartcrop

    monkeypatch.setattr(ultralytics, "YOLO", lambda *a, **k: pytest.fail("YOLO() called: it would download"))
    with pytest.raises(UserError, match="yolo11n-seg.pt"):
        smartcrop.SmartCropper("yolo11n-seg.pt", settings())


def test_importing_smartcrop_leaves_the_environment_alone():
    """The offline switches are set when ultralytics is imported for a detector, not at import of smartcrop."""
    code = "import os, training.smartcrop; print(sorted(k for k in os.environ if k.startswith('YOLO_')))"
    env = {"PATH": "", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- cache


def test_cache_recomputes_only_what_changed(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="seg")
    data = write_blobs(tmp_path / "data", 8)
    work = tmp_path / "work"
    cropper = FakeCropper(settings())
    entries = build_cache(pair_by_stem(data / "images", data / "masks"), work, 64, cropper=cropper)
    computed, cached, fallback = crop_counts(caplog)
    assert (computed, cached, cropper.calls) == (8, 0, 8) and len(entries) == 8
    assert fallback == 2  # img_000 and img_004 have no bright disc: no person

    cropper.calls = 0  # same data, same settings: no detection at all
    build_cache(pair_by_stem(data / "images", data / "masks"), work, 64, cropper=cropper)
    assert crop_counts(caplog)[:2] == (0, 8) and cropper.calls == 0

    image = cv2.imread(str(data / "images" / "img_003.jpg"))
    image[0, 0] = 255 - image[0, 0]  # one source changes
    cv2.imwrite(str(data / "images" / "img_003.jpg"), image)
    build_cache(pair_by_stem(data / "images", data / "masks"), work, 64, cropper=cropper)
    assert crop_counts(caplog)[:2] == (1, 7) and cropper.calls == 1

    build_cache(pair_by_stem(data / "images", data / "masks"), work, 64, cropper=FakeCropper(settings(roi_factor=3.0)))
    assert crop_counts(caplog)[:2] == (8, 0)  # a crop setting changed: everything
    build_cache(pair_by_stem(data / "images", data / "masks"), work, 64,
                cropper=FakeCropper(settings(roi_factor=3.0), detector_hash="other"))
    assert crop_counts(caplog)[:2] == (8, 0)  # another detector file: everything


def test_manifest_rows_and_the_same_box_crops_the_mask(tmp_path):
    data = write_blobs(tmp_path / "data", 4)
    entries = build_cache(pair_by_stem(data / "images", data / "masks"), tmp_path / "work", 64,
                          cropper=FakeCropper(settings()))
    rows = json.loads((tmp_path / "work" / MANIFEST_NAME).read_text())["entries"]
    for entry in entries:
        row = rows[entry.key]
        assert {"source", "hash", "crop_box", "status", "settings"} <= set(row)
        assert row["settings"]["detector_hash"] == "fake-detector" and row["settings"]["crop"]["roi_factor"] == 2.0
        assert row["status"] in ("ok", "fallback") and tuple(row["crop_box"]) == entry.crop_box
        full = read_mask(data / "masks" / f"{entry.key}.png")
        expected = crop_square(full, entry.crop_box, 64, 0, nearest=True)
        np.testing.assert_array_equal(cv2.imread(str(entry.mask), cv2.IMREAD_GRAYSCALE), expected)
        if row["status"] == "ok":  # a disc image: the crop is centred on the disc, which the mask marks
            assert expected.sum() > 0


def test_bad_files_stay_errors_but_detector_failures_are_retried(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="seg")
    data = write_blobs(tmp_path / "data", 3)
    (data / "images" / "img_001.jpg").write_bytes(b"not an image")

    class Flaky(FakeCropper):
        def crop(self, image):
            if self.calls == 0:
                self.calls += 1
                raise RuntimeError("CUDA out of memory")
            return super().crop(image)

    cropper = Flaky(settings())
    entries = build_cache(pair_by_stem(data / "images", data / "masks"), tmp_path / "work", 64, cropper=cropper)
    rows = json.loads((tmp_path / "work" / MANIFEST_NAME).read_text())["entries"]
    assert [e.key for e in entries] == ["img_002"]
    assert rows["img_000"]["status"] == rows["img_001"]["status"] == "error"
    assert "out of memory" in rows["img_000"]["error"] and "cannot decode" in rows["img_001"]["error"]
    entries = build_cache(pair_by_stem(data / "images", data / "masks"), tmp_path / "work", 64, cropper=cropper)
    assert [e.key for e in entries] == ["img_000", "img_002"]  # the failure was retried, the bad file was not
    assert crop_counts(caplog)[:2] == (1, 2)


def test_bad_inputs_give_a_crop_or_an_error_row_and_the_run_goes_on(tmp_path, yolo_files):
    from training.smartcrop import SmartCropper

    files = {"grey.png": encode(rect(40, 60)[..., 0]), "rgba.png": encode(np.dstack([rect(40, 60), np.full((40, 60), 255, np.uint8)])),
             "exif6.jpg": exif_jpeg(rect(40, 60), 6), "tiny.png": encode(np.full((1, 1, 3), 200, np.uint8)),
             "broken.jpg": encode(rect(40, 60), ".jpg")[:200]}
    sources = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        hw = (60, 40) if name == "exif6.jpg" else (1, 1) if name == "tiny.png" else (40, 60)  # EXIF: shown upright
        sources.append(Source(name.split(".")[0], tmp_path / name, mask=np.ones(hw, np.uint8)))
    cropper = SmartCropper(yolo_files[0], settings(conf=1e-4))  # the real ultralytics path
    entries = build_cache(sources, tmp_path / "work", 64, cropper=cropper)
    rows = json.loads((tmp_path / "work" / MANIFEST_NAME).read_text())["entries"]
    assert {k: r["status"] != "error" for k, r in rows.items()} == {
        "grey": True, "rgba": True, "exif6": True, "tiny": True, "broken": False}
    assert "cannot decode image" in rows["broken"]["error"]
    assert [e.key for e in entries] == ["grey", "rgba", "exif6", "tiny"]
    for entry in entries:
        assert cv2.imread(str(entry.image)).shape == (64, 64, 3)
    x0, y0, x1, y1 = entries[2].crop_box  # found on the upright (40 wide, 60 tall) photo
    assert rows["exif6"]["status"] in ("ok", "fallback") and (rows["exif6"]["status"] == "ok" or (x1, y1) == (60, 60))


# ----------------------------------------------------------------------------- real ultralytics, end to end


@pytest.mark.slow  # ~40 s: two tiny folds plus the detector export
def test_train_export_infer_with_smart_crop(tmp_path, yolo_files, caplog):
    """The real path: SmartCropper on a yaml-built YOLO11n-seg .pt in train.py (cache reused on the second
    prepare), export writes <name>.detector.onnx and the crop metadata, inference.py crops with it."""
    import export
    import inference
    import train

    caplog.set_level(logging.INFO, logger="seg")
    data = write_blobs(tmp_path / "data", 6, size=(72, 96))
    argv = tiny_argv(data, tmp_path / "work", crop="person", crop_model=yolo_files[0], crop_conf=1e-4,
                     crop_min_size=32, folds=2)
    cfg = load_config(argv, environ={})
    train.prepare(cfg)
    assert crop_counts(caplog)[:2] == (6, 0)
    summary = train.run(cfg)  # prepares again: all cached
    assert crop_counts(caplog)[:2] == (0, 6)
    onnx_path = tmp_path / "work" / "model.onnx"
    assert summary["onnx"] == str(onnx_path) and (tmp_path / "work" / "model.detector.onnx").is_file()
    meta = export.read_metadata(onnx_path)
    assert meta["crop_mode"] == "person" and meta["detector"] == "model.detector.onnx"
    assert meta["crop"] == {"conf": 1e-4, "roi_factor": 2.5, "min_size": 32, "pad_value": 114, "input_size": 64}

    out = tmp_path / "preds"
    inference.main(["--model", str(onnx_path), "--source", str(data / "images"), "--output", str(out),
                    "--device", "cpu"])
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert len(rows) == 6 and all(r["crop_status"] in ("ok", "fallback") and len(r["crop_box"].split()) == 4
                                  for r in rows)
    manifest = json.loads((tmp_path / "work" / MANIFEST_NAME).read_text())["entries"]
    for row in rows:  # the runtime's numpy decoder finds the same box ultralytics found in training
        assert [int(v) for v in row["crop_box"].split()] == manifest[row["file"].split(".")[0]]["crop_box"]
        assert cv2.imread(str(out / "masks" / row["file"].replace(".jpg", ".png"))).shape[:2] == (72, 96)


def test_train_prepare_runs_ultralytics_once_then_reuses_the_cache(tmp_path, yolo_files, caplog):
    """train.py's cache step with the real SmartCropper on a yaml-built .pt: a second run detects nothing."""
    import train

    caplog.set_level(logging.INFO, logger="seg")
    data = write_blobs(tmp_path / "data", 4, size=(72, 96))
    cfg = load_config(tiny_argv(data, tmp_path / "work", crop="person", crop_model=yolo_files[0], crop_conf=1e-4,
                                crop_min_size=32), environ={})
    entries = train.prepare(cfg)[0]
    assert crop_counts(caplog)[:2] == (4, 0) and all(e.crop_box for e in entries)
    train.prepare(cfg)
    assert crop_counts(caplog)[:2] == (0, 4)
