"""Tests for demos/skin.py: determinism, mask format and the intended statistics."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from demos import skin as demo_data
from demos.skin import generate_dataset, render_sample
from utils import UserError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "set"
    return out, generate_dataset(out, count=60, size=128, seed=3, empty_fraction=0.2)


def read_unchanged(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_same_seed_gives_identical_bytes(tmp_path, dataset):
    out, _ = dataset
    again = tmp_path / "again"
    generate_dataset(again, count=60, size=128, seed=3, empty_fraction=0.2)
    for sub in ("images", "masks"):
        names = sorted(p.name for p in (out / sub).iterdir())
        assert names == sorted(p.name for p in (again / sub).iterdir())
        for name in names:
            assert (out / sub / name).read_bytes() == (again / sub / name).read_bytes(), f"{sub}/{name}"


def test_other_seed_gives_other_images(tmp_path, dataset):
    out, _ = dataset
    generate_dataset(tmp_path, count=3, size=128, seed=4, empty_fraction=0.2)
    assert (out / "images" / "0000.png").read_bytes() != (tmp_path / "images" / "0000.png").read_bytes()


def test_files_are_paired_rgb_images_and_binary_masks(dataset):
    out, stats = dataset
    images = sorted((out / "images").glob("*.png"))
    assert [p.name for p in images] == [f"{i:04d}.png" for i in range(60)] and stats["count"] == 60
    for image_path in images:
        image = read_unchanged(image_path)
        mask = read_unchanged(out / "masks" / image_path.name)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        assert mask.shape == (128, 128) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}


def test_empty_fraction_and_foreground_range(dataset):
    out, stats = dataset
    fractions = np.array([(read_unchanged(p) > 0).mean() for p in sorted((out / "masks").glob("*.png"))])
    empty = int((fractions == 0).sum())
    assert empty == stats["empty"]
    assert abs(empty - 0.2 * 60) <= 1  # spread evenly, not left to chance
    nonempty = fractions[fractions > 0]
    # One patch covers 1-6 % of the image, two at most ~12 %.
    assert nonempty.min() >= 0.008 and nonempty.max() <= 0.125
    assert 0.015 <= nonempty.mean() <= 0.06
    assert stats["mean_foreground_fraction"] == pytest.approx(fractions.mean())


def test_patches_differ_from_the_skin_around_them(dataset):
    # Learnability guard: inside a patch the colour is clearly not the surrounding skin.
    out, _ = dataset
    for mask_path in sorted((out / "masks").glob("*.png"))[:20]:
        mask = read_unchanged(mask_path) > 0
        if not mask.any():
            continue
        image = read_unchanged(out / "images" / mask_path.name).astype(np.float32)
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool) & ~mask
        assert np.linalg.norm(image[mask].mean(0) - image[ring].mean(0)) > 20, mask_path.name


def test_patch_pixels_are_not_one_flat_colour():
    image, mask = render_sample(seed=0, index=1, size=256, empty=False)
    assert mask.any()
    assert image[mask > 0].std(axis=0).min() > 2.0


@pytest.mark.parametrize("fraction, expected", [(0.0, 0), (1.0, 10), (0.5, 5)])
def test_empty_fraction_extremes(tmp_path, fraction, expected):
    stats = generate_dataset(tmp_path, count=10, size=64, seed=0, empty_fraction=fraction)
    assert stats["empty"] == expected


def test_rerun_with_fewer_images_removes_stale_pairs(tmp_path):
    generate_dataset(tmp_path, count=4, size=64)
    generate_dataset(tmp_path, count=2, size=64)
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["0000.png", "0001.png"]
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["0000.png", "0001.png"]


@pytest.mark.parametrize(
    "kwargs, message",
    [({"count": 0}, "--count"), ({"count": 2, "size": 8}, "--size"), ({"count": 2, "seed": -1}, "--seed"),
     ({"count": 2, "empty_fraction": 1.5}, "empty_fraction")],
)
def test_bad_arguments_raise_user_error(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        generate_dataset(tmp_path, **kwargs)


def test_cli_writes_dataset_and_prints_stats(tmp_path, capsys):
    demo_data.main(["--out", str(tmp_path), "--count", "3", "--size", "64", "--seed", "2"])
    assert len(list((tmp_path / "images").glob("*.png"))) == 3
    assert "wrote 3 images" in capsys.readouterr().out


def test_cli_bad_value_exits_2(tmp_path):
    with pytest.raises(SystemExit) as exc:
        demo_data.main(["--out", str(tmp_path), "--count", "0"])
    assert exc.value.code == 2
