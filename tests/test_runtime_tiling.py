"""runtime/tiling.py: tiles that cover the image, Gaussian weights, and blending that gives a pointwise model's
answer back exactly."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.tiling import MIN_WEIGHT, gaussian_weights, predict_tiled, tile_boxes, tile_starts


@pytest.mark.parametrize("length,tile,overlap", [(1000, 256, 0.5), (257, 256, 0.5), (3000, 512, 0.25), (512, 512, 0.5),
                                                 (700, 96, 0.0), (100, 256, 0.5)])
def test_tiles_cover_the_length_overlap_as_asked_and_end_flush(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    covered = np.zeros(max(length, tile), bool)
    for s in starts:
        covered[s:s + tile] = True
    assert covered[:length].all() and starts[0] == 0
    assert starts == sorted(set(starts))
    if length > tile:
        assert starts[-1] == length - tile
        gaps = np.diff(starts)
        assert gaps.max() <= tile * (1 - overlap) and gaps.max() - gaps.min() <= 1  # evenly spaced
    else:
        assert starts == [0]


def test_gaussian_weights_peak_in_the_centre_and_never_reach_zero():
    weights = gaussian_weights((64, 96))
    assert weights.shape == (64, 96) and weights.dtype == np.float32
    assert weights.max() == pytest.approx(1.0, abs=1e-3) and weights.min() >= MIN_WEIGHT
    assert weights[32, 48] > weights[32, 10] > weights[2, 2]
    np.testing.assert_allclose(weights, weights[::-1, ::-1], atol=1e-6)  # symmetric


def test_a_pointwise_model_gives_its_whole_image_answer_back():
    rng = np.random.default_rng(0)
    x = rng.random((3, 320, 416)).astype(np.float32)  # padded tensor; the image is 300 x 410
    seen = []

    def run(tiles):
        seen.append(len(tiles))
        return [np.stack([t.mean(axis=0), 1 - t.mean(axis=0)]) for t in tiles]  # (2, th, tw), pixel by pixel

    probs = predict_tiled(x, (300, 410), (128, 160), run, overlap=0.5, batch=3)
    expected = x.mean(axis=0)[:300, :410]
    assert probs.shape == (2, 300, 410)
    np.testing.assert_allclose(probs[0], expected, atol=1e-5)
    np.testing.assert_allclose(probs[1], 1 - expected, atol=1e-5)
    assert max(seen) <= 3 and sum(seen) == len(tile_boxes((300, 410), (128, 160), 0.5))


def test_the_centre_of_a_tile_outweighs_the_edge_of_its_neighbour():
    """Each tile answers 1 near its centre and 0 near its border: the blend stays close to 1 everywhere the tiles
    overlap, as a model that sees context in the middle of its window is trusted there."""
    tile = (64, 64)
    centre = np.zeros(tile, np.float32)
    centre[16:48, 16:48] = 1

    probs = predict_tiled(np.zeros((3, 64, 160), np.float32), (64, 160), tile, lambda ts: [centre[None] for _ in ts],
                          overlap=0.5)
    assert probs[0, 32, 16:144].min() > 0.5  # every column away from the image border is some tile's centre


def test_an_image_smaller_than_the_tile_is_one_padded_tile():
    x = np.ones((3, 64, 96), np.float32)
    calls = []
    probs = predict_tiled(x, (50, 90), (128, 128), lambda ts: calls.extend(t.shape for t in ts) or
                          [t[:1] for t in ts], overlap=0.5)
    assert calls == [(3, 64, 96)] and probs.shape == (1, 50, 90)
