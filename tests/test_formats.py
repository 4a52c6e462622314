"""Every codec and reader of training data against a reference implementation, on random masks (hypothesis):

RLE CSV (an independent decoder of Kaggle's definition), Label Studio brush RLE (label-studio-sdk's own codec) and
polygons (an independent point-in-polygon test), COCO polygons and RLE (pycocotools), YOLO-seg polygons
(Ultralytics' polygon2mask and overlap masks). Palette PNGs: tests/test_masks.py. Tiny images, few examples.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime import rle
from runtime.labelstudio import decode_brush_rle, encode_brush
from training.sources.coco import coco_sources
from training.sources.labelstudio import polygon_to_mask
from training.sources.yolo import YoloMask, polygon_region, yolo_sources

pytest.importorskip("hypothesis", reason="make install puts hypothesis in .venv (requirements-train.txt)")
mask_utils = pytest.importorskip("pycocotools.mask", reason="make install puts pycocotools in .venv")
from hypothesis import given, settings, strategies as st  # noqa: E402

FEW = settings(max_examples=25, deadline=None)
SIZES = st.tuples(st.integers(1, 14), st.integers(1, 14))


@st.composite
def masks(draw, values=(0, 1)) -> np.ndarray:
    h, w = draw(SIZES)
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).choice(np.array(values, np.uint8), size=(h, w))


@st.composite
def polygons(draw, scale=1.0) -> np.ndarray:
    """3-6 vertices in [0, scale] (a polygon may cross itself: every rasteriser must agree on it anyway)."""
    n = draw(st.integers(3, 6))
    return np.array(draw(st.lists(st.tuples(st.floats(0, scale), st.floats(0, scale)), min_size=n, max_size=n)))


def point_in_polygon(points: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(inside by even-odd ray casting at each pixel centre, distance of each centre to the nearest edge)."""
    ys, xs = np.mgrid[:hw[0], :hw[1]].astype(np.float64)
    inside = np.zeros(hw, bool)
    distance = np.full(hw, np.inf)
    for (x0, y0), (x1, y1) in zip(points, np.roll(points, -1, axis=0)):
        crosses = (y0 > ys) != (y1 > ys)
        with np.errstate(divide="ignore", invalid="ignore"):
            inside ^= crosses & (xs < (x1 - x0) * (ys - y0) / (y1 - y0) + x0)
        d = np.array([x1 - x0, y1 - y0])
        t = np.clip(((xs - x0) * d[0] + (ys - y0) * d[1]) / max(d @ d, 1e-12), 0, 1)
        distance = np.minimum(distance, np.hypot(xs - (x0 + t * d[0]), ys - (y0 + t * d[1])))
    return inside, distance


def agrees_away_from_edges(region: np.ndarray, points: np.ndarray, margin: float = 1.0) -> bool:
    inside, distance = point_in_polygon(points, region.shape)
    far = distance > margin
    return np.array_equal(region.astype(bool)[far], inside[far])


# ----------------------------------------------------------------------------- RLE CSV


def kaggle_decode(text: str, hw: tuple[int, int]) -> np.ndarray:
    """Kaggle's definition, written out: 1-indexed (start, length) pairs, top to bottom, then left to right."""
    flat = np.zeros(hw[0] * hw[1], bool)
    numbers = [int(v) for v in text.split()]
    for start, length in zip(numbers[::2], numbers[1::2]):
        flat[start - 1:start - 1 + length] = True
    return flat.reshape(hw[1], hw[0]).T


@FEW
@given(masks())
def test_rle_csv_encodes_what_kaggles_definition_decodes(mask):
    text = rle.encode(mask)
    assert np.array_equal(kaggle_decode(text, mask.shape), mask > 0)
    assert np.array_equal(rle.decode(text, mask.shape), mask > 0)


# ----------------------------------------------------------------------------- Label Studio


@FEW
@given(masks())
def test_brush_rle_is_the_sdks_both_ways(mask):
    from test_runtime_labelstudio import sdk_brush

    brush = sdk_brush()
    sdk = brush.mask2rle((mask * 255).astype(np.uint8))
    assert encode_brush(mask) == sdk
    assert np.array_equal(decode_brush_rle(sdk, *mask.shape) > 0, mask > 0)
    assert np.array_equal(brush.decode_rle(encode_brush(mask)).reshape(*mask.shape, 4)[..., 3] > 0, mask > 0)


@FEW
@given(polygons(100.0), SIZES)
def test_label_studio_polygons_fill_what_a_point_in_polygon_test_finds(points, hw):
    region = polygon_to_mask(points.tolist(), *hw)
    vertices = np.round(points * (hw[1] / 100.0, hw[0] / 100.0))  # Label Studio's clicks, on pixel centres
    assert agrees_away_from_edges(region, vertices)


# ----------------------------------------------------------------------------- COCO


def write_coco(folder: Path, hw: tuple[int, int], segmentations: list, crowd: list[int] | None = None,
               categories=("thing",), category_ids: list[int] | None = None) -> tuple[Path, Path]:
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(images / "a.png"), np.full((*hw, 3), 90, np.uint8))
    anns = [{"id": i + 1, "image_id": 7, "category_id": (category_ids or [1] * len(segmentations))[i],
             "segmentation": s, "iscrowd": (crowd or [0] * len(segmentations))[i]} for i, s in enumerate(segmentations)]
    data = {"images": [{"id": 7, "file_name": "a.png", "height": hw[0], "width": hw[1]}], "annotations": anns,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(categories)]}
    (folder / "coco.json").write_text(json.dumps(data))
    return folder / "coco.json", images


