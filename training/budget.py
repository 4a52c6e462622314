"""TIME_BUDGET: plan a run's epochs to fit a wall-clock budget, and stop it by the clock. No torch here.

    TIME_BUDGET=20m python train.py ...      # or --time-budget 20m; 90s, 1h, 1h30m, 600 (seconds); 0 or empty = off

The clock starts with train.py, before torch is imported: the imports, the cache build and the timing probe
all count. The pieces, each a plain function of numbers (the clock is passed in, so tests need no sleep):

- parse_duration: '20m' -> 1200 seconds.
- plan_epochs: from the measured cost of one optimizer step, one validation pass and one checkpoint write,
  what is left of the budget less the reserve for out-of-fold scoring and the export, shared equally by the
  folds to train -> epochs per fold (at most EPOCHS, at least 1) and the schedule's total steps.
- replan, replan_steps: after a tenth of the plan (replan_epoch), the fold's epochs corrected to their measured time,
  to the step: a last shorter epoch uses what whole epochs would leave. Later corrections at half and three quarters
  of the plan (later_replan_due) plan on the epochs since the one before (steady_estimate): the first ones run slow,
  and the host's speed drifts.
- Budget: the run's clock; the end of each fold's share of what is left, and whether the next epoch fits in it.

train.py measures the steps in training/loop.py (probe_fold); bench/plain_unet.py uses the same plan_epochs
and Budget. The guide is docs/training.md#time-budget.
"""

from __future__ import annotations

import math
import re
import statistics
import time
import warnings
from dataclasses import MISSING, asdict, dataclass
from typing import Callable

PROBE_STEPS = 5  # timed optimizer steps, after one untimed warm-up step
MARGIN = 0.10  # each epoch is planned 10 % longer than measured
# A fold's plan is first corrected after a tenth of its planned epochs (at least 2) timed in this process: the
# probe's few steps misjudge a whole epoch by 10-20 %, and the first epochs run slow while the loader workers,
# the allocator and the caches warm up (horse: 9.5 and 8.6 s, then 7.5 s).
REPLAN_AFTER = 2
REPLAN_SHARE = 0.1
# The correction plans on epochs timed in full, already on the high side (the larger of their mean, slow first epochs
# included, and the last), so it keeps a smaller margin: with 10 %, 15-minute horse runs ended 100-140 s early.
REPLAN_MARGIN = 0.05
# A second correction at half the corrected plan, on the epochs timed since the first (at least REPLAN_AFTER of them,
# and at least 2 epochs still to go): the first correction counts the slow first epochs, so its plan is long by their
# excess (CrackForest, 480 px: 23, 19, 20 s, then 18 s to the end; 24 epochs of a 600 s budget ended the run at 82 %).
# Its margin is smaller: the epochs it plans on are warm, and the clock still stops an epoch that would not fit (with
# 5 %, ISBI's 8.9 s epochs, then 8.5 s, ended training 30 s before its share).
# A third at three quarters, on the epochs since the second: the host's speed drifts by several per cent within a run
# (horse, 192 px: the epochs the second correction planned on took 16 s, the 17 after it 14.7 s, and training ended
# 30 s before its share, the run at 93 % of its budget).
LATER_REPLAN_SHARES = (0.5, 0.75)
SECOND_REPLAN_MARGIN = 0.02  # the margin of every correction after the first
MIN_PARTIAL = 0.25  # a last, shorter epoch fills the budget when at least this share of an epoch fits
# Out-of-fold scoring of a fold (the val pass again, then every val image at its own size, one at a time, and the
# test list): SCORE_FACTOR x the measured validation pass per val image scored, plus SCORE_BASE_S for loading the
# model and reading originals. After the first fold, its measured time x SCORED_MARGIN replaces the estimate.
SCORE_FACTOR = 3.0
SCORE_BASE_S = 3.0
SCORED_MARGIN = 1.25
# The export (load the folds, trace, onnx checker, onnxruntime and OpenCV parity at INPUT_SIZE): EXPORT_BASE_S
# plus, per fold in the ensemble, EXPORT_FOLD_S and EXPORT_FORWARDS one-image forward passes. An int8 copy
# (INT8=on, or auto with held-back images) adds INT8_BASE_S, one forward per calibration image and
# INT8_MEASURED_FORWARDS per held-back image it is compared on (fp32, int8, then timed once), per fold.
# Measured on one-fold 10-minute runs (export and parity / calibration / comparison and timing):
#   horse 192 px, 64 + 25 images: 2 / 5 / 3 s;  ISBI 512 px, 21 + 3: 4 / 7 / 6 s;
#   CrackForest 480 px, 64 + 8: 3 / 12 / 6 s;  its 1440x960 mosaics, tiled, 6 + 2: 2 / 12 / 31 s.
# (0.7-2 forwards per calibration image, 3.3-5.4 per compared one; the constants before these reserved 20-50 s for
# 10-46 s, and the slack alone ended runs at 82-94 % of their budget.)
# A tiled model (TILE) runs a large image as half-overlapping tiles: its out-of-fold scoring at each image's own size
# and its int8 comparison cost TILED_COST whole-image forwards an image (bench/tiles.py, the 1440x960 mosaics: 14.5 s
# against 5.7 s whole). Without it the mosaics' seed 1 reserved 12 s for scoring that took 16 s and 30 s for an
# export that took 46 s, and ended at 612 s of its 600.
TILED_COST = 2.5
EXPORT_BASE_S = 3.0
EXPORT_FOLD_S = 3.0
EXPORT_FORWARDS = 10
INT8_BASE_S = 2.0
INT8_CALIBRATION_FORWARDS = 1
INT8_MEASURED_FORWARDS = 4
INT8_CALIBRATION = 64  # images export.py calibrates an int8 copy on (its --calib-count default)

