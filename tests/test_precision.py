"""--precision auto|fp32|int8 (runtime/precision.py) and the measured int8 copy export.py writes by default
(exporting/quantize.py, exporting/evidence.py: held-back images, masks under the rule, alternating timings)."""

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
from exporting import evidence
from runtime import precision
from runtime.lineage import file_digest, source_record
from runtime.metadata import METADATA_KEY, metadata_problems, read_metadata
from runtime.session import CPU
from test_inference import TEST_META, build_model, records  # noqa: F401  (records is a fixture)
from training.tasks import make_task
from utils import UserError, file_sha1

GPU = ["CUDAExecutionProvider", CPU]
TIMING = {"fp32_ms": 21.0, "int8_ms": 10.0, "rounds": 5, "images": 4, "load_1m": [0.4, 0.6], "cores": 2, "tries": 1}
MEASURED = {"int8_dice_delta": -0.0003, "int8_speedup": 2.1, "int8_val_images": 40, "int8_min_iou": 0.991,
            "int8_timing": TIMING}
HOW = "2.1x fp32 (median of 5 alternating rounds, 1-minute load 0.6 on 2 cores)"


@pytest.fixture(autouse=True)
def quiet_machine(monkeypatch):
    """The int8 timing sees an idle machine (the tests' own load must not decide what they test)."""
    monkeypatch.setattr(evidence, "load_1m", lambda: 0.0)


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
    with_meta(int8, precision="int8", source=source_record(fp32, "int8"), **MEASURED)
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
    if picked:  # the reason names no flag: the CLI, Segmenter and the app each offer fp32 their way
        assert line == (f"precision int8: horse.int8.onnx: ΔDice {delta:+.4f}, min IoU 0.991 vs fp32 on 40 held-back "
                        f"images, {HOW}; precision fp32 runs horse.onnx")
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
    assert lines(records) == ["precision fp32: no horse.int8.onnx beside the model (export.py writes one when "
                              "held-back images are at hand)"]


def test_a_stale_int8_file_is_not_picked(pair, records):
    fp32, int8 = pair
    old = file_digest(fp32)
    with_meta(fp32, created="re-exported")  # another fp32 file: the int8 copy was made from the old one
    segmenter = inference.Segmenter(fp32, device="cpu")
    assert segmenter.model_path == fp32
    assert lines(records) == [f"precision fp32: horse.int8.onnx was made from another horse.onnx (sha256 {old[:8]} "
                              f"recorded, {file_digest(fp32)[:8]} now): it gives the old model's answers; export.py "
                              "writes it again (--int8 on), or delete it"]


@pytest.mark.parametrize("same", [True, False])
def test_an_int8_file_from_before_sha256_still_works(pair, same):
    """Older int8 files record a SHA-1 of their fp32 file (int8_source): read, so old models keep working."""
    fp32, int8 = pair
    proto = onnx.load(str(int8))
    meta = json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])
    meta.pop("source")
    meta.pop("int8_min_iou")
    meta.pop("int8_timing")
    meta["int8_source"] = file_sha1(fp32) if same else "0" * 40
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(meta)})
    onnx.save(proto, str(int8))
    path, chosen, reason = precision.resolve_precision(fp32, "auto", [CPU])
    assert (path, chosen) == ((int8, "int8") if same else (fp32, "fp32"))
    assert same or reason.startswith("horse.int8.onnx was made from another horse.onnx (sha1 00000000 recorded")


def test_an_int8_file_without_a_stored_speedup_is_not_picked(pair):
    fp32, int8 = pair
    with_meta(int8, int8_speedup=None, int8_timing={**TIMING, "not_stored": "the 1-minute load was above the 2 "
                                                                            "cores in 3 tries"})
    path, chosen, reason = precision.resolve_precision(fp32, "auto", [CPU])
    assert (path, chosen) == (fp32, "fp32")
    assert reason == ("horse.int8.onnx has no measured speed-up (the 1-minute load was above the 2 cores in 3 tries); "
                      "export again on an idle machine")


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
    with pytest.raises(UserError, match=r"precision int8: no horse.int8.onnx beside horse.onnx; .*--int8 on") as err:
        inference.Segmenter(fp32, device="cpu", precision="int8")
    assert "\n" not in str(err.value)


