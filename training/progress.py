"""Progress of the long training-side loops: tqdm's bar on a terminal, a log line every LOG_EVERY seconds elsewhere.

    for images, masks in progress(loader, "fold 0 epoch 3/40", every_s=cfg.log_every):
        ...
        bar.set_postfix(loss="0.4123")   # shown on the bar, and at the end of the next log line

Under nohup, a scheduler or `| tee`, stderr is no terminal and a bar would print nothing useful (tqdm's own
`disable=None` prints nothing at all): a line such as
`fold 0 epoch 3/40: 120/400 (30 %), 2.1 it/s, 1.9 min left, loss 0.4123` goes to the log instead.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Iterable, Iterator

from training.budget import format_duration
from utils import LOG

LOG_EVERY_S = 30.0  # LOG_EVERY's default


class LogProgress:
    """An iterable that logs `desc: done/total (pct), rate, time left, postfix` every `every_s` seconds (0: every
    item). `clock` is injectable for tests."""

    def __init__(self, iterable: Iterable, desc: str, total: int | None = None, every_s: float = LOG_EVERY_S,
                 unit: str = "it", clock: Callable[[], float] = time.monotonic):
        self.iterable, self.desc, self.unit, self.every_s, self.clock = iterable, desc, unit, every_s, clock
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.postfix: dict = {}

    def __len__(self) -> int:
        return len(self.iterable)

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def line(self, done: int, elapsed: float) -> str:
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{done}/{self.total} ({100 * done / self.total:.0f} %)" if self.total else str(done),
                 f"{rate:.2f} {self.unit}/s" if rate < 10 else f"{rate:.0f} {self.unit}/s"]
        if self.total and rate > 0 and done < self.total:
            parts.append(f"{format_duration((self.total - done) / rate)} left")
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        return f"{self.desc}: {', '.join(parts)}"

    def __iter__(self) -> Iterator:
        start = last = self.clock()
        for done, item in enumerate(self.iterable, 1):
            yield item
            now = self.clock()
            if now - last >= self.every_s:
                LOG.info("%s", self.line(done, now - start))
                last = now


class Quiet:
    """No progress at all (DDP ranks other than 0), with the bar's set_postfix."""

    def __init__(self, iterable: Iterable):
        self.iterable = iterable

    def __iter__(self) -> Iterator:
        return iter(self.iterable)

    def __len__(self) -> int:
        return len(self.iterable)

    def set_postfix(self, *args, **kwargs) -> None:
        pass


def progress(iterable: Iterable, desc: str, total: int | None = None, every_s: float = LOG_EVERY_S,
             enabled: bool = True, unit: str = "it", stream=None):
    """tqdm on a terminal, LogProgress elsewhere, Quiet when not `enabled`."""
    if not enabled:
        return Quiet(iterable)
    stream = sys.stderr if stream is None else stream
    if getattr(stream, "isatty", lambda: False)():
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, unit=unit)
    return LogProgress(iterable, desc, total, every_s, unit)
