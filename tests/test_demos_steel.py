"""Tests for demos/steel.py: determinism, sizes, class ids, class frequencies and the clean fraction."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from demos import steel as steel_data
from demos.steel import CLASS_NAMES, generate_steel, render_steel
from utils import UserError, read_image, read_mask


def read_unchanged(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


@pytest.fixture(scope="module")
def full_size(tmp_path_factory) -> tuple[Path, dict]:
    """12 images at the line's native 1600x256."""
    out = tmp_path_factory.mktemp("steel") / "set"
    return out, generate_steel(out, count=12, clean_fraction=0.5, seed=3)


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> tuple[Path, dict]:
    """300 small images: enough for the class frequencies to settle."""
    out = tmp_path_factory.mktemp("steel_many") / "set"
    return out, generate_steel(out, count=300, clean_fraction=0.5, seed=2, width=400, height=64)


def test_same_seed_gives_identical_bytes(tmp_path, full_size):
    out, _ = full_size
    generate_steel(tmp_path, count=12, clean_fraction=0.5, seed=3)
    for sub in ("images", "masks"):
        names = sorted(p.name for p in (out / sub).iterdir())
        assert names == sorted(p.name for p in (tmp_path / sub).iterdir())
        for name in names:
            assert (out / sub / name).read_bytes() == (tmp_path / sub / name).read_bytes(), f"{sub}/{name}"
    assert (tmp_path / "classes.txt").read_text().split() == list(CLASS_NAMES)


def test_image_does_not_depend_on_count_and_seed_matters():
    image, mask = render_steel(5, 7, clean=False)
    again, again_mask = render_steel(5, 7, clean=False)
    other, _ = render_steel(6, 7, clean=False)
    assert np.array_equal(image, again) and np.array_equal(mask, again_mask)
    assert not np.array_equal(image, other)


def test_native_size_grey_images_and_class_id_masks_the_loaders_accept(full_size):
    out, stats = full_size
    images = sorted((out / "images").glob("*.png"))
    assert [p.name for p in images] == [f"{i:04d}.png" for i in range(12)] and stats["size"] == [1600, 256]
    for path in images:
        image, mask = read_unchanged(path), read_unchanged(out / "masks" / path.name)
        assert image.shape == (256, 1600) and image.dtype == np.uint8
        assert mask.shape == (256, 1600) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1, 2, 3, 4}
        assert read_image(path).shape == (256, 1600, 3)  # grey is read as 3 channels by train and runtime
        assert np.array_equal(read_mask(out / "masks" / path.name, num_classes=5), mask)
    assert (out / "classes.txt").read_text().splitlines() == ["background", "pits", "scratch", "scale", "blotch"]


def test_texture_is_not_flat():
    image, _ = render_steel(0, 0, clean=True)
    assert image.std() > 3.0
    # rolling streaks run along the strip: neighbours along x agree more than neighbours along y
    along_x = np.abs(np.diff(image.astype(np.float32), axis=1)).mean()
    along_y = np.abs(np.diff(image.astype(np.float32), axis=0)).mean()
    assert along_x < along_y


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_clean_fraction_is_honoured(tmp_path, fraction):
    stats = generate_steel(tmp_path, count=20, clean_fraction=fraction, seed=1, width=256, height=64)
    masks = [read_unchanged(p) for p in sorted((tmp_path / "masks").glob("*.png"))]
    clean = sum(not m.any() for m in masks)
    assert clean == stats["clean"]
    assert abs(clean - fraction * 20) <= 1  # spread evenly, not left to chance


def test_class_frequencies_and_sizes_as_designed(many):
    out, stats = many
    defective = 300 - stats["clean"]
    share = {name: n / defective for name, n in stats["images_with_class"].items()}
    assert 0.6 <= share["scale"] <= 0.9  # common
    assert 0.2 <= share["pits"] <= 0.5
    assert 0.04 <= share["scratch"] <= 0.25 and 0.04 <= share["blotch"] <= 0.25  # rare
    assert share["scale"] > share["pits"] > max(share["scratch"], share["blotch"])
    pixels = stats["pixel_fraction"]
    assert pixels["scale"] > 10 * pixels["pits"] and pixels["blotch"] > 2 * pixels["pits"]
    # the stats are what the masks hold
    counts = np.zeros(5, np.int64)
    for path in (out / "masks").glob("*.png"):
        counts += np.bincount(read_unchanged(path).ravel(), minlength=5)
    assert np.allclose(counts / counts.sum(), [pixels[n] for n in CLASS_NAMES], atol=1e-6)


def test_each_class_looks_different_from_the_surface_around_it():
    # learnability guard: inside a defect the mean grey level differs from a ring around it
    seen = set()
    for index in range(60):
        image, mask = render_steel(0, index, clean=False)
        for cls in set(np.unique(mask)) - {0} - seen:
            region = mask == cls
            ring = cv2.dilate(region.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & (mask == 0)
            assert abs(float(image[region].mean()) - float(image[ring].mean())) > 5, (index, cls)
            seen.add(cls)
    assert seen == {1, 2, 3, 4}


def test_rerun_with_fewer_images_or_another_format_removes_stale_files(tmp_path):
    generate_steel(tmp_path, count=4, width=256, height=64)
    generate_steel(tmp_path, count=2, width=256, height=64, ext="jpg")
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["0000.jpg", "0001.jpg"]
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["0000.png", "0001.png"]


@pytest.mark.parametrize(
    "kwargs, message",
    [({"count": 0}, "--count"), ({"count": 2, "width": 16}, "--width"), ({"count": 2, "seed": -1}, "--seed"),
     ({"count": 2, "clean_fraction": 1.5}, "--clean-fraction"), ({"count": 2, "ext": "gif"}, "--ext")],
)
def test_bad_arguments_raise_user_error(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        generate_steel(tmp_path, **kwargs)


def test_cli_writes_dataset_and_prints_stats(tmp_path, capsys):
    steel_data.main(["--out", str(tmp_path), "--count", "3", "--width", "256", "--height", "64",
                     "--clean-fraction", "0"])
    assert len(list((tmp_path / "images").glob("*.png"))) == 3
    out = capsys.readouterr().out
    assert "wrote 3 256x64 images" in out and "0 clean" in out


def test_cli_bad_value_exits_2(tmp_path):
    with pytest.raises(SystemExit) as exc:
        steel_data.main(["--out", str(tmp_path), "--count", "2", "--clean-fraction", "2"])
    assert exc.value.code == 2