def test_forced_int8_beyond_the_limit_warns_and_runs(pair, records):
    fp32, int8 = pair
    with_meta(int8, int8_dice_delta=-0.05)
    segmenter = inference.Segmenter(fp32, device="cpu", precision="int8")
    assert segmenter.model_path == int8 and segmenter.precision == "int8"
    warnings = [r.getMessage() for r in records.records if r.levelno == logging.WARNING]
    assert warnings == ["running horse.int8.onnx as asked (precision int8) although horse.int8.onnx lost 0.050 "
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
    source = {"file": "horse.onnx", "sha256": "ab" * 32, "made": "int8"}
    assert metadata_problems({**MEASURED, "int8_source": "ab" * 20, "source": source}) == []
    assert len(metadata_problems({"int8_dice_delta": "bad", "int8_speedup": 0, "int8_val_images": 0,
                                  "int8_source": "x", "int8_min_iou": 2, "source": {**source, "sha256": "x"}})) == 6


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
    assert meta["int8_val_set"] == "fold 0's held-back images" and "int8_source" not in meta
    assert meta["source"] == {"file": fp32.name, "sha256": file_digest(fp32), "made": "int8"}
    assert -1 <= meta["int8_dice_delta"] <= 1 and 0 <= meta["int8_min_iou"] <= 1 and meta["int8_speedup"] > 0
    timing = meta["int8_timing"]
    assert timing["rounds"] == evidence.ROUNDS and timing["load_1m"] == [0.0, 0.0] and timing["cores"] >= 1
    assert meta["int8_speedup"] == pytest.approx(timing["fp32_ms"] / timing["int8_ms"], rel=1e-3)
    assert metadata_problems(meta) == []
    path, chosen, _ = precision.resolve_precision(fp32, "auto", [CPU])
    assert chosen == ("int8" if meta["int8_dice_delta"] >= -precision.MAX_DICE_LOSS else "fp32")

    export.main(["--work-dir", str(run), "--fold", "0", "--no-verify", "--int8", "off"])  # a new fp32 file
    assert "was made from another model.fold0.onnx" in precision.resolve_precision(fp32, "auto", [CPU])[2]
    assert any("model.fold0.int8.onnx was made from another" in r.getMessage() for r in records.records)


def test_an_ensemble_is_measured_on_the_test_split_only(run, monkeypatch, records):
    """Each fold trained on the other's held-back images: only the test split is held back from both."""
    monkeypatch.delenv("INT8")
    export.main(["--work-dir", str(run), "--no-verify", "--output", str(run / "all.onnx")])
    assert not (run / "all.int8.onnx").exists()
    said = [r.getMessage() for r in records.records if r.getMessage().startswith("no int8 copy")]
    assert said == ["no int8 copy: no held-back images for folds [0, 1] in " + str(run) + ": none (folds [0, 1] each "
                    "trained on the others' held-back images) (--val-dir DIR measures one; --int8 off silences this)"]
    split = json.loads((run / "folds.json").read_text())
    test = split["0"][:2]  # pretend training held these back from every fold
    (run / "folds.json").write_text(json.dumps({"0": split["0"][2:], "1": split["1"], "test": test}))
    export.main(["--work-dir", str(run), "--no-verify", "--output", str(run / "all.onnx")])
    meta = read_metadata(run / "all.int8.onnx")
    assert meta["int8_val_images"] == 2 and meta["int8_val_set"] == "the test split"


def test_a_val_dir_is_never_a_training_image(run, tmp_path, records):
    """--val-dir: the run's training images in it are left out (one warning); the rest is measured."""
    import shutil as sh

    val = tmp_path / "val"
    held = json.loads((run / "folds.json").read_text())["0"]
    trained = sorted({p.stem for p in (run / "images").iterdir()} - set(held))
    for sub in ("images", "masks"):
        (val / sub).mkdir(parents=True)
        for stem in held[:2] + trained[:3]:
            source = next((run / sub).glob(stem + ".*"))
            sh.copy(source, val / sub / source.name)
    export.main(["--work-dir", str(run), "--fold", "0", "--no-verify", "--int8", "on", "--val-dir", str(val)])
    meta = read_metadata(run / "model.fold0.int8.onnx")
    assert meta["int8_val_images"] == 2 and meta["int8_val_set"] == "--val-dir val"
    assert any(r.getMessage().startswith(f"--val-dir {val}: 3 of 5 images are training images of this run")
               for r in records.records)


def test_a_timing_under_load_is_repeated_then_not_stored(run, monkeypatch, records):
    monkeypatch.setattr(evidence, "load_1m", lambda: 99.0)
    monkeypatch.setattr(evidence, "LOAD_PAUSE_S", 0.0)
    export.main(["--work-dir", str(run), "--fold", "0", "--no-verify", "--int8", "on"])
    meta = read_metadata(run / "model.fold0.int8.onnx")
    assert "int8_speedup" not in meta and meta["int8_timing"]["tries"] == evidence.LOAD_TRIES
    assert meta["int8_timing"]["not_stored"].startswith("the 1-minute load was above the")
    assert sum("int8 timing: 1-minute load 99.00 above" in r.getMessage() for r in records.records) == 3
    assert precision.resolve_precision(run / "model.fold0.onnx", "auto", [CPU])[1] == "fp32"


def test_rounds_alternate_which_model_goes_first():
    calls = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def run(self, _outputs, _feed):
            calls.append(self.name)

    times = evidence.timed_rounds({"fp32": Fake("fp32"), "int8": Fake("int8")}, [np.zeros(1)], rounds=4)
    assert calls == ["fp32", "int8", "fp32", "int8", "int8", "fp32", "fp32", "int8", "int8", "fp32"]  # warm-up first
    assert [len(v) for v in times.values()] == [4, 4]


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
