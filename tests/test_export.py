import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import export
from model import build_model_from_checkpoint
from utils import METADATA_KEY, UserError


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_exported_graph_is_valid_and_dynamic(trained_run):
    proto = onnx.load(str(trained_run / "model.onnx"))
    onnx.checker.check_model(proto)
    (inp,) = proto.graph.input
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]


def test_metadata_is_json_and_complete(trained_run):
    props = _session(trained_run / "model.onnx").get_modelmeta().custom_metadata_map
    meta = json.loads(props[METADATA_KEY])
    summary = json.loads((trained_run / "cv_summary.json").read_text())
    assert meta["arch"] == "Unet" and meta["encoder"] == "resnet18" and meta["num_classes"] == 1
    assert meta["input_size"] == 64 and meta["stride"] == 32 and len(meta["mean"]) == len(meta["std"]) == 3
    assert meta["threshold"] == summary["best_threshold"] and meta["folds"] == [0, 1]


def test_onnx_matches_torch_ensemble_on_new_shape(trained_run):
    models = [build_model_from_checkpoint(trained_run / "models" / f"fold{k}_best.pt")[0].eval() for k in (0, 1)]
    x = np.random.default_rng(0).standard_normal((3, 3, 96, 128)).astype(np.float32)
    with torch.inference_mode():
        want = np.mean([torch.sigmoid(m(torch.from_numpy(x))).numpy() for m in models], axis=0)
    got = _session(trained_run / "model.onnx").run(None, {"image": x})[0]
    assert got.shape == (3, 1, 96, 128)
    assert np.abs(got - want).max() <= export.PARITY_TOLERANCE
    assert got.min() >= 0 and got.max() <= 1  # probabilities, not logits


def test_single_fold_export(trained_run, tmp_path):
    out = export.export_onnx(trained_run, folds=[1], output=tmp_path / "fold1.onnx")
    meta = json.loads(_session(out).get_modelmeta().custom_metadata_map[METADATA_KEY])
    assert meta["folds"] == [1]


def test_parity_check_catches_a_wrong_graph(trained_run):
    model, _ = build_model_from_checkpoint(trained_run / "models" / "fold0_best.pt")
    ensemble = export.ProbabilityEnsemble([model.eval()], 1)
    wrong = (trained_run / "model.onnx").read_bytes()  # the 2-fold graph is not this 1-fold module
    with pytest.raises(RuntimeError, match="parity failed"):
        export.check_parity(ensemble, wrong, 64)


@pytest.mark.parametrize("folds, message", [([7], r"folds \[7\] have no checkpoint"), (None, "run train.py first")])
def test_missing_checkpoints(trained_run, tmp_path, folds, message):
    with pytest.raises(UserError, match=message):
        export.find_checkpoints(trained_run if folds else tmp_path, folds)
