"""Issue 18, training side: the inputs users bring (Label Studio multi-class, Severstal RLE CSV), and the
command line (bare booleans, help without torch, errors that name the flag)."""

import json
import logging

import cv2
import numpy as np
import pytest

import train
from config import load_config
from conftest import TINY
from runtime.labelstudio import encode_brush
from utils import UserError

H, W = 40, 48


def _argv(work, **settings) -> list[str]:
    merged = {**TINY, "work_dir": str(work), **{k: str(v) for k, v in settings.items()}}
    return [arg for k, v in merged.items() for arg in ("--" + k.replace("_", "-"), v)]


def _cached_masks(work) -> dict[str, np.ndarray]:
    return {p.stem: cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted((work / "masks").glob("*.png"))}


# ----------------------------------------------------------------------------- Label Studio


def _brush(label: str, region: np.ndarray, index: int) -> dict:
    return {"id": f"r{index}", "type": "brushlabels", "from_name": "tag", "to_name": "image",
            "original_width": W, "original_height": H,
            "value": {"format": "rle", "rle": encode_brush(region), "brushlabels": [label]}}


def write_horse_export(folder, labels=("horse", "rider")) -> tuple:
    """Four images; each has a left box labelled labels[0] and a right box labelled labels[1]."""
    (folder / "images").mkdir(parents=True)
    tasks = []
    for i in range(4):
        cv2.imwrite(str(folder / "images" / f"im{i}.png"), np.full((H, W, 3), 60 + 30 * i, np.uint8))
        left, right = np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint8)
        left[5:30, 2:20], right[10:35, 28:46] = 1, 1
        result = [_brush(labels[0], left, 0), _brush(labels[1], right, 1)]
        tasks.append({"id": i, "data": {"image": f"/data/upload/1/abcdef0{i}-im{i}.png"},
                      "annotations": [{"id": i, "result": result}]})
    export = folder / "export.json"
    export.write_text(json.dumps(tasks))
    return folder / "images", export


def test_label_studio_labels_train_into_their_class_ids(tmp_path):
    images, export = write_horse_export(tmp_path / "data")
    cfg = load_config(_argv(tmp_path / "work", raw_img_dir=images, raw_json_path=export, classes=3,
                            class_names="background,horse,rider", input_size=64), environ={})
    train.prepare(cfg)
    masks = _cached_masks(tmp_path / "work")
    assert len(masks) == 4
    for mask in masks.values():  # cached at long side 64: 48 -> 64 wide, 40 -> 53 high
        assert set(np.unique(mask)) == {0, 1, 2}
        assert mask[20, 10] == 1 and mask[30, 50] == 2


def test_label_studio_binary_run_maps_every_label_to_one(tmp_path):
    images, export = write_horse_export(tmp_path / "data")
    cfg = load_config(_argv(tmp_path / "work", raw_img_dir=images, raw_json_path=export), environ={})
    train.prepare(cfg)
    for mask in _cached_masks(tmp_path / "work").values():
        assert set(np.unique(mask)) == {0, 1} and mask[30, 50] == 1


def test_label_studio_unknown_label_lists_every_label_and_the_names(tmp_path):
    images, export = write_horse_export(tmp_path / "data", labels=("horse", "jockey"))
    cfg = load_config(_argv(tmp_path / "work", raw_img_dir=images, raw_json_path=export, classes=3,
                            class_names="background,horse,rider"), environ={})
    with pytest.raises(UserError) as err:
        train.prepare(cfg)
    message = str(err.value)
    assert "\n" not in message
    assert "['horse', 'jockey']" in message and "['background', 'horse', 'rider']" in message
    assert "['jockey']" in message


def test_configured_class_without_pixels_is_named(tmp_path, caplog):
    images, export = write_horse_export(tmp_path / "data")
    cfg = load_config(_argv(tmp_path / "work", raw_img_dir=images, raw_json_path=export, classes=4,
                            class_names="background,horse,rider,saddle"), environ={})
    with caplog.at_level(logging.WARNING):
        train.prepare(cfg)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'saddle'" in w and "no pixels" in w for w in warnings)
    assert not any("'rider'" in w for w in warnings)


