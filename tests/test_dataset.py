import json
import logging

import cv2
import numpy as np
import pytest

import torch

from dataset import (
    AspectBatchSampler, PatchDataset, SegDataset, build_cache, crop_origin, cut_patch, get_transform, pad_collate, png_hw,
)
from training.sources import collect_sources
from training.sources.folders import pair_by_stem
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
    with pytest.raises(UserError, match=r"1 of 12 images have no mask .*img_005\.jpg"):
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


# ----------------------------------------------------------------------------- TRAIN_PATCH


@pytest.fixture
def strips(tmp_path):
    """Generated steel strips at 256x64 with class ids 0..4, cached at their native size."""
    from demos.steel import generate_steel

    generate_steel(tmp_path / "data", count=8, clean_fraction=0.25, seed=0, width=256, height=64)
    sources = pair_by_stem(tmp_path / "data" / "images", tmp_path / "data" / "masks")
    return build_cache(sources, tmp_path / "work", input_size=256, num_classes=5)


def test_patch_dataset_yields_hxw_crops_of_class_ids(strips):
    assert cv2.imread(str(strips[0].image)).shape[:2] == (64, 256)  # the cache keeps the strip, unpadded
    dataset = PatchDataset(strips, get_transform(True, 256, seed=0, patch=True), 5, (64, 96), patches_per_image=3)
    assert len(dataset) == 24
    seen = set()
    for i in range(len(dataset)):
        image, mask = dataset[i]
        assert image.shape == (3, 64, 96) and mask.shape == (64, 96) and mask.dtype == torch.int64
        seen |= set(mask.unique().tolist())
    assert seen <= {0, 1, 2, 3, 4} and len(seen) > 1


def test_patch_larger_than_the_image_is_padded_like_the_runtime():
    image = np.full((40, 50, 3), 200, np.uint8)
    mask = np.ones((40, 50), np.uint8)
    crop, crop_mask = cut_patch(image, mask, (0, 0), (64, 64), (124, 116, 104))
    assert crop.shape == (64, 64, 3) and crop_mask.shape == (64, 64)
    assert (crop[:40, :50] == 200).all() and (crop[40:] == (124, 116, 104)).all()
    assert crop_mask[:40, :50].all() and not crop_mask[40:].any() and not crop_mask[:, 50:].any()


def sparse_masks(count: int = 6, shape=(64, 512), seed: int = 0) -> list[np.ndarray]:
    """One 4x4 defect (class 2) per long strip: a crop drawn uniformly rarely sees it."""
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(count):
        mask = np.zeros(shape, np.uint8)
        y, x = int(rng.integers(0, shape[0] - 4)), int(rng.integers(0, shape[1] - 4))
        mask[y:y + 4, x:x + 4] = 2
        masks.append(mask)
    return masks


def test_forced_crops_always_hold_the_chosen_class_and_rare_classes_get_half():
    rng = np.random.default_rng(0)
    for mask in sparse_masks():
        for _ in range(20):
            y0, x0 = crop_origin(mask, (64, 64), rng, [2])
            assert mask[y0:y0 + 64, x0:x0 + 64].any()
    mask = np.zeros((64, 512), np.uint8)
    mask[:, :256] = 1  # a common class over half the strip
    mask[30:33, 480:483] = 3  # a rare, tiny one far from it
    hits = sum((lambda o: (mask[o[0]:o[0] + 64, o[1]:o[1] + 64] == 3).any())(crop_origin(mask, (64, 64), rng, [1, 3]))
               for _ in range(400))
    assert hits / 400 > 0.4  # the class is drawn first: ~1/2, not its ~0.02 % share of the pixels


def test_foreground_oversampling_sees_sparse_defects_more_often_than_uniform_crops(tmp_path):
    for folder in ("images", "masks"):
        (tmp_path / "raw" / folder).mkdir(parents=True)
    for i, mask in enumerate(sparse_masks()):
        cv2.imwrite(str(tmp_path / "raw" / "images" / f"s{i}.png"), np.full((64, 512, 3), 128, np.uint8))
        cv2.imwrite(str(tmp_path / "raw" / "masks" / f"s{i}.png"), mask)
    entries = build_cache(pair_by_stem(tmp_path / "raw" / "images", tmp_path / "raw" / "masks"), tmp_path / "work",
                          input_size=512, num_classes=3)

    def share_with_defect(fraction: float) -> float:
        dataset = PatchDataset(entries, get_transform(True, 512, seed=0, patch=True), 3, (64, 64),
                               patches_per_image=50, foreground_fraction=fraction, seed=1)
        return float(np.mean([bool(dataset[i][1].any()) for i in range(len(dataset))]))

    uniform, oversampled = share_with_defect(0.0), share_with_defect(1 / 3)
    assert uniform < 0.25  # a 64-px crop of a 512-px strip
    assert oversampled > uniform + 0.15 and oversampled > 0.3


def test_patch_validation_pads_whole_images_to_the_stride_not_a_square():
    image, mask = np.zeros((64, 200, 3), np.uint8), np.zeros((64, 200), np.uint8)
    out = get_transform(False, 256, patch=True)(image=image, mask=mask)
    assert out["image"].shape == (64, 224, 3) and out["mask"].shape == (64, 224)
    a = (torch.ones(3, 64, 224), torch.ones(64, 224, dtype=torch.int64))
    b = (torch.ones(3, 96, 128), torch.full((96, 128), 2, dtype=torch.int64))
    images, masks = pad_collate([a, b])
    assert images.shape == (2, 3, 96, 224) and masks.shape == (2, 96, 224)
    assert images[0, :, 64:].abs().sum() == 0 and masks[1, :, 128:].sum() == 0 and masks[1, :96, :128].eq(2).all()


