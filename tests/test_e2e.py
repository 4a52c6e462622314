"""End-to-end ONNX (exporting/e2e.py), its runtime helper (runtime/e2e.py) and the Node.js and browser examples.

The plain models here are tiny random graphs built with onnx.helper (no torch, no training), carrying
export.py's metadata. Parity with the engine (inference.Segmenter on the plain file) is asserted per
resize direction: shrinking is exact area averaging on both sides (probs within 1e-4, identical masks);
enlarging is cv2's fixed-point bilinear against the graph's float bilinear, at most 1 grey level apart
(probs within 0.05 on these untrained, input-sensitive models; masks differ in at most 1 % of the pixels,
or one pixel).
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

if __name__ == "__main__":  # run as a script (main below): the repository's modules, as conftest.py adds them
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporting import e2e  # noqa: E402
from exporting.e2e_ops import resize_model  # noqa: E402
from runtime.e2e import is_end_to_end, predict_e2e  # noqa: E402
from runtime.lineage import file_digest  # noqa: E402
from runtime.metadata import DEFAULT_METADATA  # noqa: E402
from runtime.rule import make_rule  # noqa: E402
from utils import IMAGENET_MEAN, IMAGENET_STD, UserError, resize_long_side  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
HORSES = ROOT.parent / "shared" / "data" / "weizmann_horse" / "images" / "val"
SHRINK = [(211, 300), (128, 64), (100, 61), (97, 333)]  # long side above the model's 64: cv2.INTER_AREA
ENLARGE = [(37, 53), (3, 7), (64, 64)]  # at or below 64: cv2.INTER_LINEAR (64: no resize at all)


def save_plain(path: Path, nodes, inits, out: str, classes: int, out_dims, opset: int = 17, **meta) -> Path:
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", classes, *out_dims])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 19 else 9
    names = ["foreground"] if classes == 1 else [f"class_{i}" for i in range(classes)]
    entry = model.metadata_props.add()
    entry.key, entry.value = "segmentation", json.dumps({**DEFAULT_METADATA, "arch": "Tiny", "num_classes": classes,
                                                         "class_names": names, "input_size": 64, **meta})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def tiny_plain(path: Path, classes: int = 1, output: str = "probs", seed: int = 0, half_output: bool = False,
               opset: int = 17, **meta) -> Path:
    """Conv stride 2 -> ReLU -> (x2 upsample) -> conv: a random 'segmenter' with export.py's I/O and metadata."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.5, (classes, 8, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "x2")]
    nodes = [helper.make_node("Conv", ["image", "w1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"])]
    if not half_output:
        nodes.append(helper.make_node("Resize", ["r1", "", "x2"], ["r2"], mode="linear"))
    nodes.append(helper.make_node("Conv", ["r1" if half_output else "r2", "w2"], ["logits"], pads=[1, 1, 1, 1]))
    out = "logits"
    if output == "probs":
        nodes.append(helper.make_node("Sigmoid", ["logits"], ["probs"]) if classes == 1 else
                     helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
        out = "probs"
    dims = ["h2", "w2"] if half_output else ["height", "width"]
    return save_plain(path, nodes, inits, out, classes, dims, opset, output=output, **meta)


def identity_plain(path: Path, input_size: int, **meta) -> Path:
    """probs = R / 255 (a 1x1 conv undoing the normalisation): the mask rule can be tested on chosen values."""
    weight = np.zeros((1, 3, 1, 1), np.float32)
    weight[0, 0] = IMAGENET_STD[0]
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.float32([IMAGENET_MEAN[0]]), "b")]
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["probs"])]
    return save_plain(path, nodes, inits, "probs", 1, ["height", "width"], input_size=input_size, **meta)


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (7, 7), 3)


def session(model: Path | bytes) -> ort.InferenceSession:
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), providers=["CPUExecutionProvider"])


def engine_mask(result, classes: int) -> np.ndarray:
    return result.mask * 255 if classes == 1 else result.mask


# ----------------------------------------------------------------------------- contract and metadata


