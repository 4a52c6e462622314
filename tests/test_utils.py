import json
import stat

import numpy as np
import pytest

from utils import (
    atomic_write_bytes, dice_iou, fit_inside, pad_bottom_right, padded_size, preprocess, resize_long_side, restore_size,
    write_png,
)


def test_atomic_writes_leave_readable_files_and_no_temp(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    write_png(tmp_path / "b.png", np.zeros((4, 4), np.uint8), rgb=False)
    for name in ("a.bin", "b.png"):
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode & stat.S_IRGRP and mode & stat.S_IROTH  # not mkstemp's private 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.png"]


@pytest.mark.parametrize("h, w", [(37, 53), (300, 101), (64, 64)])
def test_preprocess_then_restore_maps_back_to_the_original_size(h, w):
    meta = {"input_size": 64, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "stride": 32}
    chw, valid = preprocess(np.zeros((h, w, 3), np.uint8), meta)
    assert chw.shape[1] % 32 == 0 and chw.shape[2] % 32 == 0 and max(valid) == 64
    probs = np.zeros((1, *chw.shape[1:]), np.float32)
    probs[:, :valid[0], :valid[1]] = 1  # the padding is cropped away before resizing
    restored = restore_size(probs, valid, (h, w))
    assert restored.shape == (1, h, w) and restored.min() == 1


def test_pad_bottom_right_pads_to_the_next_multiple_with_zeros():
    padded = pad_bottom_right(np.ones((3, 33, 64), np.float32), padded_size((33, 64), 32))
    assert padded.shape == (3, 64, 64) and padded[:, 33:].max() == 0 and padded[:, :33].min() == 1


@pytest.mark.parametrize("h, w, fixed, valid", [(30, 60, (64, 64), (32, 64)), (100, 50, (64, 96), (64, 32)),
                                                (64, 96, (64, 96), (64, 96))])
def test_preprocess_letterboxes_into_a_fixed_input(h, w, fixed, valid):
    """A fixed-size model: fit inside (H, W) keeping the aspect ratio, zero padding bottom/right, restore maps back."""
    meta = {"input_size": 512, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "stride": 32}
    chw, got = preprocess(np.full((h, w, 3), 255, np.uint8), meta, fixed_hw=fixed)
    assert chw.shape == (3, *fixed) and got == valid
    assert chw[:, :valid[0], :valid[1]].min() == 2.0 and not chw[:, valid[0]:].any() and not chw[:, :, valid[1]:].any()
    assert restore_size(chw[:1], valid, (h, w), input_hw=fixed).shape == (1, h, w)


@pytest.mark.parametrize("h, w", [(37, 53), (300, 101), (64, 64), (1, 500)])
def test_resize_long_side_is_fit_inside_a_square(h, w):
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    assert np.array_equal(resize_long_side(image, 64), fit_inside(image, (64, 64)))
    assert max(resize_long_side(image, 64).shape[:2]) == 64


@pytest.mark.parametrize("pred, true, want", [
    ([[1, 1], [0, 0]], [[1, 1], [0, 0]], (1.0, 1.0)),
    ([[1, 0], [0, 0]], [[1, 1], [0, 0]], (2 / 3, 0.5)),
    ([[0, 0], [0, 0]], [[0, 0], [0, 0]], (1.0, 1.0)),
    ([[1, 0], [0, 0]], [[0, 0], [0, 0]], (0.0, 0.0)),
])
def test_dice_iou(pred, true, want):
    assert dice_iou(np.array(pred), np.array(true)) == pytest.approx(want)


def test_atomic_write_out_of_space_keeps_the_old_file(tmp_path, monkeypatch):
    import errno
    import os

    import utils

    target = tmp_path / "cache_manifest.json"
    utils.atomic_write_json(target, {"entries": {"a": 1}})
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, fd, mode):
            self.fh = real_fdopen(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[:3])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(utils.os, "fdopen", FullDisk)
    with pytest.raises(utils.UserError, match=r"cannot write .*cache_manifest\.json: No space left .*intact"):
        utils.atomic_write_json(target, {"entries": {}})
    assert json.loads(target.read_text()) == {"entries": {"a": 1}} and len(list(tmp_path.iterdir())) == 1
