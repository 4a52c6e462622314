"""export.py --checkpoint: plain state dicts saved by older scripts, exported like a run's folds."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

import export
from exporting import checkpoints, checks
from model import build_model, resolve_arch
from runtime.metadata import read_metadata
from utils import UserError


@pytest.fixture(scope="module")
def unet3():
    torch.manual_seed(0)
    return build_model("Unet", "resnet18", None, classes=3).eval()


def _save(model, path, form):
    """The ways older scripts save their weights."""
    if form == "bare":
        torch.save(model.state_dict(), path)
    elif form == "epoch_tar":
        torch.save({"epoch": 3, "state_dict": model.state_dict()}, path)
    elif form == "data_parallel":
        torch.save(torch.nn.DataParallel(model).state_dict(), path)  # keys start with 'module.'
    return path


def _predict(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]


@pytest.mark.parametrize("form, file_name, check", [("bare", "x.pth", True), ("epoch_tar", "x.pth.tar", False),
                                                    ("data_parallel", "dp.pth", False)])
def test_old_state_dicts_export_and_predict_like_torch(unet3, tmp_path, form, file_name, check):
    path = _save(unet3, tmp_path / file_name, form)
    argv = ["--checkpoint", str(path), "--model", "unet", "--encoder", "resnet18", "--input-size", "64",
            "--class-names", "background,horse,rider"]
    export.main(argv + ([] if check else ["--no-verify"]))
    out = tmp_path / f"{checkpoints.checkpoint_name(path)}.onnx"  # x.pth.tar -> x.onnx, beside the checkpoint
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 96)).astype(np.float32)
    with torch.inference_mode():
        want = torch.softmax(unet3(torch.from_numpy(x)), dim=1).numpy()
    assert np.abs(_predict(out, x) - want).max() <= checks.PARITY_TOLERANCE
    meta = read_metadata(out)
    assert (meta["arch"], meta["encoder"], meta["num_classes"], meta["input_size"]) == ("Unet", "resnet18", 3, 64)
    assert meta["class_names"] == ["background", "horse", "rider"] and meta["output"] == "probs"
    assert meta["name"] == checkpoints.checkpoint_name(path) and meta["folds"] == []
    if check:  # the same checks as a run's export ran and were recorded
        assert meta["checks"]["onnxruntime_max_diff"] <= checks.PARITY_TOLERANCE


def test_mismatched_encoder_is_one_line_naming_the_keys(unet3, tmp_path):
    path = _save(unet3, tmp_path / "x.pth", "bare")
    with pytest.raises(UserError) as err:
        export.main(["--checkpoint", str(path), "--model", "Unet", "--encoder", "resnet34", "--no-verify"])
    message = str(err.value)
    assert "\n" not in message and "missing keys (96): encoder.layer1.2." in message
    assert "check --model, --encoder and --classes" in message
    assert not (tmp_path / "x.onnx").exists()


def test_whole_pickled_model_needs_trust(unet3, tmp_path):
    path = tmp_path / "whole.pth"
    torch.save(unet3, path)
    with pytest.raises(UserError, match=r"pickled Python objects .*Unet.*--trust-pickle") as err:
        checkpoints.load_plain_checkpoint(path, "Unet", "resnet18")
    assert "\n" not in str(err.value)
    model, ckpt = checkpoints.load_plain_checkpoint(path, "Unet", "resnet18", trust_pickle=True)
    assert ckpt["model_args"] == {"arch": "Unet", "encoder": "resnet18", "classes": 3}  # classes from the head
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(model(x), unet3(x))


@pytest.mark.parametrize("name, canonical", [("unet", "Unet"), ("UNETPLUSPLUS", "UnetPlusPlus"),
                                             ("deeplabv3plus", "DeepLabV3Plus"), (" FPN ", "FPN")])
def test_architecture_names_are_case_insensitive(name, canonical):
    assert resolve_arch(name) == canonical


def test_unknown_architecture_lists_the_valid_ones():
    with pytest.raises(UserError, match=r"unknown architecture 'Unett'; choose one of: Unet, UnetPlusPlus, .*Lite"):
        resolve_arch("Unett")


@pytest.mark.parametrize("argv, message", [
    (["--model", "Unet"], "give --model ARCH and --encoder NAME"),
    (["--model", "Unet", "--encoder", "resnet18", "--input-size", "100"], "--input-size 100 must be a multiple of 32"),
    (["--model", "Unet", "--encoder", "resnet18", "--class-names", "a,b"], "2 class names .* 3 output channel"),
    (["--model", "Unet", "--encoder", "resnet18", "--int8"], "--int8 with --checkpoint needs --val-dir"),
    (["--model", "Unet", "--encoder", "resnet18", "--fold", "0"], "--fold: not used with --checkpoint"),
])
def test_checkpoint_mistakes_are_one_line(unet3, tmp_path, argv, message):
    path = _save(unet3, tmp_path / "x.pth", "bare")
    with pytest.raises(UserError, match=message) as err:
        export.main(["--checkpoint", str(path), "--no-verify", *argv])
    assert "\n" not in str(err.value)
    assert not (tmp_path / "x.onnx").exists()


def test_checkpoint_variants_are_named(unet3, tmp_path):
    path = _save(unet3, tmp_path / "x.pth", "bare")
    export.main(["--checkpoint", str(path), "--model", "Unet", "--encoder", "resnet18", "--input-size", "64",
                 "--logits", "--no-verify"])
    assert read_metadata(tmp_path / "x.logits.onnx")["output"] == "logits"
    assert not (tmp_path / "x.onnx").exists()
