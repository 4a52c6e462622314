"""Tests for inference.py: tiny ONNX models built with onnx.helper, synthetic images, CPU only."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import inference  # noqa: E402
from conftest import TRAINING_SIDE  # noqa: E402
from runtime.postprocess import PALETTE, postprocess  # noqa: E402
from runtime.report import CSV_COLUMNS  # noqa: E402
from runtime.segmenter import TTA_FLIPS, Result  # noqa: E402
from utils import LOG, UserError, preprocess, read_mask, write_png  # noqa: E402

# Inside the model white pixels give a high foreground logit, black a low one (ImageNet-normalised
# RGB summed, times 2), so a white rectangle on black is what the model "segments".
TEST_META = {"input_size": 64, "stride": 32, "num_classes": 1, "class_names": ["fg"], "name": "tiny"}


# ----------------------------------------------------------------------------- helpers


def save_graph(graph, path: Path, meta: dict | None = None, check: bool = False) -> Path:
    """An opset-17 model of `graph` saved at `path`, with our metadata when `meta` is given."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if meta is not None:
        helper.set_model_props(model, {"segmentation": json.dumps(meta)})
    if check:
        onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_model(path: Path, meta: dict | None = None, classes: int = 1, half: bool = False, fixed_hw=None) -> Path:
    """Conv(3->C, 1x1) [+ AveragePool /2] + Sigmoid/Softmax, dynamic N/H/W unless fixed_hw."""
    if classes == 1:
        weight = np.full((1, 3, 1, 1), 2.0, np.float32)
    else:  # class 0 wins on dark pixels, class 1 on bright ones, the rest never
        weight = np.zeros((classes, 3, 1, 1), np.float32)
        weight[0], weight[1] = -2.0, 2.0
    in_shape = ["N", 3, *fixed_hw] if fixed_hw else ["N", 3, "H", "W"]
    nodes = [helper.make_node("Conv", ["image", "w"], ["logits"])]
    last = "logits"
    if half:
        nodes.append(helper.make_node("AveragePool", [last], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]))
        last = "pooled"
    act = helper.make_node("Sigmoid", [last], ["probs"]) if classes == 1 else helper.make_node(
        "Softmax", [last], ["probs"], axis=1)
    graph = helper.make_graph(
        nodes + [act], "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", classes, "h", "w"])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    return save_graph(graph, path, meta, check=True)


