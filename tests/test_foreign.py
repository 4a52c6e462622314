"""Foreign models through the runtime: a real Hugging Face SegFormer (tiny config, random weights, nothing
downloaded) exported with exporting.foreign.export_huggingface and run by the inference.py CLI, with and
without our metadata; plus the description flags and the no-background rule on tiny hand-built models.

Tolerance of the torch comparison: on 128x128 images (the export's input size: no resize, no padding, so the
only resampling is the 4x bilinear upsampling of the logits, done by OpenCV at run time and by torch here) at
least 99 % of the pixels whose torch top-2 logit margin is above 1e-3 get the same class. In practice all do.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import inference  # noqa: E402
from runtime.postprocess import PALETTE, PostOptions, postprocess  # noqa: E402
from test_inference import rect_image, save_graph  # noqa: E402
from utils import UserError, preprocess, read_image, write_png  # noqa: E402

NAMES = ["wall", "sky", "tree"]
SIZE = 128  # the export's input size
MARGIN, AGREE = 1e-3, 0.99


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "inference.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=240)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def read_ids(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


# ----------------------------------------------------------------------------- a real SegFormer


@pytest.fixture(scope="module")
def segformer(tmp_path_factory) -> dict:
    """The tiny SegFormer (torch), its described ONNX, the same ONNX stripped of metadata beside a config.json,
    and images: two at the input size (for the torch comparison) and one of an odd size."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from exporting.foreign import export_huggingface

    folder = tmp_path_factory.mktemp("segformer")
    torch.manual_seed(0)
    config = transformers.SegformerConfig(
        num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], hidden_sizes=[8, 16, 32, 64],
        num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=32, num_labels=3,
        id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)})
    model = transformers.SegformerForSemanticSegmentation(config).eval()
    with torch.no_grad():
        model.decode_head.classifier.weight.mul_(20.0)  # random weights: sharper class regions, larger margins
    model.save_pretrained(folder / "hf")
    described = export_huggingface(str(folder / "hf"), folder / "segformer.onnx", input_size=SIZE)
    bare = folder / "bare" / "segformer.onnx"
    proto = onnx.load(str(described))
    del proto.metadata_props[:]
    bare.parent.mkdir()
    onnx.save(proto, str(bare))
    shutil.copy(folder / "hf" / "config.json", bare.parent / "config.json")
    rng = np.random.default_rng(0)
    images = folder / "images"
    for name, (h, w) in {"a.png": (SIZE, SIZE), "b.png": (SIZE, SIZE), "odd.png": (75, 203)}.items():
        smooth = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 6)
        write_png(images / name, cv2.normalize(smooth, None, 0, 255, cv2.NORM_MINMAX))
    return {"torch_model": model, "described": described, "bare": bare, "images": images, "folder": folder}


def torch_classes(model, image: np.ndarray, meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """(argmax, top-2 margin) of the torch model at the image's size (SIZE x SIZE: no resize, no padding)."""
    import torch
    import torch.nn.functional as F

    x, valid = preprocess(image, meta)
    assert x.shape[1:] == image.shape[:2] == valid, "the comparison images must be at the input size"
    with torch.inference_mode():
        logits = model(pixel_values=torch.from_numpy(x)[None]).logits  # (1, C, H/4, W/4)
        logits = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)[0]
    top2 = torch.topk(logits, 2, dim=0).values
    return logits.argmax(0).numpy(), (top2[0] - top2[1]).numpy()


