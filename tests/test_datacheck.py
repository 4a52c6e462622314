"""training/datacheck.py: the odd datasets of tests/oddsets.py are each read pixel-exactly (by the data check and
into the cache) or refused with one line; the report, the table, and train.py --check-data without torch."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest

from config import load_config
from training.datacheck import REPORT_NAME, check_data, thickness
from training.sources import sources_from_config
from utils import UserError

pytest.importorskip("pycocotools", reason="make install puts pycocotools in .venv (requirements-train.txt)")
from oddsets import ODD_SETS, H, W, disc_mask, exif_photo, folders, photo  # noqa: E402


def settings_argv(work, settings: dict) -> list[str]:
    merged = {"work_dir": work, "input_size": 64, **settings}
    return [arg for k, v in merged.items() for arg in ("--" + k.replace("_", "-"), str(v))]


def run_check(tmp_path, settings: dict) -> tuple[list, dict]:
    cfg = load_config(settings_argv(tmp_path / "work", settings), environ={})
    sources = sources_from_config(cfg)
    return sources, check_data(cfg, sources)


@pytest.mark.parametrize("name", sorted(ODD_SETS))
def test_every_odd_dataset_reads_exactly_or_stops_with_one_line(tmp_path, name):
    odd = ODD_SETS[name](tmp_path / "data")
    if odd.refusal:
        with pytest.raises(UserError, match=odd.refusal) as err:
            run_check(tmp_path, odd.settings)
        assert "\n" not in str(err.value)
        return
    from dataset import build_cache

    sources, report = run_check(tmp_path, odd.settings)
    cfg = load_config(settings_argv(tmp_path / "work", odd.settings), environ={})
    assert sorted(s.key for s in sources) == sorted(odd.truth) and report["images"] == len(odd.truth)
    for source in sources:
        assert np.array_equal(source.load_mask(cfg.classes), odd.truth[source.key]), source.key
    entries = build_cache(sources, tmp_path / "work", 64, cfg.classes, ignore_index=cfg.ignore_index)
    for entry in entries:  # long side 64: the cache keeps every mask at its own size, void included
        assert np.array_equal(cv2.imread(str(entry.mask), cv2.IMREAD_GRAYSCALE), odd.truth[entry.key]), entry.key


def test_the_report_counts_what_the_table_shows(tmp_path, caplog):
    masks = {"a": disc_mask(H, W, (30, 24, 10)), "b": np.zeros((H, W), np.uint8), "c": disc_mask(H, W, (10, 10, 3))}
    masks["a"][0] = 255  # 64 void pixels, 1 = foreground
    settings = folders(tmp_path / "data", masks)
    (tmp_path / "data" / "images" / "d.jpg").write_bytes((tmp_path / "data" / "images" / "a.jpg").read_bytes())
    cv2.imwrite(str(tmp_path / "data" / "masks" / "d.png"), masks["a"])
    with caplog.at_level(logging.INFO, logger="seg"):
        _, report = run_check(tmp_path, settings)
    saved = json.loads((tmp_path / "work" / REPORT_NAME).read_text())
    assert saved == report and report["images"] == 4
    assert report["mask_encodings"] == {"0/1+void": 2, "0/1": 1, "empty": 1}
    assert report["empty_masks"] == {"count": 1, "examples": ["b"]}
    assert report["void_fraction"] == pytest.approx(128 / (4 * H * W), abs=1e-6)
    assert report["smallest_objects"]["foreground"][0] == {"pixels": int(masks["c"].sum()), "key": "c"}
    assert report["duplicate_images"] == {"groups": 1, "examples": [["a", "d"]]}
    assert report["sizes"]["width"] == {"min": W, "median": W, "max": W} and report["sizes"]["aspects"] == {"1.33": 4}
    table = "\n".join(r.getMessage() for r in caplog.records)
    assert "0/1+void x2" in table and "void 1.04%" in table and "empty       1 masks (e.g. b)" in table
    assert "identical images" in table


def test_exif_turned_photos_with_masks_on_the_shown_photo_are_counted(tmp_path):
    disc = (20, 20, 10)
    exif_photo(tmp_path / "images" / "a.jpg", photo(0, H, W, disc), 6)
    (tmp_path / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), np.ascontiguousarray(np.rot90(disc_mask(H, W, disc), -1)) * 255)
    _, report = run_check(tmp_path, {"raw_img_dir": tmp_path / "images", "raw_mask_dir": tmp_path / "masks"})
    assert report["sizes"]["exif_turned"] == 1 and report["sizes"]["width"]["min"] == H


def test_check_data_alone_needs_no_torch_and_trains_nothing(tmp_path):
    from test_train_inputs import _train_without_torch

    settings = folders(tmp_path / "data", {f"m{i}": disc_mask(H, W, (20 + 5 * i, 24, 9)) * 255 for i in range(3)})
    done = _train_without_torch(*settings_argv(tmp_path / "work", settings), "--check-data")
    assert done.returncode == 0, done.stderr
    assert "data check: 3 images, RAW_MASK_DIR=" in done.stdout and "masks       0/255 x3" in done.stdout
    assert (tmp_path / "work" / REPORT_NAME).is_file() and not (tmp_path / "work" / "models").exists()
    photos = folders(tmp_path / "photos", {"p": disc_mask(H, W, (20, 24, 9))})
    (photos["raw_mask_dir"] / "p.png").write_bytes((photos["raw_img_dir"] / "p.jpg").read_bytes())
    done = _train_without_torch(*settings_argv(tmp_path / "work2", photos), "--check-data")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "looks like a photo" in done.stderr


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_exif_orientation_is_read_from_the_header_and_undone_as_opencv_applies_it(tmp_path, fmt):
    import io

    from PIL import Image

    from training.exif import exif_orientation, to_stored
    from utils import read_image

    stored = photo(1, 12, 20)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        buffer = io.BytesIO()
        Image.fromarray(stored).save(buffer, fmt, exif=exif.tobytes(), **({"lossless": True} if fmt == "WEBP" else {}))
        (tmp_path / "x").write_bytes(buffer.getvalue())
        assert exif_orientation(buffer.getvalue()) == orientation
        shown = read_image(tmp_path / "x")  # OpenCV applies the orientation
        if fmt != "JPEG":  # lossless: the turn undone gives the stored pixels back exactly
            assert np.array_equal(to_stored(shown, orientation), stored), orientation
        else:
            assert to_stored(shown, orientation).shape == stored.shape


def test_mask_edges_tell_the_frame_on_real_horse_photos():
    """training/exif.drawn_frame on square crops of real photos, turned three ways: never the wrong frame."""
    from conftest import SHARED_DATA
    from training.exif import drawn_frame, to_stored
    from utils import read_image, read_mask

    horse = SHARED_DATA / "weizmann_horse"
    if not (horse / "images" / "val").is_dir():
        pytest.skip("needs ../shared/data/weizmann_horse")
    decided = {"shown": 0, "stored": 0}
    for path in sorted((horse / "images" / "val").glob("*.jpg"))[:12]:
        image, mask = read_image(path), read_mask(horse / "masks" / "val" / f"{path.stem}.png")
        side = min(image.shape[:2])
        image, mask = image[:side, :side], mask[:side, :side]
        for orientation in (3, 6, 2):
            stored = np.ascontiguousarray(to_stored(image, orientation))
            on_shown = drawn_frame(image, stored, mask)
            on_stored = drawn_frame(image, stored, np.ascontiguousarray(to_stored(mask, orientation)))
            assert on_shown != "stored" and on_stored != "shown", (path.name, orientation)
            decided["shown"] += on_shown == "shown"
            decided["stored"] += on_stored == "stored"
    assert min(decided.values()) >= 33  # of 36 each: the rest undecided, which stops the run (never misreads)


@pytest.mark.parametrize("width", [3, 8, 20])
def test_thickness_is_the_width_of_a_strip(width):
    region = np.zeros((200, 300), np.uint8)
    region[50:50 + width, 20:280] = 1
    assert thickness(region) == pytest.approx(width, rel=0.1)


def test_the_report_describes_object_sizes_and_widths_per_class(tmp_path):
    """Thin lines on the background: the foreground's width is the lines', the background's is the gaps'."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(4):
        mask = np.zeros((120, 160), np.uint8)
        for x in range(10, 150, 20):
            mask[:, x:x + 4] = 255  # 4 px lines, 16 px gaps
        cv2.imwrite(str(tmp_path / "images" / f"a{i}.png"), photo(i, 120, 160))
        cv2.imwrite(str(tmp_path / "masks" / f"a{i}.png"), mask)
    cfg = load_config(["--raw-img-dir", str(tmp_path / "images"), "--raw-mask-dir", str(tmp_path / "masks"),
                       "--work-dir", str(tmp_path / "work")], environ={})
    objects = check_data(cfg, sources_from_config(cfg), log_table=False)["objects"]
    assert objects["foreground"]["count"] == 4 * 7
    assert objects["foreground"]["area_fraction"]["median"] == pytest.approx(4 * 120 / (120 * 160))
    assert objects["foreground"]["thickness_px"]["median"] == pytest.approx(4, rel=0.1)
    assert 10 < objects["background"]["thickness_px"]["median"] < 20
