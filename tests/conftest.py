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
# What the runtime (inference.py, utils.py, app.py, runtime/) may never import: the heavy training packages and every
# module of the training side (tests/test_inference.py, tests/test_runtime_standalone.py).
TRAINING_SIDE = ("torch", "torchvision", "onnx", "ultralytics", "segmentation_models_pytorch", "albumentations",
                 "timm", "sklearn", "tqdm", "config", "dataset", "model", "train", "export", "training", "exporting",
                 "demos", "demo")

# int8 off: quantizing and measuring costs seconds per export; tests about int8 turn it on (tests/test_precision.py)
TINY = {"arch": "Unet", "encoder": "resnet18", "encoder_weights": "none", "input_size": "64",
        "epochs": "1", "folds": "2", "batch_size": "4", "workers": "0", "lr": "1e-3", "int8": "off"}


@pytest.fixture(autouse=True)
def int8_off(monkeypatch):
    """export.py's and train.py's default --int8 auto is off in tests (env INT8), as in TINY: see there."""
    monkeypatch.setenv("INT8", "off")


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
def run_copy(trained_run, tmp_path) -> Path:
    """The shared run seen through a folder of its own (models, images, masks linked; its JSONs copied), so that a
    test's exports land there and never in the shared run."""
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("models", "images", "masks"):
        (folder / name).symlink_to(trained_run / name, target_is_directory=True)
    for name in ("cv_summary.json", "folds.json", "config.json"):
        (folder / name).write_bytes((trained_run / name).read_bytes())
    return folder


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
    from training.smartcrop import export_detector, random_detector

    folder = tmp_path_factory.mktemp("yolo")
    random_detector(folder / "det.pt")
    export_detector(folder / "det.pt", folder / "det.onnx")
    return folder / "det.pt", folder / "det.onnx"


def build_gate_onnx(path: Path, meta: dict | None = None, weight: float = 4.0, bias: float = 4.0) -> Path:
    """A hand-built gate: prob (N, 1) = sigmoid(weight * mean of the normalised image + bias).

    A black image gives about 0.12, one with a white quarter about 0.75 (padding included), so
    with the default threshold 0.5 black images are gated and bright ones segmented.
    """
    import json

    from onnx import TensorProto, checker, helper, numpy_helper, save

    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2, 3], keepdims=1),  # (N, 1, 1, 1)
        helper.make_node("Reshape", ["mean", "shape"], ["flat"]),  # (N, 1)
        helper.make_node("Mul", ["flat", "w"], ["scaled"]),
        helper.make_node("Add", ["scaled", "b"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["prob"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_gate",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1])],
        initializer=[numpy_helper.from_array(np.array([-1, 1], np.int64), "shape"),
                     numpy_helper.from_array(np.array(weight, np.float32), "w"),
                     numpy_helper.from_array(np.array(bias, np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"task": "gate", "name": "tiny_gate", "arch": "MeanPool", "encoder": "none", "input_size": 32,
            "stride": 32, "threshold": 0.5, "recall_target": 0.99, **(meta or {})}
    helper.set_model_props(model, {"segmentation": json.dumps(meta)})
    checker.check_model(model)
    save(model, str(path))
    return path
