import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from config import FIELDS, SMP_ARCHITECTURES, Config, config_hash, describe_config, load_config
from utils import UserError


def test_fields_table_matches_config_dataclass():
    assert [f.name for f in dataclasses.fields(Config)] == [f.name for f in FIELDS]


def test_defaults_without_env_or_flags():
    cfg = load_config([], environ={})
    assert (cfg.arch, cfg.encoder, cfg.folds, cfg.input_size, cfg.patience) == ("UnetPlusPlus", "resnet34", 5, 512, 10)


@pytest.mark.parametrize("env, flag, field, env_value, flag_value", [
    ("EPOCHS", "--epochs", "epochs", 7, 9),
    ("LR", "--lr", "lr", 0.01, 0.002),
    ("ARCH", "--model", "arch", "Unet", "FPN"),
    ("INPUT_SIZE", "--patch-size", "input_size", 256, 320),
    ("ENCODER_WEIGHTS", "--encoder-weights", "encoder_weights", None, "imagenet"),
    ("BATCH_SIZE", "--batch-size", "batch_size", 3, 5),
])
def test_precedence_default_env_flag(env, flag, field, env_value, flag_value):
    default = getattr(load_config([], environ={}), field)
    env_text = "none" if env_value is None else str(env_value)
    from_env = getattr(load_config([], environ={env: env_text}), field)
    from_flag = getattr(load_config([flag, str(flag_value)], environ={env: env_text}), field)
    assert from_env == env_value and from_env != default
    assert from_flag == flag_value


@pytest.mark.parametrize("environ, argv, must_name", [
    ({"EPOCHS": "abc"}, [], ["EPOCHS", "'abc'", "positive int"]),
    ({"EPOCHS": "-3"}, [], ["EPOCHS", "'-3'"]),
    ({"ARCH": "Foo"}, [], ["ARCH", "'Foo'", "UnetPlusPlus", "DeepLabV3Plus"]),
    ({}, ["--lr", "fast"], ["--lr", "'fast'"]),
    ({"INPUT_SIZE": "100"}, [], ["INPUT_SIZE", "multiple of 32"]),
    ({"FOLDS": "1"}, [], ["FOLDS", "at least 2"]),
    ({"EXPORT": "maybe"}, [], ["EXPORT", "'maybe'", "true/false"]),
    ({"FOLD_IDS": "0,9"}, [], ["FOLD_IDS", "0..4"]),
])
def test_bad_values_name_variable_value_and_allowed(environ, argv, must_name):
    with pytest.raises(UserError) as err:
        load_config(argv, environ=environ)
    for text in must_name:
        assert text in str(err.value)


def test_architecture_list_matches_smp_registry():
    smp = pytest.importorskip("segmentation_models_pytorch")
    assert {a.lower() for a in SMP_ARCHITECTURES} == set(smp.MODEL_ARCHITECTURES_MAPPING)


def test_save_round_trips(tmp_path):
    cfg = load_config(["--work-dir", str(tmp_path), "--epochs", "3"], environ={})
    path = cfg.save()
    assert path == tmp_path / "config.json"
    assert Config(**json.loads(path.read_text())) == cfg


def test_selected_folds():
    assert load_config([], environ={}).selected_folds() == [0, 1, 2, 3, 4]
    assert load_config(["--fold-ids", "3,1"], environ={}).selected_folds() == [1, 3]


