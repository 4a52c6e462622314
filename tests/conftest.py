"""Shared fixtures: tiny synthetic datasets and one tiny trained run, all on CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / "shared" / "data"

TINY = {"arch": "Unet", "encoder": "resnet18", "encoder_weights": "none", "input_size": "64",
        "epochs": "1", "folds": "2", "batch_size": "4", "workers": "0", "lr": "1e-3"}


def write_blobs(folder: Path, count: int, size=(80, 100), seed: int = 0, empty_every: int = 4) -> Path:
    """Bright discs on a noisy background; every `empty_every`-th image has an empty mask."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    h, w = size
    for i in range(count):
        image = (rng.random((h, w, 3)) * 60 + 90).astype(np.uint8)
        mask = np.zeros((h, w), np.uint8)
        if i % empty_every:
            center = (int(rng.integers(15, w - 15)), int(rng.integers(15, h - 15)))
            cv2.circle(mask, center, int(rng.integers(6, 14)), 255, -1)
            image[mask > 0] = (235, 240, 250)
        cv2.imwrite(str(folder / "images" / f"img_{i:03d}.jpg"), image)
        cv2.imwrite(str(folder / "masks" / f"img_{i:03d}.png"), mask)
    return folder


def tiny_argv(data: Path, work: Path, **overrides) -> list[str]:
    settings = {**TINY, "raw_img_dir": str(data / "images"), "raw_mask_dir": str(data / "masks"),
                "work_dir": str(work), **{k: str(v) for k, v in overrides.items()}}
    return [arg for k, v in settings.items() for arg in ("--" + k.replace("_", "-"), v)]


@pytest.fixture
def blobs(tmp_path) -> Path:
    return write_blobs(tmp_path / "data", 12)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A finished 2-fold, 1-epoch run with its ONNX export: shared by train/export/pipeline tests."""
    import train
    from config import load_config

    base = tmp_path_factory.mktemp("run")
    data = write_blobs(base / "data", 12)
    cfg = load_config(tiny_argv(data, base / "work"), environ={})
    train.run(cfg)
    return base / "work"


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 1 MiB tmpfs (a full disk that says ENOSPC), mounted for one test; skipped where mount is not allowed."""
    import subprocess

    mount = tmp_path / "tiny_disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture(scope="session")
def yolo_files(tmp_path_factory) -> tuple[Path, Path]:
    """(det.pt, det.onnx): YOLO11n-seg built from its yaml (random weights, no download) and its ONNX export."""
    from smartcrop import export_detector, random_detector

    folder = tmp_path_factory.mktemp("yolo")
    random_detector(folder / "det.pt")
    export_detector(folder / "det.pt", folder / "det.onnx")
    return folder / "det.pt", folder / "det.onnx"
