"""Acceptance on the shared horse photos: COCO (pycocotools RLE), palette-PNG (Pillow) and YOLO-seg (Ultralytics'
converter) versions of real masks, written by the reference libraries through bench/horse_formats.py, read back
by the data check and cached pixel-equal to the PNG masks (YOLO: equal to Ultralytics' own reading of its labels)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from conftest import SHARED_DATA

HORSE = SHARED_DATA / "weizmann_horse"
pytestmark = pytest.mark.skipif(not (HORSE / "images" / "train").is_dir(), reason="needs ../shared/data/weizmann_horse")
pytest.importorskip("pycocotools", reason="make install puts pycocotools in .venv (requirements-train.txt)")


def formats(tmp_path, limit):
    from bench.horse_formats import write_formats

    return write_formats(HORSE / "images" / "train", HORSE / "masks" / "train", tmp_path / "data", limit)


def test_coco_palette_and_yolo_versions_of_real_masks_cache_as_the_png_masks(tmp_path):
    from bench.horse_formats import yolo_against_ultralytics
    from config import load_config
    from dataset import build_cache
    from training.datacheck import check_data
    from training.sources import sources_from_config

    caches = {}
    for name, flags in formats(tmp_path, limit=4).items():
        cfg = load_config([*flags, "--work-dir", str(tmp_path / name), "--input-size", "128"], environ={})
        sources = sources_from_config(cfg)
        report = check_data(cfg, sources)
        assert report["images"] == 4 and report["class_fractions"]["foreground"] > 0.1
        entries = build_cache(sources, tmp_path / name, 128)
        caches[name] = {e.key: cv2.imread(str(e.mask), cv2.IMREAD_GRAYSCALE) for e in entries}
    for name in ("coco", "palette"):
        assert caches[name].keys() == caches["png"].keys()
        assert all(np.array_equal(caches[name][k], caches["png"][k]) for k in caches["png"]), name
    yolo = yolo_against_ultralytics(tmp_path / "data" / "yolo" / "data.yaml", HORSE / "masks" / "train")
    assert yolo["equal_to_ultralytics"] == yolo["images"] == 4 and yolo["iou_to_png_min"] > 0.9


@pytest.mark.slow
def test_every_format_trains_and_caches_as_the_png_masks(tmp_path):
    """bench/horse_formats.py --limit 24 --train: four 1-epoch runs (~1 minute each on 2 cores)."""
    from bench.horse_formats import main

    main(["--limit", "24", "--train", "--work", str(tmp_path), "--out", str(tmp_path / "result.json")])
    result = json.loads((tmp_path / "result.json").read_text())["formats"]
    for name in ("coco", "palette"):
        assert result[name]["cached_masks_equal_png"] == result[name]["cached_masks"] == 24
    assert all(0 < result[name]["cv_dice"] <= 1 for name in result)
