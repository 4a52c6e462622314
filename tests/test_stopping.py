"""Stopping cleanly: SIGTERM or Ctrl-C to train.py or inference.py leaves no worker process, no temp file and no
half-written output; the exit code is a shell's (143 for SIGTERM, 130 for Ctrl-C)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch

from conftest import ROOT, tiny_argv, write_blobs
from runtime.pipeline import LOCK_NAME
from test_inference import TEST_META, build_model


def children_of(pid: int) -> set[int]:
    try:
        return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def default_sigint() -> None:
    """Ctrl-C's default action in the child, as a terminal's foreground job has it: a shell starts background jobs
    (`make test &`) with SIGINT ignored, the ignore is inherited, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop_when(cmd: list[str], marker: str, how: str) -> tuple[int, str, set[int]]:
    """Start `cmd`, send `how` once a stderr line holds `marker` -> (exit code, stderr, child pids seen).
    SIGTERM goes to the process (as `kill` or a scheduler sends it), SIGINT to its whole group (as Ctrl-C does)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            start_new_session=True, preexec_fn=default_sigint)
    seen, err = set(), []
    try:
        for line in proc.stderr:
            err.append(line)
            seen |= children_of(proc.pid)
            if marker in line:
                break
        else:
            pytest.fail("the run ended before it could be stopped:\n" + "".join(err[-20:]))
        seen |= children_of(proc.pid)
        if how == "SIGTERM":
            os.kill(proc.pid, signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        err.append(proc.stderr.read())
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, "".join(err), seen


EXIT = {"SIGTERM": (143, "terminated"), "SIGINT": (130, "interrupted")}


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT"])
def test_training_stops_cleanly(tmp_path, how):
    data = write_blobs(tmp_path / "data", 12)
    work = tmp_path / "work"
    argv = tiny_argv(data, work, epochs=300, workers=2, log_every=0)
    code, err, children = stop_when([sys.executable, "train.py", *argv], "epoch 2/300", how)
    assert (code, err.strip().splitlines()[-1]) == EXIT[how], err[-2000:]
    assert children, "the DataLoader workers were never seen"
    assert not [pid for pid in children if alive(pid)], "worker processes outlived train.py"
    assert not list(work.rglob("*.tmp")), "a temp file was left behind"
    last = torch.load(work / "models" / "fold0_last.pt", map_location="cpu", weights_only=False)
    assert last["state"]["epoch"] >= 0 and "optimizer" in last  # whole and readable: a resume starts from it


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT"])
def test_inference_stops_cleanly(tmp_path, how):
    model = build_model(tmp_path / "tiny.onnx", TEST_META)
    images = write_blobs(tmp_path / "data", 300, size=(200, 240)) / "images"
    out = tmp_path / "out"
    cmd = [sys.executable, "inference.py", "--model", str(model), "--source", str(images), "--output", str(out)]
    code, err, _ = stop_when(cmd, "images 30/300", how)
    assert (code, err.strip().splitlines()[-1]) == EXIT[how], err[-2000:]
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    masks = sorted(p.stem for p in (out / "masks").glob("*.png"))
    assert 30 <= len(rows) < 300
    assert sorted(Path(r["file"]).stem for r in rows) == masks  # every mask written has its row, and no more
    assert all(cv2.imread(str(out / "masks" / f"{m}.png"), cv2.IMREAD_UNCHANGED) is not None for m in masks)
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*.tmp"))
    assert not (out / LOCK_NAME).exists()
