"""TIME_BUDGET: parsing, the setting, and the planner and the stop rule on numbers and a fake clock
(training/budget.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from config import config_hash, load_config
from conftest import ROOT
from training.budget import Budget, epoch_estimate, format_duration, parse_duration, plan_epochs

# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("20m", 1200), ("1h", 3600), ("1h30m", 5400), ("1.5h", 5400), ("30m15s", 1815), ("1h 30m", 5400),
    ("20M", 1200), ("600", 600), ("2.5", 3), ("", 0), ("0", 0), ("off", 0), ("none", 0),
])
def test_durations_parse_to_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5x", "m", "20 minutes", "h1", "1h-3m", "-5", "nan", "inf"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


def test_time_budget_setting_from_env_and_flag():
    assert load_config([], environ={}).time_budget == 0
    assert load_config([], environ={"TIME_BUDGET": ""}).time_budget == 0
    assert load_config([], environ={"TIME_BUDGET": "20m"}).time_budget == 1200
    assert load_config(["--time-budget", "1h30m"], environ={"TIME_BUDGET": "20m"}).time_budget == 5400


def test_a_bad_budget_is_one_clear_line():
    done = subprocess.run([sys.executable, "train.py", "--time-budget", "5x"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    assert "--time-budget='5x' is not a valid duration" in lines[0] and "1h30m" in lines[0]


def test_a_budget_changes_the_hash_but_no_budget_keeps_old_runs_resumable():
    base = config_hash(load_config([], environ={}))
    assert config_hash(load_config(["--time-budget", "0"], environ={})) == base
    assert config_hash(load_config(["--time-budget", "20m"], environ={})) != base


@pytest.mark.parametrize("seconds, text", [(2.44, "2.4 s"), (26, "26 s"), (90, "90 s"), (150, "2.5 min"),
                                           (1200, "20 min"), (5400, "90 min"), (9000, "2.5 h")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


# ----------------------------------------------------------------------------- the planner, on numbers


def plan(**overrides):
    """One epoch: 40 steps x 0.5 s + 4 s validation + 1 s checkpoint = 25 s, planned as 27.5 s."""
    settings = dict(budget_s=1200, elapsed_s=50, step_s=0.5, steps_per_epoch=40, val_s=4.0, overhead_s=1.0, folds=1,
                    score_s=10.0, export_s=20.0, max_epochs=1000)
    return plan_epochs(**{**settings, **overrides})


def test_plan_from_measured_times():
    p = plan()  # (1200 - 50 spent - 10 scoring - 20 export) / 27.5 = 40.7
    assert (p.epoch_s, p.epochs, p.total_steps, p.reserve_s) == (25.0, 40, 1600, 30.0)
    assert p.fits and not p.capped
    assert p.headline() == "budget 20 min → 40 epochs of 25 s"
    assert p.describe().startswith("budget 20 min → 40 epochs of 25 s (40 steps of 0.50 s + validation 4.0 s")


def test_folds_share_the_budget():
    p = plan(folds=2)  # (1200 - 50 - 2 x 10 - 20) / 2 / 27.5 = 20.2
    assert (p.epochs, p.total_steps, p.reserve_s) == (20, 800, 40.0)
    assert "per fold, 2 folds share it" in p.describe()


def test_epochs_cap_the_plan():
    p = plan(max_epochs=12)
    assert (p.epochs, p.fit, p.capped, p.total_steps) == (12, 40, True, 480)
    assert "EPOCHS=12 caps it (the budget has room for 40)" in p.describe()


def test_a_budget_too_small_for_one_epoch_plans_one_with_a_warning():
    p = plan(budget_s=90)  # 90 - 50 - 30 = 10 s left for a 27.5 s epoch
    assert (p.epochs, p.fit, p.fits, p.total_steps) == (1, 0, False, 40)
    assert "is too small" in p.shortfall() and "training 1 epoch per fold anyway" in p.shortfall()


def test_the_plan_round_trips_through_json():
    p = plan(folds=3)
    assert type(p).from_dict(json.loads(json.dumps(p.to_dict()))) == p and p.to_dict()["total_steps"] == p.total_steps


class FakeClock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_fold_shares_and_the_stop_rule_on_a_fake_clock():
    clock = FakeClock(100.0)
    budget = Budget(1200, started=100.0, clock=clock)
    budget.plan, budget.folds_left = plan(folds=2), 2
    clock.now = 150.0  # 50 s spent: imports, cache, probe
    end = budget.fold_end()  # (1150 left - 2 x 10 scoring - 20 export) / 2 folds
    assert end == pytest.approx(150 + 555)
    clock.now = end - 30
    assert budget.next_epoch_fits(end, 25) and not budget.next_epoch_fits(end, 31)
    line = budget.stop_message(0, 18, 20, end, 31)
    assert line.startswith("fold 0: budget: stopped early after epoch 18 of 20: the next epoch (~31 s) would end "
                           "1.0 s past this fold's share") and "keeping the best checkpoint" in line
    budget.record_scoring(8.0)  # fold 0 scored in 8 s: 10 s (x 1.25) reserved per fold from now on
    assert budget.score_s() == 10.0
    clock.now, budget.folds_left = 713.0, 1  # fold 1 starts late: it gets what is left, less its reserve
    assert budget.fold_end() == pytest.approx(100 + 1200 - 10 - 20)


def test_the_next_epoch_is_estimated_from_the_plan_then_from_measured_epochs():
    assert epoch_estimate(25.0, []) == 25.0
    assert epoch_estimate(25.0, [20.0, 22.0, 30.0]) == 30.0  # slowing down: the last one
    assert epoch_estimate(25.0, [30.0, 20.0]) == 25.0  # a fast one: the mean
