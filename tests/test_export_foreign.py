"""export.py --describe (our metadata into a foreign ONNX) and --hf (a Hugging Face folder to ONNX)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import export
from runtime.metadata import read_metadata
from utils import UserError


def _foreign_onnx(path, input_shape=(1, 3, 32, 32), channels=3):
    """A model from elsewhere: a 1x1 conv, NCHW (or whatever `input_shape` says), no metadata of ours."""
    weight = np.random.default_rng(0).standard_normal((channels, 3, 1, 1)).astype(np.float32)
    nhwc = input_shape[-1] == 3 and input_shape[1] != 3
    nodes = [helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2])] if nhwc else []
    nodes.append(helper.make_node("Conv", ["nchw" if nhwc else "x", "w"], ["y"]))
    out_shape = [input_shape[0], channels, *(input_shape[1:3] if nhwc else input_shape[2:])]
    graph = helper.make_graph(nodes, "foreign", [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                              [onnx.numpy_helper.from_array(weight, "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)  # ORT reads <= 13
    proto.metadata_props.add(key="author", value="someone else")
    onnx.save(proto, str(path))
    return path


def test_describe_writes_our_metadata(tmp_path):
    model = _foreign_onnx(tmp_path / "foreign.onnx")
    out = tmp_path / "described.onnx"
    export.main(["--describe", str(model), "--output", str(out), "--class-names", "wall,sky,tree",
                 "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--input-size", "256", "--no-background"])
    meta = read_metadata(out)
    assert meta["num_classes"] == 3 and meta["class_names"] == ["wall", "sky", "tree"]
    assert meta["mean"] == [0.5] * 3 and meta["std"] == [0.25] * 3 and meta["input_size"] == 256
    assert meta["background"] is False and meta["output"] == "logits" and meta["described"] is True
    assert meta["name"] == "foreign"
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["author"] == "someone else"  # other tools' entries are kept
    with pytest.raises(UserError, match="no 'segmentation' metadata"):
        read_metadata(model)  # --output: the original is left alone
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (model, out)]
    assert np.array_equal(*[session.run(None, {"x": x})[0] for session in sessions])  # the graph itself is untouched


def test_describe_in_place_from_a_classes_file_with_probs(tmp_path):
    model = _foreign_onnx(tmp_path / "m.onnx")
    (tmp_path / "labels.txt").write_text("background\nroad\n\ncar\n")
    export.main(["--describe", str(model), "--classes-file", str(tmp_path / "labels.txt"), "--probs"])
    meta = read_metadata(model)
    assert meta["class_names"] == ["background", "road", "car"] and meta["output"] == "probs"
    assert meta["background"] is True  # class 0 is called background and --no-background was not given
    assert meta["input_size"] == 32  # the model's own fixed input size


@pytest.mark.parametrize("argv, message", [
    (["--class-names", "a,b"], "2 class names for a model with 3 output channels"),
    (["--mean", "0.5,0.5"], "--mean '0.5,0.5' must be 3 comma-separated numbers"),
    (["--class-names", "a,b,c", "--classes-file", "labels.txt"], "either --class-names or --classes-file"),
    (["--fp16"], "--fp16: not used with --describe"),
    (["--model", "Unet", "--tta", "flips"], "--tta, --model: not used with --describe; drop them"),
])
def test_describe_mistakes_are_one_line(tmp_path, argv, message):
    model = _foreign_onnx(tmp_path / "m.onnx")
    with pytest.raises(UserError, match=message) as err:
        export.main(["--describe", str(model), *argv])
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="no 'segmentation' metadata"):
        read_metadata(model)  # nothing was written


def test_nhwc_model_is_refused_in_one_line(tmp_path):
    model = _foreign_onnx(tmp_path / "nhwc.onnx", input_shape=(1, 32, 32, 3))
    with pytest.raises(UserError, match=r"input 'x' is NHWC \[1, 32, 32, 3\]; segpipe feeds NCHW") as err:
        export.main(["--describe", str(model), "--class-names", "a,b,c"])
    assert "\n" not in str(err.value)


def test_describe_refuses_our_own_export(tmp_path):
    model = _foreign_onnx(tmp_path / "m.onnx")
    export.main(["--describe", str(model)])
    proto = onnx.load(str(model))
    for prop in proto.metadata_props:
        prop.value = prop.value.replace('"described": true', '"described": false')
    onnx.save(proto, str(model))
    with pytest.raises(UserError, match="was exported by export.py and describes itself already"):
        export.main(["--describe", str(model)])


# ----------------------------------------------------------------------------- Hugging Face


@pytest.fixture(scope="module")
def segformer_folder(tmp_path_factory):
    """A tiny random SegformerForSemanticSegmentation written by save_pretrained (nothing is downloaded)."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    config = SegformerConfig(num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1],
                             hidden_sizes=[8, 16, 32, 64], num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=32,
                             num_labels=3, id2label={0: "wall", 1: "sky", 2: "tree"},
                             label2id={"wall": 0, "sky": 1, "tree": 2})
    folder = tmp_path_factory.mktemp("hf") / "tiny_segformer"
    model = SegformerForSemanticSegmentation(config).eval()
    model.save_pretrained(folder)
    return folder, model


def test_hf_export_is_self_describing_and_matches_torch(segformer_folder, tmp_path):
    folder, model = segformer_folder
    out = tmp_path / "segformer.onnx"
    export.main(["--hf", str(folder), "--output", str(out), "--input-size", "64"])
    meta = read_metadata(out)
    assert meta["class_names"] == ["wall", "sky", "tree"] and meta["num_classes"] == 3
    assert meta["background"] is False  # ADE20k style: class 0 is "wall", a class like any other
    assert meta["output"] == "logits" and meta["input_size"] == 64 and meta["described"] is True
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 96)).astype(np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    with torch.inference_mode():
        want = model(pixel_values=torch.from_numpy(x)).logits.numpy()
    assert got.shape == want.shape == (2, 3, 16, 24)  # SegFormer's logits are at 1/4 of the input
    assert np.abs(got - want).max() < 1e-4


def test_hf_default_output_sits_beside_the_folder(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(export, "export_huggingface", lambda *args: calls.append(args) or args[1])
    (tmp_path / "seg").mkdir()
    export.main(["--hf", str(tmp_path / "seg") + "/"])
    assert calls == [(str(tmp_path / "seg") + "/", tmp_path / "seg.onnx", None, 17)]


def test_hf_refuses_flags_it_cannot_use(tmp_path):
    with pytest.raises(UserError, match="--fp16, --class-names: not used with --hf; drop them"):
        export.main(["--hf", str(tmp_path), "--class-names", "a,b", "--fp16"])


def test_describe_a_file_that_is_not_onnx(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("not a model")
    with pytest.raises(UserError, match="notes.onnx: not a readable ONNX file"):
        export.main(["--describe", str(path)])
    assert path.read_text() == "not a model"
