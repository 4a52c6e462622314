import stat

import numpy as np
import pytest

from utils import atomic_write_bytes, dice_iou, pad_to_multiple, preprocess, restore_size, write_png


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


def test_pad_to_multiple_pads_bottom_right_with_zeros():
    padded = pad_to_multiple(np.ones((3, 33, 64), np.float32), 32)
    assert padded.shape == (3, 64, 64) and padded[:, 33:].max() == 0 and padded[:, :33].min() == 1


@pytest.mark.parametrize("pred, true, want", [
    ([[1, 1], [0, 0]], [[1, 1], [0, 0]], (1.0, 1.0)),
    ([[1, 0], [0, 0]], [[1, 1], [0, 0]], (2 / 3, 0.5)),
    ([[0, 0], [0, 0]], [[0, 0], [0, 0]], (1.0, 1.0)),
    ([[1, 0], [0, 0]], [[0, 0], [0, 0]], (0.0, 0.0)),
])
def test_dice_iou(pred, true, want):
    assert dice_iou(np.array(pred), np.array(true)) == pytest.approx(want)