@pytest.mark.parametrize("classes,output", [(1, "probs"), (1, "logits"), (3, "probs"), (4, "logits")])
def test_uint8_image_in_mask_and_probs_out_at_the_image_size(tmp_path, classes, output):
    model = session(e2e.convert(tiny_plain(tmp_path / "m.onnx", classes, output)))
    assert model.get_inputs()[0].type == "tensor(uint8)"
    for h, w in SHRINK + ENLARGE:
        mask, probs = predict_e2e(model, smooth_image(h, w))
        assert mask.shape == (h, w) and mask.dtype == np.uint8
        assert probs.shape == (classes, h, w) and probs.dtype == np.float32
        assert probs.min() >= 0 and probs.max() <= 1
        if classes == 1:
            assert set(np.unique(mask)) <= {0, 255}
        else:
            np.testing.assert_allclose(probs.sum(axis=0), 1, atol=1e-5)
            np.testing.assert_array_equal(mask, probs.argmax(axis=0))


@pytest.mark.parametrize("opset", [13, 18, 20])
def test_the_model_keeps_its_own_opset(tmp_path, opset):
    path = e2e.convert(tiny_plain(tmp_path / "m.onnx", 3, "logits", opset=opset), tta="hflip", threshold=0.5)
    assert [o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")] == [opset]
    mask, probs = predict_e2e(session(path), smooth_image(70, 90))
    assert mask.shape == (70, 90) and probs.shape == (3, 70, 90)
    adaptive = e2e.convert(tiny_plain(tmp_path / "b.onnx", opset=opset), tmp_path / "b2.onnx", threshold="adaptive")
    assert predict_e2e(session(adaptive), smooth_image(70, 90))[0].shape == (70, 90)


def test_batch_form_matches_single_images(tmp_path):
    plain = tiny_plain(tmp_path / "m.onnx", 3, "logits")
    single = session(e2e.convert(plain))
    batched = session(e2e.convert(plain, tmp_path / "batch.onnx", batch=True))
    images = np.stack([smooth_image(99, 131, seed) for seed in range(3)])
    masks, probs = batched.run(["mask", "probs"], {"image": images})
    assert masks.shape == (3, 99, 131) and probs.shape == (3, 3, 99, 131)
    for image, mask, prob in zip(images, masks, probs):
        got_mask, got_probs = predict_e2e(single, image)
        np.testing.assert_array_equal(mask, got_mask)
        np.testing.assert_allclose(prob, got_probs, atol=1e-6)
    np.testing.assert_array_equal(predict_e2e(batched, images[0])[0], masks[0])  # the helper feeds a batch of one


def test_metadata_keeps_the_plain_json_and_adds_the_io(tmp_path):
    plain = tiny_plain(tmp_path / "m.onnx", 1, "logits", threshold=0.42, name="horse")
    before = plain.read_bytes()
    path = e2e.convert(plain)
    assert path == tmp_path / "m.e2e.onnx" and plain.read_bytes() == before
    meta = json.loads(session(path).get_modelmeta().custom_metadata_map["segmentation"])
    assert meta["end_to_end"] is True and meta["name"] == "horse" and meta["input_size"] == 64
    assert meta["rule"]["mode"] == "cv" and meta["rule"]["threshold"] == 0.42  # the CV threshold of the plain metadata
    assert meta["source"] == {"file": "m.onnx", "sha256": file_digest(plain), "made": "e2e"}
    assert meta["inner_output"] == "logits" and meta["output"] == "probs" and meta["e2e_tta"] == "none"
    assert meta["io"]["inputs"]["image"].startswith("uint8 (H, W, 3) RGB")
    assert set(meta["io"]["outputs"]) == {"mask", "probs"}


def test_plain_and_end_to_end_files_are_told_apart(tmp_path):
    plain = tiny_plain(tmp_path / "m.onnx")
    assert not is_end_to_end(session(plain))
    assert is_end_to_end(session(e2e.convert(plain)))
    with pytest.raises(UserError, match="plain model"):
        predict_e2e(session(plain), smooth_image(10, 10))


def test_helper_takes_grey_and_rgba_and_refuses_floats(tmp_path):
    model = session(e2e.convert(tiny_plain(tmp_path / "m.onnx")))
    rgb = smooth_image(50, 70)
    np.testing.assert_array_equal(predict_e2e(model, np.dstack([rgb, np.full((50, 70), 7, np.uint8)]))[0],
                                  predict_e2e(model, rgb)[0])
    assert predict_e2e(model, rgb[..., 0])[0].shape == (50, 70)
    with pytest.raises(UserError, match="uint8"):
        predict_e2e(model, rgb.astype(np.float32))


@pytest.mark.parametrize("module,blocked", [("exporting.e2e", "'torch', 'torchvision', 'segmentation_models_pytorch'"),
                                            ("runtime.e2e", "'torch', 'torchvision', 'segmentation_models_pytorch', "
                                                            "'onnx'")])
def test_import_needs_no_torch(module, blocked):
    """The builder is torch-free (onnx only); the runtime helper needs neither torch nor onnx."""
    code = (f"import sys\nBLOCKED = {{{blocked}}}\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in BLOCKED:\n"
            "            raise ImportError('blocked: ' + name)\n"
            f"sys.meta_path.insert(0, Block())\nimport {module}\nprint('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


# ----------------------------------------------------------------------------- parity with the engine


@pytest.mark.parametrize("classes,output,tta,half", [(1, "probs", "none", False), (1, "logits", "flips", False),
                                                     (3, "logits", "hflip", False), (2, "probs", "none", True)])
def test_parity_with_the_python_engine(tmp_path, classes, output, tta, half):
    from inference import Segmenter

    plain = tiny_plain(tmp_path / "m.onnx", classes, output, half_output=half, threshold=0.5)
    model = session(e2e.convert(plain, tta=tta))
    engine = Segmenter(plain, device="cpu", tta=tta, threshold="model")
    for h, w in SHRINK + ENLARGE:
        image = smooth_image(h, w, seed=h)
        mask, probs = predict_e2e(model, image)
        result = engine.predict(image)
        shrinking = max(h, w) > 64
        assert np.abs(probs - result.probs).max() <= (1e-4 if shrinking else 0.05), (h, w)
        differ = np.count_nonzero(mask != engine_mask(result, classes))
        assert differ == 0 if shrinking else differ <= max(1, 0.01 * mask.size), (h, w, differ)


@pytest.mark.parametrize("size", [64, 320])  # column pass by matmul (<= MATMUL_SIDE) and by prefix sums
def test_in_graph_resize_is_cv2_area_and_linear(size):
    pre, rng, k = session(resize_model(size).SerializeToString()), np.random.default_rng(3), size // 64
    exact = [(128 * k, 96 * k), (256 * k, 200 * k)]  # exact 2x and 4x shrinks: cv2's two rounding rules
    for h, w in exact + [(130 * k, 64 * k), (333 * k, 97 * k), (611, 457), (40 * k, 23 * k), (64 * k, 13), (3, 5)]:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        want = resize_long_side(image, size).transpose(2, 0, 1).astype(np.float32)
        got = pre.run(None, {"image": image})[0]
        assert got.shape == want.shape
        diff = np.abs(got - want)
        assert diff.max() <= 1
        if (h, w) in exact:
            assert diff.max() == 0
        elif max(h, w) > size:  # float area weights vs cv2's own float ones: rare last-bit differences
            assert np.mean(diff > 0) < 1e-3


# ----------------------------------------------------------------------------- threshold rules


def test_given_fixed_threshold_cuts_the_probs(tmp_path):
    model = session(e2e.convert(tiny_plain(tmp_path / "m.onnx", threshold=0.5), threshold=0.3))
    mask, probs = predict_e2e(model, smooth_image(90, 120))
    np.testing.assert_array_equal(mask, np.where(probs[0] > 0.3, 255, 0))


def cascade_image(value: int, blobs: list[tuple[int, int, int]]) -> np.ndarray:
    """64x64 image whose red channel (= the identity model's probs x 255) is `value` in square blobs (y, x, side)."""
    image = np.zeros((64, 64, 3), np.uint8)
    for y, x, side in blobs:
        image[y:y + side, x:x + side, 0] = value
    return image


@pytest.mark.parametrize("value,blobs,min_area,want_pixels", [
    (102, [(10, 10, 12)], 130, 144),  # 0.4: nothing above 0.5, a 144 px region above 0.3
    (230, [(5, 5, 10), (40, 40, 3)], 64, 109),  # 0.9: found at 0.5, the small blob kept too
    (51, [(10, 10, 20)], 500, 0),  # 0.2: 400 px above 0.15, under min_area: an empty mask (a safe negative)
    (102, [(1, 1, 5)], 130, 0),  # 25 px: no level reaches min_area
])
def test_adaptive_cascade_matches_the_engine_on_single_regions(tmp_path, value, blobs, min_area, want_pixels):
    from inference import Segmenter

    plain = identity_plain(tmp_path / "id.onnx", 64, min_area=min_area)
    model = session(e2e.convert(plain, threshold="adaptive"))
    image = cascade_image(value, blobs)
    mask, _ = predict_e2e(model, image)
    assert np.count_nonzero(mask) == want_pixels
    result = Segmenter(plain, device="cpu", threshold="adaptive").predict(image)
    np.testing.assert_array_equal(mask, engine_mask(result, 1))


def test_adaptive_cascade_counts_total_area_in_the_graph_and_the_engine(tmp_path):
    """One definition: 16 specks of 16 px (256 px in all, none >= min_area 100) are a detection at 0.5 for both."""
    from inference import Segmenter

    plain = identity_plain(tmp_path / "id.onnx", 64, min_area=100)
    image = cascade_image(230, [(y, x, 4) for y in range(2, 60, 16) for x in range(2, 60, 16)])
    mask, _ = predict_e2e(session(e2e.convert(plain, threshold="adaptive")), image)
    assert np.count_nonzero(mask) == 256
    result = Segmenter(plain, device="cpu", threshold="adaptive").predict(image)
    np.testing.assert_array_equal(mask, engine_mask(result, 1))
    assert result.info["threshold"] == 0.5 and result.info["status"] == "ok"


def test_the_recorded_rule_is_baked_in_and_applied_by_the_engine_by_default(tmp_path):
    """A plain file recording the cascade: its e2e graph and the engine's default both apply it."""
    from inference import Segmenter

    plain = identity_plain(tmp_path / "id.onnx", 64, min_area=130,
                           rule={**make_rule("adaptive", min_area=130)})
    path = e2e.convert(plain)
    meta = json.loads(session(path).get_modelmeta().custom_metadata_map["segmentation"])
    assert meta["rule"] == make_rule("adaptive", min_area=130)
    image = cascade_image(102, [(10, 10, 12)])  # 0.4: nothing above 0.5, 144 px above 0.3
    mask, _ = predict_e2e(session(path), image)
    assert np.count_nonzero(mask) == 144
    np.testing.assert_array_equal(mask, engine_mask(Segmenter(plain, device="cpu").predict(image), 1))
    np.testing.assert_array_equal(mask, engine_mask(Segmenter(path, device="cpu").predict(image), 1))


def test_a_rule_with_morphology_has_no_end_to_end_form(tmp_path):
    plain = tiny_plain(tmp_path / "m.onnx", rule=make_rule(None, 0.5, fill_holes=True))
    with pytest.raises(UserError, match="--fill-holes, which the end-to-end graph cannot apply"):
        e2e.convert(plain)


# ----------------------------------------------------------------------------- refusals and entry points


@pytest.mark.parametrize("meta,threshold,message", [
    ({"task": "gate"}, None, "only segmentation"), ({"end_to_end": True}, None, "already end-to-end"),
    ({"crop_mode": "person"}, None, "detector"), ({}, "otsu", "not valid"), ({}, 1.5, "not valid"),
])
def test_unsuitable_models_and_options_are_refused(tmp_path, meta, threshold, message):
    with pytest.raises(UserError, match=message):
        e2e.convert(tiny_plain(tmp_path / "m.onnx", **meta), threshold=threshold)


def test_models_without_metadata_or_with_a_fixed_size_are_refused(tmp_path):
    plain = tiny_plain(tmp_path / "m.onnx")
    proto = onnx.load(str(plain))
    del proto.metadata_props[:]
    with pytest.raises(UserError, match="no 'segmentation' metadata"):
        e2e.build_e2e(proto)
    proto = onnx.load(str(plain))
    for dim, value in zip(proto.graph.input[0].type.tensor_type.shape.dim[2:], (64, 64)):
        dim.dim_value = value
    with pytest.raises(UserError, match="dynamic"):
        e2e.build_e2e(proto)


def test_command_line_converts_an_existing_file(tmp_path):
    plain = tiny_plain(tmp_path / "m.onnx", 3, "logits")
    done = subprocess.run([sys.executable, "-m", "exporting.e2e", str(plain), "--tta", "flips", "--threshold", "0.3"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    meta = json.loads(session(tmp_path / "m.e2e.onnx").get_modelmeta().custom_metadata_map["segmentation"])
    assert meta["e2e_tta"] == "flips" and meta["rule"]["mode"] == "fixed" and meta["rule"]["threshold"] == 0.3
    done = subprocess.run([sys.executable, "-m", "exporting.e2e", str(tmp_path / "m.e2e.onnx")], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "already end-to-end" in done.stderr


def test_command_line_keeps_an_e2e_file_of_another_rule_unless_forced(tmp_path):
    """The overwrite guard every writer shares: another rule (or TTA) is another variant."""
    plain = tiny_plain(tmp_path / "m.onnx")
    e2e.convert(plain)
    before = (tmp_path / "m.e2e.onnx").read_bytes()
    command = [sys.executable, "-m", "exporting.e2e", str(plain), "--threshold", "adaptive", "--no-verify"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--force to replace it" in done.stderr
    assert "rule adaptive" in done.stderr and (tmp_path / "m.e2e.onnx").read_bytes() == before
    assert subprocess.run(command + ["--force"], cwd=ROOT, capture_output=True, text=True).returncode == 0
    e2e.convert(plain, threshold="adaptive")  # the same variant again: a re-export, allowed


def test_export_end_to_end_flag_reaches_the_export(tmp_path, monkeypatch):
    """export.py --end-to-end writes <name>.e2e.onnx inside the export, behind its overwrite guard (a real one:
    tests/test_parity.py)."""
    import export

    seen = {}
    monkeypatch.setattr(export, "export_onnx", lambda *args, **kwargs: seen.update(kwargs))
    export.main(["--work-dir", str(tmp_path), "--end-to-end", "--threshold", "adaptive"])
    assert seen["end_to_end"] is True and seen["threshold"] == "adaptive"


@pytest.mark.parametrize("classes", [1, 3])
def test_inference_cli_runs_the_e2e_file_like_its_plain_file(tmp_path, classes):
    """inference.py --model x.e2e.onnx: the graph's probs, the engine's post-processing; with --threshold model the
    masks equal the graph's own mask output and the plain file's masks."""
    import inference
    from utils import read_mask

    plain = tiny_plain(tmp_path / "m.onnx", classes, threshold=0.45)
    e2e_path = e2e.convert(plain)
    images = tmp_path / "images"
    images.mkdir()
    for i, (h, w) in enumerate([(70, 90), (120, 64)]):
        cv2.imwrite(str(images / f"i{i}.png"), cv2.cvtColor(smooth_image(h, w, i), cv2.COLOR_RGB2BGR))
    for model, out in ((plain, "plain"), (e2e_path, "e2e")):
        inference.main(["--model", str(model), "--source", str(images), "--output", str(tmp_path / out),
                        "--threshold", "model", "--min-area", "0"])
    graph = session(e2e_path)
    for i in range(2):
        got = read_mask(tmp_path / "e2e" / "masks" / f"i{i}.png", num_classes=classes)
        want = read_mask(tmp_path / "plain" / "masks" / f"i{i}.png", num_classes=classes)
        assert got.shape == want.shape and (got != want).mean() < 1e-3
        rgb = cv2.cvtColor(cv2.imread(str(images / f"i{i}.png")), cv2.COLOR_BGR2RGB)
        graph_mask = predict_e2e(graph, rgb)[0]
        assert np.array_equal(got, graph_mask // 255 if classes == 1 else graph_mask)
    with pytest.raises(UserError, match="TTA baked in"):
        inference.main(["--model", str(e2e_path), "--source", str(images), "--output", str(tmp_path / "x"),
                        "--tta", "hflip"])


def test_opencv_dnn_runs_the_end_to_end_graph(tmp_path):
    if not hasattr(cv2, "dnn"):
        pytest.skip(f"OpenCV {cv2.__version__} has no dnn module")
    path = e2e.convert(tiny_plain(tmp_path / "m.onnx", 3, "logits"), tta="hflip")
    image = smooth_image(123, 77)
    net = cv2.dnn.readNetFromONNX(str(path))
    net.setInput(image)
    mask, probs = net.forward(["mask", "probs"])
    want_mask, want_probs = predict_e2e(session(path), image)
    assert np.mean(mask == want_mask) >= 0.999 and np.abs(probs - want_probs).max() < 1e-4


def test_parity_bench_runs_on_a_tiny_model(tmp_path):
    """bench/e2e_parity.py end to end on 3 generated images (the BENCHMARKS.md numbers come from real models)."""
    plain = tiny_plain(tmp_path / "m.onnx", 3, "logits")
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for i, (h, w) in enumerate([(90, 120), (50, 40), (64, 64)]):
        cv2.imwrite(str(tmp_path / "images" / f"{i}.png"), smooth_image(h, w, i))
        cv2.imwrite(str(tmp_path / "masks" / f"{i}.png"), (smooth_image(h, w, i + 9)[..., 0] % 3).astype(np.uint8))
    done = subprocess.run([sys.executable, "bench/e2e_parity.py", str(plain), str(tmp_path / "images"),
                           str(tmp_path / "masks"), "--repeats", "1", "--runtimes", "opencv", "--large", "300x400",
                           "--threads", "1", "--out", str(tmp_path / "out.json")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["summary"]["images"] == 3 and result["model"] == str(plain.relative_to(plain.parents[1]))
    assert result["cost"]["e2e_ms"] > 0 and result["large"]["size"] == [300, 400]
    assert "| e2e graph |" in done.stdout and "OpenCV" in done.stdout


# ----------------------------------------------------------------------------- Node.js and the browser


def example_photo(tmp_path: Path) -> Path:
    """A horse photo re-saved as PNG (lossless: every runtime decodes the same pixels), else a generated one."""
    horses = sorted(HORSES.glob("*.jpg"))
    image = cv2.imread(str(horses[0])) if horses else smooth_image(150, 210)[..., ::-1]
    cv2.imwrite(str(tmp_path / "photo.png"), image)
    return tmp_path / "photo.png"


def python_mask(model: Path, photo: Path) -> np.ndarray:
    from utils import read_image

    return predict_e2e(session(model), read_image(photo))[0]


def require_node_modules(package: str) -> None:
    if not (EXAMPLES / "node_modules" / package).is_dir():
        pytest.fail(f"examples/node_modules/{package} is missing: run `make install` (or `npm ci --prefix examples`)")


def node_or_skip() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (Debian: apt-get install nodejs npm); the Node.js example cannot run")
    require_node_modules("onnxruntime-node")
    return node


def run_node(model: Path, photo: Path, mask: Path) -> subprocess.CompletedProcess:
    return subprocess.run([node_or_skip(), "node/segment.js", str(model), str(photo), str(mask)], cwd=EXAMPLES,
                          capture_output=True, text=True, timeout=120)


def test_node_example_writes_the_same_mask_as_python(tmp_path):
    plain = tiny_plain(tmp_path / "m.onnx", 3, "logits")
    model = e2e.convert(plain, tta="hflip")
    photo = example_photo(tmp_path)
    done = run_node(model, photo, tmp_path / "mask.png")
    assert done.returncode == 0, done.stderr
    head, line = [json.loads(text) for text in done.stdout.splitlines()]
    assert head == {"model": str(model), "made_from": "m.onnx", "source_sha256": file_digest(plain),
                    "rule": "threshold 0.5 (cross-validated)"}  # the model's source hash, to compare with sha256sum
    assert line["width"] == cv2.imread(str(photo)).shape[1] and not done.stderr
    written = cv2.imread(str(tmp_path / "mask.png"), cv2.IMREAD_UNCHANGED)
    assert written.dtype == np.uint8 and written.ndim == 2
    np.testing.assert_array_equal(written, python_mask(model, photo))


def test_node_example_names_a_stale_model_and_refuses_a_plain_one(tmp_path):
    plain = tiny_plain(tmp_path / "m.onnx")
    model = e2e.convert(plain)
    photo = example_photo(tmp_path)
    tiny_plain(plain, seed=1)  # a retrain re-exported the plain file; the e2e file is the old model
    done = run_node(model, photo, tmp_path / "mask.png")
    assert done.returncode == 0 and done.stderr.startswith("warning: m.e2e.onnx was made from another m.onnx (sha256 ")
    done = run_node(plain, photo, tmp_path / "mask2.png")
    assert done.returncode == 1 and done.stderr.startswith("error: m.onnx is not an end-to-end model")
    assert "export.py --end-to-end" in done.stderr and not (tmp_path / "mask2.png").exists()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".wasm": "application/wasm"}

    def log_message(self, *args):
        pass


def static_server(folder: Path) -> http.server.ThreadingHTTPServer:
    """`python -m http.server` on 127.0.0.1 and a free port, serving `folder`, in a background thread."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def browser_mask(url: str, model: Path, photo: Path, profile: Path) -> tuple[np.ndarray, dict]:
    from playwright.sync_api import sync_playwright

    from test_app_browser import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True,
                                                        args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(120_000)
            page.goto(url)
            page.locator("#model").set_input_files(str(model))
            page.locator("body[data-model=ready], body[data-state=error]").wait_for(state="attached")
            loaded = page.locator("#status").inner_text()
            if page.locator("body[data-state=error]").count():
                return None, {"status": loaded}
            page.locator("#image").set_input_files(str(photo))
            page.locator("body[data-state=done], body[data-state=error]").wait_for(state="attached")
            shown = page.locator("#status").inner_text()
            assert page.locator("body[data-state=done]").count() == 1, shown
            state = page.evaluate("() => ({width: segpipe.width, height: segpipe.height, "
                                  "mask: Array.from(segpipe.mask), canvas: document.getElementById('view').width})")
        finally:
            browser.close()
    mask = np.asarray(state.pop("mask"), np.uint8).reshape(state["height"], state["width"])
    return mask, {**state, "status": shown, "loaded": loaded}


def browser_or_skip() -> None:
    from test_app_browser import CHROMIUM

    if not Path(CHROMIUM).is_file():
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    pytest.importorskip("playwright", reason="playwright is not installed (pip install -r requirements-app.txt)")
    if not (EXAMPLES / "node_modules" / "onnxruntime-web").is_dir() and shutil.which("npm") is None:
        pytest.skip("npm is not installed, so examples/node_modules/onnxruntime-web cannot be; the page needs it")
    require_node_modules("onnxruntime-web")


def page_mask(model: Path, photo: Path, profile: Path) -> tuple[np.ndarray | None, dict]:
    server = static_server(EXAMPLES)
    try:
        return browser_mask(f"http://127.0.0.1:{server.server_address[1]}/web/index.html", model, photo, profile)
    finally:
        server.shutdown()


def test_web_page_shows_the_same_mask_as_python(tmp_path):
    browser_or_skip()
    plain = tiny_plain(tmp_path / "m.onnx", 1, "logits")
    model = e2e.convert(plain, tta="flips")
    photo = example_photo(tmp_path)
    mask, shown = page_mask(model, photo, tmp_path / "profile")
    want = python_mask(model, photo)
    assert mask.shape == want.shape and shown["canvas"] == want.shape[1]
    assert "% foreground" in shown["status"]
    assert f"made from m.onnx (sha256 {file_digest(plain)}); rule: threshold 0.5 (cross-validated)" in shown["loaded"]
    # WebAssembly kernels vs native ones: float rounding may flip a pixel sitting on the threshold
    assert np.count_nonzero(mask != want) <= 0.001 * want.size, shown


def test_web_page_names_a_plain_model_instead_of_an_onnxruntime_error(tmp_path):
    browser_or_skip()
    mask, shown = page_mask(tiny_plain(tmp_path / "m.onnx"), example_photo(tmp_path), tmp_path / "profile")
    assert mask is None and shown["status"].startswith("error: m.onnx is not an end-to-end model")
    assert "Unexpected input data type" not in shown["status"]


def main() -> None:
    """The browser check on a real model: python tests/test_e2e.py --model runs/horse/horse.e2e.onnx IMAGE..."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description="examples/web/index.html in headless chromium vs Python onnxruntime")
    parser.add_argument("--model", type=Path, required=True, help="an end-to-end .onnx")
    parser.add_argument("images", type=Path, nargs="+", help="photos; each is re-saved as PNG first (same pixels)")
    args = parser.parse_args()
    server = static_server(EXAMPLES)
    url = f"http://127.0.0.1:{server.server_address[1]}/web/index.html"
    try:
        for image in args.images:
            with tempfile.TemporaryDirectory() as tmp:
                photo = Path(tmp) / "photo.png"
                cv2.imwrite(str(photo), cv2.imread(str(image)))
                mask, shown = browser_mask(url, args.model.resolve(), photo, Path(tmp) / "profile")
                differ = int(np.count_nonzero(mask != python_mask(args.model, photo)))
                print(json.dumps({"image": image.name, "pixels": mask.size, "differing": differ,
                                  "status": shown["status"]}))
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