def test_segformer_runs_through_the_cli_with_its_class_names(segformer, tmp_path):
    from runtime.metadata import read_metadata

    meta = read_metadata(segformer["described"])
    assert meta["class_names"] == NAMES and meta["background"] is False and meta["num_classes"] == 3
    gt = tmp_path / "gt"
    references = {}
    for name in ("a.png", "b.png"):
        classes, margin = torch_classes(segformer["torch_model"], read_image(segformer["images"] / name), meta)
        references[name] = classes, margin
        write_png(gt / name, classes.astype(np.uint8))
    assert len(np.unique(np.concatenate([c.ravel() for c, _ in references.values()]))) >= 2, "a trivial test"
    out = tmp_path / "out"
    done = run_cli("--model", str(segformer["described"]), "--source", str(segformer["images"]),
                   "--output", str(out), "--gt", str(gt), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    for name, (classes, margin) in references.items():
        mask = read_ids(out / "masks" / name)
        sure = margin > MARGIN
        assert mask.shape == classes.shape and (mask[sure] == classes[sure]).mean() >= AGREE
    assert read_ids(out / "masks" / "odd.png").shape == (75, 203)  # the original size
    rows = read_rows(out / "summary.csv")
    assert [f"dice_{n}" for n in NAMES] == [c for c in rows[0] if c.startswith("dice_")]  # wall included
    assert {r["status"] for r in rows} == {"ok"}  # no class is "empty"
    per_class = json.loads((out / "metrics.json").read_text())["per_class"]
    assert list(per_class) == NAMES and all(per_class[n]["mean_dice"] > 0.95 for n in per_class)
    legend = cv2.imread(str(out / "legend.png"))
    assert legend.shape[0] == 24 * len(NAMES) + 8
    assert "class wall:" in done.stdout


def test_segformer_without_metadata_takes_its_names_from_config_json(segformer, tmp_path):
    """The same ONNX stripped of our metadata, with the Hugging Face config.json beside it: the same masks."""
    done = run_cli("--model", str(segformer["described"]), "--source", str(segformer["images"]),
                   "--output", str(tmp_path / "described"), "--device", "cpu")
    bare = run_cli("--model", str(segformer["bare"]), "--source", str(segformer["images"]),
                   "--output", str(tmp_path / "bare"), "--device", "cpu", "--input-size", str(SIZE))
    assert done.returncode == 0 and bare.returncode == 0, bare.stderr
    assert "no 'segmentation' metadata" in bare.stderr and "wall, sky, tree" in bare.stderr
    for name in ("a.png", "b.png", "odd.png"):
        assert np.array_equal(read_ids(tmp_path / "bare" / "masks" / name),
                              read_ids(tmp_path / "described" / "masks" / name))
    columns = list(read_rows(tmp_path / "bare" / "summary.csv")[0])
    assert [c for c in columns if c.startswith("dice_")] == [f"dice_{n}" for n in NAMES]


# ----------------------------------------------------------------------------- tiny hand-built models


def build_model(path: Path, classes: int = 3, output_shape=None, input_shape=None, meta: dict | None = None) -> Path:
    """Conv 1x1 logits: class 0 wins on dark pixels, class 1 on bright ones. No metadata unless given."""
    weight = np.zeros((classes, 3, 1, 1), np.float32)
    weight[0], weight[1] = -2.0, 2.0
    graph = helper.make_graph(
        [helper.make_node("Conv", ["pixel_values", "w"], ["logits"])], "foreign",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, input_shape or ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, output_shape or ["N", classes, "h", "w"])],
        initializer=[numpy_helper.from_array(weight, "w")])
    return save_graph(graph, path, meta)


def test_foreign_multiclass_model_gets_its_class_count_from_the_output_shape(tmp_path):
    segmenter = inference.Segmenter(build_model(tmp_path / "m.onnx", 4), device="cpu")
    assert segmenter.meta["num_classes"] == 4 and segmenter.meta["class_names"] == [f"class_{i}" for i in range(4)]
    assert segmenter.meta["background"] is True  # no names: class 0 stays the background, as before


def test_symbolic_class_count_is_probed_once(tmp_path):
    path = build_model(tmp_path / "m.onnx", 3, output_shape=["N", "C", "h", "w"])
    assert inference.Segmenter(path, device="cpu").meta["num_classes"] == 3


@pytest.mark.parametrize("sidecar, names", [
    ({"labels.txt": "road\ncar\nperson\n"}, ["road", "car", "person"]),
    ({"config.json": json.dumps({"id2label": {"1": "sky", "0": "wall", "2": "tree"}})}, ["wall", "sky", "tree"]),
])
def test_sidecar_files_name_the_classes(tmp_path, sidecar, names):
    for file, text in sidecar.items():
        (tmp_path / file).write_text(text)
    segmenter = inference.Segmenter(build_model(tmp_path / "m.onnx"), device="cpu")
    assert segmenter.meta["class_names"] == names and segmenter.meta["background"] is False


def test_flags_beat_the_sidecar_and_the_defaults(tmp_path):
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "size": {"height": 96}}))
    segmenter = inference.Segmenter(build_model(tmp_path / "m.onnx"), device="cpu", description={
        "class_names": ["background", "x", "y"], "std": [0.25] * 3, "input_size": None})
    meta = segmenter.meta
    assert meta["class_names"] == ["background", "x", "y"] and meta["background"] is True  # named background
    assert meta["mean"] == [0.5] * 3 and meta["std"] == [0.25] * 3 and meta["input_size"] == 96


def test_flags_replace_our_own_metadata_and_a_wrong_count_is_one_line(tmp_path):
    meta = {"num_classes": 3, "class_names": ["bg", "a", "b"], "output": "logits"}
    path = build_model(tmp_path / "m.onnx", meta=meta)
    flags = {"class_names": ["w", "x", "y"], "background": False}
    segmenter = inference.Segmenter(path, device="cpu", description=flags)
    assert segmenter.meta["class_names"] == ["w", "x", "y"] and segmenter.post.background is False
    with pytest.raises(UserError, match="gives 2 names .* has 3 classes"):
        inference.Segmenter(path, device="cpu", description={"class_names": ["w", "x"]})


