"""One model, one answer: a tiny trained run exported with every variant, and the default answers compared.

On the images fold 0 held back (PNG, so every runtime decodes the same pixels):
- Python fp32 (inference.py --precision fp32, the model's rule) vs the .e2e.onnx's own mask: min per-image IoU >= 0.995;
- Python int8 vs fp32: the lowest per-image IoU, which the int8 metadata keeps (int8_min_iou);
- Node.js (examples/node/segment.js) vs Python on the same .e2e.onnx: identical masks;
- a re-export of the plain file: every file made from the old one is named by export.py and inference.py, and
  inference.py --strict refuses to start.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import cv2
import numpy as np
import pytest

import export
import inference
from exporting import evidence
from runtime.e2e import predict_e2e
from runtime.lineage import file_digest
from runtime.metadata import read_metadata
from test_e2e import EXAMPLES, require_node_modules, session
from test_inference import records  # noqa: F401  (a fixture: the log records of the seg logger)
from utils import UserError, mask_iou, read_image, read_mask, write_png

MIN_IOU = 0.995  # the acceptance bar for Python fp32 vs the end-to-end graph


@pytest.fixture
def exported(run_copy, tmp_path, monkeypatch):
    """Fold 0 exported with its fp16, int8, e2e and Triton copies; its held-back images as PNG files."""
    monkeypatch.setattr(evidence, "load_1m", lambda: 0.0)  # time int8 as on an idle machine
    export.main(["--work-dir", str(run_copy), "--fold", "0", "--no-verify", "--fp16", "--int8", "on",
                 "--end-to-end", "--triton-repo", str(tmp_path / "triton")])
    held = tmp_path / "held"
    for key in json.loads((run_copy / "folds.json").read_text())["0"]:
        write_png(held / f"{key}.png", read_image(next((run_copy / "images").glob(key + ".*"))))
    return run_copy / "model.fold0.onnx", held


def masks(folder) -> dict[str, np.ndarray]:
    return {p.stem: read_mask(p) for p in sorted((folder / "masks").glob("*.png"))}


def run_inference(model, held, out, *flags) -> dict[str, np.ndarray]:
    inference.main(["--model", str(model), "--source", str(held), "--output", str(out), "--device", "cpu", *flags])
    return masks(out)


def test_every_runtime_gives_the_default_answer(exported, trained_run, tmp_path, records):
    fp32, held = exported
    summary = json.loads((trained_run / "cv_summary.json").read_text())
    made_by_train = read_metadata(trained_run / "model.onnx")["rule"]  # the export at the end of train.py
    assert made_by_train["mode"] == "cv" and made_by_train["threshold"] == summary["best_threshold"]
    e2e = fp32.with_name("model.fold0.e2e.onnx")
    rule = read_metadata(fp32)["rule"]
    assert rule["mode"] == "cv" and read_metadata(e2e)["rule"] == rule  # one recorded rule, baked in
    python = run_inference(fp32, held, tmp_path / "fp32", "--precision", "fp32")
    graph = session(e2e)
    ious = [mask_iou(python[p.stem], predict_e2e(graph, read_image(p))[0] // 255) for p in sorted(held.iterdir())]
    assert len(ious) == len(python) >= 3 and min(ious) >= MIN_IOU, ious

    # the export measured its int8 copy on onnxruntime (OpenVINO, where auto picks it, rounds a few pixels apart)
    int8 = run_inference(fp32, held, tmp_path / "int8", "--precision", "int8", "--backend", "onnxruntime")
    int8_ious = [mask_iou(python[k], int8[k]) for k in python]
    meta = read_metadata(fp32.with_name("model.fold0.int8.onnx"))
    print(f"int8 vs fp32: min per-image IoU {min(int8_ious):.4f} on {len(int8_ious)} held-back images")
    assert meta["int8_min_iou"] == pytest.approx(min(int8_ious), abs=1e-6)  # the metadata keeps it
    assert meta["int8_val_images"] == len(int8_ious)

    copy = read_metadata(tmp_path / "triton" / "model" / "1" / "model.onnx")
    assert copy["source"] == {"file": fp32.name, "sha256": file_digest(fp32), "made": "triton"}
    for name in ("fp16", "int8", "e2e"):
        assert read_metadata(fp32.with_name(f"model.fold0.{name}.onnx"))["source"]["sha256"] == file_digest(fp32)
    assert not [r for r in records.records if r.levelname == "WARNING" and "made from another" in r.getMessage()]


def test_node_gives_python_s_masks_byte_for_byte(exported, tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (Debian: apt-get install nodejs npm)")
    require_node_modules("onnxruntime-node")
    fp32, held = exported
    e2e = fp32.with_name("model.fold0.e2e.onnx")
    done = subprocess.run([node, "node/segment.js", str(e2e), str(held), str(tmp_path / "node")], cwd=EXAMPLES,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[0])["source_sha256"] == file_digest(fp32)
    python = run_inference(e2e, held, tmp_path / "python")  # the engine on the same file, its default rule
    node = {p.stem: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((tmp_path / "node").glob("*.png"))}
    assert set(node) == set(python)
    for key, mask in python.items():
        np.testing.assert_array_equal(node[key], mask * 255, err_msg=key)


def test_a_re_export_names_every_stale_sibling(exported, tmp_path, records):
    fp32, held = exported
    export.main(["--work-dir", str(fp32.parent), "--fold", "0", "--no-verify", "--int8", "off"])  # new bytes only
    stale = {f"model.fold0.{name}.onnx was made from another model.fold0.onnx" for name in ("fp16", "int8", "e2e")}
    said = {r.getMessage().split(" (sha256")[0] for r in records.records if r.levelname == "WARNING"}
    assert stale <= said  # export.py names them
    records.clear()
    run_inference(fp32, held, tmp_path / "after", "--precision", "fp32")
    said = {r.getMessage().split(" (sha256")[0] for r in records.records if r.levelname == "WARNING"}
    assert stale <= said  # and so does inference.py
    with pytest.raises(UserError, match="^--strict: model.fold0.e2e.onnx was made from another"):
        run_inference(fp32, held, tmp_path / "strict", "--strict")
