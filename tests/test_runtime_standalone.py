"""The runtime stands alone: the files docs/deploy.md's Dockerfile copies serve a model in an empty folder.

`RUNTIME_PYTHON` (set by .ci/run) names the python of a fresh venv holding requirements-infer.txt alone; without it
the suite's own python runs the copy with torch, onnx and every training-side module blocked.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import ROOT, SHARED_DATA, TRAINING_SIDE

HORSE = SHARED_DATA / "weizmann_horse" / "images" / "val" / "horse251.jpg"
BLOCKER = (
    "import runpy, sys\n"
    f"BLOCKED = {set(TRAINING_SIDE)!r}\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in BLOCKED:\n"
    "            raise ImportError('blocked: ' + name)\n"
    "sys.meta_path.insert(0, Block())\n"
    "sys.argv = sys.argv[1:]\n"
    "sys.path.insert(0, '.')\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def dockerfile_copies() -> list[str]:
    """The repository paths the Dockerfile of docs/deploy.md copies (its COPY lines, the model excluded)."""
    text = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    block = re.search(r"```dockerfile\n(.*?)```", text, re.S)
    assert block, "docs/deploy.md lost its Dockerfile"
    paths = []
    for line in block.group(1).splitlines():
        if line.startswith("COPY "):
            paths += [p.rstrip("/") for p in line.split()[1:-1] if not p.startswith("runs/")]
    return paths


def copy_runtime(folder: Path) -> None:
    for rel in dockerfile_copies():
        source = ROOT / rel
        if source.is_dir():
            shutil.copytree(source, folder / rel, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, folder / rel)


def run_inference(python: str, cwd: Path, model: Path, source: Path, out: Path, blocked: bool) -> None:
    argv = ["inference.py", "--model", str(model), "--source", str(source), "--output", str(out)]
    cmd = [python, "-c", BLOCKER, *argv] if blocked else [python, *argv]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_the_dockerfile_copies_the_runtime_and_nothing_of_the_training_side():
    copies = dockerfile_copies()
    assert {"inference.py", "utils.py", "runtime", "requirements-infer.txt"} <= set(copies)
    assert not {Path(p).stem for p in copies} & set(TRAINING_SIDE)


@pytest.mark.skipif(not HORSE.is_file(), reason="needs ../shared/data/weizmann_horse")
def test_the_copied_runtime_gives_the_repository_mask(trained_run, tmp_path):
    alone = tmp_path / "service"
    alone.mkdir()
    copy_runtime(alone)
    model = alone / "models" / "model.onnx"
    model.parent.mkdir()
    shutil.copy2(trained_run / "model.onnx", model)
    photo = tmp_path / "in" / HORSE.name
    photo.parent.mkdir()
    shutil.copy2(HORSE, photo)

    fresh = os.environ.get("RUNTIME_PYTHON")  # CI: a venv of requirements-infer.txt alone
    run_inference(fresh or sys.executable, alone, model, photo, tmp_path / "alone", blocked=not fresh)
    run_inference(sys.executable, ROOT, trained_run / "model.onnx", photo, tmp_path / "repo", blocked=False)

    ours = cv2.imread(str(tmp_path / "alone" / "masks" / "horse251.png"), cv2.IMREAD_UNCHANGED)
    theirs = cv2.imread(str(tmp_path / "repo" / "masks" / "horse251.png"), cv2.IMREAD_UNCHANGED)
    assert ours is not None and ours.shape == theirs.shape == cv2.imread(str(HORSE)).shape[:2]
    assert np.array_equal(ours, theirs)
    assert not (alone / "config.py").exists() and not (alone / "training").exists()


def test_inference_import_closure_is_the_runtime_only():
    """inference.py's local imports: inference, utils and runtime.* (nothing of the training side)."""
    code = (
        "import os, sys\n"
        "sys.path.insert(0, '.')\n"
        "import inference\n"
        "root = os.getcwd()\n"
        "local = sorted(n for n, m in list(sys.modules.items()) if (getattr(m, '__file__', None) or '')"
        ".startswith(root + os.sep) and '.venv' not in m.__file__)\n"
        "print(' '.join(local))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    local = done.stdout.split()
    assert {"inference", "utils", "runtime.segmenter"} <= set(local)
    assert [m for m in local if m not in ("inference", "utils") and not m.startswith("runtime")] == []


def test_one_opencv_and_it_is_the_pinned_one():
    """ultralytics depends on opencv-python; both packages install a cv2 module and the unpinned one would win. The
    install keeps one OpenCV distribution: the headless build pinned in requirements-infer.txt."""
    from importlib import metadata

    pin = re.search(r"^opencv-python-headless==(\S+)", (ROOT / "requirements-infer.txt").read_text(), re.M).group(1)
    found = sorted(d.metadata["Name"].lower() for d in metadata.distributions()
                   if d.metadata["Name"] and d.metadata["Name"].lower().startswith("opencv"))
    assert found == ["opencv-python-headless"], f"more than one OpenCV installed: {found}; run make install"
    assert cv2.__version__ == ".".join(pin.split(".")[:3])
    assert metadata.version("opencv-python-headless") == pin
