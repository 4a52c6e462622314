"""The post-processing chain of runtime/postprocess.py on hand-made maps with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import postprocess as pp
from utils import UserError


def square_probs(value: float, size: int = 12, shape=(64, 64), background: float = 0.05) -> np.ndarray:
    probs = np.full(shape, background, np.float32)
    probs[10: 10 + size, 10: 10 + size] = value
    return probs


def test_cascade_picks_0_3_when_0_5_yields_too_little():
    probs = square_probs(0.4)
    probs[40:43, 40:43] = 0.9  # 9 px pass 0.5: too little for min_area 64
    mask, info = pp.postprocess(probs[None], pp.PostOptions(threshold="adaptive", min_area=64))
    assert info["threshold"] == 0.3 and info["detected"]
    assert info["area_px"] == 144 + 9 and info["components"] == 2 and info["largest_component_px"] == 144


def test_cascade_gives_a_safe_negative():
    mask, info = pp.postprocess(square_probs(0.1)[None], pp.PostOptions(min_area=64))
    assert info["threshold"] is None and not info["detected"] and not mask.any()


def ring(shape=(40, 40), bay: bool = False) -> np.ndarray:
    """A 3-px thick square ring enclosing a 10x10 hole; with `bay` the ring is cut open to the border."""
    mask = np.zeros(shape, np.uint8)
    mask[10:26, 10:26] = 1
    mask[13:23, 13:23] = 0
    if bay:
        mask[16:20, 0:26] = 0  # a channel from the hole out to the left border
        mask[16:20, 0:10] = 0
    return mask


def test_fill_holes_fills_an_enclosed_hole():
    filled = pp.fill_holes(ring())
    assert filled[13:23, 13:23].all() and filled.sum() == 16 * 16


def test_fill_holes_leaves_a_bay_open_to_the_border():
    bay = ring(bay=True)
    bay[16:20, 0:10] = 0
    assert np.array_equal(pp.fill_holes(bay), bay)


def test_fill_holes_diagonal_gap_does_not_leak():
    mask = np.zeros((9, 9), np.uint8)
    mask[2:7, 2:7] = 1
    mask[3:6, 3:6] = 0  # enclosed 3x3 hole
    mask[2, 2] = 0  # a diagonal corner gap: 8-connected foreground still encloses the hole
    filled = pp.fill_holes(mask)
    assert filled[3:6, 3:6].all() and filled[2, 2] == 0


def test_opening_removes_a_2px_speck_and_keeps_the_region():
    mask = np.zeros((40, 40), np.uint8)
    mask[5:25, 5:25] = 1
    mask[33:35, 33:35] = 1  # a 2x2 speck
    opened = pp.open_mask(mask, 3)
    assert opened[33:35, 33:35].sum() == 0
    assert opened[5:25, 5:25].sum() >= 400 - 4  # at most the four corner pixels


def test_closing_bridges_a_1px_gap():
    mask = np.zeros((30, 30), np.uint8)
    mask[10:20, 5:14] = 1
    mask[10:20, 15:25] = 1  # a 1-px column gap at x=14
    closed = pp.close_mask(mask, 3)
    assert pp.component_stats(mask)[0] == 2 and pp.component_stats(closed)[0] == 1
    assert closed[12:18, 14].all()


def test_keep_largest_and_min_component_area():
    mask = np.zeros((50, 50), np.uint8)
    mask[0:10, 0:10] = 1  # 100
    mask[20:26, 20:26] = 1  # 36
    mask[40:43, 40:43] = 1  # 9
    assert pp.component_stats(pp.keep_largest(mask, 1)) == (1, 100)
    assert pp.component_stats(pp.keep_largest(mask, 2)) == (2, 100)
    assert pp.keep_largest(mask, 5).sum() == 145
    assert pp.remove_small_components(mask, 10).sum() == 136


def test_chain_order_close_before_open_before_fill():
    """A ring with a 1-px break: closing seals it, so fill-holes then fills it; the speck is opened away."""
    mask = ring()
    mask[10:13, 17] = 0  # break the top side of the ring
    probs = np.where(mask > 0, 0.9, 0.05).astype(np.float32)
    probs[36:38, 36:38] = 0.9  # a 2x2 speck
    options = pp.PostOptions(threshold=0.5, min_area=1, close=3, open=3, fill_holes=True)
    out, info = pp.postprocess(probs[None], options)
    assert out[15:21, 15:21].all()  # the hole was filled: closing ran first
    assert out[36:38, 36:38].sum() == 0 and info["components"] == 1
    without_close, _ = pp.postprocess(probs[None], pp.PostOptions(threshold=0.5, min_area=1, fill_holes=True))
    assert without_close[15:21, 15:21].sum() == 0  # without closing the ring stays open


@pytest.mark.parametrize("low, high", [(0.2, 0.8), (0.05, 0.35)])
def test_otsu_threshold_splits_a_bimodal_map(low, high):
    probs = square_probs(high, size=20, background=low)
    mask, used = pp.apply_threshold(probs, "otsu", min_area=10)
    assert low <= used < high and mask.sum() == 400


def test_otsu_on_a_flat_map_is_no_detection():
    mask, used = pp.apply_threshold(np.full((20, 20), 0.7, np.float32), "otsu", min_area=1)
    assert used is None and not mask.any()


def test_multiclass_argmax_and_per_class_cleanup():
    probs = np.zeros((3, 30, 30), np.float32)
    probs[0] = 0.5
    probs[1, 2:12, 2:12] = 0.9
    probs[2, 20:28, 20:28] = 0.9
    probs[2, 0, 29] = 0.9  # a 1-px speck of class 2
    mask, info = pp.postprocess(probs, pp.PostOptions(min_area=1, min_component_area=4))
    assert set(np.unique(mask)) == {0, 1, 2}
    assert (mask == 1).sum() == 100 and (mask == 2).sum() == 64 and mask[0, 29] == 0
    assert info["threshold"] is None and info["detected"]


@pytest.mark.parametrize("field, value", [("close", -1), ("open", 1.5), ("keep_largest", -2), ("min_area", -1)])
def test_bad_morphology_options_are_user_errors(field, value):
    with pytest.raises(UserError, match="--" + field.replace("_", "-")):
        pp.PostOptions(**{field: value})


@pytest.mark.parametrize("text, rgb", [("red", (255, 0, 0)), ("#00ff80", (0, 255, 128)), ("1,2,3", (1, 2, 3))])
def test_parse_color(text, rgb):
    assert pp.parse_color(text) == rgb


@pytest.mark.parametrize("text", ["redish", "1,2", "300,0,0", "#12"])
def test_parse_color_rejects(text):
    with pytest.raises(UserError, match="--color"):
        pp.parse_color(text)


def test_colorize_and_legend():
    mask = np.array([[0, 1], [2, 1]], np.uint8)
    colour = pp.colorize(mask)
    assert colour.shape == (2, 2, 3) and tuple(colour[0, 1]) == tuple(pp.PALETTE[1].astype(int))
    legend = pp.draw_legend(["bg", "horse", "rider"])
    assert legend.shape[0] >= 3 * 20 and legend.dtype == np.uint8


@pytest.mark.parametrize("alpha", [0.0, 0.33, 0.5, 0.8, 1.0])
def test_make_overlay_table_blend_equals_the_float_formula(alpha):
    """The one-colour fast path (lookup table + masked copy) gives the same bytes as the float blend."""
    rng = np.random.default_rng(int(alpha * 100))
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)[:, ::-1]  # a non-contiguous view too
    mask = (rng.random((37, 53)) > 0.4).astype(np.uint8) * 2
    color = (255, 17, 128)
    where = mask > 0
    want = image.copy()
    want[where] = np.clip(np.rint(image[where].astype(np.float32) * (1.0 - alpha)
                                  + np.asarray(color, np.float32) * alpha), 0, 255).astype(np.uint8)
    got = pp.make_overlay(image, mask, color, alpha)
    assert got.dtype == np.uint8 and np.array_equal(got, want)
    assert np.array_equal(got[~where], image[~where])


# ----------------------------------------------------------------------------- thresholding


@pytest.mark.parametrize(
    "probs, expected_threshold, expected_area",
    [
        (square_probs(0.9, 12), 0.5, 144),
        (square_probs(0.4, 12), 0.3, 144),  # 0.5 finds nothing, 0.3 finds a real region
        (square_probs(0.2, 12), 0.15, 144),
        (square_probs(0.1, 12), None, 0),  # everything below 0.15: a safe negative
        (square_probs(0.9, 5), None, 0),  # 25 px < min_area at every level
    ],
)
def test_adaptive_cascade(probs, expected_threshold, expected_area):
    mask, used = pp.apply_threshold(probs, "adaptive", min_area=64)
    assert used == expected_threshold
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert int(mask.sum()) == expected_area


def test_adaptive_keeps_first_level_with_a_big_region_even_with_specks():
    probs = square_probs(0.4, 12)
    probs[50, 50] = 0.9  # a lone speck passes 0.5 but is no real region
    mask, used = pp.apply_threshold(probs, "adaptive", min_area=64)
    assert used == 0.3 and mask.sum() == 145


def test_adaptive_uses_the_given_cascade():
    mask, used = pp.apply_threshold(square_probs(0.4, 12), "adaptive", 64, cascade=(0.6, 0.35))
    assert used == 0.35 and mask.sum() == 144


@pytest.mark.parametrize("threshold, size, expected", [(0.3, 12, 0.3), (0.5, 12, None), (0.3, 5, None)])
def test_fixed_threshold_keeps_mask_and_reports_detection(threshold, size, expected):
    probs = square_probs(0.4, size)
    mask, used = pp.apply_threshold(probs, threshold, min_area=64)
    assert used == expected
    assert np.array_equal(mask, (probs > threshold).astype(np.uint8))


@pytest.mark.parametrize("value", ["adaptive", "ADAPTIVE", "0.5", 0.25])
def test_parse_threshold_accepts(value):
    parsed = pp.parse_threshold(value)
    assert parsed == "adaptive" if str(value).lower() == "adaptive" else parsed == float(value)


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2", "nan", "auto", ""])
def test_parse_threshold_rejects(value):
    with pytest.raises(UserError, match="--threshold"):
        pp.parse_threshold(value)


def test_component_stats_and_small_component_removal():
    mask = np.zeros((40, 40), np.uint8)
    mask[2:12, 2:12] = 1  # 100 px
    mask[30:33, 30:33] = 1  # 9 px
    assert pp.component_stats(mask) == (2, 100)
    assert pp.component_stats(np.zeros((5, 5), np.uint8)) == (0, 0)
    cleaned = pp.remove_small_components(mask, 10)
    assert pp.component_stats(cleaned) == (1, 100) and cleaned[31, 31] == 0


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_overlay_changes_only_masked_pixels(alpha):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:20] = 1
    overlay = pp.make_overlay(image, mask, color=(255, 0, 0), alpha=alpha)
    assert overlay.dtype == np.uint8 and overlay.shape == image.shape
    assert np.array_equal(overlay[mask == 0], image[mask == 0])
    expected = np.rint(image[mask == 1] * (1 - alpha) + np.array([255, 0, 0]) * alpha)
    assert np.array_equal(overlay[mask == 1], expected.astype(np.uint8))