# ----------------------------------------------------------------------------- RLE CSV


def write_rle_data(folder, rows: str) -> tuple:
    (folder / "images").mkdir(parents=True)
    for name in ("a", "b", "c", "d"):
        cv2.imwrite(str(folder / "images" / f"{name}.jpg"), np.full((8, 6, 3), 100, np.uint8))
    csv = folder / "train.csv"
    csv.write_text("ImageId,ClassId,EncodedPixels\n" + rows)
    return folder / "images", csv


# Column-major, 1-indexed, on 8x6 images: "1 3" = rows 0-2 of column 0; "17 2" = rows 0-1 of column 2.
RLE_ROWS = "a.jpg,1,1 3\na.jpg,2,17 2\nb.jpg,2,9 8\nc.jpg,1,\n"


def test_rle_csv_prepares_into_class_id_masks(tmp_path):
    images, csv = write_rle_data(tmp_path / "data", RLE_ROWS)
    cfg = load_config(_argv(tmp_path / "work", raw_img_dir=images, raw_rle_csv=csv, classes=3, input_size=32,
                            folds=2), environ={})
    entries, _, _ = train.prepare(cfg)
    assert sorted(e.key for e in entries) == ["a", "b", "c", "d"]
    masks = _cached_masks(tmp_path / "work")  # 8x6 -> 32x24: each source pixel is a 4x4 block
    small = {k: m[::4, ::4] for k, m in masks.items()}
    expected_a = np.zeros((8, 6), np.uint8)
    expected_a[0:3, 0], expected_a[0:2, 2] = 1, 2
    expected_b = np.zeros((8, 6), np.uint8)
    expected_b[:, 1] = 2
    assert np.array_equal(small["a"], expected_a) and np.array_equal(small["b"], expected_b)
    assert not small["c"].any() and not small["d"].any()  # an empty row and no row: clean


def test_rle_csv_trains_and_scores_out_of_fold(tmp_path):
    """Scoring out of fold once read RLE masks without the image's shape: every RLE run crashed after its fold."""
    images, csv = write_rle_data(tmp_path / "data", RLE_ROWS)
    cfg = load_config(_argv(tmp_path / "work", raw_img_dir=images, raw_rle_csv=csv, classes=3, input_size=32,
                            export="false"), environ={})
    summary = train.run(cfg)
    assert summary["oof_images"] == 4 and 0 <= summary["oof_dice"] <= 1


def test_rle_csv_binary_run_maps_every_class_to_one(tmp_path, caplog):
    images, csv = write_rle_data(tmp_path / "data", RLE_ROWS)
    cfg = load_config(_argv(tmp_path / "work", raw_img_dir=images, raw_rle_csv=csv, input_size=32), environ={})
    with caplog.at_level(logging.INFO):
        train.prepare(cfg)
    small = _cached_masks(tmp_path / "work")["a"][::4, ::4]
    assert small[0, 0] == 1 and small[0, 2] == 1 and set(np.unique(small)) == {0, 1}
    assert any("[1, 2]" in r.getMessage() and "CLASSES=1" in r.getMessage() for r in caplog.records)


def test_rle_csv_class_id_beyond_classes_is_one_line(tmp_path):
    images, csv = write_rle_data(tmp_path / "data", RLE_ROWS + "d.jpg,4,1 1\n")
    cfg = load_config(_argv(tmp_path / "work", raw_img_dir=images, raw_rle_csv=csv, classes=3), environ={})
    with pytest.raises(UserError, match=r"ClassId 4 but CLASSES=3.*--classes 5") as err:
        train.prepare(cfg)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- command line

BOOLS = [f.name for f in __import__("config").FIELDS if f.parse is __import__("config").parse_bool]