def rect_image(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Black RGB image with a white rectangle in the middle, and its {0, 1} mask."""
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4: h - h // 4, w // 4: w - w // 4] = 1
    return np.repeat(mask[..., None] * 255, 3, axis=2), mask


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "inference.py"), *args], capture_output=True, text=True, cwd=ROOT, timeout=60
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {
        "meta": build_model(folder / "meta.onnx", TEST_META),
        "no_meta": build_model(folder / "no_meta.onnx"),
        "half": build_model(folder / "half.onnx", TEST_META, half=True),
        "fixed": build_model(folder / "fixed.onnx", TEST_META, fixed_hw=(64, 64)),
        "multi": build_model(folder / "multi.onnx", {**TEST_META, "num_classes": 3}, classes=3),
    }


@pytest.fixture
def records(caplog):
    """setup_logging() stops 'seg' propagating, so attach pytest's handler to it directly (once)."""
    old_level, old_propagate = LOG.level, LOG.propagate
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    LOG.addHandler(caplog.handler)
    yield caplog
    LOG.removeHandler(caplog.handler)
    LOG.setLevel(old_level)
    LOG.propagate = old_propagate


@pytest.fixture
def image_folder(tmp_path) -> tuple[Path, Path]:
    """Images of odd sizes (one in a subfolder), a corrupt PNG, and ground truth for two of them."""
    src, gt = tmp_path / "images", tmp_path / "gt"
    for rel, (h, w) in {"a.png": (37, 53), "sub/b.jpg": (300, 101), "c.png": (64, 48)}.items():
        image, mask = rect_image(h, w)
        write_png(src / rel, image)
        if rel != "c.png":
            write_png(gt / (Path(rel).stem + ".png"), mask * 255)
    (src / "broken.png").write_bytes(b"\x89PNG this is not an image at all")
    return src, gt


# ----------------------------------------------------------------------------- import rule


RUNTIME_MODULES = ["inference", "utils", "app"] + sorted(
    f"runtime.{path.stem}" for path in (ROOT / "runtime").glob("*.py") if path.stem != "__init__")


@pytest.mark.parametrize("module", RUNTIME_MODULES)
def test_runtime_imports_with_heavy_packages_blocked(module):
    """The runtime (inference.py, utils.py and every runtime/*.py, new ones included) never imports torch & co., nor
    any module of the training side (config, dataset, training/, exporting/, ...)."""
    blocker = (
        "import importlib, sys\n"
        f"BLOCKED = {set(TRAINING_SIDE)!r}\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"importlib.import_module({module!r})\n"
        "assert not BLOCKED & {m.split('.')[0] for m in sys.modules}\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_the_import_rule_covers_the_new_runtime_modules():
    assert {"runtime.session", "runtime.segmenter", "runtime.video", "runtime.pipeline"} <= set(RUNTIME_MODULES)


# ----------------------------------------------------------------------------- session


def test_missing_model_names_the_path(tmp_path):
    path = tmp_path / "nope.onnx"
    with pytest.raises(UserError, match="nope.onnx"):
        inference.Segmenter(path)


@pytest.mark.parametrize("content", [b"hello, not a model", b"", bytes(range(256)) * 8])
def test_non_onnx_file_is_a_user_error(tmp_path, content):
    path = tmp_path / "fake.onnx"
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"not an ONNX model: .*fake\.onnx \(export one with export\.py\)"):
        inference.Segmenter(path, providers="cpu")


def test_model_without_metadata_warns_once_and_uses_defaults(models, records):
    segmenter = inference.Segmenter(models["no_meta"], providers="cpu")
    warnings = [r.getMessage() for r in records.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no 'segmentation' metadata" in warnings[0]
    assert segmenter.meta["input_size"] == 512 and segmenter.meta["stride"] == 32
    assert segmenter.predict_probs(rect_image(40, 30)[0]).shape == (1, 40, 30)


def test_segmenter_reports_provider_and_reads_metadata(models, records):
    segmenter = inference.Segmenter(models["meta"], providers="auto", threads=1)
    assert segmenter.providers[-1] == "CPUExecutionProvider"
    assert segmenter.input_name == "image"
    assert segmenter.meta["input_size"] == 64 and segmenter.meta["name"] == "tiny"
    assert any(segmenter.providers[0] in r.getMessage() for r in records.records if r.levelno == logging.INFO)
    assert not [r for r in records.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("bad", [{"stride": 0}, {"mean": [0.5]}, {"thresholds": [0.5, 1.5]}])
def test_invalid_metadata_is_a_user_error(tmp_path, bad):
    path = build_model(tmp_path / "bad.onnx", {**TEST_META, **bad})
    with pytest.raises(UserError, match="(?i)re-export"):
        inference.Segmenter(path, providers="cpu")


# ----------------------------------------------------------------------------- predict


@pytest.mark.parametrize("model", ["meta", "no_meta", "half", "fixed"])
@pytest.mark.parametrize("h, w", [(37, 53), (300, 101), (64, 64)])
def test_predict_returns_probs_at_original_size(models, model, h, w):
    segmenter = inference.Segmenter(models[model], providers="cpu")
    image, mask = rect_image(h, w)
    probs = segmenter.predict_probs(image)
    assert probs.shape == (1, h, w) and probs.dtype == np.float32
    assert 0.0 <= probs.min() and probs.max() <= 1.0
    # Foreground where the rectangle is, background far from it (edges are blurred by resizing).
    assert probs[0, h // 2, w // 2] > 0.9 and probs[0, 0, 0] < 0.1
    dice = 2 * np.sum((probs[0] > 0.5) & (mask > 0)) / (np.sum(probs[0] > 0.5) + mask.sum())
    assert dice > 0.85
    assert set(segmenter.timing) == {"pre_ms", "infer_ms", "post_ms"}


class FakeSession:
    """Stands in for ort.InferenceSession: records the input, returns a constant map."""

    def __init__(self, meta: dict | None, value: float = 0.7):
        self.props = {"segmentation": json.dumps(meta)} if meta is not None else {}
        self.value, self.inputs = value, []

    def get_providers(self):
        return ["CPUExecutionProvider"]

    def get_inputs(self):
        return [type("Arg", (), {"name": "pixels", "type": "tensor(float)", "shape": ["N", 3, "H", "W"]})()]

    def get_modelmeta(self):
        return type("Meta", (), {"custom_metadata_map": self.props})()

    def run(self, names, feeds):
        x = feeds["pixels"]
        self.inputs.append(x)
        return [np.full((x.shape[0], 1, x.shape[2], x.shape[3]), self.value, np.float32)]


@pytest.mark.parametrize("output, expected", [("probs", 0.7), ("logits", 1 / (1 + np.exp(-0.7)))])
def test_injected_session_gets_nchw_padded_to_stride(output, expected):
    session = FakeSession({**TEST_META, "input_size": 100, "stride": 16, "output": output})
    segmenter = inference.Segmenter(None, session=session)
    assert segmenter.input_name == "pixels"
    probs = segmenter.predict_probs(rect_image(50, 75)[0])
    x = session.inputs[0]
    assert x.dtype == np.float32 and x.shape == (1, 3, 80, 112)  # 67x100 padded to /16
    assert probs.shape == (1, 50, 75) and np.allclose(probs, expected)


@pytest.mark.parametrize("tta", ["none", "flips"])
def test_segmenter_feeds_the_shared_preprocess_and_flips_only_the_image(tta):
    """One preprocessing path (utils.preprocess, as training scores); TTA flips leave the padding bottom/right."""
    session = FakeSession({**TEST_META, "input_size": 100, "stride": 16})
    segmenter = inference.Segmenter(None, session=session, tta=tta)
    image = np.random.default_rng(0).integers(0, 256, (50, 75, 3), dtype=np.uint8)
    segmenter.predict_probs(image)
    want, (h, w) = preprocess(image, segmenter.meta)  # (3, 80, 112), valid (67, 100)
    copies = session.inputs[0]
    assert len(copies) == len(TTA_FLIPS[tta]) and np.array_equal(copies[0], want)
    for x, axes in zip(copies, TTA_FLIPS[tta]):
        assert np.array_equal(x[:, :h, :w], np.flip(want[:, :h, :w], axis=axes))
        assert not x[:, h:].any() and not x[:, :, w:].any()


# ----------------------------------------------------------------------------- run


def test_run_writes_masks_overlays_and_csv(models, image_folder, tmp_path):
    src, gt = image_folder
    out = tmp_path / "out"
    calls = []

    def progress(done, total):  # summary.csv must already hold every finished row
        calls.append((done, total, len(read_rows(out / "summary.csv"))))

    segmenter = inference.Segmenter(models["half"], providers="cpu")
    result = inference.run(segmenter, src, out, gt_dir=gt, progress=progress)

    rows = {row["file"]: row for row in read_rows(out / "summary.csv")}
    assert list(read_rows(out / "summary.csv")[0]) == list(CSV_COLUMNS)
    assert set(rows) == {"a.png", "broken.png", "c.png", "sub/b.jpg"}
    assert rows["broken.png"]["status"] == "error" and "cannot decode" in rows["broken.png"]["error"]
    for name, (h, w) in {"a.png": (37, 53), "sub/b.jpg": (300, 101), "c.png": (64, 48)}.items():
        mask_path = out / "masks" / Path(name).with_suffix(".png")
        mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        assert cv2.imread(str(out / "overlays" / Path(name).with_suffix(".png"))).shape == (h, w, 3)
        assert rows[name]["status"] == "ok" and rows[name]["threshold"] == "0.5"
        assert (int(rows[name]["width"]), int(rows[name]["height"])) == (w, h)
        assert int(rows[name]["area_px"]) == np.count_nonzero(mask)
    assert rows["c.png"]["dice"] == "" and float(rows["a.png"]["dice"]) > 0.85
    model = json.loads((out / "metrics.json").read_text())["model"]  # which file, precision and rule made the numbers
    assert model["file"] == models["half"].name and model["precision"] == "fp32" and model["rule"]["mode"] == "cv"
    assert model["rule_text"].startswith("threshold 0.5 (cross-validated)") and model["lineage"] == []
    assert result["images"] == 4 and result["ok"] == 3 and result["errors"] == 1 and result["with_gt"] == 2
    assert result["mean_dice"] == pytest.approx(np.mean([float(rows[n]["dice"]) for n in ("a.png", "sub/b.jpg")]))
    assert calls == [(1, 4, 1), (2, 4, 2), (3, 4, 3), (4, 4, 4)]


@pytest.mark.parametrize("threshold, used", [(None, "0.5"), ("adaptive", "")])  # the rule's fixed cut / the cascade
def test_run_reports_no_detection_with_empty_mask(models, tmp_path, threshold, used):
    write_png(tmp_path / "src" / "dark.png", np.zeros((40, 50, 3), np.uint8))
    segmenter = inference.Segmenter(models["meta"], providers="cpu", threshold=threshold)
    result = inference.run(segmenter, tmp_path / "src" / "dark.png", tmp_path / "out")
    row = read_rows(tmp_path / "out" / "summary.csv")[0]
    assert row["status"] == "no_detection" and row["threshold"] == used and row["area_px"] == "0"
    assert not cv2.imread(str(tmp_path / "out" / "masks" / "dark.png"), cv2.IMREAD_UNCHANGED).any()
    assert result["no_detection"] == 1 and result["mean_dice"] is None


def test_run_multiclass_writes_class_ids(models, tmp_path):
    image, mask = rect_image(30, 40)
    write_png(tmp_path / "src" / "x.png", image)
    segmenter = inference.Segmenter(models["multi"], providers="cpu")
    inference.run(segmenter, tmp_path / "src", tmp_path / "out", gt_dir=None)
    written = read_mask(tmp_path / "out" / "masks" / "x.png", num_classes=3)
    assert np.array_equal(written, mask)
    assert read_rows(tmp_path / "out" / "summary.csv")[0]["status"] == "ok"


def test_run_output_inside_source_and_name_clash(models, tmp_path):
    src = tmp_path / "src"
    image, _ = rect_image(32, 32)
    write_png(src / "a.png", image)
    cv2.imwrite(str(src / "a.jpg"), image)
    segmenter = inference.Segmenter(models["meta"], providers="cpu")
    for _ in range(2):  # the second run must not pick up the first run's masks/overlays
        result = inference.run(segmenter, src, src / "out")
        assert result["images"] == 2
    # Sorted order: a.jpg takes a.png, the later a.png keeps its suffix.
    assert (src / "out" / "masks" / "a.png").is_file() and (src / "out" / "masks" / "a.png.png").is_file()


def test_run_accepts_a_glob(models, image_folder, tmp_path):
    src, _ = image_folder
    segmenter = inference.Segmenter(models["meta"], providers="cpu")
    result = inference.run(segmenter, str(src / "**" / "*.jpg"), tmp_path / "out")
    assert result["images"] == 1 and (tmp_path / "out" / "masks" / "sub" / "b.png").is_file()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"source": "missing_dir"}, "source not found"),
        ({"gt_dir": "missing_gt"}, "--gt"),
        ({"threshold": "2"}, "--threshold"),
        ({"min_area": -1}, "--min-area"),
        ({"alpha": 1.5}, "--alpha"),
    ],
)
def test_run_user_errors(models, image_folder, tmp_path, kwargs, match):
    src, _ = image_folder
    kwargs = {k: tmp_path / v if str(v).startswith("missing") else v for k, v in kwargs.items()}
    segmenter = inference.Segmenter(models["meta"], providers="cpu")
    with pytest.raises(UserError, match=match):
        inference.run(segmenter, **{"source": src, "output": tmp_path / "out", **kwargs})


