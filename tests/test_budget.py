"""TIME_BUDGET: parsing, the planner and the stop rule on a fake clock, then tiny real runs: the schedule spans the
planned steps, the probe trains nothing, a run ends within its budget with its export, and a resumed run keeps
its plan."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time

import pytest
import torch

import train
from config import config_hash, load_config
from conftest import ROOT, tiny_argv, write_blobs
from training import loop
from training.budget import (
    REPLAN_MARGIN, SECOND_REPLAN_MARGIN, Budget, epoch_estimate, format_duration, parse_duration, plan_epochs, replan,
    later_replan_due, replan_epoch, shortened_steps, steady_estimate,
)

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


@pytest.mark.parametrize("planned, after", [(1, 2), (3, 2), (20, 2), (26, 3), (81, 9), (1000, 100)])
def test_the_plan_is_corrected_after_a_tenth_of_it_and_at_least_two_epochs(planned, after):
    assert replan_epoch(planned) == after


@pytest.mark.parametrize("planned, done, epoch_s, left, cap, epochs", [
    (26, 2, 8.3, 240.0, 1000, 29),  # the probe overestimated: 240 / (8.3 x 1.05) = 27.5 more fit
    (26, 2, 12.0, 240.0, 1000, 21),  # the host slowed: fewer epochs, so the schedule still ends annealed
    (26, 2, 8.3, 240.0, 20, 20),  # EPOCHS caps it
    (26, 2, 8.3, 0.0, 1000, 3),  # nothing left: one more epoch (the clock decides whether it runs)
    (2, 2, 8.3, 240.0, 1000, 2),  # finished: unchanged
])
def test_replan_corrects_the_epochs_to_their_measured_time(planned, done, epoch_s, left, cap, epochs):
    assert replan(planned, done, epoch_s, left, cap) == epochs


@pytest.mark.parametrize("planned, done, steady, made, due", [
    (24, 12, 9, 1, True),  # half the corrected plan, 9 epochs timed since the first correction
    (24, 11, 8, 1, False),  # not yet half
    (24, 12, 1, 1, False),  # one epoch since the first correction (a resume): too few to plan on
    (6, 4, 2, 1, True), (6, 5, 3, 1, False),  # at least 2 epochs still to go: the last one cannot be corrected
    (24, 17, 5, 2, False), (24, 18, 6, 2, True),  # the third at three quarters, on the epochs since the second
    (24, 12, 9, 0, False), (24, 22, 4, 3, False),  # the first comes by replan_epoch; there is no fourth
])
def test_later_corrections_come_at_half_and_three_quarters_of_the_plan(planned, done, steady, made, due):
    assert later_replan_due(planned, done, steady, made) is due


def test_the_second_correction_plans_on_steady_epochs():
    assert steady_estimate([18.0, 19.0, 18.0, 18.0, 20.0]) == pytest.approx(18.6)  # one slow epoch: the mean
    assert steady_estimate([18.0, 18.0, 18.0, 22.0, 22.0]) == 22.0  # two of the last three slower: the machine is


# ----------------------------------------------------------------------------- tiny real runs


def records(work) -> list[dict]:
    return [r for r in json.loads((work / "logs" / "metrics.json").read_text()) if r["kind"] == "epoch"]


@pytest.mark.parametrize("scheduler, length_key", [("onecycle", "total_steps"), ("cosine", "T_max")])
def test_the_schedule_spans_exactly_the_planned_steps(tmp_path, scheduler, length_key):
    data = write_blobs(tmp_path / "data", 12)
    work = tmp_path / "work"
    train.run(load_config(tiny_argv(data, work, time_budget="10m", epochs=2, batch_size=2, fold_ids=0,
                                    export="false", scheduler=scheduler), environ={}))
    ckpt = torch.load(work / "models" / "fold0_last.pt", weights_only=True)
    fold_plan, saved = ckpt["state"]["plan"], json.loads((work / "models" / "budget_plan.json").read_text())
    assert fold_plan == {"budget_s": 600.0, "epochs": 2, "steps_per_epoch": 3, "total_steps": 6}  # 6 images / 2
    assert (saved["epochs"], saved["max_epochs"], saved["total_steps"]) == (2, 2, 6) and saved["fit"] >= 2
    assert ckpt["scheduler"][length_key] == 6 and ckpt["scheduler"]["last_epoch"] == 6  # every planned step taken
    if scheduler == "cosine":  # one decay that ends at its floor on the last planned step
        assert records(work)[-1]["lr"] == pytest.approx(1e-3 * 0.01)


@pytest.mark.parametrize("batch_shape, ema", [("square", 0), ("rect", 0), ("rect", 0.9)])
def test_the_probe_trains_nothing(tmp_path, batch_shape, ema):
    """A budgeted run whose plan is 2 epochs (EPOCHS caps it) logs the very numbers of an unbudgeted 2-epoch run:
    the probe's steps left no trace in the weights, the optimizer, the data order (rect: the shape batches), the
    augmentation or the EMA average (what val scores under EMA)."""
    data = write_blobs(tmp_path / "data", 12, size=(40, 100))
    same = dict(epochs=2, batch_size=2, fold_ids=0, export="false", scheduler="onecycle", batch_shape=batch_shape,
                ema=ema)
    train.run(load_config(tiny_argv(data, tmp_path / "plain", **same), environ={}))
    train.run(load_config(tiny_argv(data, tmp_path / "budget", time_budget="10m", **same), environ={}))
    keys = ("train_loss", "val_loss", "val_dice", "lr", "step")
    plain, budgeted = ([[r[k] for k in keys] for r in records(tmp_path / name)] for name in ("plain", "budget"))
    assert len(plain) == 2 and budgeted == plain


def test_a_budgeted_run_ends_within_its_budget_and_exports(tmp_path, caplog):
    """75 s for 2 folds, scoring and export, EPOCHS no limit, one torch thread (two threads on a busy 2-core machine
    oversubscribe it): the plan is measured, so it holds on a loaded machine."""
    data = write_blobs(tmp_path / "data", 12)
    work = tmp_path / "work"
    cfg = load_config(tiny_argv(data, work, time_budget="75s", epochs=1000, batch_size=2, patience=1000, threads=1),
                      environ={})
    start = time.monotonic()
    with caplog.at_level(logging.INFO, logger="seg"):
        train.run(cfg, started=start)
    took = time.monotonic() - start
    assert took <= 75 * 1.1, caplog.text
    assert (work / "model.onnx").is_file()
    saved = json.loads((work / "models" / "budget_plan.json").read_text())
    assert saved["folds"] == 2 and 1 <= saved["epochs"] < 1000 and saved["fit"] == saved["epochs"]  # the budget decided
    assert re.search(rf"budget 75 s → {saved['epochs']} epochs of [\d.]+ s per fold, 2 folds share it", caplog.text)
    assert re.search(r"budget 75 s: the run took .* included, the export [\d.]+ s of [\d.]+ s reserved", caplog.text)
    assert re.search(r"fold 1: budget: out-of-fold scoring took [\d.]+ s \([\d.]+ s reserved\)", caplog.text)
    for fold in (0, 1):  # each fold trained its planned epochs (as corrected after 2), or said why it stopped sooner
        trained = sum(r["fold"] == fold for r in records(work))
        planned = torch.load(work / "models" / f"fold{fold}_last.pt", weights_only=True)["state"]["plan"]["epochs"]
        assert 1 <= trained <= planned
        stopped = f"fold {fold}: budget: stopped early after epoch {trained} of {planned}"
        assert trained == planned or stopped in caplog.text, caplog.text


def test_a_killed_budgeted_run_resumes_with_its_plan(tmp_path, caplog, monkeypatch):
    """Killed after fold 0's first epoch (its epoch-1 checkpoint put back as the last one), fold 1 not started:
    the rerun measures nothing, fold 0 goes on under its own plan, fold 1 gets the saved run's plan."""
    data = write_blobs(tmp_path / "data", 12)
    work, models = tmp_path / "work", tmp_path / "work" / "models"
    cfg = load_config(tiny_argv(data, work, time_budget="10m", epochs=3, batch_size=2, export="false",
                                save_checkpoints="true", scheduler="onecycle", patience=100), environ={})
    train.run(cfg)
    (models / "fold0_last.pt").write_bytes((models / "fold0_epoch1.pt").read_bytes())
    for path in models.glob("fold1_*"):
        path.unlink()
    saved = json.loads((models / "budget_plan.json").read_text())
    assert saved["epochs"] == 3
    saved["epochs"] = 2  # what a rerun that planned again would not give: proof the file is what is used
    (models / "budget_plan.json").write_text(json.dumps(saved))
    monkeypatch.setattr(loop, "probe_fold", lambda *a, **k: pytest.fail("the resumed run measured again"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="seg"):
        train.run(cfg)
    text = caplog.text
    assert "budget 10 min → 2 epochs of" in text and "the plan saved in budget_plan.json, reused" in text
    assert "fold 0: resuming after epoch 1" in text and "fold 0 epoch 2/3" in text and "fold 0 epoch 1/3" not in text
    assert "fold 1 epoch 2/2" in text and "fold 1 epoch 3/" not in text
    for fold, epochs in ((0, 3), (1, 2)):
        ckpt = torch.load(models / f"fold{fold}_last.pt", weights_only=True)
        plan_of_fold = ckpt["state"]["plan"]
        assert plan_of_fold["epochs"] == epochs and plan_of_fold["total_steps"] == epochs * 3
        assert ckpt["scheduler"]["total_steps"] == ckpt["scheduler"]["last_epoch"] == epochs * 3


def misjudged_run(tmp_path, monkeypatch, epochs: int, **settings):
    """A one-fold 10-minute onecycle run on 12 blobs (3 steps an epoch) whose probe reports 50 s steps: it plans 3
    epochs and corrects them after 2. Returns (its config, its WORK_DIR)."""
    data = write_blobs(tmp_path / "data", 12)
    work = tmp_path / "work"
    cfg = load_config(tiny_argv(data, work, time_budget="10m", epochs=epochs, batch_size=2, export="false", fold_ids=0,
                                scheduler="onecycle", patience=100, **settings), environ={})
    probe = loop.probe_fold
    monkeypatch.setattr(loop, "probe_fold", lambda run, *a, **k: {**probe(run, *a, **k), "step_s": 50.0})
    return cfg, work


def test_a_plan_the_probe_misjudged_is_corrected_after_two_epochs_and_resumes_corrected(tmp_path, caplog, monkeypatch):
    """The probe reports 50 s steps (the plan: 3 epochs of a 10-minute budget); two real epochs take a second or two,
    so the fold's plan grows to EPOCHS=5, the OneCycle schedule rebuilt over exactly 5 epochs' steps; a rerun from
    the epoch-3 checkpoint keeps the corrected plan and corrects nothing again."""
    cfg, work = misjudged_run(tmp_path, monkeypatch, 5, save_checkpoints="true")
    models = work / "models"
    with caplog.at_level(logging.INFO, logger="seg"):
        train.run(cfg)
    assert "budget 10 min → 3 epochs of" in caplog.text
    assert re.search(r"fold 0: budget: epochs take [\d.]+ s, \d+ % less than the planned 2.5 min: 5 epochs instead "
                     r"of 3", caplog.text)
    assert [r["epoch"] for r in records(work)] == [0, 1, 2, 3, 4]
    ckpt = torch.load(models / "fold0_last.pt", weights_only=True)
    assert ckpt["state"]["plan"]["epochs"] == 5 and ckpt["state"]["plan"]["total_steps"] == 15
    assert ckpt["scheduler"]["total_steps"] == ckpt["scheduler"]["last_epoch"] == 15  # every step of the new curve
    curve = torch.optim.lr_scheduler.OneCycleLR(torch.optim.AdamW([torch.zeros(1)], lr=1e-3), 1e-3, total_steps=15)
    expected = []
    for _ in range(15):  # the learning rate after each step of a schedule planned for 15 steps from the start
        curve.optimizer.step()
        curve.step()
        expected.append(curve.get_last_lr()[0])
    assert [r["lr"] for r in records(work)][2:] == pytest.approx(expected[8::3])  # after the correction: that curve

    (models / "fold0_last.pt").write_bytes((models / "fold0_epoch3.pt").read_bytes())
    monkeypatch.setattr(loop, "replan_fold", lambda *a, **k: pytest.fail("corrected twice"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="seg"):
        train.run(cfg)
    assert "fold 0: resuming after epoch 3" in caplog.text and "fold 0 epoch 5/5" in caplog.text
    assert torch.load(models / "fold0_last.pt", weights_only=True)["scheduler"]["last_epoch"] == 15


def test_replan_to_the_step_fills_what_whole_epochs_leave():
    from training.budget import MIN_PARTIAL, replan_steps

    # after 2 epochs, epochs of 30 s (25 s of 50 steps + 5 s of validation), a 5 % margin. 95 s left: 3 more whole
    # epochs and too little after them for a useful last one; 110 s: 3 more, then a last one of the steps that fit
    assert replan_steps(10, 2, 50, 30.0, 5.0, 95.0, 1000) == (5, 250)
    epochs, total = replan_steps(10, 2, 50, 30.0, 5.0, 110.0, 1000)
    assert epochs == 6 and 5 * 50 + MIN_PARTIAL * 50 <= total < 6 * 50
    seconds = 3 * 30.0 + 5.0 + (total - 250) * 0.5  # the whole epochs, the last one's validation and its steps
    assert seconds * 1.05 <= 110.0 < (seconds + 0.5) * 1.05 + 0.5
    assert replan_steps(10, 2, 50, 30.0, 5.0, 110.0, 5) == (5, 250)  # EPOCHS caps it: no extra epoch
    assert replan_steps(10, 10, 50, 30.0, 5.0, 500.0, 1000) == (10, 500)  # a finished plan stays as it is


def test_a_last_shorter_epoch_trains_exactly_the_planned_steps(tmp_path, caplog, monkeypatch):
    """A corrected plan of 14 steps at 3 steps an epoch: 4 whole epochs and a fifth of 2 steps, the schedule ending
    exactly on its last step, the fifth epoch evaluated like any other."""
    cfg, work = misjudged_run(tmp_path, monkeypatch, 5)
    monkeypatch.setattr(loop, "replan_steps", lambda *a, **k: (5, 14))
    with caplog.at_level(logging.INFO, logger="seg"):
        train.run(cfg)
    assert "5 epochs (the last one 2 of 3 steps) instead of 3" in caplog.text
    assert [r["epoch"] for r in records(work)] == [0, 1, 2, 3, 4] and records(work)[-1]["step"] == 14
    ckpt = torch.load(work / "models" / "fold0_last.pt", weights_only=True)
    assert ckpt["scheduler"]["total_steps"] == ckpt["scheduler"]["last_epoch"] == 14 == ckpt["state"]["step"]


def test_a_tiled_models_export_reserve_counts_its_checks_at_tile_size():
    """The parity checks of a tiled model run on one tile: a 1440 px image's forward must not be reserved 30 times."""
    from training.budget import export_estimate

    from training.budget import EXPORT_FORWARDS

    whole = export_estimate(1, image_s=1.6)
    tiled = export_estimate(1, image_s=1.6, check_share=384 * 384 / 1440 ** 2)
    assert whole - tiled == pytest.approx(EXPORT_FORWARDS * 1.6 * (1 - 384 * 384 / 1440 ** 2))
    assert export_estimate(1, 0.03, check_share=4.0) == export_estimate(1, 0.03)  # never more than an image


def test_a_tiled_models_scoring_and_int8_comparison_reserve_its_tiles_overlap():
    """The mosaics (1 fold, 2 val images of 1.5 s, 6 calibration images, 384 px tiles of 1440 px images) reserved 12 s
    for scoring that took 16 s and 30 s for an export that took 46 s; counting the tiles' overlap covers both."""
    from training.budget import TILED_COST, export_estimate, score_estimate

    assert score_estimate(3.0, 2, 2) == pytest.approx(12.0)  # whole images: unchanged
    assert score_estimate(3.0, 2, 2, tiled=True) >= 16
    share = 384 * 384 / 1440 ** 2
    assert export_estimate(1, 1.5, calibration=6, measured=2, check_share=share) < 46
    assert export_estimate(1, 1.5, calibration=6, measured=2, check_share=share, tiled=True) >= 46
    assert export_estimate(1, 1.5, check_share=share, tiled=True) == export_estimate(1, 1.5, check_share=share)
    assert TILED_COST > 1


def test_an_int8_copy_reserves_a_forward_per_calibration_image_and_more_per_compared_one():
    from training.budget import INT8_BASE_S, INT8_MEASURED_FORWARDS, export_estimate

    plain = export_estimate(1, image_s=0.2)
    forwards = 64 + 8 * INT8_MEASURED_FORWARDS
    assert INT8_MEASURED_FORWARDS >= 3  # fp32, int8, then timed: measured 3.3-5.4 forwards an image
    assert export_estimate(1, 0.2, calibration=64, measured=8) - plain == pytest.approx(INT8_BASE_S + 0.2 * forwards)
    assert export_estimate(2, 0.2, calibration=64, measured=8) - export_estimate(2, 0.2) == pytest.approx(
        INT8_BASE_S + 2 * 0.2 * forwards)  # every fold of an ensemble is calibrated
    assert export_estimate(1, 0.2, calibration=0, measured=8) == plain  # no int8 copy


def test_a_plan_is_corrected_again_at_half_and_three_quarters_on_the_epochs_since_the_last(tmp_path, caplog,
                                                                                          monkeypatch):
    """The first correction plans 6 epochs of 3 steps, the second (after epochs 3 and 4, timed since) 12 epochs, the
    last of 1 step, the third (after epoch 9, on epochs 5-9) 13: the schedule is rebuilt each time and ends exactly
    on its last step."""
    cfg, work = misjudged_run(tmp_path, monkeypatch, 14)
    calls = []

    def replan_steps(planned, done, *args):
        calls.append((planned, done, args[-1]))  # the last: the margin
        return [(6, 18), (12, 34), (13, 37)][len(calls) - 1]

    monkeypatch.setattr(loop, "replan_steps", replan_steps)
    with caplog.at_level(logging.INFO, logger="seg"):
        train.run(cfg)
    assert calls == [(3, 2, REPLAN_MARGIN), (6, 4, SECOND_REPLAN_MARGIN), (12, 9, SECOND_REPLAN_MARGIN)]
    assert re.search(r"fold 0: budget: epochs since the last correction take [\d.]+ s, \d+ % (more|less) than the "
                     r"corrected [\d.]+ \w+: 12 epochs \(the last one 1 of 3 steps\) instead of 6", caplog.text)
    assert "13 epochs (the last one 1 of 3 steps) instead of 12" in caplog.text
    assert [r["epoch"] for r in records(work)] == list(range(13)) and records(work)[-1]["step"] == 37
    ckpt = torch.load(work / "models" / "fold0_last.pt", weights_only=True)
    assert ckpt["state"]["replanned"] == 3 and ckpt["state"]["plan"]["total_steps"] == 37
    assert ckpt["scheduler"]["total_steps"] == ckpt["scheduler"]["last_epoch"] == 37 == ckpt["state"]["step"]


def test_an_epoch_that_does_not_fit_whole_is_cut_to_the_steps_that_do():
    """50 steps of 0.5 s and 5 s of validation: 20 s hold 29 steps and the validation (2 % margin); under a quarter
    of an epoch the fold stops instead."""
    assert shortened_steps(50, 50, 30.0, 5.0, 20.0) == 29
    assert shortened_steps(50, 50, 30.0, 5.0, 11.0) == 0  # 11 steps fit: under 12.5
    assert shortened_steps(50, 30, 30.0, 5.0, 25.0) == 29  # a planned shorter epoch of 30 steps loses one at least


@pytest.mark.parametrize("cut", [2, 0])
def test_a_last_epoch_that_does_not_fit_whole_is_trained_short_not_skipped(tmp_path, caplog, monkeypatch, cut):
    """The clock says the fourth of 5 planned epochs (3 steps each) does not fit: with 2 of its steps fitting the
    fold trains them as its last epoch, its schedule ending on them; with none, it stops after the third."""
    cfg, work = misjudged_run(tmp_path, monkeypatch, 5)
    monkeypatch.setattr(loop, "replan_steps", lambda *a, **k: (5, 15))
    boundaries = []

    def fits(self, end, epoch_s):
        boundaries.append(epoch_s)
        return len(boundaries) < 3  # after the first and second epochs; not after the third

    monkeypatch.setattr(Budget, "next_epoch_fits", fits)
    monkeypatch.setattr(loop, "shortened_steps", lambda spe, steps, *a: cut if (spe, steps) == (3, 6) else 99)
    with caplog.at_level(logging.INFO, logger="seg"):
        train.run(cfg)
    ckpt = torch.load(work / "models" / "fold0_last.pt", weights_only=True)
    if cut:
        assert re.search(r"fold 0: budget: the next epoch \(~[\d.]+ \w+\) would end past this fold's share: it is the "
                         r"last, 2 of 3 steps", caplog.text)
        assert [r["epoch"] for r in records(work)] == [0, 1, 2, 3] and records(work)[-1]["step"] == 11
        assert ckpt["scheduler"]["total_steps"] == ckpt["scheduler"]["last_epoch"] == 11 == ckpt["state"]["step"]
        assert ckpt["state"]["plan"]["epochs"] == 4 and "stopped early" not in caplog.text
    else:
        assert "stopped early after epoch 3 of 5" in caplog.text and ckpt["state"]["stopped"] == "time budget"
        assert [r["epoch"] for r in records(work)] == [0, 1, 2]
