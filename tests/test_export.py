import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import export
from exporting import build, checkpoints, checks, ensembles, quantize, tracing, triton
from model import build_model_from_checkpoint
from runtime.metadata import METADATA_KEY, TTA_MODES, read_metadata
from runtime.lineage import file_digest
from utils import UserError


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
    assert np.abs(got - want).max() <= checks.PARITY_TOLERANCE
    assert got.min() >= 0 and got.max() <= 1  # probabilities, not logits


def test_single_fold_export(trained_run, tmp_path):
    out = export.export_onnx(trained_run, folds=[1], output=tmp_path / "fold1.onnx", check=False)
    meta = json.loads(_session(out).get_modelmeta().custom_metadata_map[METADATA_KEY])
    assert meta["folds"] == [1]


def test_parity_check_catches_a_wrong_graph(trained_run):
    model, _ = build_model_from_checkpoint(trained_run / "models" / "fold0_best.pt")
    ensemble = ensembles.ExportEnsemble([model.eval()], 1)
    wrong = (trained_run / "model.onnx").read_bytes()  # the 2-fold graph is not this 1-fold module
    with pytest.raises(RuntimeError, match="parity failed"):
        checks.check_parity(ensemble, wrong, 64)


@pytest.mark.parametrize("folds, message", [([7], r"folds \[7\] have no checkpoint"), (None, "run train.py first")])
def test_missing_checkpoints(trained_run, tmp_path, folds, message):
    with pytest.raises(UserError, match=message):
        checkpoints.find_checkpoints(trained_run if folds else tmp_path, folds)


# ----------------------------------------------------------------------------- options and bad input


def _meta(path):
    return json.loads(_session(path).get_modelmeta().custom_metadata_map[METADATA_KEY])


def _fold_model(run, fold=0):
    return build_model_from_checkpoint(run / "models" / f"fold{fold}_best.pt")[0].eval()


def _flip_mean(model, x, flips, activate):
    with torch.inference_mode():
        views = [activate(model(x.flip(d) if d else x)) for d in flips]
        return np.mean([v.flip(d).numpy() if d else v.numpy() for v, d in zip(views, flips)], axis=0)


@pytest.mark.parametrize("tta, logits", [("hflip", False), ("flips", True)])
def test_tta_and_logits_are_baked_into_the_graph(trained_run, tmp_path, tta, logits, caplog):
    caplog.set_level("INFO", logger="seg")
    out = export.export_onnx(trained_run, folds=[0], output=tmp_path / "m.onnx", tta=tta, logits=logits, check=False)
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 3, 64, 96)).astype(np.float32))
    activate = (lambda t: t) if logits else torch.sigmoid
    want = _flip_mean(_fold_model(trained_run), x, ensembles.TTA_FLIPS[tta], activate)
    got = _session(out).run(None, {"image": x.numpy()})[0]
    assert np.abs(got - want).max() <= checks.PARITY_TOLERANCE * max(1, np.abs(want).max())
    # the views matter: without the flips the result differs (so TTA is really in the graph)
    assert np.abs(got - _flip_mean(_fold_model(trained_run), x, [()], activate)).max() > 1e-5
    meta = _meta(out)
    assert meta["tta"] == tta and meta["output"] == ("logits" if logits else "probs") and meta["train_flips"] == "h"
    assert ("--tta flips adds vertical flips that this model never saw" in caplog.text) == (tta == "flips")
    assert _session(out).get_outputs()[0].name == meta["output"]


def test_flip_table_covers_exactly_the_tta_modes():
    assert tuple(ensembles.TTA_FLIPS) == TTA_MODES  # runtime.metadata.TTA_MODES names the modes; the table only adds dims
    assert export.parse_args(["--work-dir", "w", "--tta", "flips"]).tta == "flips"
    with pytest.raises(UserError, match="tta='vflip': choose one of none, hflip, flips"):
        ensembles.ExportEnsemble([], 1, tta="vflip")


