"""--precision auto|fp32|int8 (runtime/precision.py) and the measured int8 copy export.py writes by default."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import onnx
import pytest

import export
import inference
from config import FIELD_BY_NAME, config_hash, load_config
from runtime import precision
from runtime.metadata import METADATA_KEY, metadata_problems, read_metadata
from runtime.session import CPU
from test_inference import TEST_META, build_model, records  # noqa: F401  (records is a fixture)
from training.tasks import make_task
from utils import UserError, file_sha1

GPU = ["CUDAExecutionProvider", CPU]
MEASURED = {"int8_dice_delta": -0.0003, "int8_speedup": 2.1, "int8_val_images": 40}


def with_meta(path, **changes):
    """Rewrite the metadata of an ONNX file in place (the graph stays)."""
    proto = onnx.load(str(path))
    meta = {**json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY]), **changes}
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(meta)})
    onnx.save(proto, str(path))
    return path


@pytest.fixture
def pair(tmp_path):
    """horse.onnx and a horse.int8.onnx made from it, measured at MEASURED (the same tiny graph stands in)."""
    fp32 = build_model(tmp_path / "horse.onnx", TEST_META)
    int8 = tmp_path / "horse.int8.onnx"
    shutil.copy(fp32, int8)
    with_meta(int8, precision="int8", int8_source=file_sha1(fp32), **MEASURED)
    return fp32, int8


def lines(caplog) -> list[str]:
    """The precision lines logged (INFO)."""
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.INFO and r.getMessage().startswith("precision")]


# ----------------------------------------------------------------------------- auto


@pytest.mark.parametrize("delta, picked", [(-0.0003, True), (0.02, True), (-0.01, True), (-0.0101, False),
                                           (-0.023, False)])
def test_auto_picks_int8_only_within_the_dice_limit(pair, records, delta, picked):
    fp32, int8 = pair
    with_meta(int8, int8_dice_delta=delta)
    segmenter = inference.Segmenter(fp32, device="cpu")
    assert segmenter.model_path == (int8 if picked else fp32)
    assert segmenter.precision == ("int8" if picked else "fp32")
    (line,) = lines(records)
    if picked:
        assert line == (f"precision int8: horse.int8.onnx (ΔDice {delta:+.4f} on 40 held-back images, 2.1x fp32); "
                        "--precision fp32 to force float32")
    else:
        assert line == f"precision fp32: horse.int8.onnx lost {-delta:.3f} Dice (limit 0.01)"
    assert segmenter.predict_probs(np.zeros((20, 30, 3), np.uint8)).shape == (1, 20, 30)


def test_auto_skips_an_int8_copy_that_was_no_faster(pair, records):
    fp32, int8 = pair
    with_meta(int8, int8_speedup=0.8)  # e.g. measured on a CPU without int8 dot products
    segmenter = inference.Segmenter(fp32, device="cpu")
    assert (segmenter.model_path, segmenter.precision) == (fp32, "fp32")
    assert lines(records) == ["precision fp32: horse.int8.onnx was no faster than float32 where it was measured "
                              "(0.80x)"]


def test_the_limit_is_one_constant():
    assert precision.MAX_DICE_LOSS == 0.01


def test_a_missing_int8_file_falls_back_to_fp32_in_one_line(tmp_path, records):
    fp32 = build_model(tmp_path / "horse.onnx", TEST_META)
    segmenter = inference.Segmenter(fp32, device="cpu")
    assert (segmenter.model_path, segmenter.precision) == (fp32, "fp32")
    assert lines(records) == ["precision fp32: no horse.int8.onnx beside the model (export.py writes one when a "
                              "validation set is at hand)"]


def test_a_stale_int8_file_is_not_picked(pair, records):
    fp32, int8 = pair
    with_meta(fp32, created="re-exported")  # another fp32 file: the int8 copy was made from the old one
    segmenter = inference.Segmenter(fp32, device="cpu")
    assert segmenter.model_path == fp32
    assert lines(records) == ["precision fp32: horse.int8.onnx is stale: it was made from an earlier horse.onnx "
                              "(export again to refresh it)"]


def test_an_unmeasured_int8_file_is_not_picked(tmp_path):
    fp32 = build_model(tmp_path / "horse.onnx", TEST_META)
    build_model(tmp_path / "horse.int8.onnx", {**TEST_META, "precision": "int8"})  # before measurements existed
    path, chosen, reason = precision.resolve_precision(fp32, "auto", [CPU])
    assert (path, chosen) == (fp32, "fp32") and "has no recorded Dice measurement" in reason


def test_auto_is_fp32_on_a_gpu_provider(pair):
    fp32, _ = pair
    path, chosen, reason = precision.resolve_precision(fp32, "auto", GPU)
    assert (path, chosen) == (fp32, "fp32") and "CUDAExecutionProvider" in reason


@pytest.mark.parametrize("name", ["horse.int8.onnx", "horse.e2e.onnx", "horse.fp16.onnx"])
def test_a_file_given_with_its_precision_runs_as_given(pair, name):
    given = pair[0].with_name(name)
    if not given.exists():
        shutil.copy(pair[0], given)
    path, chosen, _ = precision.resolve_precision(given, "auto", [CPU])
    assert path == given and chosen == {"horse.int8.onnx": "int8", "horse.fp16.onnx": "fp16"}.get(name, "fp32")


# ----------------------------------------------------------------------------- forced


def test_forced_int8_without_the_file_is_a_user_error(tmp_path):
    fp32 = build_model(tmp_path / "horse.onnx", TEST_META)
    with pytest.raises(UserError, match=r"--precision int8: no horse.int8.onnx beside horse.onnx; .*--int8 on") as err:
        inference.Segmenter(fp32, device="cpu", precision="int8")
    assert "\n" not in str(err.value)


def test_forced_int8_beyond_the_limit_warns_and_runs(pair, records):
    fp32, int8 = pair
    with_meta(int8, int8_dice_delta=-0.05)
    segmenter = inference.Segmenter(fp32, device="cpu", precision="int8")
    assert segmenter.model_path == int8 and segmenter.precision == "int8"
    warnings = [r.getMessage() for r in records.records if r.levelno == logging.WARNING]
    assert warnings == ["running horse.int8.onnx as asked (--precision int8) although horse.int8.onnx lost 0.050 "
                        "Dice (limit 0.01)"]


def test_forced_fp32_runs_the_float_file(pair):
    fp32, int8 = pair
    assert precision.resolve_precision(fp32, "fp32", [CPU])[:2] == (fp32, "fp32")
    assert precision.resolve_precision(int8, "fp32", [CPU])[:2] == (fp32, "fp32")


def test_a_bad_precision_is_a_user_error(pair):
    with pytest.raises(UserError, match="--precision 'int4' is not valid; use one of: auto, fp32, int8"):
        precision.resolve_precision(pair[0], "int4", [CPU])


def test_the_cli_passes_precision_through(pair, tmp_path):
    args = inference.parse_args(["--model", str(pair[0]), "--source", str(tmp_path), "--output", str(tmp_path / "o"),
                                 "--device", "cpu", "--precision", "fp32"])
    assert inference.build_segmenter(args).model_path == pair[0]
    args.precision = "auto"
    assert inference.build_segmenter(args).model_path == pair[1]


def test_file_props_reads_the_metadata_without_onnx(pair):
    props = precision.file_props(pair[1])
    assert props == {p.key: p.value for p in onnx.load(str(pair[1])).metadata_props}
    assert precision.file_props(pair[0].with_name("missing.onnx")) == {}


def test_the_new_keys_are_checked():
    assert metadata_problems({**MEASURED, "int8_source": "ab" * 20}) == []
    assert len(metadata_problems({"int8_dice_delta": "bad", "int8_speedup": 0, "int8_val_images": 0,
                                  "int8_source": "x"})) == 4


# ----------------------------------------------------------------------------- settings


def test_int8_is_an_export_setting_outside_the_config_hash():
    cfg = load_config([], environ={})
    assert cfg.int8 == "auto" and not FIELD_BY_NAME["int8"].trains
    off = load_config(["--int8", "off"], environ={})
    assert off.int8 == "off" and load_config([], environ={"INT8": "on"}).int8 == "on"
    assert config_hash(cfg) == config_hash(off)
    assert make_task(off).export_args({"best_threshold": 0.4})["int8"] == "off"
    with pytest.raises(UserError, match="INT8='maybe' is not allowed"):
        load_config([], environ={"INT8": "maybe"})


@pytest.mark.parametrize("argv, expected", [([], "auto"), (["--int8"], "on"), (["--int8", "off"], "off"),
                                            (["--no-int8"], "off")])
def test_export_int8_flag(argv, expected, monkeypatch):
    seen = {}
    monkeypatch.setattr(export, "export_onnx", lambda *a, **k: seen.update(k))
    monkeypatch.delenv("INT8")
    export.main(["--work-dir", "w", *argv])
    assert seen["int8"] == expected


# ----------------------------------------------------------------------------- export (a trained tiny run)


@pytest.fixture
def run(run_copy):
    """The shared 2-fold run through a folder of its own, so exports land here (conftest.run_copy)."""
    return run_copy


def test_export_by_default_writes_a_measured_int8_copy(run, monkeypatch, records):
    monkeypatch.delenv("INT8")  # the tests' default is off (conftest); this is export.py's own default
    export.main(["--work-dir", str(run), "--fold", "0", "--no-verify"])
    fp32, int8 = run / "model.fold0.onnx", run / "model.fold0.int8.onnx"
    meta = read_metadata(int8)
    held_back = json.loads((run / "folds.json").read_text())["0"]
    assert meta["precision"] == "int8" and meta["int8_val_images"] == len(held_back)
    assert meta["int8_source"] == file_sha1(fp32) and -1 <= meta["int8_dice_delta"] <= 1 and meta["int8_speedup"] > 0
    assert metadata_problems(meta) == []
    path, chosen, _ = precision.resolve_precision(fp32, "auto", [CPU])
    assert chosen == ("int8" if meta["int8_dice_delta"] >= -precision.MAX_DICE_LOSS else "fp32")

    export.main(["--work-dir", str(run), "--fold", "0", "--no-verify", "--int8", "off"])  # a new fp32 file
    assert "is stale" in precision.resolve_precision(fp32, "auto", [CPU])[2]
    assert any("model.fold0.int8.onnx is left from an earlier export" in r.getMessage() for r in records.records)


def test_int8_off_writes_none(run, monkeypatch):
    monkeypatch.delenv("INT8")
    export.main(["--work-dir", str(run), "--fold", "0", "--no-verify", "--int8", "off"])
    assert [p.name for p in run.glob("*.onnx")] == ["model.fold0.onnx"]


def test_auto_without_a_validation_set_says_why_in_one_line(tmp_path, monkeypatch, records):
    import torch

    from model import build_model as build_torch_model

    monkeypatch.delenv("INT8")
    torch.save(build_torch_model("Unet", "resnet18", None, classes=1).state_dict(), tmp_path / "best.pt")
    export.main(["--checkpoint", str(tmp_path / "best.pt"), "--model", "Unet", "--encoder", "resnet18",
                 "--input-size", "64", "--no-verify"])
    assert [p.name for p in tmp_path.glob("*.onnx")] == ["best.onnx"]
    said = [r.getMessage() for r in records.records if r.getMessage().startswith("no int8 copy")]
    assert said == ["no int8 copy: --checkpoint without --val-dir (--val-dir DIR measures one; --int8 off silences "
                    "this)"]