def test_cli_bad_env_is_one_clear_line_not_a_traceback():
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "train.py"], cwd=root, env={"EPOCHS": "abc"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "EPOCHS='abc'" in proc.stderr and "Traceback" not in proc.stderr


def test_help_lists_every_setting_with_env_var_and_default():
    from config import build_parser

    text = " ".join(build_parser().format_help().split())
    for field in FIELDS:
        assert f"env {field.env}, default {field.default!r})" in text, field.name  # after the choices, if any
        assert field.all_flags[0] in text


# ----------------------------------------------------------------------------- config_hash


@pytest.mark.parametrize("argv, pinned", [
    ([], "95422cd164a46f99"),  # the default segmenter (BATCH_SHAPE=rect since 2026-12-01: square runs retrain)
    (["--task", "classify"], "c55ff414f6f1e39c"),  # the default gate
    (["--task", "classify", "--gate-pool", "avg"], "8c539c2d47b76d83"),
    (["--train-patch", "256x320", "--patches-per-image", "2"], "7cc1f1506d933a9d"),
    (["--classes", "3", "--class-weights", "auto"], "dadbf431a331fc39"),
])
def test_config_hash_is_pinned(argv, pinned):
    """The values the hand-kept key lists gave: a new hash would retrain every existing run instead of resuming it."""
    assert config_hash(load_config(argv, environ={})) == pinned


@pytest.mark.parametrize("argv", [
    ["--work-dir", "elsewhere", "--workers", "0", "--device", "cpu", "--threads", "1", "--export", "false"],
    ["--fold-ids", "0", "--name", "x", "--min-area", "3", "--resume", "false", "--tracker", "tensorboard"],
    ["--save-checkpoints", "true", "--eval-step", "5", "--max-pixels", "10", "--pin-memory", "false"],
    ["--gate-recall", "0.9", "--gate-pos-weight", "auto", "--gate-input-size", "64", "--gate-pool", "max"],
    ["--train-patch", "", "--patches-per-image", "1"],  # added later, at the value older runs had
])
def test_settings_that_do_not_train_leave_a_segmenters_hash_alone(argv):
    assert config_hash(load_config(argv, environ={})) == config_hash(load_config([], environ={}))


@pytest.mark.parametrize("argv", [["--lr", "1e-3"], ["--encoder", "resnet18"], ["--seed", "1"], ["--epochs", "3"],
                                  ["--train-patch", "64x64"], ["--classes", "2"], ["--input-size", "256"]])
def test_settings_that_train_change_the_hash(argv):
    assert config_hash(load_config(argv, environ={})) != config_hash(load_config([], environ={}))


def test_every_field_declares_whether_it_trains():
    not_training = {f.name for f in FIELDS if not f.trains}
    assert {"work_dir", "workers", "device", "export", "resume", "max_image_pixels", "gate_recall"} <= not_training
    assert {f.name for f in FIELDS if f.only_task == "classify"} == {
        "task", "gate_input_size", "gate_recall", "gate_pos_weight", "gate_pool"}


def test_use_amp_takes_auto_or_a_boolean_and_auto_hashes_as_the_old_false():
    """USE_AMP=auto lets the machine pick the precision: a run resumes in either, as runs from before 'auto'."""
    assert load_config([], environ={}).use_amp == "auto"
    assert load_config(["--use-amp"], environ={}).use_amp is True  # a bare switch, as before
    assert load_config([], environ={"USE_AMP": "off"}).use_amp is False
    with pytest.raises(UserError, match="not a valid AMP setting"):
        load_config(["--use-amp", "maybe"], environ={})
    auto, false, true = (config_hash(load_config(["--use-amp", v], environ={})) for v in ("auto", "false", "true"))
    assert auto == false != true


def test_the_log_gets_one_line_and_config_json_every_setting(tmp_path):
    cfg = load_config(["--epochs", "7", "--lr", "0.01", "--work-dir", str(tmp_path)], environ={"ENCODER": "resnet18"})
    line = describe_config(cfg, cfg.save())
    assert "\n" not in line
    assert line.startswith("config: UnetPlusPlus/resnet18 at 512 px, 5 folds, 7 epochs, batch ")
    assert f"every setting: {tmp_path / 'config.json'}" in line
    assert line.endswith(f"set: WORK_DIR={tmp_path}, ENCODER=resnet18, EPOCHS=7, LR=0.01")
    assert json.loads((tmp_path / "config.json").read_text()) == cfg.to_dict()
    assert set(cfg.to_dict()) == {f.name for f in FIELDS}


def test_a_classes_file_with_a_bom_names_its_classes_without_it(tmp_path):
    (tmp_path / "classes.txt").write_bytes("background\nrider\nhorse\n".encode("utf-8-sig"))
    cfg = load_config(["--classes", "3", "--classes-file", str(tmp_path / "classes.txt")], environ={})
    assert cfg.names() == ["background", "rider", "horse"]


@pytest.mark.parametrize("argv, words", [
    (["--classes", "3", "--class-names", "background,horse,horse"], r"repeat or leave blank \['horse'\]"),
    (["--classes", "3", "--class-names", "background,,horse"], r"repeat or leave blank \[''\]"),
    (["--class-names", "background,rider,horse"], r"3 names .* but CLASSES=1 \(binary\): set --classes 3"),
    (["--classes", "3", "--ignore-index", "2"], r"IGNORE_INDEX=2 is a class id with CLASSES=3"),
    (["--work-dir", "README.md"], r"WORK_DIR='README.md' is a file, not a folder"),
])
def test_class_names_void_label_and_work_dir_are_checked_in_one_line(argv, words, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    with pytest.raises(UserError, match=words):
        load_config(argv, environ={})


def test_ignore_index_takes_none_and_its_default_keeps_old_runs_hash():
    assert load_config(["--ignore-index", "none"], environ={}).ignore_index is None
    assert config_hash(load_config([], environ={})) == config_hash(load_config(["--ignore-index", "255"], environ={}))
    assert config_hash(load_config([], environ={})) != config_hash(load_config(["--ignore-index", "none"], environ={}))
