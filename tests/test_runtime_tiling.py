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


# ----------------------------------------------------------------------------- the Segmenter and the CLI


def tiled_model(tmp_path, size: int = 64):
    from test_inference import TEST_META, build_model

    meta = {**TEST_META, "input_size": 256, "tile": {"size": [size, size], "overlap": 0.5}}
    return build_model(tmp_path / "tiled.onnx", meta)


def photo(h: int = 150, w: int = 230) -> np.ndarray:
    rng = np.random.default_rng(3)
    image = (rng.random((h, w, 3)) * 80).astype(np.uint8)
    image[40:90, 60:170] = 230
    return image


class Recorder:
    """An onnxruntime session that records the input shapes it is run on."""

    def __init__(self, path):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.shapes = []

    def run(self, names, feeds):
        self.shapes.append(next(iter(feeds.values())).shape)
        return self.session.run(names, feeds)

    def __getattr__(self, name):
        return getattr(self.session, name)


def test_a_patch_trained_model_runs_large_images_as_tiles_and_a_pointwise_one_gives_the_whole_answer(tmp_path):
    from inference import Segmenter

    path = tiled_model(tmp_path)
    recorder = Recorder(path)
    tiled = Segmenter(path, session=recorder)
    assert tiled.tile_hw == (64, 64) and tiled.tile_overlap == 0.5
    probs = tiled.predict_probs(photo())  # resized to 256 x 167: tiles of 64 x 64, 4 to a run
    assert recorder.shapes and all(s[1:] == (3, 64, 64) and s[0] <= 4 for s in recorder.shapes)
    whole = Segmenter(path, tile="off").predict_probs(photo())
    np.testing.assert_allclose(probs, whole, atol=1e-5)  # a 1x1 convolution: the blend is exact
    assert Segmenter(path, tile="off").tile_hw is None


def test_small_images_and_other_tile_sizes(tmp_path):
    from inference import Segmenter

    path = tiled_model(tmp_path, size=512)  # larger than the resized image: no tiles
    recorder = Recorder(path)
    Segmenter(path, session=recorder).predict_probs(photo())
    assert [s[2:] for s in recorder.shapes] == [(192, 256)]  # one whole run, padded to the stride
    recorder.shapes.clear()
    Segmenter(path, session=recorder, tile="96x128", tile_overlap=0.25).predict_probs(photo())
    assert {s[2:] for s in recorder.shapes} == {(96, 128)}


@pytest.mark.parametrize("tile, overlap, message", [("70x70", None, "multiples of 32"), ("big", None, "auto, off"),
                                                    ("auto", 0.95, "--tile-overlap 0.95")])
def test_bad_tile_options_are_one_line(tmp_path, tile, overlap, message):
    from inference import Segmenter
    from utils import UserError

    with pytest.raises(UserError, match=message):
        Segmenter(tiled_model(tmp_path), tile=tile, tile_overlap=overlap)


def test_the_cli_tiles_and_the_end_to_end_export_refuses(tmp_path):
    import inference
    from exporting import e2e
    from utils import UserError, write_png

    path = tiled_model(tmp_path)
    write_png(tmp_path / "in" / "a.png", photo())
    inference.main(["--model", str(path), "--source", str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    assert (tmp_path / "out" / "masks" / "a.png").is_file()
    with pytest.raises(UserError, match="tiles .* which an end-to-end graph does not do"):
        e2e.convert(path)