def build_identity(path: Path, shape: list) -> Path:
    """A graph that returns its input: loads in onnxruntime whatever the layout, so only our check can refuse it."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    return save_graph(graph, path)


@pytest.mark.parametrize("input_shape, match", [
    (["N", "H", "W", 3], "NHWC"), (["N", 1, "H", "W"], "1 channels"), (["N", 3, "H"], "shape"),
])
def test_unrunnable_model_fails_at_load_with_one_line(tmp_path, input_shape, match):
    path = build_identity(tmp_path / "m.onnx", input_shape)
    with pytest.raises(UserError, match=match) as info:
        inference.Segmenter(path, device="cpu")
    assert "\n" not in str(info.value)


def test_nhwc_model_stops_the_cli_with_exit_2_and_no_rows(tmp_path):
    path = build_identity(tmp_path / "m.onnx", ["N", "H", "W", 3])
    write_png(tmp_path / "src" / "x.png", rect_image(40, 60)[0])
    done = run_cli("--model", str(path), "--source", str(tmp_path / "src"), "--output", str(tmp_path / "out"))
    assert done.returncode == 2 and "NHWC" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "summary.csv").exists()


def test_no_background_counts_draws_and_scores_class_zero(tmp_path):
    """ADE20k-style: class 0 'wall' is a class. The dark frame (class 0) is in the area, the overlay, the
    colour mask, the legend and the per-class scores; the image is 'ok' even with nothing but class 0."""
    (tmp_path / "labels.txt").write_text("wall\nsky\ntree\n")
    model = build_model(tmp_path / "m.onnx")
    image, mask = rect_image(40, 60)
    write_png(tmp_path / "src" / "x.png", image)
    write_png(tmp_path / "src" / "dark.png", np.zeros_like(image))
    write_png(tmp_path / "gt" / "x.png", mask)
    write_png(tmp_path / "gt" / "dark.png", np.zeros_like(mask))
    out = tmp_path / "out"
    segmenter = inference.Segmenter(model, device="cpu", description={"input_size": 0})  # no resize: exact edges
    result = inference.run(segmenter, tmp_path / "src", out, gt_dir=tmp_path / "gt", alpha=1.0)
    rows = {r["file"]: r for r in read_rows(out / "summary.csv")}
    assert rows["dark.png"]["status"] == "ok" and int(rows["dark.png"]["area_px"]) == 40 * 60
    assert float(rows["x.png"]["dice_wall"]) == 1.0 and float(rows["x.png"]["dice_sky"]) == 1.0
    assert float(rows["x.png"]["dice"]) == pytest.approx(1.0)  # wall, sky and tree (absent from both: 1)
    assert list(result["metrics"]["per_class"]) == ["wall", "sky", "tree"]
    overlay = cv2.cvtColor(cv2.imread(str(out / "overlays" / "x.png")), cv2.COLOR_BGR2RGB)
    assert tuple(overlay[0, 0]) == tuple(PALETTE[1].astype(np.uint8))  # class 0 drawn in the first colour
    colour = cv2.cvtColor(cv2.imread(str(out / "masks_color" / "x.png")), cv2.COLOR_BGR2RGB)
    assert colour[0, 0].any() and tuple(colour[20, 30]) == tuple(PALETTE[2].astype(np.uint8))


@pytest.mark.parametrize("options", [{"min_component_area": 2}, {"min_component_area": 2, "keep_largest": 1}])
def test_no_background_postprocess_leaves_no_pixel_unclassed(options):
    probs = np.zeros((3, 20, 20), np.float32)
    probs[0], probs[1, 5:15, 5:15], probs[2, 0, 0], probs[2, 19, 19] = 0.5, 1.0, 1.0, 1.0  # two class-2 specks
    probs[1, 18, 18] = 2.0  # and a class-1 one next to the second
    mask, info = postprocess(probs, PostOptions(background=False, **options))
    assert info["detected"] and info["area_px"] == 400 and info["components"] == 2
    assert (mask[5:15, 5:15] == 1).all() and mask[0, 0] == 0 and mask[19, 19] == 0  # dropped: the nearest kept class
    assert set(np.unique(mask)) == {0, 1}
    plain, _ = postprocess(probs, PostOptions(background=False))
    assert plain[0, 0] == 2 and plain[18, 18] == 1  # no morphology: the argmax itself