def read_coco(json_path, images, classes=2, names=None, ignore=255) -> np.ndarray:
    (source,) = coco_sources(json_path, images, classes, names, ignore)
    return source.load_mask(classes, ignore_index=ignore)


def uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE, written out: run lengths over the column-major pixels, starting with a 0-run."""
    flat = mask.T.ravel().astype(bool)
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


@FEW
@given(masks())
def test_coco_rle_both_forms_decode_to_the_mask(tmp_path_factory, mask):
    folder = tmp_path_factory.mktemp("coco")
    compressed = mask_utils.encode(np.asfortranarray(mask))
    segmentations = [{"size": list(mask.shape), "counts": compressed["counts"].decode()},
                     {"size": list(mask.shape), "counts": uncompressed_counts(mask)}]
    for segmentation in segmentations:
        assert np.array_equal(read_coco(*write_coco(folder, mask.shape, [segmentation])), mask)


@FEW
@given(st.lists(polygons(14.0), min_size=1, max_size=2), SIZES)
def test_coco_polygons_are_pycocotools_own_and_fill_the_polygon(tmp_path_factory, shapes, hw):
    from pycocotools.coco import COCO

    segmentation = [p.ravel().tolist() for p in shapes]
    json_path, images = write_coco(tmp_path_factory.mktemp("coco"), hw, [segmentation])
    ours = read_coco(json_path, images)
    coco = COCO(str(json_path))
    assert np.array_equal(ours, coco.annToMask(coco.loadAnns(1)[0]))
    if len(shapes) == 1:  # pycocotools samples pixel (x, y) at its centre (x + 0.5, y + 0.5)
        assert agrees_away_from_edges(ours, shapes[0] - 0.5, margin=1.5)


def test_coco_maps_categories_draws_larger_first_and_voids_crowds(tmp_path):
    big = [[0, 0, 9, 0, 9, 9, 0, 9]]
    small = {"size": [10, 10], "counts": mask_utils.encode(np.asfortranarray(
        np.pad(np.ones((2, 2), np.uint8), 4)))["counts"].decode()}
    crowd = [[0, 0, 3, 0, 3, 3, 0, 3]]
    json_path, images = write_coco(tmp_path, (10, 10), [small, big, crowd], crowd=[0, 0, 1],
                                   categories=("rider", "horse"), category_ids=[1, 2, 2])
    by_order = read_coco(json_path, images, classes=3)  # no names: category order, rider 1, horse 2
    assert by_order[5, 5] == 1 and by_order[8, 8] == 2 and by_order[1, 1] == 255
    by_name = read_coco(json_path, images, classes=3, names=["background", "horse", "rider"])
    assert by_name[5, 5] == 2 and by_name[8, 8] == 1
    assert read_coco(json_path, images, classes=3, ignore=None)[1, 1] == 2  # no void: the crowd's class
    assert set(np.unique(read_coco(json_path, images, classes=1))) == {0, 1, 255}  # every category: 1


# ----------------------------------------------------------------------------- YOLO-seg


@FEW
@given(polygons(1.0), SIZES)
def test_yolo_polygons_are_ultralytics_polygon2mask_pixel_for_pixel(points, hw):
    from ultralytics.data.utils import polygon2mask

    coords = tuple(np.float32(points).ravel().tolist())
    denormalised = np.float32(points).copy()
    denormalised[:, 0] *= hw[1]
    denormalised[:, 1] *= hw[0]
    assert np.array_equal(polygon_region(coords, hw), polygon2mask(hw, [denormalised.reshape(-1)], color=1))


@FEW
@given(st.lists(st.tuples(st.integers(1, 3), polygons(1.0)), min_size=1, max_size=4), SIZES)
def test_yolo_objects_overlap_as_ultralytics_overlap_masks(objects, hw):
    from ultralytics.data.utils import polygons2masks_overlap

    segments = []
    for _, points in objects:
        xy = np.float32(points).copy()
        xy[:, 0] *= hw[1]
        xy[:, 1] *= hw[0]
        segments.append(xy)
    instances, order = polygons2masks_overlap(hw, segments)
    classes = np.array([0] + [objects[i][0] for i in order], np.uint8)
    recipe = YoloMask(tuple((c, tuple(np.float32(p).ravel().tolist())) for c, p in objects))
    areas = [polygon_region(coords, hw).sum() for _, coords in recipe.polygons]
    if len(set(areas)) == len(areas):  # equal areas: Ultralytics' argsort order is not defined
        assert np.array_equal(recipe.render(hw, 255), classes[instances])


def test_yolo_reads_the_ultralytics_layout(tmp_path):
    root = tmp_path / "horses"
    for split, name in (("train", "a"), ("val", "b"), ("test", "c")):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        cv2.imwrite(str(root / "images" / split / f"{name}.jpg"), np.full((20, 40, 3), 80, np.uint8))
    (root / "labels" / "train" / "a.txt").write_text("0 0.1 0.1 0.5 0.1 0.5 0.9\n1 0.6 0.2 0.9 0.2 0.9 0.8 0.6 0.8\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\ntest: images/test\n"
                                    "names:\n  0: horse\n  1: rider\n")
    sources = {s.key: s for s in yolo_sources(root / "data.yaml", 3)}
    assert sorted(sources) == ["a", "b"]  # train and val pooled, test left out
    mask = sources["a"].load_mask(3)
    assert set(np.unique(mask)) == {0, 1, 2} and mask[10, 30] == 2 and not sources["b"].load_mask(3).any()