# ----------------------------------------------------------------------------- MAX_IMAGE_PIXELS, passed down


@pytest.mark.parametrize("oversized", ["image", "mask"])
def test_cache_refuses_a_source_over_max_pixels_without_touching_the_global(blobs, tmp_path, oversized):
    import utils

    sources = pair_by_stem(blobs / "images", blobs / "masks")[:2]  # 80x100 = 8,000 pixels each
    if oversized == "mask":  # the image fits, its mask claims more
        cv2.imwrite(str(sources[0].mask_path), np.zeros((80, 101), np.uint8))
        cv2.imwrite(str(sources[0].image_path), np.zeros((79, 101, 3), np.uint8))
    limit = 7999 if oversized == "image" else 8000
    with pytest.raises(UserError, match=f"over the limit of {limit:,}"):
        build_cache(sources, tmp_path / "work", 64, max_pixels=limit)
    assert utils.MAX_IMAGE_PIXELS == 100_000_000
    if oversized == "image":
        assert len(build_cache(sources, tmp_path / "work", 64, max_pixels=8000)) == 2


# ----------------------------------------------------------------------------- BATCH_SHAPE=rect


def test_aspect_batches_group_shapes_cover_every_image_and_reshuffle():
    shapes = [(128, 192)] * 9 + [(192, 128)] * 6 + [(100, 192)] * 5  # the last pads to 128x192 as well
    sampler = AspectBatchSampler(shapes, batch_size=4, seed=3)
    first = list(sampler)
    assert len(first) == len(sampler) == 5 and sorted(i for b in first for i in b) == list(range(20))
    keys = [AspectBatchSampler.shape_key(*s) for s in shapes]
    mixed = [b for b in first if len({keys[i] for i in b}) > 1]
    assert len(mixed) <= 1  # 14 landscape + 6 portrait in batches of 4: one batch may straddle the two
    second = list(sampler)  # without set_epoch each pass advances the epoch
    assert second != first and sorted(i for b in second for i in b) == list(range(20))
    sampler.set_epoch(0)
    assert list(sampler) == first  # set_epoch replays an epoch (resume, DDP)


def test_aspect_batches_drop_the_short_batch_and_split_evenly_over_ranks():
    shapes = [(64, 96)] * 7 + [(96, 64)] * 6
    dropped = list(AspectBatchSampler(shapes, batch_size=4, seed=0, drop_last=True))
    assert len(dropped) == 3 and all(len(b) == 4 for b in dropped)
    ranks = [AspectBatchSampler(shapes + [(64, 96)], batch_size=2, seed=5, rank=r, world=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(2)
    batches = [list(r) for r in ranks]
    assert len(batches[0]) == len(batches[1]) == len(ranks[0]) == 3  # 7 batches over 2 ranks: 3 each
    seen = [i for b in batches[0] + batches[1] for i in b]
    assert len(seen) == len(set(seen)) == 12
    with pytest.raises(ValueError):
        AspectBatchSampler([], batch_size=2)


def test_png_hw_reads_the_header(tmp_path):
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), np.zeros((37, 53, 3), np.uint8))
    assert png_hw(path) == (37, 53)
    (tmp_path / "b.png").write_bytes(b"GIF89a" + bytes(40))
    with pytest.raises(UserError, match="not a PNG"):
        png_hw(tmp_path / "b.png")


def test_augment_setting_chooses_the_training_augmentation():
    import albumentations as A

    kinds = {a: [type(t) for t in get_transform(True, 64, seed=0, augment=a).transforms] for a in
             ("full", "flip", "none")}
    assert kinds["full"][:2] == [A.HorizontalFlip, A.Affine] and A.HueSaturationValue in kinds["full"]
    assert kinds["flip"] == [A.HorizontalFlip, A.PadIfNeeded] and kinds["none"] == [A.PadIfNeeded]
    assert [type(t) for t in get_transform(False, 64, augment="full").transforms] == [A.PadIfNeeded]  # val: none
    with pytest.raises(ValueError, match="augment 'strong'"):
        get_transform(True, 64, augment="strong")
    from config import load_config

    assert load_config([], environ={}).augment == "full"
    assert load_config(["--augment", "flip"], environ={"AUGMENT": "none"}).augment == "flip"


def test_cache_keeps_void_in_the_mask_and_out_of_the_class_counts(tmp_path):
    from training.sources import Source

    cv2.imwrite(str(tmp_path / "a.png"), np.full((8, 8, 3), 90, np.uint8))
    mask = np.zeros((8, 8), np.uint8)
    mask[0], mask[4:6, 4:6] = 255, 1
    void_only = np.where(mask == 255, 255, 0).astype(np.uint8)
    sources = [Source("a", tmp_path / "a.png", mask=mask), Source("b", tmp_path / "a.png", mask=void_only)]
    a, b = build_cache(sources, tmp_path / "work", 8)
    assert np.array_equal(cv2.imread(str(a.mask), cv2.IMREAD_GRAYSCALE), mask)
    assert a.class_pixels == (52, 4) and not a.empty and b.empty  # void is no foreground
    manifest = json.loads((tmp_path / "work" / "cache_manifest.json").read_text())["entries"]
    assert manifest["a"]["void_pixels"] == 8 and manifest["a"]["settings"]["ignore_index"] == 255