def test_metadata_round_trips_the_checkpoint_config(trained_run):
    ckpt = torch.load(trained_run / "models" / "fold0_best.pt", map_location="cpu", weights_only=True)
    meta = read_metadata(trained_run / "model.onnx")
    cfg, args = ckpt["config"], ckpt["model_args"]
    assert (meta["arch"], meta["encoder"], meta["num_classes"]) == (args["arch"], args["encoder"], args["classes"])
    assert meta["input_size"] == cfg["input_size"] and meta["min_area"] == cfg["min_area"]
    assert meta["class_names"] == (cfg.get("class_names") or ["foreground"])
    assert meta["config_hash"] == ckpt["config_hash"] and meta["format_version"] == 1
    plan = json.loads((trained_run / "config.json").read_text())["recipe_plan"]  # RECIPE=auto chose EMA here
    assert plan and meta["recipe"] == plan
    assert meta["tta"] == "none" and meta["output"] == "probs" and meta["precision"] == "fp32"
    assert set(meta["versions"]) >= {"torch", "onnx", "onnxruntime"}
    assert meta["checks"]["onnxruntime_max_diff"] <= checks.PARITY_TOLERANCE
    assert meta["checks"]["opencv"] == "ok" and meta["checks"]["opencv_max_diff"] <= checks.OPENCV_TOLERANCE


def test_opencv_dnn_matches_onnxruntime(trained_run):
    model_bytes = (trained_run / "model.onnx").read_bytes()
    x = checks.parity_input(64)
    reference = checks.run_onnxruntime(model_bytes, x)
    assert checks.check_opencv(model_bytes, x, reference)["status"] == "ok"
    assert checks.check_opencv(model_bytes, x, reference + 0.01)["status"] == "mismatch"
    broken = checks.check_opencv(b"not an onnx file", x, reference)
    assert broken["status"] == "unsupported" and broken["max_diff"] is None


@pytest.mark.parametrize("opset", [11, 21])
def test_unsupported_opset_names_the_range(trained_run, opset):
    with pytest.raises(UserError, match=rf"opset {opset} is not supported; choose 13\.\.20"):
        export.export_onnx(trained_run, folds=[0], opset=opset)


def test_mixed_architectures_are_rejected_naming_both(trained_run, tmp_path):
    from model import build_model, model_args

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "fold0_best.pt").write_bytes((trained_run / "models" / "fold0_best.pt").read_bytes())
    other = build_model("Linknet", "resnet18", None, 1)
    torch.save({"model": other.state_dict(), "model_args": model_args("Linknet", "resnet18", 1)},
               tmp_path / "models" / "fold1_best.pt")
    with pytest.raises(UserError, match=r"fold1_best.pt is Linknet/resnet18 .* fold0_best.pt is Unet/resnet18"):
        export.export_onnx(tmp_path)