@pytest.mark.parametrize("name", BOOLS)
@pytest.mark.parametrize("value, expected", [(None, True), ("false", False), ("true", True), ("0", False)])
def test_boolean_flags_work_bare_and_with_a_value(name, value, expected):
    flag = "--" + name.replace("_", "-")
    argv = [flag] + ([] if value is None else [value]) + ["--epochs", "3"]  # a bare switch before another flag
    cfg = load_config(argv, environ={})
    assert getattr(cfg, name) is expected and cfg.epochs == 3


# ----------------------------------------------------------------------------- W&B


@pytest.mark.parametrize("environ, mode", [({}, "offline"), ({"WANDB_MODE": ""}, "offline"),
                                           ({"WANDB_MODE": "online"}, "online"),
                                           ({"WANDB_MODE": "disabled"}, "disabled")])
def test_wandb_honours_wandb_mode(tmp_path, monkeypatch, environ, mode):
    import types

    calls = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: calls.append(kwargs) or types.SimpleNamespace(finish=lambda: None)
    monkeypatch.setitem(__import__("sys").modules, "wandb", fake)
    cfg = load_config(["--tracker", "wandb"], environ={})
    train.make_tracker(cfg, tmp_path, environ=environ).close()
    assert [c["mode"] for c in calls] == [mode]


# ----------------------------------------------------------------------------- masks


def write_jpeg_01_masks(folder, count=6) -> tuple:
    """0/1 masks saved as JPEG: the noise gives values {0, 1, 2}; the old rule (> 127 once max > 1) emptied them."""
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    truth, rng = {}, np.random.default_rng(0)
    for i in range(count):
        mask = np.zeros((48, 64), np.uint8)
        if i % 3:
            cv2.circle(mask, (20 + 3 * i, 24), 12, 1, -1)
        speckled = mask * (1 + (rng.random(mask.shape) < 0.2))  # the 1s of a scanned or resampled 0/1 mask
        cv2.imwrite(str(folder / "images" / f"m{i}.png"), np.full((48, 64, 3), 128, np.uint8))
        cv2.imwrite(str(folder / "masks" / f"m{i}.jpg"), speckled.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])
        truth[f"m{i}"] = mask
    return folder, truth


def test_jpeg_zero_one_masks_keep_their_foreground_and_are_warned(tmp_path, caplog):
    data, truth = write_jpeg_01_masks(tmp_path / "data")
    values = set(np.unique(cv2.imread(str(data / "masks" / "m1.jpg"), cv2.IMREAD_GRAYSCALE)))
    assert values - {0, 1}, "the JPEG should carry noise for this test to mean anything"
    cfg = load_config(_argv(tmp_path / "work", raw_img_dir=data / "images", raw_mask_dir=data / "masks",
                            input_size=64), environ={})
    with caplog.at_level(logging.WARNING):
        entries, _, _ = train.prepare(cfg)
    jpeg_warnings = [r for r in caplog.records if "are JPEG" in r.getMessage()]
    assert len(jpeg_warnings) == 1 and "6 of 6 masks" in jpeg_warnings[0].getMessage()
    masks = _cached_masks(tmp_path / "work")
    for key, mask in truth.items():
        agreement = (masks[key] == mask).mean()
        assert agreement > 0.98, (key, agreement)
    assert sum(not e.empty for e in entries) == 4


@pytest.mark.parametrize("values, expected", [
    ([0, 255], 127), ([0, 1], 0.5), ([0, 1, 1, 1, 2], 0.5), ([0, 0], 0), ([0, 100, 100, 3], 50.0),
])
def test_binary_threshold_follows_the_masks_own_scale(values, expected):
    from utils import binary_threshold

    assert binary_threshold(np.array(values, np.uint8)) == expected


def test_every_mask_empty_stops_with_one_line(tmp_path):
    data, _ = write_jpeg_01_masks(tmp_path / "data")
    for path in (data / "masks").glob("*.jpg"):
        cv2.imwrite(str(path.with_suffix(".png")), np.zeros((48, 64), np.uint8))
        path.unlink()
    cfg = load_config(_argv(tmp_path / "work", raw_img_dir=data / "images", raw_mask_dir=data / "masks"), environ={})
    with pytest.raises(UserError, match="all 6 masks are empty") as err:
        train.prepare(cfg)
    assert "\n" not in str(err.value)


