"""Sources (folder, glob, .txt list, ZIP) and bad input through inference.run, on generated files."""

from __future__ import annotations

import io
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import inference
from runtime import sources
from test_inference import ROOT, TEST_META, build_model, read_rows, rect_image
from utils import UserError, write_png


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    path = build_model(tmp_path_factory.mktemp("m") / "meta.onnx", TEST_META)
    return inference.Segmenter(path, device="cpu")


def png_bytes(h: int, w: int) -> bytes:
    return cv2.imencode(".png", rect_image(h, w)[0])[1].tobytes()


# ----------------------------------------------------------------------------- detection


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda d: d, "folder"),
        (lambda d: (d / "a.PNG").write_bytes(png_bytes(8, 8)) and d / "a.PNG", "image"),
        (lambda d: (d / "l.txt").write_text("a.png\n") and d / "l.txt", "list"),
        (lambda d: (d / "v.MP4").write_bytes(b"x") and d / "v.MP4", "video"),
        (lambda d: d / "missing.mkv", "video"),
        (lambda d: (d / "z.zip").write_bytes(b"PK") and d / "z.zip", "zip"),
        (lambda d: str(d / "*.png"), "glob"),
        (lambda d: "0", "webcam"),
        (lambda d: "rtsp://camera.local/stream", "stream"),
        (lambda d: "HTTP://host/x.mjpg", "stream"),
    ],
)
def test_detect_source(tmp_path, make, expected):
    assert sources.detect_source(make(tmp_path)) == expected


def test_detect_source_missing_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="source not found"):
        sources.detect_source(tmp_path / "nothing_here")


def test_folder_is_recursive_sorted_and_case_insensitive(segmenter, tmp_path):
    for rel in ("b/Z.JPG", "a.PnG", "b/c/y.tiff", "notes.md"):
        path = tmp_path / "src" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".md"):
            path.write_text("not an image")
        else:
            cv2.imwrite(str(path), rect_image(32, 32)[0])
    result = inference.run(segmenter, tmp_path / "src", tmp_path / "out")
    assert [r["file"] for r in read_rows(tmp_path / "out" / "summary.csv")] == ["a.PnG", "b/Z.JPG", "b/c/y.tiff"]
    assert result["ok"] == 3 and (tmp_path / "out" / "masks" / "b" / "c" / "y.png").is_file()


def test_txt_list_relative_paths_and_missing_entries(segmenter, tmp_path):
    write_png(tmp_path / "imgs" / "one.png", rect_image(30, 40)[0])
    write_png(tmp_path / "other" / "one.png", rect_image(20, 20)[0])
    (tmp_path / "list.txt").write_text("# my images\nimgs/one.png\n\nother/one.png\nimgs/gone.png\n")
    result = inference.run(segmenter, tmp_path / "list.txt", tmp_path / "out")
    rows = read_rows(tmp_path / "out" / "summary.csv")
    assert [r["file"] for r in rows] == ["imgs/one.png", "other/one.png", "imgs/gone.png"]
    assert [r["status"] for r in rows] == ["ok", "ok", "error"] and "not found" in rows[2]["error"]
    assert (tmp_path / "out" / "masks" / "one.png").is_file() and (tmp_path / "out" / "masks" / "one_1.png").is_file()
    assert result["errors"] == 1


# ----------------------------------------------------------------------------- ZIP


def make_zip(path: Path, entries: dict[str, bytes], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return path


def test_zip_with_nested_folders_gives_predictions_zip(segmenter, tmp_path):
    inner = make_zip(tmp_path / "inner.zip", {"x.png": png_bytes(10, 10)}).read_bytes()
    archive = make_zip(tmp_path / "in.zip", {
        "top.png": png_bytes(30, 40), "set/a/deep.jpg": cv2.imencode(".jpg", rect_image(50, 30)[0])[1].tobytes(),
        "set/readme.txt": b"ignored", "../escape.png": png_bytes(8, 8), "/abs.png": png_bytes(8, 8),
        "nested.zip": inner,
    }, symlink="link.png")
    out = tmp_path / "out"
    result = inference.run(segmenter, archive, out)
    rows = {r["file"]: r for r in read_rows(out / "summary.csv")}
    assert rows["top.png"]["status"] == "ok" and rows["set/a/deep.jpg"]["status"] == "ok"
    for bad, why in [("../escape.png", "'..'"), ("/abs.png", "absolute"), ("link.png", "symbolic link"),
                     ("nested.zip", "nested archive")]:
        assert rows[bad]["status"] == "error" and why in rows[bad]["error"]
    assert "set/readme.txt" not in rows and result["errors"] == 4
    assert not (tmp_path / "escape.png").exists() and not list(out.glob(".unzipped-*"))
    with zipfile.ZipFile(result["predictions_zip"]) as packed:
        names = set(packed.namelist())
    assert {"summary.csv", "masks/top.png", "masks/set/a/deep.png", "overlays/set/a/deep.png"} <= names


@pytest.mark.parametrize("limit_kwargs, match", [({"zip_max_mb": 0.01}, "limit"), ({"zip_max_entries": 1}, "entries"),
                                                 ({"zip_max_ratio": 5}, "zip bomb")])
def test_zip_over_a_limit_is_refused_before_extraction(segmenter, tmp_path, monkeypatch, limit_kwargs, match):
    archive = make_zip(tmp_path / "big.zip", {"a.png": png_bytes(8, 8), "zeros.png": bytes(2 << 20)})
    extracted = []
    monkeypatch.setattr(sources, "copy_entry", lambda *a: extracted.append(a) or 0)
    result = inference.run(segmenter, archive, tmp_path / "out", **limit_kwargs)
    rows = read_rows(tmp_path / "out" / "summary.csv")
    assert len(rows) == 1 and rows[0]["status"] == "error" and match in rows[0]["error"]
    assert extracted == [] and result["errors"] == 1 and result["predictions_zip"].is_file()


def test_copy_entry_stops_at_the_byte_budget_whatever_the_header_says(tmp_path):
    archive = make_zip(tmp_path / "lie.zip", {"a.png": bytes(3 << 20)})
    target = tmp_path / "dest" / "a.png"
    with zipfile.ZipFile(archive) as opened, pytest.raises(UserError, match="size limit"):
        sources.copy_entry(opened, opened.getinfo("a.png"), target, budget=1 << 20)
    assert not target.exists()


# ----------------------------------------------------------------------------- bad input


def cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rect_image(24, 32)[0]).convert("CMYK").save(buffer, "JPEG")
    return buffer.getvalue()