# ----------------------------------------------------------------------------- progress and CLI


class FakeStream:
    def __init__(self, tty: bool):
        self.tty, self.text = tty, ""

    def isatty(self):
        return self.tty

    def write(self, text):
        self.text += text

    def flush(self):
        pass


@pytest.mark.parametrize("tty", [False, True])
def test_progress_bar(tty):
    stream = FakeStream(tty)
    bar = inference.ProgressBar(stream=stream)
    for done in range(1, 101):
        bar(done, 100)
    if tty:
        assert stream.text.count("\r") == 100 and stream.text.endswith("\n") and "100/100" in stream.text
    else:
        lines = stream.text.splitlines()
        assert 10 <= len(lines) <= 11 and "\r" not in stream.text and lines[-1].startswith("images 100/100")


def test_cli_end_to_end_with_gt(models, image_folder, tmp_path):
    src, gt = image_folder
    out = tmp_path / "out"
    done = run_script("--model", str(models["meta"]), "--source", str(src), "--output", str(out), "--gt", str(gt))
    assert done.returncode == 0, done.stderr
    assert "mean dice: 0." in done.stdout and "mean iou: 0." in done.stdout
    dice = float(done.stdout.split("mean dice:")[1].split()[0])
    assert dice > 0.85
    assert "errors: 1" in done.stdout and str(out / "masks") in done.stdout
    assert "CPUExecutionProvider" in done.stderr  # the provider used is reported
    assert "[E:onnxruntime" not in done.stderr and "Traceback" not in done.stderr
    assert len(read_rows(out / "summary.csv")) == 4


