import json
import logging

import cv2
import numpy as np
import pytest

from dataset import SegDataset, build_cache, collect_sources, get_transform, pair_by_stem
from utils import UserError, read_mask


def test_pair_by_stem_pairs_every_image(blobs):
    sources = pair_by_stem(blobs / "images", blobs / "masks")
    assert len(sources) == 12
    assert all(s.image_path.stem == s.mask_path.stem for s in sources)


def test_pair_by_stem_accepts_mask_suffix(blobs):
    mask = blobs / "masks" / "img_000.png"
    mask.rename(blobs / "masks" / "img_000_mask.png")
    sources = {s.key: s for s in pair_by_stem(blobs / "images", blobs / "masks")}
    assert sources["img_000"].mask_path.name == "img_000_mask.png"


def test_missing_mask_error_names_the_image(blobs):
    (blobs / "masks" / "img_005.png").unlink()
    with pytest.raises(UserError, match=r"no mask for image .*img_005\.jpg"):
        pair_by_stem(blobs / "images", blobs / "masks")


@pytest.mark.parametrize("img_dir, mask_dir, json_path, message", [
    (None, None, None, "RAW_IMG_DIR is not set"),
    ("missing", None, None, "RAW_IMG_DIR not found"),
    ("images", None, None, "set RAW_MASK_DIR"),
    ("images", "missing", None, "RAW_MASK_DIR not found"),
])
def test_collect_sources_errors(blobs, img_dir, mask_dir, json_path, message):
    path = lambda p: None if p is None else str(blobs / p)  # noqa: E731
    with pytest.raises(UserError, match=message):
        collect_sources(path(img_dir), path(mask_dir), json_path)


@pytest.mark.parametrize("on_value", [1, 255])
def test_binary_masks_map_to_zero_one(tmp_path, on_value):
    mask = np.zeros((10, 10), np.uint8)
    mask[2:5, 2:5] = on_value
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    out = read_mask(tmp_path / "m.png")
    assert set(np.unique(out)) == {0, 1} and out.sum() == 9


def test_build_cache_resizes_and_writes_manifest(blobs, tmp_path):
    entries = build_cache(pair_by_stem(blobs / "images", blobs / "masks"), tmp_path / "work", input_size=64)
    assert len(entries) == 12
    image = cv2.imread(str(entries[1].image))
    mask = cv2.imread(str(entries[1].mask), cv2.IMREAD_GRAYSCALE)
    assert image.shape[:2] == mask.shape == (51, 64)  # 80x100 -> long side 64
    assert set(np.unique(mask)) <= {0, 1}
    assert [e.empty for e in entries[:4]] == [True, False, False, False]
    manifest = json.loads((tmp_path / "work" / "cache_manifest.json").read_text())["entries"]
    assert set(manifest) == {e.key for e in entries}


def test_cache_reuses_and_only_rewrites_what_changed(blobs, tmp_path, caplog):
    sources = pair_by_stem(blobs / "images", blobs / "masks")
    entries = build_cache(sources, tmp_path / "work", input_size=64)
    mtimes = {e.key: e.image.stat().st_mtime_ns for e in entries}
    # change one source image
    changed = blobs / "images" / "img_003.jpg"
    cv2.imwrite(str(changed), np.full((80, 100, 3), 200, np.uint8))
    with caplog.at_level(logging.INFO, logger="seg"):
        entries = build_cache(pair_by_stem(blobs / "images", blobs / "masks"), tmp_path / "work", input_size=64)
    rewritten = [e.key for e in entries if e.image.stat().st_mtime_ns != mtimes[e.key]]
    assert rewritten == ["img_003"]
    assert "11 reused, 1 written" in caplog.text
    # a setting change invalidates every entry
    with caplog.at_level(logging.INFO, logger="seg"):
        build_cache(sources, tmp_path / "work", input_size=96)
    assert "0 reused, 12 written" in caplog.text


def test_cache_rebuilds_a_deleted_file(blobs, tmp_path):
    sources = pair_by_stem(blobs / "images", blobs / "masks")
    entries = build_cache(sources, tmp_path / "work", input_size=64)
    entries[0].mask.unlink()
    entries = build_cache(sources, tmp_path / "work", input_size=64)
    assert entries[0].mask.is_file()


def test_read_only_cache_reuses_rank_zeros_work_and_writes_nothing(blobs, tmp_path, monkeypatch):
    sources = pair_by_stem(blobs / "images", blobs / "masks")
    with pytest.raises(UserError, match="missing after rank 0 built it"):
        build_cache(sources, tmp_path / "empty", 64, write=False)
    assert not (tmp_path / "empty").exists()
    built = build_cache(sources, tmp_path / "work", 64)
    manifest = tmp_path / "work" / "cache_manifest.json"
    before = manifest.stat().st_mtime_ns
    monkeypatch.setattr(type(sources[0]), "content_hash", lambda self: pytest.fail("a reader hashed a source"))
    assert build_cache(sources, tmp_path / "work", 64, write=False) == built
    assert manifest.stat().st_mtime_ns == before


def test_mask_size_mismatch_is_a_user_error(blobs, tmp_path):
    cv2.imwrite(str(blobs / "masks" / "img_002.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(UserError, match="mask size 10x10 differs"):
        build_cache(pair_by_stem(blobs / "images", blobs / "masks"), tmp_path / "work", input_size=64)


@pytest.mark.parametrize("train", [True, False])
def test_dataset_items_are_square_and_binary(blobs, tmp_path, train):
    entries = build_cache(pair_by_stem(blobs / "images", blobs / "masks"), tmp_path / "work", input_size=64)
    dataset = SegDataset(entries, get_transform(train, 64))
    for i in range(len(dataset)):
        image, mask = dataset[i]
        assert image.shape == (3, 64, 64) and mask.shape == (1, 64, 64)
        assert set(mask.unique().tolist()) <= {0.0, 1.0}  # nearest-neighbour only, even after augmentation
    # the padding is the mean colour, i.e. ~0 after normalisation
    image, mask = SegDataset(entries, get_transform(False, 64))[1]
    assert image[:, 60:, :].abs().max() < 0.03 and mask[:, 60:, :].sum() == 0


def test_validation_transform_keeps_pixels(blobs, tmp_path):
    entries = build_cache(pair_by_stem(blobs / "images", blobs / "masks"), tmp_path / "work", input_size=64)
    _, mask = SegDataset(entries, get_transform(False, 64))[1]
    cached = cv2.imread(str(entries[1].mask), cv2.IMREAD_GRAYSCALE)
    assert np.array_equal(mask[0, :51].numpy().astype(np.uint8), cached)


def test_label_studio_export_feeds_the_cache(tmp_path):
    from conftest import SHARED_DATA

    export = SHARED_DATA / "weizmann_horse_labelstudio" / "project_export.json"
    images = SHARED_DATA / "weizmann_horse" / "images" / "val"
    if not export.is_file():
        pytest.skip("shared horse Label Studio export not present")
    sources = collect_sources(str(images), None, str(export))
    assert sorted(s.key for s in sources) == sorted(p.stem for p in images.iterdir())
    entries = build_cache(sources[:5], tmp_path / "work", input_size=64)
    for entry in entries:
        mask = cv2.imread(str(entry.mask), cv2.IMREAD_GRAYSCALE)
        assert set(np.unique(mask)) == {0, 1} and not entry.empty