def write_bad_inputs(folder: Path) -> None:
    folder.mkdir(parents=True)
    good_jpeg = cv2.imencode(".jpg", rect_image(40, 40)[0])[1].tobytes()
    (folder / "corrupt.jpg").write_bytes(good_jpeg[:20] + bytes(200))
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("this is a text file, not a PNG")
    cv2.imwrite(str(folder / "deep16.png"), rect_image(20, 30)[0].astype(np.uint16) * 257)
    (folder / "cmyk.jpg").write_bytes(cmyk_jpeg())
    rgba = np.dstack([rect_image(25, 25)[0], np.full((25, 25), 128, np.uint8)])
    cv2.imwrite(str(folder / "rgba.png"), rgba)
    cv2.imwrite(str(folder / "tiny.png"), np.full((1, 1, 3), 255, np.uint8))


EXPECTED = {
    "corrupt.jpg": "error", "empty.png": "error", "text.png": "error",
    "deep16.png": "ok", "cmyk.jpg": "ok", "rgba.png": "ok", "tiny.png": "no_detection",
}


@pytest.mark.parametrize("batch_size", [1, 4])
def test_bad_inputs_become_rows_and_the_run_goes_on(segmenter, tmp_path, batch_size):
    write_bad_inputs(tmp_path / "bad")
    result = inference.run(segmenter, tmp_path / "bad", tmp_path / "out", batch_size=batch_size)
    rows = {r["file"]: r for r in read_rows(tmp_path / "out" / "summary.csv")}
    assert {name: row["status"] for name, row in rows.items()} == EXPECTED
    for name, status in EXPECTED.items():
        assert (rows[name]["error"] != "") == (status == "error")
    assert "cannot decode" in rows["empty.png"]["error"]
    assert cv2.imread(str(tmp_path / "out" / "masks" / "deep16.png"), cv2.IMREAD_UNCHANGED).shape == (20, 30)
    assert cv2.imread(str(tmp_path / "out" / "masks" / "tiny.png"), cv2.IMREAD_UNCHANGED).shape == (1, 1)
    assert result["errors"] == 3


@pytest.mark.parametrize("strict, code", [(False, 0), (True, 1)])
def test_cli_strict_sets_the_exit_code(tmp_path, strict, code):
    model = build_model(tmp_path / "m.onnx", TEST_META)
    write_bad_inputs(tmp_path / "bad")
    args = ["--model", str(model), "--source", str(tmp_path / "bad"), "--output", str(tmp_path / "out")]
    done = subprocess.run([sys.executable, str(ROOT / "inference.py"), *args, *(["--strict"] if strict else [])],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == code, done.stderr
    assert "errors: 3" in done.stdout and "Traceback" not in done.stderr


def test_several_sources_are_image_files_named_from_their_common_folder(tmp_path):
    for rel in ("x/a.png", "x/y/b.jpg", "x/y/a.jpg"):
        write_png(tmp_path / rel, rect_image(8, 8)[0])
    items = sources.path_items([tmp_path / "x/a.png", tmp_path / "x/y/b.jpg", tmp_path / "x/y/a.jpg"])
    assert [(i.name, i.out.as_posix()) for i in items] == [("a.png", "a.png"), ("y/b.jpg", "y/b.png"),
                                                         ("y/a.jpg", "y/a.png")]
    assert sources.detect_source(["a", "b"]) == "paths" and sources.detect_source([str(tmp_path / "x")]) == "folder"
    with pytest.raises(UserError, match="not an image file"):
        sources.path_items([tmp_path / "x/a.png", tmp_path / "missing.png"])