_PART = r"(\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile(rf"(?:{_PART}h)?(?:{_PART}m)?(?:{_PART}s)?")


def parse_duration(text: str) -> int:
    """Seconds of a budget: '90s', '20m', '1h', '1h30m', '1.5h' or a plain number of seconds; '', '0', 'off'
    and 'none' mean no budget (0). Rounded up to a whole second."""
    value = re.sub(r"\s+", "", str(text).lower())
    if value in ("", "off", "none"):
        return 0
    try:
        seconds = float(value)
    except ValueError:
        match = _DURATION.fullmatch(value)
        if not match or not any(match.groups()):
            raise ValueError("expected a duration such as 90s, 20m, 1h or 1h30m, or a number of seconds; "
                             "0 or empty = no budget") from None
        hours, minutes, secs = (float(g) if g else 0.0 for g in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("expected a duration >= 0 such as 90s, 20m or 1h30m")
    return math.ceil(seconds)


parse_duration.__name__ = "duration"  # what config.py's error calls it: "... is not a valid duration"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def format_duration(seconds: float) -> str:
    """2.44 -> '2.4 s', 26 -> '26 s', 1200 -> '20 min', 150 -> '2.5 min', 9000 -> '2.5 h'."""
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    if seconds < 100:
        return f"{seconds:.0f} s"
    value, unit = (seconds / 60, "min") if seconds < 7200 else (seconds / 3600, "h")
    return f"{value:.0f} {unit}" if abs(value - round(value)) < 0.05 else f"{value:.1f} {unit}"


@dataclass(frozen=True)
class Plan:
    """The run's plan: the same number of epochs for every fold it trains. Saved as models/budget_plan.json."""
    budget_s: float
    epochs: int  # per fold
    steps_per_epoch: int  # of the fold that was measured (each fold's schedule uses its own loader's length)
    epoch_s: float  # one epoch as measured: steps x step_s + (val_s + overhead_s) / eval_every
    step_s: float  # one optimizer step, its batch's loading included
    val_s: float  # one validation pass
    overhead_s: float  # the checkpoint and preview written after each epoch
    folds: int  # folds sharing the budget
    elapsed_s: float  # spent before the plan: imports, cache, the probe
    score_s: float  # reserved per fold for out-of-fold scoring
    export_s: float  # reserved for the export (0 with EXPORT=false)
    fit: int  # epochs per fold the budget has room for (before EPOCHS caps it and before the floor of 1)
    max_epochs: int  # EPOCHS, the cap
    eval_every: int = 1  # EVAL_EVERY: validation and the checkpoint cost once every this many epochs

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def eval_s(self) -> float:
        """An epoch's share of validation and checkpoint."""
        return (self.val_s + self.overhead_s) / max(1, self.eval_every)

    @property
    def reserve_s(self) -> float:
        return self.folds * self.score_s + self.export_s

    @property
    def capped(self) -> bool:
        return self.fit > self.max_epochs

    @property
    def fits(self) -> bool:
        return self.fit >= 1

    def headline(self) -> str:
        """'budget 20 min → 23 epochs of 26 s'"""
        epochs = plural(self.epochs, "epoch")
        return f"budget {format_duration(self.budget_s)} → {epochs} of {format_duration(self.epoch_s)}"

    def describe(self) -> str:
        """The plan's log line: the headline, then how it was reached."""
        shared = f" per fold, {self.folds} folds share it" if self.folds > 1 else ""
        steps = plural(self.steps_per_epoch, "step")
        evaluation = f"validation {self.val_s:.1f} s + checkpoint {self.overhead_s:.1f} s"
        if self.eval_every > 1:
            evaluation = f"({evaluation}) every {self.eval_every} epochs"
        text = (f"{self.headline()}{shared} ({steps} of {self.step_s:.2f} s + {evaluation}, +{MARGIN:.0%} margin; "
                f"{format_duration(self.elapsed_s)} already spent; reserved {format_duration(self.reserve_s)} for "
                f"out-of-fold scoring ({format_duration(self.score_s)} per fold) and the export ({format_duration(self.export_s)}))")
        if self.capped:
            text += f"; EPOCHS={self.max_epochs} caps it (the budget has room for {self.fit})"
        return text

    def shortfall(self) -> str:
        """The warning when not even one epoch per fold fits."""
        need = self.elapsed_s + self.folds * self.epoch_s * (1 + MARGIN) + self.reserve_s
        return (f"budget {format_duration(self.budget_s)} is too small: 1 epoch of {format_duration(self.epoch_s)} "
                f"per fold x {self.folds} folds, {format_duration(self.elapsed_s)} already spent and "
                f"{format_duration(self.reserve_s)} for scoring and export need about {format_duration(need)}; "
                "training 1 epoch per fold anyway, so the run will end late")

    def to_dict(self) -> dict:
        return {**asdict(self), "total_steps": self.total_steps}

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        fields = cls.__dataclass_fields__
        return cls(**{name: data[name] for name in fields if name in data or fields[name].default is MISSING})


def plan_epochs(budget_s: float, elapsed_s: float, step_s: float, steps_per_epoch: int, val_s: float,
                overhead_s: float, folds: int, score_s: float, export_s: float, max_epochs: int,
                margin: float = MARGIN, eval_every: int = 1) -> Plan:
    """Epochs per fold: (budget - elapsed - folds x score_s - export_s) / folds / (epoch time x (1 + margin)),
    rounded down, at most max_epochs and at least 1 (Plan.fits says whether that 1 fits). An epoch's time counts
    the validation pass and the checkpoint once every `eval_every` epochs."""
    epoch_s = steps_per_epoch * step_s + (val_s + overhead_s) / eval_every
    per_fold = (budget_s - elapsed_s - folds * score_s - export_s) / max(1, folds)
    fit = max(0, math.floor(per_fold / (epoch_s * (1 + margin)) + 1e-9)) if epoch_s > 0 else max_epochs + 1
    return Plan(budget_s=float(budget_s), epochs=max(1, min(max_epochs, fit)), steps_per_epoch=steps_per_epoch,
                epoch_s=epoch_s, step_s=step_s, val_s=val_s, overhead_s=overhead_s, folds=folds, elapsed_s=elapsed_s,
                score_s=score_s, export_s=export_s, fit=fit, max_epochs=max_epochs, eval_every=eval_every)


def replan_epoch(planned: int) -> int:
    """After how many epochs a fold planned for `planned` corrects its plan."""
    return max(REPLAN_AFTER, math.ceil(planned * REPLAN_SHARE - 1e-9))


def replan(planned: int, done: int, epoch_s: float, seconds_left: float, max_epochs: int,
           margin: float = REPLAN_MARGIN) -> int:
    """A fold's epochs in all, corrected after `done` epochs that took about `epoch_s` each, with `seconds_left` of
    its share: done + the epochs that fit in the rest (+margin), at most max_epochs and at least done + 1 (the clock
    stops an epoch that does not fit). `planned` is returned when it is already finished."""
    if done >= planned:
        return planned
    fit = math.floor(max(0.0, seconds_left) / (epoch_s * (1 + margin)) + 1e-9) if epoch_s > 0 else max_epochs
    return max(done + 1, min(max_epochs, done + fit))


def replan_steps(planned: int, done: int, steps_per_epoch: int, epoch_s: float, eval_s: float, seconds_left: float,
                 max_epochs: int, margin: float = REPLAN_MARGIN) -> tuple[int, int]:
    """replan to the step: (epochs, total optimizer steps). The whole epochs that fit in `seconds_left` (+margin),
    then, in the time still left, a last shorter epoch of the steps that fit with its validation (`eval_s`: the
    validation and checkpoint after an epoch), when at least MIN_PARTIAL of an epoch fits: whole epochs alone leave
    up to one epoch of the budget unused."""
    epochs = replan(planned, done, epoch_s, seconds_left, max_epochs, margin)
    if epochs >= max_epochs or epochs <= done or epoch_s <= 0:
        return epochs, epochs * steps_per_epoch
    rest = max(0.0, seconds_left) / (1 + margin) - (epochs - done) * epoch_s
    extra = partial_steps(steps_per_epoch, epoch_s, eval_s, rest, steps_per_epoch - 1)
    if not extra:
        return epochs, epochs * steps_per_epoch
    return epochs + 1, epochs * steps_per_epoch + extra


def partial_steps(steps_per_epoch: int, epoch_s: float, eval_s: float, seconds: float, most: int) -> int:
    """The optimizer steps of a shorter epoch that fit in `seconds` with its validation and checkpoint (`eval_s` of
    the `epoch_s` a whole epoch takes), at most `most`; 0 when that is under MIN_PARTIAL of an epoch."""
    step_s = max(epoch_s - eval_s, 1e-9) / steps_per_epoch
    steps = min(most, math.floor((seconds - eval_s) / step_s + 1e-9)) if seconds > eval_s else 0
    return steps if steps >= MIN_PARTIAL * steps_per_epoch else 0


def replay(scheduler, steps: int):
    """A schedule rebuilt for a corrected plan, brought to the point `steps` optimizer steps into its new curve (its
    own steps only: no optimizer step, so torch's order warning is silenced). Returns it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            scheduler.step()
    return scheduler


def score_estimate(val_s: float, val_images: int, scored_images: int, tiled: bool = False) -> float:
    """Seconds to reserve for one fold's out-of-fold scoring of `scored_images` (its val fold + the test list): of
    SCORE_FACTOR val passes, one is the val pass again and the rest score the originals, as tiles when `tiled`."""
    originals = (SCORE_FACTOR - 1) * (TILED_COST if tiled else 1.0)
    return SCORE_BASE_S + (1 + originals) * val_s * scored_images / max(1, val_images)


def export_estimate(folds: int, image_s: float, calibration: int = 0, measured: int = 0,
                    check_share: float = 1.0, tiled: bool = False) -> float:
    """Seconds to reserve for exporting `folds` fold models, one forward of one image taking `image_s`; an int8 copy
    (calibration > 0) calibrated on `calibration` images and compared on `measured` held-back ones (as tiles when
    `tiled`); check_share: the parity checks' input as a share of an image (a tiled model checks one tile, not a
    1440 px image)."""
    seconds = EXPORT_BASE_S + folds * (EXPORT_FOLD_S + EXPORT_FORWARDS * image_s * min(1.0, check_share))
    if calibration:
        compared = INT8_MEASURED_FORWARDS * measured * (TILED_COST if tiled else 1.0)
        forwards = INT8_CALIBRATION_FORWARDS * calibration + compared
        seconds += INT8_BASE_S + folds * forwards * image_s
    return seconds


def shortened_steps(steps_per_epoch: int, steps_left: int, epoch_s: float, eval_s: float, share_left: float,
                    margin: float = SECOND_REPLAN_MARGIN) -> int:
    """When the next epoch would end past the fold's share, `share_left` seconds away: the steps of it that fit with
    its validation (+margin), to end the fold on, or 0 when under MIN_PARTIAL of an epoch fits and the fold stops.
    `steps_left`: the plan's steps to go; a whole epoch takes `epoch_s`, `eval_s` of it validation and checkpoint.
    A stop there leaves up to an epoch unused: CamVid's seed 1 stopped 0.4 s short of a 48 s epoch and used 91 % of
    its budget."""
    most = min(steps_per_epoch, steps_left) - 1  # fewer than the epoch that did not fit
    return partial_steps(steps_per_epoch, epoch_s, eval_s, max(0.0, share_left) / (1 + margin), most)


def later_replan_due(planned: int, done: int, steady: int, made: int) -> bool:
    """Whether a fold that has corrected its plan `made` times (1 or 2), now `planned` epochs, `done` of them,
    `steady` timed since the last correction, corrects it again now: at LATER_REPLAN_SHARES of the plan, with at
    least REPLAN_AFTER epochs to plan on and 2 still to go."""
    if not 1 <= made <= len(LATER_REPLAN_SHARES):
        return False
    share = LATER_REPLAN_SHARES[made - 1]
    return steady >= REPLAN_AFTER and done >= math.ceil(planned * share - 1e-9) and planned - done >= 2


def steady_estimate(measured: list[float]) -> float:
    """An epoch's seconds from epochs timed after the warm-up: the larger of their mean and the median of the last
    three (one slow epoch is noise; three are a slower machine)."""
    return max(statistics.fmean(measured), statistics.median(measured[-3:]))


def correction(planned_s: float, measured: list[float], later: bool) -> tuple[float, float]:
    """(epoch seconds, margin) a correction plans with: the first on every epoch timed (epoch_estimate, REPLAN_MARGIN),
    a later one on those since the one before (steady_estimate, SECOND_REPLAN_MARGIN)."""
    if later:
        return steady_estimate(measured), SECOND_REPLAN_MARGIN
    return epoch_estimate(planned_s, measured), REPLAN_MARGIN


def epoch_estimate(planned_s: float, measured: list[float]) -> float:
    """What the next epoch will take: the plan's estimate until an epoch was measured in this process, then the
    larger of the mean and the last one (a machine that slows down is believed at once)."""
    if not measured:
        return planned_s
    return max(sum(measured) / len(measured), measured[-1])


class Budget:
    """One run's clock. `started` is a reading of `clock` (time.monotonic) taken when the run began."""

    def __init__(self, seconds: float, started: float, clock: Callable[[], float] = time.monotonic):
        self.seconds, self.started, self.clock = float(seconds), started, clock
        self.plan: Plan | None = None
        self.scored_s: float | None = None  # the longest out-of-fold scoring measured so far
        self.fold_ids: list[int] = []  # the folds this run trains (cross_validate sets them)
        self.folds_left = 1  # this fold and the ones after it in this run (cross_validate sets it)
        self.test_images = 0  # the test list scored by every fold (cross_validate sets it)

    def elapsed(self) -> float:
        return self.clock() - self.started

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def score_s(self) -> float:
        if self.scored_s is not None:
            return self.scored_s * SCORED_MARGIN
        return self.plan.score_s if self.plan else 0.0

    def reserve(self, folds: int) -> float:
        """Seconds kept for the out-of-fold scoring of `folds` folds and the export."""
        return folds * self.score_s() + (self.plan.export_s if self.plan else 0.0)

    def record_scoring(self, seconds: float) -> None:
        self.scored_s = max(seconds, self.scored_s or 0.0)

    def fold_end(self, folds_left: int | None = None) -> float:
        """The clock reading by which this fold's training should end: an equal share, among this fold and the
        ones after it, of what is left once their scoring and the export are reserved."""
        folds = folds_left or self.folds_left
        return self.clock() + max(0.0, (self.left() - self.reserve(folds)) / folds)

    def next_epoch_fits(self, fold_end: float, epoch_s: float) -> bool:
        return self.clock() + epoch_s <= fold_end

    def stop_message(self, fold: int, done: int, epochs: int, fold_end: float, epoch_s: float) -> str:
        """The one line of a fold stopped by the clock after `done` of `epochs` planned epochs."""
        share_left = fold_end - self.clock()
        return (f"fold {fold}: budget: stopped early after epoch {done} of {epochs}: the next epoch (~"
                f"{format_duration(epoch_s)}) would end {format_duration(epoch_s - share_left)} past this fold's "
                f"share of the budget ({format_duration(max(0.0, self.left()))} left, "
                f"{format_duration(self.reserve(self.folds_left))} of it reserved for scoring and export); "
                "keeping the best checkpoint")