def test_failed_parity_aborts_unless_no_verify(trained_run, tmp_path, monkeypatch):
    two_fold = (trained_run / "model.onnx").read_bytes()
    monkeypatch.setattr(build, "to_onnx_bytes", lambda *a, **k: two_fold)  # the wrong graph for fold 0 alone
    with pytest.raises(checks.ParityError, match=r"max abs diff \d\.\d\de[-+]\d+ > 1e-04"):
        export.export_onnx(trained_run, folds=[0], output=tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()
    assert export.export_onnx(trained_run, folds=[0], output=tmp_path / "bad.onnx", check=False).is_file()


def test_cli_fold_and_aliases(trained_run, tmp_path):
    export.main(["--work-dir", str(trained_run), "--fold", "1", "--skip-checks", "--output", str(tmp_path / "a.onnx")])
    assert _meta(tmp_path / "a.onnx")["folds"] == [1]
    assert export.parse_args(["--work-dir", "w", "--no-verify"]).no_verify
    assert export.parse_folds("0,2", None) == [0, 2]
    with pytest.raises(UserError, match="either --fold K or --folds"):
        export.parse_folds("0", 1)
    with pytest.raises(UserError, match="comma list of integers"):
        export.parse_folds("0;2", None)


@pytest.mark.parametrize("size", [(8, 8), (13, 7), (6, 20)])
@pytest.mark.parametrize("bins", [1, 2, 3, 6, (2, 3)])
def test_traceable_adaptive_pool_is_exact(size, bins):
    x = torch.randn(2, 3, *size)
    want = torch.nn.functional.adaptive_avg_pool2d(x, bins)
    assert torch.allclose(tracing.traceable_adaptive_avg_pool2d(x, bins), want, atol=1e-6)


# ----------------------------------------------------------------------------- fp16 / int8 / simplify


def test_fp16_keeps_float32_io_and_resize(trained_run, tmp_path):
    proto = onnx.load(str(trained_run / "model.onnx"))
    path = quantize.write_fp16(proto, tmp_path / "m.fp16.onnx", read_metadata(proto), check=False)
    half = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    float32, float16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert [v.type.tensor_type.elem_type for v in [*half.graph.input, *half.graph.output]] == [float32, float32]
    types = {v.name: v.type.tensor_type.elem_type for v in [*half.graph.value_info, *half.graph.input]}
    types.update({t.name: t.data_type for t in half.graph.initializer})
    resize_inputs = [name for n in half.graph.node if n.op_type == "Resize" for name in n.input if name]
    assert resize_inputs and not any(types.get(name) == float16 for name in resize_inputs)  # X, roi, scales
    assert sum(t.data_type == float16 for t in half.graph.initializer) > 10  # the weights are fp16
    x = checks.parity_input(64)
    diff = np.abs(checks.run_onnxruntime(path, x) - checks.run_onnxruntime(trained_run / "model.onnx", x)).max()
    assert diff < 1e-2 and _meta(path)["precision"] == "fp16"


def test_int8_is_static_qdq_and_keeps_metadata(trained_run, tmp_path, caplog):
    caplog.set_level("INFO", logger="seg")
    out = export.export_onnx(trained_run, folds=[0], output=tmp_path / "m.onnx", int8=True, check=False)
    quant = onnx.load(str(out.with_suffix(".int8.onnx")))
    ops = {n.op_type for n in quant.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert any(t.data_type == onnx.TensorProto.INT8 for t in quant.graph.initializer)  # int8 weights
    meta, fp32_meta = read_metadata(quant), _meta(out)
    measured = {key: meta.pop(key) for key in ("int8_dice_delta", "int8_min_iou", "int8_timing", "int8_val_images",
                                               "int8_val_set", "source")}
    meta.pop("int8_speedup", None)  # stored only when the machine was quiet enough (tests/test_precision.py)
    assert meta.pop("precision") == "int8" and fp32_meta.pop("precision") == "fp32" and meta == fp32_meta
    assert measured["source"] == {"file": "m.onnx", "sha256": file_digest(out), "made": "int8"}
    assert measured["int8_val_images"] > 0 and measured["int8_val_set"] == "fold 0's held-back images"
    assert 0 <= measured["int8_min_iou"] <= 1 and measured["int8_timing"]["rounds"] > 0  # measured before written
    probs = _session(out.with_suffix(".int8.onnx")).run(None, {"image": checks.parity_input(64)})[0]
    assert probs.shape == (2, 1, 64, 96) and 0 <= probs.min() and probs.max() <= 1
    assert "int8: Dice" in caplog.text and "min IoU" in caplog.text


def test_int8_needs_the_training_cache(trained_run, tmp_path):
    with pytest.raises(UserError, match="calibrates on the training cache"):
        quantize.calibration_images(tmp_path, 8)


@pytest.mark.slow
def test_simplify_keeps_parity_and_metadata(trained_run, tmp_path):
    out = export.export_onnx(trained_run, folds=[0], output=tmp_path / "s.onnx", simplify_graph=True)
    assert len(onnx.load(str(out)).graph.node) < len(onnx.load(str(trained_run / "model.onnx")).graph.node) / 2
    assert _meta(out)["folds"] == [0] and _meta(out)["checks"]["opencv"] == "ok"


# ----------------------------------------------------------------------------- every architecture

FAST_ARCHS = {"Unet", "FPN", "Linknet"}


def _arch_params():
    from config import ARCHITECTURES

    encoders = {"DPT": "tu-vit_tiny_patch16_224", "HRNetLite": "hrnet_w18"}
    known_failures = {"DPT": "timm ViT dynamic_img_size resamples pos_embed with antialiased bicubic, "
                             "which the TorchScript ONNX exporter does not support"}
    params = []
    for arch in ARCHITECTURES:
        marks = [] if arch in FAST_ARCHS else [pytest.mark.slow]
        if arch in known_failures:
            marks.append(pytest.mark.xfail(reason=known_failures[arch], strict=True))
        params.append(pytest.param(arch, encoders.get(arch, "resnet18"), marks=marks, id=arch))
    return params


@pytest.mark.parametrize("arch, encoder", _arch_params())
def test_architecture_parity(arch, encoder, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    from export_matrix import MIN_SIZE, build_random, calibrate_batchnorm

    # PAN needs H >= 128 and check_parity uses H = 3/4 of the export size: export PAN at 192
    size = 192 if arch == "PAN" else MIN_SIZE.get(arch, 64)
    module = ensembles.ExportEnsemble([calibrate_batchnorm(build_random(arch, encoder), size)], 1).eval()
    model_bytes = tracing.to_onnx_bytes(module, size, 17)
    assert checks.check_parity(module, model_bytes, size) < 1e-3  # raises ParityError on a wrong graph



# ----------------------------------------------------------------------------- Triton model repository


def parse_pbtxt(text: str) -> dict:
    """Protobuf text format -> dict; repeated fields and `[...]` lists become lists. Enough for config.pbtxt."""
    import re
    text = re.sub(r"(?m)^\s*#.*$", "", text)  # comments
    tokens = re.findall(r'"[^"]*"|[{}\[\]:,]|[^\s{}\[\]:,"]+', text)
    pos = 0

    def value():
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "{":
            return message("}")
        if tok == "[":
            items = []
            while tokens[pos] != "]":
                items.append(value())
                pos += tokens[pos] == ","
            pos += 1
            return items
        if tok.startswith('"'):
            return tok[1:-1]
        return int(tok) if re.fullmatch(r"-?\d+", tok) else tok

    def message(end):
        nonlocal pos
        out = {}
        while pos < len(tokens) and tokens[pos] != end:
            key = tokens[pos]
            pos += 1 + (tokens[pos + 1] == ":")
            out.setdefault(key, []).append(value())
        pos += 1
        return {k: v[0] if len(v) == 1 else v for k, v in out.items()}

    return message(None)


def _expected_spec(value):
    tensor = value.type.tensor_type
    return tensor.elem_type, [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]


@pytest.mark.parametrize("kind,dynamic", [("gpu", True), ("cpu", False)])
def test_triton_repository_config_matches_the_onnx(trained_run, tmp_path, kind, dynamic):
    folder = triton.write_triton_repo(trained_run / "model.onnx", tmp_path / "repo", max_batch_size=4, kind=kind,
                                      instances=2, dynamic_batching=dynamic)
    assert folder == tmp_path / "repo" / "model"
    assert_triton_copy(folder / "1" / "model.onnx", trained_run / "model.onnx")
    assert (folder / "config.pbtxt").read_text().startswith(f"# made from model.onnx (sha256 {file_digest(trained_run / 'model.onnx')})")
    config = parse_pbtxt((folder / "config.pbtxt").read_text())
    proto = onnx.load(str(trained_run / "model.onnx"))
    assert config["name"] == "model" and config["platform"] == "onnxruntime_onnx" and config["max_batch_size"] == 4
    assert config["instance_group"] == [{"count": 2, "kind": f"KIND_{kind.upper()}"}]
    assert ("dynamic_batching" in config) == dynamic
    names = {onnx.TensorProto.FLOAT: "TYPE_FP32"}
    for section, values in (("input", proto.graph.input), ("output", proto.graph.output)):
        [tensor] = config[section]
        [value] = values
        elem_type, dims = _expected_spec(value)
        assert tensor["name"] == value.name and tensor["data_type"] == names[elem_type]
        assert dims[0] == -1 and tensor["dims"] == dims[1:]  # batch dim left to Triton
    assert config["input"][0]["name"] == "image" and config["input"][0]["dims"] == [3, -1, -1]  # dynamic H, W
    assert config["output"][0]["dims"][1:] == [-1, -1]


def test_triton_static_batch_model_gets_max_batch_size_zero(tmp_path):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT16, [1, 3, 32, 32])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT16, [1, 3, 32, 32])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    proto = onnx.helper.make_model(graph)
    config = parse_pbtxt(triton.triton_config(proto, "static", max_batch_size=8, kind="cpu"))
    assert config["max_batch_size"] == 0
    assert config["input"][0] == {"name": "x", "data_type": "TYPE_FP16", "dims": [1, 3, 32, 32]}
    with pytest.raises(UserError, match="dynamic batch dim"):
        triton.triton_config(proto, "static", dynamic_batching=True)


def test_cli_writes_the_triton_repository(trained_run, tmp_path):
    export.main(["--work-dir", str(trained_run), "--fold", "0", "--output", str(tmp_path / "f0.onnx"), "--no-verify",
                 "--triton-repo", str(tmp_path / "repo"), "--triton-name", "seg_f0", "--triton-kind", "cpu"])
    config = parse_pbtxt((tmp_path / "repo" / "seg_f0" / "config.pbtxt").read_text())
    assert config["name"] == "seg_f0" and config["instance_group"][0]["kind"] == "KIND_CPU"
    assert_triton_copy(tmp_path / "repo" / "seg_f0" / "1" / "model.onnx", tmp_path / "f0.onnx")
    with pytest.raises(UserError, match="seg_f0/1/model.onnx exists and holds another export"):  # kept, no --force
        export.main(["--work-dir", str(trained_run), "--fold", "1", "--output", str(tmp_path / "f1.onnx"),
                     "--no-verify", "--triton-repo", str(tmp_path / "repo"), "--triton-name", "seg_f0"])


def assert_triton_copy(copy: Path, original: Path) -> None:
    """The repository's model.onnx: the same graph, and metadata that names the file it was made from."""
    ours, theirs = onnx.load(str(copy)), onnx.load(str(original))
    assert ours.graph.SerializeToString() == theirs.graph.SerializeToString()
    meta = read_metadata(ours)
    assert meta.pop("source") == {"file": original.name, "sha256": file_digest(original), "made": "triton"}
    assert meta == read_metadata(theirs)


NO_TORCH_OR_ONNX = """
import builtins, runpy, sys
real = builtins.__import__
def guard(name, *args, **kwargs):
    if name.split(".")[0] in ("torch", "onnx", "segmentation_models_pytorch", "timm", "onnxruntime"):
        raise ImportError(name + " is blocked in this test")
    return real(name, *args, **kwargs)
builtins.__import__ = guard
sys.argv = ["export.py", *sys.argv[1:]]
runpy.run_path("export.py", run_name="__main__")
"""


@pytest.mark.parametrize("args, answer", [(["--help"], "what to export (exactly one)"),
                                          (["--work-dir", "w", "--tta", "flipz"], "invalid choice: 'flipz'"),
                                          (["--work-dir", "w", "--opset", "9"], "opset 9 is not supported")])
def test_help_and_flag_errors_answer_without_torch_or_onnx(args, answer):
    """export.py loads torch and onnx only once something is exported: --help and a bad flag answer at once."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", NO_TORCH_OR_ONNX, *args], cwd=root, capture_output=True, text=True,
                          timeout=60)
    assert answer in done.stdout + done.stderr, done.stderr[-2000:]
    assert "is blocked in this test" not in done.stderr
