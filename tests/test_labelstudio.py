"""Tests for training/sources/labelstudio.py: real exports from ../shared/data plus tiny synthetic ones."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from training.sources.labelstudio import (
    decode_brush_rle,
    load_labelstudio,
    original_name,
    polygon_to_mask,
)
from utils import UserError, dice_iou, read_mask, write_png

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BRUSH_DIR = SHARED_DATA / "labelstudio_brush"
HORSE_DIR = SHARED_DATA / "weizmann_horse"
HORSE_EXPORT = SHARED_DATA / "weizmann_horse_labelstudio" / "project_export.json"


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not available: {path.name} (expected under ../shared/data next to the repo)")
    return path


# ----------------------------------------------------------------------------- helpers


def encode_rle(values: np.ndarray) -> list[int]:
    """Minimal rle-pack encoder (word size 8, run widths 3/4/8/16): repeat runs and literals."""
    bits: list[str] = []

    def put(value: int, width: int) -> None:
        bits.append(format(value, f"0{width}b"))

    put(len(values), 32)
    put(8 - 1, 5)
    for width in (3, 4, 8, 16):
        put(width - 1, 4)
    values = [int(v) for v in values]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i] and j + 1 - i < 65535:
            j += 1
        run = j - i + 1
        if run >= 2:
            put(1, 1), put(3, 2), put(run - 1, 16), put(values[i], 8)
        else:  # literal run of one word, width index 0 (3 bits)
            put(0, 1), put(0, 2), put(0, 3), put(values[i], 8)
        i = j + 1
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    return [int(stream[k : k + 8], 2) for k in range(0, len(stream), 8)]


def rgba_with_alpha(alpha: np.ndarray) -> np.ndarray:
    rgba = np.zeros(alpha.shape + (4,), dtype=np.uint8)
    rgba[..., 0] = 200  # colour present, as Label Studio paints it; only alpha must matter
    rgba[..., 3] = alpha
    return rgba.ravel()


def brush_result(alpha: np.ndarray, label: str) -> dict:
    h, w = alpha.shape
    return {
        "type": "brushlabels",
        "original_width": w,
        "original_height": h,
        "value": {"format": "rle", "rle": encode_rle(rgba_with_alpha(alpha)), "brushlabels": [label]},
    }


def polygon_result(points, label: str, w: int, h: int) -> dict:
    return {
        "type": "polygonlabels",
        "original_width": w,
        "original_height": h,
        "value": {"points": points, "polygonlabels": [label]},
    }


def write_export(tmp_path: Path, tasks: list) -> Path:
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    return path


def make_images(tmp_path: Path, names, h: int = 20, w: int = 30) -> Path:
    image_dir = tmp_path / "images"
    for name in names:
        write_png(image_dir / "nested" / name, np.full((h, w, 3), 128, np.uint8))
    return image_dir


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def brush_task() -> dict:
    with open(require(BRUSH_DIR / "project_export.json"), encoding="utf-8") as fh:
        return json.load(fh)[0]


def test_real_brush_rle_decodes_to_reference(brush_task):
    result = brush_task["annotations"][0]["result"][0]
    alpha = decode_brush_rle(result["value"]["rle"], result["original_height"], result["original_width"])
    reference_alpha = cv2.imread(str(require(BRUSH_DIR / "decoded_alpha_Planet.png")), cv2.IMREAD_UNCHANGED)
    reference_mask = cv2.imread(str(BRUSH_DIR / "decoded_mask_Planet_gt0.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(alpha, reference_alpha)
    assert set(np.unique(reference_mask)) == {0, 255}
    assert np.array_equal(np.where(alpha > 0, 255, 0).astype(np.uint8), reference_mask)
    assert int((alpha > 0).sum()) == 260_411


@pytest.mark.parametrize("class_map, class_id", [(None, 1), ({"Moonwalker": 1, "Planet": 2}, 2)])
def test_real_brush_export_loads_against_stand_in_image(tmp_path, class_map, class_id):
    # The photo itself is not in the shared data; a blank one of the annotated size stands in.
    reference = read_mask(require(BRUSH_DIR / "decoded_mask_Planet_gt0.png"))
    cv2.imwrite(str(tmp_path / "planet.jpg"), np.zeros(reference.shape + (3,), np.uint8))
    items = load_labelstudio(BRUSH_DIR / "project_export.json", tmp_path, class_map)
    assert len(items) == 1 and items[0].image_path.name == "planet.jpg"
    assert np.array_equal(items[0].mask, reference * class_id)


def test_frontend_task_without_original_size_loads(tmp_path):
    # annotations_1.json is one task object (not a list) and its result has no original size.
    reference = read_mask(require(BRUSH_DIR / "decoded_mask_Planet_gt0.png"))
    name = "nick-owuor-astro-nic-visuals-wDifg5xc9Z4-unsplash.jpg"
    cv2.imwrite(str(tmp_path / name), np.zeros(reference.shape + (3,), np.uint8))
    items = load_labelstudio(require(BRUSH_DIR / "annotations_1.json"), tmp_path)
    assert [i.image_path.name for i in items] == [name]
    assert np.array_equal(items[0].mask, reference)


def test_real_brush_export_rejects_image_of_other_size(tmp_path):
    require(BRUSH_DIR / "project_export.json")
    cv2.imwrite(str(tmp_path / "planet.jpg"), np.zeros((2800, 2242, 3), np.uint8))
    with pytest.raises(UserError, match=r"2242x2802.*2242x2800"):
        load_labelstudio(BRUSH_DIR / "project_export.json", tmp_path)


def test_horse_polygon_export_matches_real_masks():
    items = load_labelstudio(require(HORSE_EXPORT), require(HORSE_DIR / "images" / "val"))
    val_names = sorted(p.name for p in (HORSE_DIR / "images" / "val").iterdir())
    assert sorted(item.image_path.name for item in items) == val_names
    dices = []
    for item in items:
        target = read_mask(HORSE_DIR / "masks" / "val" / f"{item.image_path.stem}.png")
        assert item.mask.shape == target.shape and set(np.unique(item.mask)) <= {0, 1}
        dices.append(dice_iou(item.mask, target)[0])
    # Measured: mean 0.9976, min 0.985 (outer contours cannot carry the holes).
    assert np.mean(dices) >= 0.99
    assert min(dices) >= 0.97


# ----------------------------------------------------------------------------- brush RLE


@pytest.mark.parametrize(
    "alpha",
    [
        np.zeros((3, 5), np.uint8),
        np.arange(15, dtype=np.uint8).reshape(3, 5) * 17,  # all literals
        np.pad(np.full((4, 4), 255, np.uint8), 3),  # long repeat runs
    ],
)
def test_decode_brush_rle_returns_alpha(alpha):
    decoded = decode_brush_rle(encode_rle(rgba_with_alpha(alpha)), *alpha.shape)
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, alpha)


def test_decode_brush_rle_length_mismatch_names_both_lengths():
    rle = encode_rle(rgba_with_alpha(np.zeros((4, 6), np.uint8)))  # 96 values
    with pytest.raises(UserError, match=r"decodes to 96 values.*needs 100"):
        decode_brush_rle(rle, 5, 5)


def test_decode_brush_rle_truncated_stream():
    rle = encode_rle(rgba_with_alpha(np.arange(12, dtype=np.uint8).reshape(3, 4)))
    with pytest.raises(UserError, match="truncated"):
        decode_brush_rle(rle[: len(rle) // 2], 3, 4)


# ----------------------------------------------------------------------------- polygons and names


def test_polygon_to_mask_square_in_percent():
    mask = polygon_to_mask([[25, 25], [75, 25], [75, 75], [25, 75]], height=100, width=200)
    expected = np.zeros((100, 200), np.uint8)
    expected[25:76, 50:151] = 1  # fillPoly includes the boundary pixels
    assert mask.dtype == np.uint8 and np.array_equal(mask, expected)


@pytest.mark.parametrize(
    "reference, name",
    [
        ("/data/upload/3/792e1e47-horse251.jpg", "horse251.jpg"),
        ("/data/upload/1/planet.jpg", "planet.jpg"),
        ("http://localhost:8080/data/upload/12/DEADBEEF-a%20b.png", "a b.png"),
        ("/data/local-files/?d=datasets/skin/img%20001.png", "img 001.png"),
        ("https://bucket.s3.amazonaws.com/dir/photo%2B1.jpg?X-Amz-Signature=abc", "photo+1.jpg"),
        ("s3://bucket/raw/x.tif", "x.tif"),
        ("C:\\data\\set\\img 7.bmp", "img 7.bmp"),
        ("raw/images/0123abcd-kept.jpg", "0123abcd-kept.jpg"),  # prefix only stripped for uploads
        ("plain.jpeg", "plain.jpeg"),
    ],
)
def test_original_name(reference, name):
    assert original_name(reference) == name


# ----------------------------------------------------------------------------- load_labelstudio


def test_load_picks_latest_annotation_skips_unannotated_and_paints_in_order(tmp_path):
    w, h = 30, 20
    image_dir = make_images(tmp_path, ["a.png", "b.png", "c.png"], h, w)
    full = [[0, 0], [100, 0], [100, 100], [0, 100]]
    left = [[0, 0], [50, 0], [50, 100], [0, 100]]
    alpha = np.zeros((h, w), np.uint8)
    alpha[:, 20:] = 255
    tasks = [
        {
            "id": 1,
            "data": {"image": "/data/upload/1/0a1b2c3d-a.png"},
            "annotations": [
                {"id": 10, "created_at": "2024-01-01T00:00:00Z", "result": [polygon_result(full, "cat", w, h)]},
                {"id": 11, "created_at": "2024-02-01T00:00:00Z",
                 "result": [polygon_result(left, "cat", w, h), brush_result(alpha, "dog")]},
                {"id": 12, "created_at": "2024-03-01T00:00:00Z", "was_cancelled": True, "result": []},
            ],
        },
        {"id": 2, "data": {"image": "/data/upload/1/0a1b2c3d-b.png"}, "annotations": []},
        {"id": 3, "data": {"image": "/data/upload/1/0a1b2c3d-c.png"}, "annotations": [{"result": []}]},
    ]
    items = load_labelstudio(write_export(tmp_path, tasks), image_dir, {"cat": 1, "dog": 2})
    assert [(i.task_id, i.image_path.name) for i in items] == [(1, "a.png"), (3, "c.png")]
    expected = np.zeros((h, w), np.uint8)
    expected[:, : round(w / 2) + 1] = 1
    expected[:, 20:] = 2  # the later brush paints over the polygon
    assert np.array_equal(items[0].mask, expected)
    assert not items[1].mask.any() and items[1].mask.shape == (h, w)


def test_load_binary_maps_every_label_to_one(tmp_path):
    image_dir = make_images(tmp_path, ["a.png"])
    square = [[10, 10], [40, 10], [40, 40], [10, 40]]
    result = [polygon_result(square, "x", 30, 20), polygon_result([[60, 60], [90, 60], [90, 90]], "y", 30, 20)]
    items = load_labelstudio(write_export(tmp_path, [{"id": 1, "data": {"image": "a.png"},
                                                      "annotations": [{"result": result}]}]), image_dir)
    assert set(np.unique(items[0].mask)) == {0, 1}


def test_unknown_label_lists_known_labels(tmp_path):
    image_dir = make_images(tmp_path, ["a.png"])
    task = {"id": 7, "data": {"image": "a.png"},
            "annotations": [{"result": [polygon_result([[0, 0], [50, 0], [50, 50]], "scratch", 30, 20)]}]}
    with pytest.raises(UserError, match=r"task 7.*'scratch'.*\['dent', 'rust'\]"):
        load_labelstudio(write_export(tmp_path, [task]), image_dir, {"rust": 1, "dent": 2})


def test_missing_image_names_task_name_and_folder(tmp_path):
    image_dir = make_images(tmp_path, ["a.png"])
    task = {"id": 42, "data": {"image": "/data/upload/3/792e1e47-horse999.jpg"}, "annotations": [{"result": []}]}
    with pytest.raises(UserError, match=r"task 42.*'horse999\.jpg'.*images"):
        load_labelstudio(write_export(tmp_path, [task]), image_dir)


def test_polygon_size_mismatch_raises(tmp_path):
    image_dir = make_images(tmp_path, ["a.png"], h=20, w=30)
    task = {"id": 1, "data": {"image": "a.png"},
            "annotations": [{"result": [polygon_result([[0, 0], [50, 0], [50, 50]], "x", 20, 30)]}]}
    with pytest.raises(UserError, match=r"20x30.*30x20.*EXIF"):
        load_labelstudio(write_export(tmp_path, [task]), image_dir)


@pytest.mark.parametrize(
    "content",
    [
        '{"images": [], "annotations": [], "categories": []}',  # COCO
        '[{"image": "a.png", "label": []}]',  # JSON-MIN
        '["a.png"]',
        "{not json",
    ],
)
def test_not_a_labelstudio_export(tmp_path, content):
    path = tmp_path / "export.json"
    path.write_text(content)
    with pytest.raises(UserError, match=str(path.name)):
        load_labelstudio(path, make_images(tmp_path, ["a.png"]))


def test_missing_json_path(tmp_path):
    with pytest.raises(UserError, match="not found.*nope.json"):
        load_labelstudio(tmp_path / "nope.json", tmp_path)


# ----------------------------------------------------------------------------- untrusted exports


@pytest.mark.parametrize("reference", [
    "../../outside/a.png", "/etc/outside/a.png", "https://evil.example.com/x/a.png?raw=1", "C:\\Users\\x\\a.png",
    "/data/local-files/?d=../../outside/a.png", "s3://bucket/../a.png",
])
def test_image_reference_outside_the_folder_resolves_by_name_inside_it(tmp_path, reference):
    image_dir = make_images(tmp_path, ["a.png"])
    write_png(tmp_path / "outside" / "a.png", np.zeros((5, 5, 3), np.uint8))  # must never be read
    task = {"id": 3, "data": {"image": reference}, "annotations": [{"result": []}]}
    items = load_labelstudio(write_export(tmp_path, [task]), image_dir)
    assert items[0].image_path == image_dir / "nested" / "a.png" and items[0].mask.shape == (20, 30)


@pytest.mark.parametrize("reference", ["../../etc/passwd", "https://evil.example.com/", "/data/upload/1/.."])
def test_reference_to_a_file_not_in_the_folder_is_refused(tmp_path, reference):
    image_dir = make_images(tmp_path, ["a.png"])
    task = {"id": 9, "data": {"image": reference}, "annotations": [{"result": []}]}
    with pytest.raises(UserError, match=r"task 9: (image .* not found in|no image reference)"):
        load_labelstudio(write_export(tmp_path, [task]), image_dir)


@pytest.mark.parametrize("rle, message", [
    ([1, 2, 3], "truncated"), ("not a list", "byte values"), ([300, 1], "byte values"), (None, "byte values"),
])
def test_malformed_rle_names_the_task(tmp_path, rle, message):
    image_dir = make_images(tmp_path, ["a.png"])
    result = brush_result(np.zeros((20, 30), np.uint8), "x")
    result["value"]["rle"] = rle
    task = {"id": 1234, "data": {"image": "a.png"}, "annotations": [{"result": [result]}]}
    with pytest.raises(UserError, match=rf"task 1234, brushlabels result .*{message}"):
        load_labelstudio(write_export(tmp_path, [task]), image_dir)


def test_malformed_polygon_names_the_task(tmp_path):
    image_dir = make_images(tmp_path, ["a.png"])
    task = {"id": 77, "data": {"image": "a.png"},
            "annotations": [{"result": [polygon_result([["x", 0], [50, 0], [50, 50]], "x", 30, 20)]}]}
    with pytest.raises(UserError, match=r"task 77, polygonlabels result .* malformed"):
        load_labelstudio(write_export(tmp_path, [task]), image_dir)


# ----------------------------------------------------------------------------- names, duplicates, predictions


def test_two_tasks_on_one_image_are_refused(tmp_path):
    image_dir = make_images(tmp_path, ["a.png"])
    tasks = [{"id": i, "data": {"image": "/data/upload/1/0a1b2c3d-a.png"}, "annotations": [{"result": []}]}
             for i in (4, 5)]
    with pytest.raises(UserError, match=r"tasks 4 and 5 both annotate .*a\.png: one would replace the other"):
        load_labelstudio(write_export(tmp_path, tasks), image_dir)


@pytest.mark.parametrize("reference, name", [
    ("/data/local-files/?d=data/a+b.jpg", "a+b.jpg"),  # written without URL-encoding: read as written
    ("/data/local-files/?d=data/c&d.jpg", "c&d.jpg"),
    ("/data/local-files/?d=data/e#f.jpg", "e#f.jpg"),
    ("/data/local-files/?d=data/a%2Bb.jpg", "a+b.jpg"),  # encoded, as Label Studio writes it
])
def test_references_not_url_encoded_still_find_their_file(tmp_path, reference, name):
    image_dir = make_images(tmp_path, [name])
    items = load_labelstudio(write_export(tmp_path, [{"id": 1, "data": {"image": reference},
                                                      "annotations": [{"result": []}]}]), image_dir)
    assert items[0].image_path.name == name


def test_a_reference_naming_two_files_two_ways_is_refused(tmp_path):
    image_dir = make_images(tmp_path, ["a b.jpg", "a+b.jpg"])
    task = {"id": 6, "data": {"image": "/data/local-files/?d=data/a+b.jpg"}, "annotations": [{"result": []}]}
    with pytest.raises(UserError, match=r"task 6: .*names 'a b\.jpg' \(URL-decoded.*'a\+b\.jpg' \(as written\)"):
        load_labelstudio(write_export(tmp_path, [task]), image_dir)


def test_a_file_of_predictions_only_says_predictions_are_not_trained_on(tmp_path):
    from training.sources.labelstudio import labelstudio_sources

    image_dir = make_images(tmp_path, ["a.png"])
    task = {"id": 1, "data": {"image": "a.png"}, "predictions": [{"result": [
        polygon_result([[0, 0], [50, 0], [50, 50]], "x", 30, 20)]}]}
    with pytest.raises(UserError, match=r"no annotated tasks .*1 tasks with regions hold model predictions only, "
                                         r"which are never trained on"):
        labelstudio_sources(write_export(tmp_path, [task]), image_dir)