def test_auto_class_weights_call_an_absent_class_absent(caplog):
    from dataset import CacheEntry
    from training.splits import resolve_class_weights

    cfg = load_config(["--classes", "3", "--class-names", "background,horse,rider", "--class-weights", "auto"],
                      environ={})
    entries = [CacheEntry(f"k{i}", None, None, False, "", (900, 100, 0)) for i in range(4)]
    with caplog.at_level(logging.INFO):
        resolve_class_weights(cfg, entries, [0, 1, 2, 3])
    line = next(r.getMessage() for r in caplog.records if "class weights" in r.getMessage())
    assert "'rider': 'absent'" in line and "'horse': " in line and "'horse': 'absent'" not in line


# ----------------------------------------------------------------------------- pairing


def test_missing_masks_are_reported_at_once_with_the_mask_naming_rule(tmp_path):
    from training.sources.folders import pair_by_stem

    data, _ = write_jpeg_01_masks(tmp_path / "data")
    for i in (1, 3, 4, 5):
        (data / "masks" / f"m{i}.jpg").unlink()
    cv2.imwrite(str(data / "masks" / "other_mask.png"), np.zeros((4, 4), np.uint8))
    with pytest.raises(UserError) as err:
        pair_by_stem(data / "images", data / "masks")
    message = str(err.value)
    assert "\n" not in message and "4 of 6 images have no mask" in message
    assert "m1.png, m3.png, m4.png" in message and "<stem>_mask" in message and "other_mask.png" in message


# ----------------------------------------------------------------------------- help and errors without torch

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Runs train.py as `python train.py ARGS` would, with every torch import failing: what answers here never waits
# for torch.
NO_TORCH = """
import builtins, runpy, sys
real = builtins.__import__
def guard(name, *args, **kwargs):
    if name == "torch" or name.startswith("torch."):
        raise ImportError("torch is blocked in this test")
    return real(name, *args, **kwargs)
builtins.__import__ = guard
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


def _train_without_torch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_help_needs_no_torch_and_is_grouped_with_choices():
    done = _train_without_torch("--help")
    assert done.returncode == 0, done.stderr
    for title in ("data:", "model:", "optimisation:", "cross-validation:", "smart crop:", "gate (TASK=classify):",
                  "run:"):
        assert title in done.stdout
    assert "Unet, UnetPlusPlus" in " ".join(done.stdout.split())


@pytest.mark.parametrize("args, flag", [(["--model", "Unett"], "--model"), (["--arch=Unett"], "--arch"),
                                        (["--use-amp", "maybe"], "--use-amp"), (["--epochs", "x"], "--epochs")])
def test_a_bad_value_names_the_flag_typed_in_one_line_without_torch(args, flag):
    done = _train_without_torch(*args)
    message = done.stderr.strip()
    assert done.returncode != 0 and "Traceback" not in message and len(message.splitlines()) == 1, message
    assert message.count(flag + "=") == 1 and "parse_" not in message and "_value" not in message
    if flag == "--model":
        assert "--arch" not in message


def test_architecture_names_are_case_insensitive():
    assert load_config(["--model", "unet"], environ={}).arch == "Unet"
    assert load_config([], environ={"ARCH": "deeplabv3plus"}).arch == "DeepLabV3Plus"


def test_every_field_is_in_exactly_one_help_group():
    from config import FIELDS, HELP_GROUPS

    grouped = [name for _, names in HELP_GROUPS for name in names]
    assert sorted(grouped) == sorted(f.name for f in FIELDS)


def test_a_path_error_comes_before_the_config_dump(tmp_path, caplog):
    cfg = load_config(_argv(tmp_path / "work", raw_img_dir=tmp_path / "nowhere", raw_mask_dir=tmp_path), environ={})
    with caplog.at_level(logging.INFO), pytest.raises(UserError, match="RAW_IMG_DIR not found"):
        train.prepare(cfg)
    assert not any(r.getMessage().startswith("config:") for r in caplog.records)
    assert not (tmp_path / "work" / "config.json").exists()
