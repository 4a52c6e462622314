"""training/progress.py: a bar on a terminal, a log line every LOG_EVERY seconds with the time left elsewhere."""

from __future__ import annotations

import io
import logging

import pytest

from training.progress import LogProgress, Quiet, progress
from utils import LOG


class FakeClock:
    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture
def lines(caplog):
    old = LOG.level, LOG.propagate
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    LOG.addHandler(caplog.handler)
    yield lambda: [r.getMessage() for r in caplog.records]
    LOG.removeHandler(caplog.handler)
    LOG.setLevel(old[0])
    LOG.propagate = old[1]


def test_a_line_every_30_seconds_with_the_time_left_and_the_postfix(lines):
    bar = LogProgress(range(100), "fold 0 epoch 1/3", every_s=30, unit="step", clock=FakeClock(10.0))
    for i in bar:
        bar.set_postfix(loss=f"{1 / (i + 1):.4f}")
    logged = lines()
    assert len(logged) == 33  # 10 s per step: one line every third step
    assert logged[0] == "fold 0 epoch 1/3: 3/100 (3 %), 0.10 step/s, 16.2 min left, loss 0.3333"
    assert logged[-1].startswith("fold 0 epoch 1/3: 99/100 (99 %), 0.10 step/s, 10 s left")


def test_zero_seconds_logs_every_item_and_the_last_without_time_left(lines):
    items = list(LogProgress([1, 2, 3], "cache", every_s=0, unit="image", clock=FakeClock(0.5)))
    assert items == [1, 2, 3]
    assert lines() == ["cache: 1/3 (33 %), 2.00 image/s, 1.0 s left", "cache: 2/3 (67 %), 2.00 image/s, 0.5 s left",
                       "cache: 3/3 (100 %), 2.00 image/s"]


def test_an_iterable_without_length_counts_without_a_total(lines):
    list(LogProgress(iter(range(2)), "stream", every_s=0, clock=FakeClock(1.0)))
    assert lines() == ["stream: 1, 1.00 it/s", "stream: 2, 1.00 it/s"]


def test_a_terminal_gets_tqdm_a_log_gets_lines_other_ranks_nothing():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert type(progress(range(3), "x", stream=Tty())).__name__ == "tqdm"
    assert isinstance(progress(range(3), "x", stream=io.StringIO()), LogProgress)
    quiet = progress(range(3), "x", enabled=False)
    quiet.set_postfix(loss=1)
    assert isinstance(quiet, Quiet) and list(quiet) == [0, 1, 2] and len(quiet) == 3
