"""runtime/masks.py: every mask file read by one set of rules, or refused with one line."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.masks import check_encodings, check_mask_files, inspect_mask, palette_as_grey
from runtime.report import load_gt_index
from utils import UserError, read_mask

hypothesis = pytest.importorskip("hypothesis", reason="make install puts hypothesis in .venv (requirements-train.txt)")
from hypothesis import given, settings, strategies as st  # noqa: E402

Image = pytest.importorskip("PIL.Image")


def grey(path: Path, mask: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), mask)
    return path


def palette_png(path: Path, ids: np.ndarray, bits: int = 8) -> Path:
    """A palette PNG written by Pillow (the reference): VOC's colours, `bits` per index."""
    image = Image.fromarray(ids.astype(np.uint8), "P")
    colours = [(i * 37 % 256, i * 91 % 256, i * 53 % 256) for i in range(256)]
    image.putpalette([c for rgb in colours for c in rgb])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, bits=bits)
    return path


def blob(h=24, w=32, value=255) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, (w // 2, h // 2), min(h, w) // 3, value, -1)
    return mask


def photo(h=48, w=64, seed=0, colour=True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur((rng.random((h, w, 3)) * 255).astype(np.uint8), (3, 3), 0)
    return image if colour else image[..., 0]


# ----------------------------------------------------------------------------- one mask


@pytest.mark.parametrize("values, classes, expected_ids, encoding", [
    ({0: 0, 1: 255}, 1, {0, 1}, "0/255"),
    ({0: 0, 1: 1}, 1, {0, 1}, "0/1"),
    ({0: 0, 1: 1, 2: 255}, 1, {0, 1, 255}, "0/1+void"),  # VOC: 255 is the void border
    ({0: 0, 1: 1, 2: 2}, 3, {0, 1, 2}, "class ids"),
    ({0: 0, 1: 2, 2: 255}, 3, {0, 2, 255}, "class ids+void"),
    ({0: 0}, 1, {0}, "empty"),
])
def test_lossless_masks_read_exactly(tmp_path, values, classes, expected_ids, encoding):
    ids = np.zeros((12, 16), np.uint8)
    for i, v in values.items():
        ids[:, i * 5:(i + 1) * 5] = v
    read = inspect_mask(grey(tmp_path / "m.png", ids), classes)
    assert read.encoding == encoding and set(np.unique(read.ids)) == expected_ids
    if classes > 1 or encoding == "0/1+void":
        assert np.array_equal(read.ids, ids)


@pytest.mark.parametrize("values, classes, ignore, words", [
    ([0, 1, 2], 1, 255, r"class ids \[0, 1, 2\] but CLASSES=1 .*--classes 3"),
    ([0, 1, 255], 1, None, r"0, 1 and 255: 255 is void .* only with IGNORE_INDEX=255"),
    ([0, 128, 255], 1, 255, r"values \[0, 128, 255\]: not a binary mask"),
    ([0, 1, 3], 3, 255, r"class id 3 but CLASSES=3 allows 0..2 and 255 = void: set --classes 4"),
    ([0, 255], 3, None, r"binary 0/255 mask\? train it with --classes 1"),
    ([0, 1, 255], 2, None, r"set IGNORE_INDEX=255"),
])
def test_ambiguous_masks_stop_with_one_line(tmp_path, values, classes, ignore, words):
    ids = np.repeat(np.array(values, np.uint8), 6)[None].repeat(4, 0)
    with pytest.raises(UserError, match=words) as err:
        read_mask(grey(tmp_path / "m.png", ids), classes, ignore_index=ignore)
    assert "\n" not in str(err.value) and "m.png" in str(err.value)


@pytest.mark.parametrize("colour", [True, False])
@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_a_photo_is_not_a_mask(tmp_path, colour, suffix):
    path = grey(tmp_path / f"p{suffix}", photo(colour=colour))
    with pytest.raises(UserError, match=r"looks like a photo .*not at the images"):
        read_mask(path)


def test_colour_masks_one_colour_reads_several_refused(tmp_path):
    red = np.zeros((20, 30, 3), np.uint8)
    red[5:15, 5:20] = (0, 0, 255)
    assert read_mask(grey(tmp_path / "red.png", red)).sum() == 150
    red[0:4, 0:8] = (0, 255, 0)
    with pytest.raises(UserError, match="colour image of 3 colours: colour-coded"):
        read_mask(grey(tmp_path / "two.png", red))


def test_jpeg_binary_masks_keep_their_own_scale_and_jpeg_class_ids_are_named(tmp_path):
    ids = blob(64, 80, value=1)
    cv2.imwrite(str(tmp_path / "m.jpg"), ids, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert (read_mask(tmp_path / "m.jpg") == ids).mean() > 0.97
    ids[:, :10] = 2
    cv2.imwrite(str(tmp_path / "c.jpg"), ids, [cv2.IMWRITE_JPEG_QUALITY, 95])
    with pytest.raises(UserError, match=r"class ids \[0, 1, 2\] \(JPEG\) but CLASSES=1"):
        read_mask(tmp_path / "c.jpg")


def test_palette_png_is_read_by_index_not_colour(tmp_path):
    ids = np.zeros((10, 12), np.uint8)
    ids[2:5, 2:5], ids[6:9, 6:9], ids[0, :] = 1, 2, 255
    path = palette_png(tmp_path / "voc.png", ids)
    assert cv2.imread(str(path)).max() > 2  # OpenCV alone sees colours
    read = inspect_mask(path, 3)
    assert read.encoding == "palette class ids+void" and np.array_equal(read.ids, ids)
    with pytest.raises(UserError, match=r"class ids \[0, 1, 2\] and void but CLASSES=1 .*--classes 3"):
        read_mask(path)  # once "has class id 128": OpenCV's colours


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([1, 2, 4, 8]), st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**32 - 1))
def test_palette_indices_equal_pillows_for_every_bit_depth(tmp_path_factory, bits, h, w, seed):
    ids = np.random.default_rng(seed).integers(0, 2 ** bits, (h, w)).astype(np.uint8)
    path = palette_png(tmp_path_factory.mktemp("p") / "m.png", ids, bits)
    with Image.open(path) as reference:
        expected = np.array(reference)
    raw = path.read_bytes()
    decoded = cv2.imdecode(np.frombuffer(palette_as_grey(raw), np.uint8), cv2.IMREAD_COLOR)[..., 0]
    assert np.array_equal(decoded, expected) and np.array_equal(expected, ids)


def test_exif_orientation_applies_to_palette_masks_as_to_images(tmp_path):
    ids = np.zeros((10, 16), np.uint8)
    ids[:, :3] = 1
    exif = Image.Exif()
    exif[0x0112] = 6
    image = Image.fromarray(ids, "P")
    image.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", exif=exif.tobytes())
    (tmp_path / "m.png").write_bytes(buffer.getvalue())
    shown = read_mask(tmp_path / "m.png")
    assert shown.shape == (16, 10) and shown[:3].all() and not shown[3:].any()  # left band turned to the top


# ----------------------------------------------------------------------------- a set of masks


def test_void_masks_beside_0_255_masks_are_refused():
    encodings = {"a.png": "0/1+void", "b.png": "palette 0/255", "c.png": "empty"}
    with pytest.raises(UserError, match=r"1 masks hold 0/1/255 .*a\.png.* 1 hold only 0 and 255 .*b\.png"):
        check_encodings(encodings, 1, 255)
    check_encodings({"a.png": "0/1+void", "b.png": "0/1"}, 1, 255)


def test_a_multiclass_set_of_nothing_but_void_is_refused(tmp_path):
    paths = [grey(tmp_path / f"{i}.png", blob()) for i in range(3)]
    with pytest.raises(UserError, match=r"every non-empty one of the 3 masks holds only 0 and 255 .*--classes 1"):
        check_mask_files(paths, 2)


def test_gt_pointing_at_photos_stops_before_inference(tmp_path):
    grey(tmp_path / "gt" / "a.jpg", photo())
    grey(tmp_path / "gt" / "b.png", blob())
    assert len(load_gt_index(tmp_path / "gt")) == 2  # without the model's classes: only indexed
    with pytest.raises(UserError, match=r"--gt .*gt: mask .*a\.jpg looks like a photo"):
        load_gt_index(tmp_path / "gt", 1)


def test_gt_void_is_left_out_of_the_scores(tmp_path):
    from runtime.report import score

    gt = np.zeros((10, 10), np.uint8)
    gt[2:6, 2:6], gt[0] = 1, 255
    pred = np.zeros((10, 10), np.uint8)
    pred[2:6, 2:6], pred[0] = 1, 1  # the void row predicted: no penalty
    grey(tmp_path / "gt.png", gt)
    row = {}
    assert score(row, pred, tmp_path / "gt.png", 1) == (16, 16, 16) and row["dice"] == 1.0
    row = {}
    gt3 = gt.copy()
    gt3[6:8, 6:8] = 2
    grey(tmp_path / "gt3.png", gt3)
    pred3 = np.where(gt3 == 255, 2, gt3).astype(np.uint8)
    score(row, pred3, tmp_path / "gt3.png", 3, ["background", "a", "b"])
    assert row["dice"] == 1.0