def test_cli_gt_pointing_at_the_photos_stops_before_inference(models, tmp_path):
    src = tmp_path / "photos"
    for i in range(2):  # photo-like: noise, many levels, few equal neighbours
        write_png(src / f"p{i}.png", np.random.default_rng(i).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    done = run_script("--model", str(models["meta"]), "--source", str(src), "--output", str(tmp_path / "out"),
                      "--gt", str(src))
    error = done.stderr.strip().splitlines()[-1]  # after the model's own log lines: one line, then the exit
    assert done.returncode == 2 and error.startswith("error: --gt ") and "looks like a photo" in error, done.stderr
    assert not (tmp_path / "out" / "summary.csv").exists()


@pytest.mark.parametrize("value", ["1.5", "high"])
def test_cli_bad_threshold_exits_2(tmp_path, value):
    done = run_script("--model", "m.onnx", "--source", str(tmp_path), "--output", str(tmp_path / "o"),
                      "--threshold", value)
    assert done.returncode == 2
    assert "--threshold" in done.stderr and value in done.stderr and "adaptive" in done.stderr
    assert "'model'" in done.stderr and "Traceback" not in done.stderr


def test_cli_output_that_is_a_file_is_one_line(models, image_folder, tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    for output in (tmp_path / "taken", tmp_path / "taken" / "below"):
        done = run_script("--model", str(models["meta"]), "--source", str(image_folder[0]), "--output", str(output))
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert f"{tmp_path / 'taken'} is a file" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_cli_unquoted_glob_is_several_sources(models, image_folder, tmp_path):
    """`--source dir/*.png` unquoted: the shell hands over several files, each is run; a folder among them: a hint."""
    src = image_folder[0]
    out = tmp_path / "out"
    inference.main(["--model", str(models["meta"]), "--source", str(src / "a.png"), str(src / "sub" / "b.jpg"),
                    "--output", str(out)])
    assert [r["file"] for r in read_rows(out / "summary.csv")] == ["a.png", "sub/b.jpg"]
    assert (out / "masks" / "sub" / "b.png").is_file()
    with pytest.raises(UserError, match=r"Quote a glob \(--source \"dir/\*.jpg\"\)"):
        inference.main(["--model", str(models["meta"]), "--source", str(src / "a.png"), str(src / "sub"),
                        "--output", str(tmp_path / "out2")])


def test_binary_only_options_on_a_multiclass_model_warn_once(models, tmp_path, records):
    write_png(tmp_path / "src" / "x.png", rect_image(30, 40)[0])
    inference.main(["--model", str(models["multi"]), "--source", str(tmp_path / "src"), "--output",
                    str(tmp_path / "out"), "--threshold", "0.3", "--color", "blue"])
    warnings = [r.getMessage() for r in records.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "--threshold 0.3, --color blue: not applied" in warnings[0]
    records.clear()
    inference.main(["--model", str(models["meta"]), "--source", str(tmp_path / "src"), "--output",
                    str(tmp_path / "out2"), "--threshold", "0.3", "--color", "blue"])
    assert not [r for r in records.records if r.levelno == logging.WARNING]  # binary: they apply


def test_view_img_on_headless_opencv_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(inference, "opencv_is_headless", lambda: True)
    with pytest.raises(UserError, match="pip install opencv-python") as info:
        inference.main(["--model", "m.onnx", "--source", "clip.mp4", "--output", str(tmp_path), "--view-img"])
    assert "opencv-python-headless" in str(info.value) and "\n" not in str(info.value)


def test_cli_missing_model_exits_2(tmp_path):
    done = run_script("--model", str(tmp_path / "absent.onnx"), "--source", str(tmp_path), "--output", str(tmp_path))
    assert done.returncode == 2 and "absent.onnx" in done.stderr and "Traceback" not in done.stderr


# ----------------------------------------------------------------------------- Result API, batching


def test_predict_returns_a_result_with_mask_probs_and_info(models):
    segmenter = inference.Segmenter(models["meta"], device="cpu", threshold=0.5)
    image, mask = rect_image(37, 53)
    result = segmenter.predict(image)
    assert isinstance(result, Result)
    assert result.mask.shape == (37, 53) and result.probs.shape == (1, 37, 53)
    assert np.array_equal(result.mask, (result.probs[0] > 0.5).astype(np.uint8))
    assert result.info["status"] == "ok" and result.info["threshold"] == 0.5
    assert result.info["area_px"] == int(result.mask.sum()) and set(result.info["timing"]) == {
        "pre_ms", "infer_ms", "post_ms"}


def test_predict_paths_is_a_generator_that_survives_bad_files(models, image_folder):
    src, _ = image_folder
    segmenter = inference.Segmenter(models["meta"], device="cpu")
    paths = [src / "a.png", src / "broken.png", src / "c.png"]
    stream = segmenter.predict_paths(paths, batch_size=2)
    assert not isinstance(stream, list)
    results = list(stream)
    assert [r.info["file"] for r in results] == [str(p) for p in paths]
    assert [r.info["status"] for r in results] == ["ok", "error", "ok"]
    assert results[1].mask is None and "cannot decode" in results[1].info["error"]
    assert results[2].mask.shape == (64, 48)


class CountingSession:
    """A real onnxruntime session that records the batch of every run call."""

    def __init__(self, path: Path):
        self.inner = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.batches: list[np.ndarray] = []

    def run(self, names, feeds):
        self.batches.append(next(iter(feeds.values())))
        return self.inner.run(names, feeds)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_batch_of_same_size_images_is_one_run_and_equals_single_runs(models):
    session = CountingSession(models["meta"])
    segmenter = inference.Segmenter(models["meta"], session=session)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8) for _ in range(3)] + [rect_image(20, 90)[0]]
    batched = segmenter.predict_probs_batch(images)
    assert [b.shape[0] for b in session.batches] == [3, 1]  # one run per input shape
    for image, probs in zip(images, batched):
        assert np.allclose(probs, segmenter.predict_probs(image), atol=1e-6)


# ----------------------------------------------------------------------------- TTA


def build_conv(path: Path, kernel: np.ndarray, meta: dict | None = TEST_META, sigmoid: bool = True) -> Path:
    """Conv(3->1, kernel, same padding) [+ Sigmoid]: spatial support, so flips matter unless symmetric."""
    kh, kw = kernel.shape
    weight = np.repeat(kernel[None, None].astype(np.float32), 3, axis=1)  # (1, 3, kh, kw)
    nodes = [helper.make_node("Conv", ["image", "w"], ["logits"], pads=[kh // 2, kw // 2, kh // 2, kw // 2])]
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", ["logits"], ["probs"]))
    graph = helper.make_graph(
        nodes, "conv", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("probs" if sigmoid else "logits", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    return save_graph(graph, path, meta)


def test_hflip_on_a_symmetric_model_and_image_equals_no_tta(tmp_path):
    path = build_conv(tmp_path / "sym.onnx", np.array([[0.5, 1.0, 0.5]] * 3))
    image = np.zeros((64, 64, 3), np.uint8)
    image[20:44, 10:54] = 255  # mirror-symmetric left/right
    assert np.array_equal(image, image[:, ::-1])
    plain = inference.Segmenter(path, device="cpu").predict_probs(image)
    tta = inference.Segmenter(path, device="cpu", tta="hflip").predict_probs(image)
    assert np.allclose(plain, tta, atol=1e-6)


@pytest.mark.parametrize("tta, flips", [("hflip", [(), (1,)]), ("flips", [(), (1,), (0,), (0, 1)])])
def test_tta_equals_the_average_of_explicit_flipped_runs_in_one_batch(tmp_path, tta, flips):
    path = build_conv(tmp_path / "skew.onnx", np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 3.0], [0.0, 0.0, 2.0]]))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)  # no resize (long side 64), no padding
    plain = inference.Segmenter(path, device="cpu")
    expected = np.mean([np.flip(plain.predict_probs(np.flip(image, axis=a).copy())[0], axis=a) if a else
                        plain.predict_probs(image)[0] for a in flips], axis=0)
    session = CountingSession(path)
    tta_probs = inference.Segmenter(path, session=session, tta=tta).predict_probs(image)[0]
    assert len(session.batches) == 1 and session.batches[0].shape[0] == len(flips)
    assert np.allclose(tta_probs, expected, atol=1e-5)
    assert not np.allclose(tta_probs, plain.predict_probs(image)[0], atol=1e-3)  # the model is not symmetric


def test_tta_baked_into_the_model_is_not_repeated_unless_asked(tmp_path, records):
    path = build_model(tmp_path / "baked.onnx", {**TEST_META, "tta": "flips"})
    assert inference.Segmenter(path, device="cpu").tta == "none"
    assert any("already applies 'flips'" in r.getMessage() for r in records.records if r.levelno == logging.INFO)
    assert inference.Segmenter(path, device="cpu", tta="hflip").tta == "hflip"
    assert any("on top as asked" in r.getMessage() for r in records.records if r.levelno == logging.WARNING)
    with pytest.raises(UserError, match="--tta"):
        inference.Segmenter(path, device="cpu", tta="rotate")


def test_tta_with_a_flip_training_never_made_warns(tmp_path, records):
    path = build_model(tmp_path / "upright.onnx", {**TEST_META, "train_flips": "h"})
    assert inference.Segmenter(path, device="cpu", tta="hflip").tta == "hflip"
    assert not any("never saw" in r.getMessage() for r in records.records)
    assert inference.Segmenter(path, device="cpu", tta="flips").tta == "flips"  # a warning, not a refusal
    assert any("--tta flips adds vertical flips that this model never saw" in r.getMessage()
               for r in records.records if r.levelno == logging.WARNING)


# ----------------------------------------------------------------------------- any segmentation ONNX


def test_fixed_input_model_is_letterboxed_not_stretched(models):
    session = CountingSession(models["fixed"])
    segmenter = inference.Segmenter(models["fixed"], session=session)
    image, mask = rect_image(32, 64)
    probs = segmenter.predict_probs(image)
    x = session.batches[0]
    assert x.shape == (1, 3, 64, 64)
    assert np.all(x[0, :, 32:] == 0) and np.any(x[0, :, :32] != 0)  # bottom half is padding
    assert probs.shape == (1, 32, 64) and np.array_equal(probs[0] > 0.5, mask > 0)


def build_foreign(path: Path, classes: int, pool: int) -> Path:
    """No metadata, raw logits, an output `pool` times smaller than the input: a SegFormer-like head."""
    weight = np.zeros((classes, 3, 1, 1), np.float32)
    weight[0], weight[1] = -2.0, 2.0
    nodes = [helper.make_node("Conv", ["pixel_values", "w"], ["x"]),
             helper.make_node("AveragePool", ["x"], ["logits"], kernel_shape=[pool, pool], strides=[pool, pool])]
    graph = helper.make_graph(
        nodes, "foreign", [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes, "h", "w"])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    return save_graph(graph, path)


@pytest.mark.parametrize("classes", [2, 3])
def test_foreign_logits_model_gets_softmax_upsampling_and_argmax(tmp_path, classes, records):
    segmenter = inference.Segmenter(build_foreign(tmp_path / "f.onnx", classes, pool=4), device="cpu")
    assert any("no 'segmentation' metadata" in r.getMessage() for r in records.records)
    image, mask = rect_image(96, 128)
    result = segmenter.predict(image)
    assert result.probs.shape == (classes, 96, 128)
    assert np.allclose(result.probs.sum(axis=0), 1.0, atol=1e-5) and result.probs.min() >= 0
    dice = 2 * np.sum((result.mask == 1) & (mask > 0)) / (np.sum(result.mask == 1) + mask.sum())
    assert dice > 0.9 and set(np.unique(result.mask)) <= {0, 1}


# ----------------------------------------------------------------------------- outputs


def test_gt_writes_metrics_json_with_means_and_pooled_scores(models, image_folder, tmp_path):
    src, gt = image_folder
    out = tmp_path / "out"
    result = inference.run(inference.Segmenter(models["meta"], device="cpu"), src, out, gt_dir=gt, save_probs=True)
    metrics = json.loads((out / "metrics.json").read_text())
    rows = [r for r in read_rows(out / "summary.csv") if r["dice"]]
    assert metrics["images_with_gt"] == 2 == result["with_gt"]
    assert metrics["mean_dice"] == pytest.approx(np.mean([float(r["dice"]) for r in rows]))
    inter = total = 0
    for row in rows:
        pred = cv2.imread(str(out / "masks" / Path(row["file"]).with_suffix(".png")), cv2.IMREAD_UNCHANGED) > 0
        true = read_mask(gt / (Path(row["file"]).stem + ".png")) > 0
        inter, total = inter + np.sum(pred & true), total + pred.sum() + true.sum()
    assert metrics["pixel_dice"] == pytest.approx(2 * inter / total)
    assert metrics["pixel_iou"] == pytest.approx(inter / (total - inter))
    probs = np.load(out / "probs" / "sub" / "b.npy")
    assert probs.shape == (1, 300, 101) and probs.dtype == np.float16


def test_multiclass_outputs_colour_mask_and_legend(models, tmp_path):
    write_png(tmp_path / "src" / "x.png", rect_image(30, 40)[0])
    inference.run(inference.Segmenter(models["multi"], device="cpu"), tmp_path / "src", tmp_path / "out")
    colour = cv2.cvtColor(cv2.imread(str(tmp_path / "out" / "masks_color" / "x.png")), cv2.COLOR_BGR2RGB)
    assert tuple(colour[15, 20]) == tuple(PALETTE[1].astype(np.uint8)) and not colour[0, 0].any()
    assert cv2.imread(str(tmp_path / "out" / "legend.png")) is not None


def test_overlay_colour_option(models, tmp_path):
    write_png(tmp_path / "src" / "x.png", rect_image(32, 32)[0])
    inference.run(inference.Segmenter(models["meta"], device="cpu"), tmp_path / "src", tmp_path / "out",
                  color="0,255,0", alpha=1.0)
    overlay = cv2.imread(str(tmp_path / "out" / "overlays" / "x.png"))
    assert tuple(overlay[16, 16]) == (0, 255, 0) and tuple(overlay[0, 0]) == (0, 0, 0)


def test_cli_otsu_method_needs_no_model(image_folder, tmp_path):
    src, gt = image_folder
    done = run_script("--method", "otsu", "--source", str(src), "--output", str(tmp_path / "o"), "--gt", str(gt))
    assert done.returncode == 0, done.stderr
    dice = float(done.stdout.split("mean dice:")[1].split()[0])
    assert dice > 0.95  # white on black: Otsu is exact up to nothing
    assert (tmp_path / "o" / "metrics.json").is_file()


def test_otsu_picks_the_object_not_the_border_side():
    image = np.full((40, 40, 3), 220, np.uint8)
    image[10:30, 10:30] = 30  # a dark object on a bright background
    result = inference.OtsuSegmenter(min_area=10).predict(image)
    assert result.mask[10:30, 10:30].all() and result.mask.sum() == 400


def test_cli_without_model_or_method_is_a_user_error(tmp_path):
    done = run_script("--source", str(tmp_path), "--output", str(tmp_path / "o"))
    assert done.returncode == 2 and "--model is required" in done.stderr


def test_cli_help_documents_defaults():
    done = run_script("--help")
    for option in ("--tta", "--vid-stride", "--zip-max-mb", "--keep-largest", "--device", "--strict"):
        assert option in done.stdout
    assert done.stdout.count("(default:") >= 20


def test_threshold_model_uses_the_recommended_threshold_from_metadata(tmp_path):
    path = build_model(tmp_path / "m.onnx", {**TEST_META, "threshold": 0.35})
    segmenter = inference.Segmenter(path, device="cpu", threshold="model")
    assert segmenter.post.threshold == 0.35
    probs = np.full((1, 20, 20), 0.4, np.float32)
    assert postprocess(probs, segmenter.post)[1]["threshold"] == 0.35


def test_gt_named_like_training_masks_is_matched(tmp_path):
    """`<stem>_mask.png` pairs with image `<stem>` everywhere: training, export and --gt."""
    from runtime.report import find_gt, load_gt_index

    (tmp_path / "sub").mkdir()
    for name in ("a_mask.png", "sub/b_mask.png"):
        (tmp_path / name).write_bytes(b"")
    index = load_gt_index(tmp_path)
    assert find_gt(index, "a.jpg").name == "a_mask.png"
    assert find_gt(index, "sub/b.png").name == "b_mask.png"


# ----------------------------------------------------------------------------- smart crop


CROP_META = {**TEST_META, "crop_mode": "person", "detector": "tiny.detector.onnx",
             "crop": {"conf": 1e-4, "roi_factor": 1.0, "min_size": 48, "pad_value": 0, "input_size": 64}}


def test_smart_crop_model_segments_the_crop_and_pastes_back(tmp_path, yolo_files):
    """A model whose metadata says crop_mode person: the detector beside it finds the crop, the mask comes
    back at the original size, zero outside the crop box and right inside it; the CSV names the box."""
    model = build_model(tmp_path / "tiny.onnx", CROP_META)
    with pytest.raises(UserError, match="needs its person detector"):
        inference.Segmenter(model, device="cpu")
    (tmp_path / "tiny.detector.onnx").write_bytes(yolo_files[1].read_bytes())
    segmenter = inference.Segmenter(model, device="cpu", threshold=0.5)
    image, truth = rect_image(160, 240)
    result = segmenter.predict(image)
    assert result.info["crop_status"] == "ok" and result.mask.shape == (160, 240)
    x0, y0, x1, y1 = (int(v) for v in result.info["crop_box"].split())
    assert x1 - x0 == y1 - y0 >= 48
    inside = np.zeros((160, 240), bool)
    inside[max(y0, 0):y1, max(x0, 0):x1] = True
    assert not result.mask[~inside].any()
    assert (result.mask[inside] == truth[inside]).mean() > 0.97
    cv2.imwrite(str(tmp_path / "a.png"), image)
    out = tmp_path / "out"
    inference.main(["--model", str(model), "--source", str(tmp_path / "a.png"), "--output", str(out), "--device", "cpu"])
    row = read_rows(out / "summary.csv")[0]
    assert row["crop_status"] == "ok" and row["crop_box"] == result.info["crop_box"]


def test_detector_flag_overrides_the_metadata(tmp_path, yolo_files):
    model = build_model(tmp_path / "tiny.onnx", CROP_META)
    segmenter = inference.Segmenter(model, device="cpu", detector=yolo_files[1])
    assert segmenter.crop_stage.path == yolo_files[1]
    plain = build_model(tmp_path / "plain.onnx", TEST_META)
    assert inference.Segmenter(plain, device="cpu").crop_stage is None


@pytest.mark.parametrize("bad", [{"crop_mode": "face"}, {"crop": {"conf": 2}}, {"detector": 3}])
def test_invalid_crop_metadata_is_a_user_error(tmp_path, bad):
    model = build_model(tmp_path / "bad.onnx", {**CROP_META, **bad})
    with pytest.raises(UserError, match="model metadata is invalid"):
        inference.Segmenter(model, device="cpu", detector=tmp_path / "none.onnx")


def test_multiclass_gt_scores_each_class_by_the_severstal_rule(tmp_path):
    """Per (image, class) Dice, a class absent from both truth and prediction scoring 1; named columns and metrics."""
    names = ["background", "disc", "square"]
    model = build_model(tmp_path / "m.onnx", {**TEST_META, "num_classes": 3, "class_names": names}, classes=3)
    image, rect = rect_image(30, 40)  # the model calls the white rectangle class 1, never class 2
    for name, truth in (("right", rect), ("wrong_class", rect * 2), ("clean", np.zeros_like(rect))):
        write_png(tmp_path / "src" / f"{name}.png", image if name != "clean" else np.zeros_like(image))
        write_png(tmp_path / "gt" / f"{name}.png", truth, rgb=False)
    out = tmp_path / "out"
    inference.run(inference.Segmenter(model, device="cpu"), tmp_path / "src", out, gt_dir=tmp_path / "gt")
    rows = {r["file"]: r for r in read_rows(out / "summary.csv")}
    assert list(rows["right.png"])[11:15] == ["dice", "iou", "dice_disc", "dice_square"]
    assert [(rows[f]["dice_disc"], rows[f]["dice_square"], rows[f]["dice"]) for f in ("right.png", "wrong_class.png",
            "clean.png")] == [("1.0", "1.0", "1.0"), ("0.0", "0.0", "0.0"), ("1.0", "1.0", "1.0")]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mean_dice"] == pytest.approx(2 / 3)
    assert set(metrics["per_class"]) == {"disc", "square"}
    disc, square = metrics["per_class"]["disc"], metrics["per_class"]["square"]
    assert disc["mean_dice"] == pytest.approx(2 / 3) and square["mean_iou"] == pytest.approx(2 / 3)
    assert (disc["images_true"], disc["images_predicted"]) == (1, 2)
    assert (square["images_true"], square["images_predicted"]) == (1, 0)
    assert disc["pixel_dice"] == pytest.approx(2 * rect.sum() / (2 * rect.sum() + rect.sum()))
    assert "Severstal" in metrics["multiclass_rule"]
    assert cv2.imread(str(out / "legend.png")) is not None and (out / "masks_color" / "right.png").is_file()


def test_cli_prints_per_class_dice(tmp_path):
    names = ["background", "disc", "square"]
    model = build_model(tmp_path / "m.onnx", {**TEST_META, "num_classes": 3, "class_names": names}, classes=3)
    image, rect = rect_image(30, 40)
    write_png(tmp_path / "src" / "x.png", image)
    write_png(tmp_path / "gt" / "x.png", rect, rgb=False)
    done = run_script("--model", str(model), "--source", str(tmp_path / "src"), "--output", str(tmp_path / "out"),
                      "--gt", str(tmp_path / "gt"))
    assert done.returncode == 0, done.stderr
    assert "class disc:" in done.stdout and "dice 1.000" in done.stdout and "class square:" in done.stdout


# ----------------------------------------------------------------------------- lineage (runtime/lineage.py)


def derived_copy(model: Path, suffix: str, **meta) -> Path:
    """A copy of `model` as <stem><suffix> recording `model`'s bytes now as its source, as export.py writes one."""
    from runtime.lineage import source_record

    proto = onnx.load(str(model))
    old = json.loads({p.key: p.value for p in proto.metadata_props}["segmentation"])
    made = suffix.strip(".").split(".")[0]
    helper.set_model_props(proto, {"segmentation": json.dumps({**old, "source": source_record(model, made), **meta})})
    path = model.with_name(model.stem + suffix)
    onnx.save(proto, str(path))
    return path


def test_cli_names_stale_siblings_and_strict_refuses(tmp_path, records):
    """A re-export rewrites horse.onnx: the e2e file made from the old bytes gives other answers; say so."""
    model = build_model(tmp_path / "horse.onnx", TEST_META)
    derived_copy(model, ".e2e.onnx")
    image, _ = rect_image(30, 40)
    write_png(tmp_path / "src" / "x.png", image)
    argv = ["--model", str(model), "--source", str(tmp_path / "src"), "--device", "cpu"]
    inference.main(argv + ["--output", str(tmp_path / "a")])
    assert not [r for r in records.records if "was made from another" in r.getMessage()]
    build_model(model, {**TEST_META, "created": "a retrain"})  # the re-export
    inference.main(argv + ["--output", str(tmp_path / "b")])
    warned = [r.getMessage() for r in records.records if r.levelname == "WARNING"]
    assert any(w.startswith("horse.e2e.onnx was made from another horse.onnx (sha256 ") for w in warned), warned
    with pytest.raises(UserError, match=r"^--strict: horse.e2e.onnx was made from another horse.onnx"):
        inference.main(argv + ["--output", str(tmp_path / "c"), "--strict"])
    assert not (tmp_path / "c").exists()


def test_a_variant_of_other_weights_is_named(tmp_path, records):
    """Two exports of checkpoints with the same name whose digests differ came from different trainings."""
    model = build_model(tmp_path / "horse.onnx", {**TEST_META, "weights_sha256": {"fold0_best.pt": "a" * 64},
                                                  "created": "2026-02-01T00:00:00+00:00"})
    build_model(tmp_path / "horse.tta-hflip.onnx", {**TEST_META, "weights_sha256": {"fold0_best.pt": "b" * 64},
                                                    "created": "2026-01-01T00:00:00+00:00"})
    segmenter = inference.Segmenter(model, device="cpu")
    assert segmenter.lineage == ["horse.onnx and horse.tta-hflip.onnx came from different trainings (fold0_best.pt "
                                 "differs): horse.tta-hflip.onnx is the older export; export it again, or delete it"]
