"""training/sources/: the sample contract (unique keys, class ids at the image's size, void) and what each reader
refuses; the pixel-exact cases are tests/oddsets.py's, the codecs tests/test_formats.py's."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest

from training.sources import Source, collect_sources, unique_keys
from training.sources.folders import pair_by_stem
from training.sources.rle import rle_sources
from utils import UserError

pytest.importorskip("pycocotools", reason="make install puts pycocotools in .venv (requirements-train.txt)")
from training.sources.coco import coco_sources  # noqa: E402
from training.sources.yolo import yolo_sources  # noqa: E402


def image(path, h=12, w=16, value=90):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), value, np.uint8))
    return path


def test_keys_are_stems_unless_stems_collide(tmp_path):
    paths = [tmp_path / "a.jpg", tmp_path / "dup.jpg", tmp_path / "dup.png", tmp_path / "s1" / "x.jpg",
             tmp_path / "s2" / "x.jpg"]
    assert unique_keys(paths, tmp_path) == ["a", "dup.jpg", "dup.png", "s1/x.jpg", "s2/x.jpg"]


def test_an_rle_source_loads_without_being_given_the_shape(tmp_path):
    """training/scoring.py once called load_mask without `shape`: every RLE run crashed after its first fold."""
    source = Source("a", image(tmp_path / "a.png", 8, 6), rle=((1, "1 3"),))
    mask = source.load_mask(1)
    assert mask.shape == (8, 6) and mask[:3, 0].all() and mask.sum() == 3


def test_mask_folder_inside_the_image_folder_is_not_read_as_images(tmp_path):
    image(tmp_path / "a.jpg")
    (tmp_path / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), np.zeros((12, 16), np.uint8))
    (source,) = pair_by_stem(tmp_path, tmp_path / "masks")
    assert source.image_path.name == "a.jpg" and source.mask_path.name == "a.png"


def test_images_sharing_a_stem_and_one_mask_are_refused(tmp_path):
    image(tmp_path / "images" / "dup.jpg")
    image(tmp_path / "images" / "dup.png")
    (tmp_path / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "masks" / "dup.png"), np.zeros((12, 16), np.uint8))
    with pytest.raises(UserError, match=r"two images share the stem 'dup' .* one mask"):
        pair_by_stem(tmp_path / "images", tmp_path / "masks")


def test_files_that_are_not_read_are_named(tmp_path, caplog):
    image(tmp_path / "images" / "a.jpg")
    (tmp_path / "images" / "b.gif").write_bytes(b"GIF89a")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    (tmp_path / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), np.zeros((12, 16), np.uint8))
    with caplog.at_level(logging.WARNING, logger="seg"):
        pair_by_stem(tmp_path / "images", tmp_path / "masks")
    assert "1 files in" in caplog.text and "b.gif" in caplog.text and "notes.txt" not in caplog.text


def test_rle_images_of_one_stem_get_their_own_keys(tmp_path):
    image(tmp_path / "dup.jpg")
    image(tmp_path / "dup.png")
    (tmp_path / "t.csv").write_text("ImageId,ClassId,EncodedPixels\ndup.png,1,1 4\n")
    sources = {s.key: s for s in rle_sources(tmp_path / "t.csv", tmp_path, 1)}
    assert sorted(sources) == ["dup.jpg", "dup.png"]
    assert sources["dup.png"].load_mask(1).sum() == 4 and not sources["dup.jpg"].load_mask(1).any()


def test_one_source_of_masks_at_a_time(tmp_path):
    image(tmp_path / "a.jpg")
    with pytest.raises(UserError, match="RAW_MASK_DIR and RAW_COCO_JSON are set together"):
        collect_sources(str(tmp_path), str(tmp_path), None, raw_coco_json="c.json")


# ----------------------------------------------------------------------------- COCO


def coco(tmp_path, categories=("horse",), anns=(), images=({"id": 1, "file_name": "a.jpg", "height": 12,
                                                             "width": 16},)):
    image(tmp_path / "images" / "a.jpg")
    data = {"images": list(images), "annotations": list(anns),
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(categories)]}
    (tmp_path / "coco.json").write_text(json.dumps(data))
    return tmp_path / "coco.json", tmp_path / "images"


def test_coco_categories_must_fit_classes(tmp_path):
    json_path, images = coco(tmp_path, ("horse", "rider"))
    with pytest.raises(UserError, match=r"2 categories \(horse, rider\) but CLASSES=2; set --classes 3"):
        coco_sources(json_path, images, 2)
    assert len(coco_sources(json_path, images, 3)) == 1


def test_coco_images_missing_from_the_folder_are_listed(tmp_path):
    json_path, images = coco(tmp_path, images=[{"id": 1, "file_name": "a.jpg", "height": 12, "width": 16},
                                               {"id": 2, "file_name": "sub/gone.jpg", "height": 12, "width": 16}])
    with pytest.raises(UserError, match=r"lists 1 images not under RAW_IMG_DIR.*sub/gone\.jpg"):
        coco_sources(json_path, images, 1)


def test_coco_polygons_of_two_points_are_skipped_and_counted(tmp_path, caplog):
    ann = {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [[1, 1, 5, 5], [0, 0, 8, 0, 8, 8]]}
    json_path, images = coco(tmp_path, anns=[ann])
    with caplog.at_level(logging.WARNING, logger="seg"):
        (source,) = coco_sources(json_path, images, 1)
    assert source.load_mask(1).sum() > 0 and "fewer than 3 points" in caplog.text


def test_not_a_coco_file_says_what_it_needs(tmp_path):
    (tmp_path / "x.json").write_text("[]")
    with pytest.raises(UserError, match="not a COCO instances file"):
        coco_sources(tmp_path / "x.json", tmp_path, 1)


# ----------------------------------------------------------------------------- YOLO


def yolo(tmp_path, label: str, names="[horse]"):
    image(tmp_path / "train" / "images" / "a.jpg")
    (tmp_path / "train" / "labels").mkdir(parents=True)
    (tmp_path / "train" / "labels" / "a.txt").write_text(label)
    (tmp_path / "data.yaml").write_text(f"train: ../train/images\nval: ../train/images\nnames: {names}\n")
    return tmp_path / "data.yaml"


@pytest.mark.parametrize("label, words", [
    ("0 0.1 0.1 1.5 0.1 0.5 0.5\n", "coordinates outside 0-1"),
    ("0 0.1 0.1 0.5\n", "has 3 coordinates"),
    ("3 0.1 0.1 0.5 0.1 0.5 0.5\n", r"use class 3 but names has 1 entries"),
    ("x 0.1 0.1 0.5 0.1 0.5 0.5\n", "is not numbers"),
])
def test_yolo_labels_that_are_not_segments_stop_with_one_line(tmp_path, label, words):
    with pytest.raises(UserError, match=words):
        yolo_sources(yolo(tmp_path, label), 1)


def test_yolo_roboflow_paths_and_names_map_by_name(tmp_path):
    data = yolo(tmp_path, "1 0.0 0.0 1.0 0.0 1.0 1.0 0.0 1.0\n", names="[horse, rider]")
    (source,) = yolo_sources(data, 3, ["background", "rider", "horse"])
    assert set(np.unique(source.load_mask(3))) == {1}  # rider is class 1 by name, not 2 by order
    with pytest.raises(UserError, match=r"\['rider'\] not among them"):
        yolo_sources(data, 2, ["background", "horse"])
