"""runtime/rle.py: the Severstal RLE CSV format, in and out."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import rle
from utils import UserError


def test_the_published_example_decodes_column_major_and_one_indexed():
    # Kaggle: "'1 3 10 5' implies pixels 1,2,3,10,11,12,13,14 ... numbered from top to bottom, then left to right"
    mask = rle.decode("1 3 10 5", (4, 4))
    pixels = sorted(1 + np.flatnonzero(mask.ravel(order="F")))
    assert pixels == [1, 2, 3, 10, 11, 12, 13, 14]
    assert mask[1, 0] and not mask[0, 1]  # pixel 2 is (row 2, column 1)
    assert mask[:, 2].tolist() == [False, True, True, True] and mask[0, 3] and mask[1, 3] and not mask[2, 3]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_encode_decode_round_trip(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((37, 53)) > 0.7
    mask[0, 0] = mask[-1, -1] = True  # runs touching both ends
    assert np.array_equal(rle.decode(rle.encode(mask), mask.shape), mask)
    assert rle.encode(np.zeros((3, 3))) == "" and not rle.decode("", (3, 3)).any()


@pytest.mark.parametrize("text, words", [
    ("1 3 10", r"3 numbers, not \(start, length\) pairs"),
    ("0 3", "1-indexed"),
    ("15 5", "the image has 4x4 = 16 pixels"),
    ("1 x", "not space-separated integers"),
])
def test_malformed_pixels_are_named(text, words):
    with pytest.raises(UserError, match=words):
        rle.decode(text, (4, 4), "a.jpg class 1")


def test_csv_round_trip_with_clean_images_and_classes(tmp_path):
    masks = {"a.jpg": np.zeros((8, 12), np.uint8), "b.jpg": np.zeros((8, 12), np.uint8)}
    masks["b.jpg"][1:4, 2:6] = 1
    masks["b.jpg"][5:7, 8:11] = 3
    with rle.RleCsvWriter(tmp_path / "sub.csv") as out:
        for name, mask in masks.items():
            out.write(name, mask, num_classes=4)
    text = (tmp_path / "sub.csv").read_text().splitlines()
    assert text[0] == "ImageId,ClassId,EncodedPixels" and len(text) == 1 + 2 * 3
    rows = rle.read_rows(tmp_path / "sub.csv")
    assert rows["a.jpg"] == {} and set(rows["b.jpg"]) == {1, 3}
    for name, mask in masks.items():
        assert np.array_equal(rle.class_mask(rows[name], (8, 12), name), mask)


def test_bad_csvs_say_what_is_wrong(tmp_path):
    (tmp_path / "cols.csv").write_text("ImageId_ClassId,EncodedPixels\na.jpg_1,1 2\n")
    with pytest.raises(UserError, match="missing ImageId, ClassId"):
        rle.read_rows(tmp_path / "cols.csv")
    (tmp_path / "zero.csv").write_text("ImageId,ClassId,EncodedPixels\na.jpg,0,1 2\n")
    with pytest.raises(UserError, match="line 2: ClassId 0; classes start at 1"):
        rle.read_rows(tmp_path / "zero.csv")
    with pytest.raises(UserError, match="is a folder"):
        rle.RleCsvWriter(tmp_path)
