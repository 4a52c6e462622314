"""Reliability: the hostile-input corpus (tests/hostile.py) through every entry path, untrusted model
files, the output lock, and a 1000-file mixed folder. Each case is listed in docs/reliability.md."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import inference
from dataset import build_cache
from training.sources import Source
from hostile import (
    GOOD, bomb_png, encode, exif_jpeg, hostile_files, rect, write_hostile_folder, write_hostile_zip, write_mixed_folder,
)
from runtime.pipeline import LOCK_NAME, output_lock
from test_inference import ROOT, TEST_META, build_model, read_rows
from utils import UserError, read_image, read_mask

pytestmark = pytest.mark.filterwarnings("ignore:Duplicate name")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("m") / "tiny.onnx", TEST_META)


@pytest.fixture(scope="module")
def segmenter(model_path):
    return inference.Segmenter(model_path, device="cpu")


def check_rows(rows: list[dict], cases: dict, out: Path) -> None:
    """Every case has exactly one row with its status and reason; every good file has its mask."""
    by_name = {row["file"]: row for row in rows}
    assert sorted(by_name) == sorted(cases), set(by_name) ^ set(cases)
    for name, case in cases.items():
        row = by_name[name]
        if case.status == GOOD:
            assert row["status"] in ("ok", "no_detection") and row["error"] == "", (name, row)
            mask = cv2.imread(str(out / "masks" / Path(name).with_suffix(".png")), cv2.IMREAD_UNCHANGED)
            assert mask is not None and mask.shape == case.hw, name
            assert (int(row["height"]), int(row["width"])) == case.hw, name
        else:
            assert row["status"] == "error" and case.reason in row["error"], (name, row["error"])


# ----------------------------------------------------------------------------- hostile corpus


@pytest.mark.parametrize("batch_size", [1, 3])
def test_hostile_folder_gives_a_specific_row_per_file(segmenter, tmp_path, batch_size):
    cases = write_hostile_folder(tmp_path / "in", outside=tmp_path / "private")
    result = inference.run(segmenter, tmp_path / "in", tmp_path / "out", batch_size=batch_size)
    check_rows(read_rows(tmp_path / "out" / "summary.csv"), cases, tmp_path / "out")
    assert result["errors"] == sum(c.status == "error" for c in cases.values())
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_hostile_zip_gives_a_specific_row_per_entry(segmenter, tmp_path):
    cases = write_hostile_zip(tmp_path / "in.zip")
    out = tmp_path / "out"
    inference.run(segmenter, tmp_path / "in.zip", out)
    rows = read_rows(out / "summary.csv")
    dups = [row for row in rows if row["file"] == "dup.png"]
    assert [row["status"] for row in dups] == ["no_detection", "error"] and "duplicate ZIP entry" in dups[1]["error"]
    assert cv2.imread(str(out / "masks" / "dup.png")).shape[:2] == (12, 12)  # the first one, not overwritten
    # Case.PNG and case.png: both processed, outputs that stay distinct on a case-insensitive disk
    assert cv2.imread(str(out / "masks" / "Case.png")).shape[:2] == (18, 18)
    assert cv2.imread(str(out / "masks" / "case.png.png")).shape[:2] == (20, 20)
    assert len({p.name.casefold() for p in (out / "masks").iterdir()}) == len(list((out / "masks").iterdir()))
    del cases["case.png"]
    check_rows([row for row in rows if row["file"] not in ("dup.png", "case.png")], cases, out)
    assert not (tmp_path / "evil.png").exists() and not (tmp_path.parent / "evil.png").exists()
    assert not Path("/abs/evil.png").exists() and not list(out.glob(".unzipped-*"))


def test_follow_symlinks_reads_a_link_outside_the_folder(segmenter, tmp_path):
    write_hostile_folder(tmp_path / "in", outside=tmp_path / "private")
    inference.run(segmenter, tmp_path / "in", tmp_path / "out", follow_symlinks=True)
    rows = {row["file"]: row for row in read_rows(tmp_path / "out" / "summary.csv")}
    assert rows["link_out.png"]["status"] in ("ok", "no_detection")


def test_bomb_is_refused_from_the_header_without_decoding(tmp_path, monkeypatch):
    (tmp_path / "bomb.png").write_bytes(bomb_png())
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded a bomb"))
    with pytest.raises(UserError, match=r"bomb\.png.*50000x50000 = 2,500,000,000 pixels is over the limit"):
        read_image(tmp_path / "bomb.png")


@pytest.mark.parametrize("ext, writer", [(".jpg", lambda img: encode(img, ".jpg")), (".png", encode),
                                         (".bmp", lambda img: encode(img, ".bmp")),
                                         (".tif", lambda img: encode(img, ".tif"))])
def test_pixel_limit_reads_the_header_of_each_format(tmp_path, ext, writer):
    path = tmp_path / f"a{ext}"
    path.write_bytes(writer(rect(30, 40)))
    assert read_image(path, max_pixels=1200).shape == (30, 40, 3)
    with pytest.raises(UserError, match="40x30 = 1,200 pixels is over the limit of 1,199"):
        read_image(path, max_pixels=1199)


@pytest.mark.parametrize("flag, env, refused", [(None, None, False), ("100", None, True), (None, "100", True),
                                                ("100000", "100", False)])
def test_cli_max_pixels_flag_beats_env_beats_default(model_path, tmp_path, flag, env, refused):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(encode(rect(20, 20)))
    args = ["--model", str(model_path), "--source", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    environ = {k: v for k, v in os.environ.items() if k != "MAX_IMAGE_PIXELS"}
    if env:
        environ["MAX_IMAGE_PIXELS"] = env
    done = subprocess.run([sys.executable, str(ROOT / "inference.py"), *args, *(["--max-pixels", flag] if flag else [])],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, env=environ)
    assert done.returncode == 0, done.stderr
    row = read_rows(tmp_path / "out" / "summary.csv")[0]
    assert (row["status"] == "error") == refused and ("over the limit" in row["error"]) == refused


# ----------------------------------------------------------------------------- training data


@pytest.mark.parametrize("name", ["truncated.jpg", "zero.png", "text.png", "page.jpg", "bomb.png"])
def test_hostile_training_image_stops_the_cache_naming_the_file(tmp_path, name):
    data, case = hostile_files()[name]
    (tmp_path / name).write_bytes(data)
    (tmp_path / "ok.png").write_bytes(encode(rect(20, 20)))
    mask = np.zeros((20, 20), np.uint8)
    sources = [Source("ok", tmp_path / "ok.png", mask=mask), Source("bad", tmp_path / name, mask=mask)]
    with pytest.raises(UserError, match=rf"cannot decode image: .*{re.escape(name)} .*{re.escape(case.reason)}"):
        build_cache(sources, tmp_path / "work", 32)


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotated_photo_and_its_mask_line_up_in_the_cache(tmp_path, orientation):
    stored = rect(20, 40)
    stored[:, :5] = (0, 255, 0)  # a green band on the left of the stored image
    (tmp_path / "photo.jpg").write_bytes(exif_jpeg(stored, orientation))
    shown = read_image(tmp_path / "photo.jpg")  # as a browser / Label Studio shows it
    assert shown.shape == (40, 20, 3)
    band_row = 0 if orientation == 6 else -1  # the left edge turns to the top (6) or bottom (8)
    assert shown[band_row, :, 1].mean() > 200 and shown[band_row, :, 0].mean() < 60
    mask = np.zeros((40, 20), np.uint8)
    mask[:10] = 255  # drawn on the displayed photo
    cv2.imwrite(str(tmp_path / "photo_mask.png"), mask)
    assert read_mask(tmp_path / "photo_mask.png").shape == (40, 20)
    entries = build_cache([Source("photo", tmp_path / "photo.jpg", tmp_path / "photo_mask.png")],
                          tmp_path / "work", 40)
    assert cv2.imread(str(entries[0].image)).shape[:2] == cv2.imread(str(entries[0].mask)).shape[:2] == (40, 20)


# ----------------------------------------------------------------------------- untrusted ONNX


@pytest.mark.parametrize("field, value", [
    ("num_classes", "3"), ("num_classes", 0), ("input_size", -64), ("input_size", 1.5), ("std", [0.2, 0.2, 0]),
    ("mean", [0.5, "x", 0.5]), ("threshold", 1.0), ("min_area", -1), ("output", "softmax"), ("resize", "stretch"),
    ("class_names", "fg"), ("tta", "rot90"), ("format_version", 99), ("stride", True),
])
def test_malformed_metadata_field_is_named(tmp_path, field, value):
    path = build_model(tmp_path / "bad.onnx", {**TEST_META, field: value})
    with pytest.raises(UserError, match=rf"'{field}' = .* must be .*Re-export"):
        inference.Segmenter(path, device="cpu")


def test_metadata_that_is_not_json_is_an_error(tmp_path):
    path = build_model(tmp_path / "m.onnx", TEST_META)
    model = onnx.load(str(path))
    helper.set_model_props(model, {"segmentation": "{'input_size': 64}"})  # a Python repr, not JSON
    onnx.save(model, str(path))
    with pytest.raises(UserError, match="not valid JSON"):
        inference.Segmenter(path, device="cpu")


def build_shaped(path: Path, in_shape: list, channels_out: int = 1) -> Path:
    """Identity or 1x1 Conv model with the given input shape."""
    if len(in_shape) == 4:
        weight = np.ones((channels_out, in_shape[1], 1, 1), np.float32)
        nodes, inits = [helper.make_node("Conv", ["image", "w"], ["probs"])], [numpy_helper.from_array(weight, "w")]
        out_shape = ["N", channels_out, "H", "W"]
    else:
        nodes, inits, out_shape = [helper.make_node("Identity", ["image"], ["probs"])], [], in_shape
    graph = helper.make_graph(nodes, "shaped", [helper.make_tensor_value_info("image", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, out_shape)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"segmentation": json.dumps(TEST_META)})
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("shape, message", [
    (["N", 3, "H"], r"input 'image' has shape \['N', 3, 'H'\]; segpipe feeds \(N, 3, H, W\)"),
    (["N", 1, "H", "W"], r"input 'image' has shape \['N', 1, 'H', 'W'\]: 1 channels; segpipe feeds RGB \(N, 3, H, W\)"),
    (["N", 4, 64, 64], r"input 'image' has shape \['N', 4, 64, 64\]: 4 channels; segpipe feeds RGB \(N, 3, H, W\)"),
])
def test_wrong_input_rank_or_channels_is_rejected_at_load(tmp_path, shape, message):
    with pytest.raises(UserError, match=message):
        inference.Segmenter(build_shaped(tmp_path / "m.onnx", shape), device="cpu")


def test_output_channels_must_match_num_classes(tmp_path):
    with pytest.raises(UserError, match=r"\(2 channels\) but its metadata says num_classes=1"):
        inference.Segmenter(build_shaped(tmp_path / "m.onnx", ["N", 3, "H", "W"], channels_out=2), device="cpu")


# ----------------------------------------------------------------------------- output lock


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_run_on_a_locked_output_is_refused(segmenter, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(encode(rect(20, 20)))
    with output_lock(tmp_path / "out") as lock:
        assert lock.read_text().split("\n")[:2] == [str(os.getpid()), socket.gethostname()]
        with pytest.raises(UserError, match=rf"in use by another run \(pid {os.getpid()} .*--output"):
            inference.run(segmenter, tmp_path / "in", tmp_path / "out")
        assert lock.is_file()  # the refused run did not take the live lock away
    assert not lock.exists() and not (tmp_path / "out" / "summary.csv").exists()


def test_cli_refuses_a_live_lock_with_exit_2(model_path, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(encode(rect(20, 20)))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK_NAME).write_text(f"{os.getpid()}\n{socket.gethostname()}\n")
    args = ["--model", str(model_path), "--source", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    done = subprocess.run([sys.executable, str(ROOT / "inference.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 2 and "is in use by another run" in done.stderr and "Traceback" not in done.stderr


def test_stale_lock_of_a_dead_process_is_taken_over(segmenter, tmp_path, caplog):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(encode(rect(20, 20)))
    (tmp_path / "out").mkdir()
    pid = dead_pid()
    (tmp_path / "out" / LOCK_NAME).write_text(f"{pid}\n{socket.gethostname()}\n")
    with caplog.at_level(logging.WARNING, logger="seg"):
        result = inference.run(segmenter, tmp_path / "in", tmp_path / "out")
    assert result["images"] == 1 and f"left by pid {pid}" in caplog.text
    assert not (tmp_path / "out" / LOCK_NAME).exists()


# ----------------------------------------------------------------------------- a big mixed folder


def check_mixed_run(segmenter, tmp_path: Path, count: int) -> None:
    bad = write_mixed_folder(tmp_path / "in", count)
    result = inference.run(segmenter, tmp_path / "in", tmp_path / "out", batch_size=8)
    rows = read_rows(tmp_path / "out" / "summary.csv")
    assert len(rows) == count == result["images"] and result["errors"] == len(bad) == count // 10
    masks = {p.name for p in (tmp_path / "out" / "masks").iterdir()}
    for row in rows:
        if row["file"] in bad:
            assert row["status"] == "error" and row["error"]
        else:
            assert row["status"] == "ok" and Path(row["file"]).with_suffix(".png").name in masks, row


def test_mixed_folder_of_200_files(segmenter, tmp_path):
    check_mixed_run(segmenter, tmp_path, 200)


def test_mixed_folder_of_1000_files(segmenter, tmp_path):
    check_mixed_run(segmenter, tmp_path, 1000)


RSS_SCRIPT = """  # torch-free: the numbers are the runtime's own
import resource, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
import inference
from hostile import write_mixed_folder
from pathlib import Path
tmp = Path(sys.argv[2])
write_mixed_folder(tmp / "in", int(sys.argv[3]))
inference.run(inference.Segmenter(sys.argv[4], device="cpu"), tmp / "in", tmp / "out", batch_size=8)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_peak_memory_is_flat_from_100_to_1000_files(model_path, tmp_path):
    peaks = {}
    for count in (100, 1000):
        done = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(ROOT), str(tmp_path / str(count)), str(count),
                               str(model_path)], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        peaks[count] = int(done.stdout.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux
    print(f"peak RSS: 100 files {peaks[100]:.0f} MiB, 1000 files {peaks[1000]:.0f} MiB")
    assert peaks[1000] < peaks[100] * 1.25 + 30, peaks  # 10x the files: no more than a quarter more memory


@pytest.mark.parametrize("how", ["flag", "env"])
def test_training_pixel_limit_is_a_setting(tmp_path, monkeypatch, how):
    """MAX_IMAGE_PIXELS / --max-pixels bound the training side's reads as they do inference's (80x100 images)."""
    import train
    from conftest import tiny_argv, write_blobs
    from config import load_config

    import utils

    monkeypatch.setattr(utils, "MAX_IMAGE_PIXELS", utils.MAX_IMAGE_PIXELS)  # prepare() sets it process-wide
    data = write_blobs(tmp_path / "data", 4)
    argv = tiny_argv(data, tmp_path / "work", **({"max_pixels": 7999} if how == "flag" else {}))
    cfg = load_config(argv, environ={"MAX_IMAGE_PIXELS": "7999"} if how == "env" else {})
    assert cfg.max_image_pixels == 7999
    with pytest.raises(UserError, match=r"img_000\.jpg .*100x80 = 8,000 pixels is over the limit of 7,999"):
        train.prepare(cfg)
    cfg = load_config(tiny_argv(data, tmp_path / "work", max_pixels=8000), environ={})
    assert len(train.prepare(cfg)[0]) == 4


KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from dataset import build_cache
from training.sources.folders import pair_by_stem
calls, real_replace = 0, os.replace
def replace(src, dst):  # every atomic write ends in os.replace: die, SIGKILL, right before call number KILL_AT
    global calls
    calls += 1
    if calls == int(sys.argv[4]):
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
os.replace = replace
build_cache(pair_by_stem(sys.argv[2] + "/images", sys.argv[2] + "/masks"), sys.argv[3], 32)
"""


def test_kill_9_during_the_cache_stage_resumes_without_reading_a_half_written_entry(tmp_path):
    """SIGKILL between an entry's image and mask writes, after the manifest checkpoint at 200 entries:
    the rerun reuses exactly the checkpointed entries, rewrites the rest, and ends byte-identical to a clean build."""
    from conftest import write_blobs
    from dataset import build_cache
    from training.sources.folders import pair_by_stem

    data = write_blobs(tmp_path / "data", 300, size=(40, 48))
    work, clean = tmp_path / "work", tmp_path / "clean"
    # os.replace calls: 2 per entry (image, mask) + 1 manifest checkpoint after entry 200; 463 = mask of entry 231
    done = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(ROOT), str(data), str(work), "463"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr
    assert len(json.loads((work / "cache_manifest.json").read_text())["entries"]) == 200
    half = list((work / "masks").glob(".img_230.png.*.tmp"))  # the mask that never got its rename
    assert len(half) == 1 and not (work / "masks" / "img_230.png").exists()
    assert (work / "images" / "img_230.png").exists()  # its image did: the entry must be redone, not trusted
    before = {p.name: p.stat().st_mtime_ns for p in (work / "images").glob("img_*.png")}

    entries = build_cache(pair_by_stem(data / "images", data / "masks"), work, 32)
    reference = build_cache(pair_by_stem(data / "images", data / "masks"), clean, 32)
    assert [e.key for e in entries] == [e.key for e in reference] and len(entries) == 300
    reused = [n for n, t in before.items() if (work / "images" / n).stat().st_mtime_ns == t]
    assert sorted(reused) == [f"img_{i:03d}.png" for i in range(200)]  # checkpointed: kept, not redone
    for got, want in zip(entries, reference):
        assert got.image.read_bytes() == want.image.read_bytes() and got.mask.read_bytes() == want.mask.read_bytes()
        assert (got.empty, got.class_pixels) == (want.empty, want.class_pixels)
    assert json.loads((work / "cache_manifest.json").read_text())["entries"].keys() == {e.key for e in entries}
