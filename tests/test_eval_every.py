"""EVAL_EVERY=N: validation, the last checkpoint and the preview every N epochs; a fold's last epoch and the one the
time budget stops it after are always evaluated, so the weights a fold ends with can still be its best."""

from __future__ import annotations

import json
import logging
import re

import torch

import train
from config import config_hash, load_config
from conftest import tiny_argv, write_blobs
from training.budget import Budget, Plan, plan_epochs


def epoch_records(work) -> list[dict]:
    return [r for r in json.loads((work / "logs" / "metrics.json").read_text()) if r["kind"] == "epoch"]


def test_the_plan_counts_validation_and_the_checkpoint_once_every_n_epochs():
    p = plan_epochs(budget_s=1200, elapsed_s=50, step_s=0.5, steps_per_epoch=40, val_s=4.0, overhead_s=1.0, folds=1,
                    score_s=10.0, export_s=20.0, max_epochs=1000, eval_every=5)
    assert p.epoch_s == 21.0 and p.epochs == 48  # 1120 / (21 x 1.1) = 48.5
    assert "(40 steps of 0.50 s + (validation 4.0 s + checkpoint 1.0 s) every 5 epochs, +10% margin" in p.describe()
    saved = p.to_dict()
    del saved["eval_every"]  # a plan saved before EVAL_EVERY existed
    assert Plan.from_dict(saved).eval_every == 1


def test_eval_every_one_keeps_old_runs_resumable(tmp_path):
    base = load_config(tiny_argv(tmp_path, tmp_path / "work"), environ={})
    assert base.eval_every == 1
    assert config_hash(load_config(tiny_argv(tmp_path, tmp_path / "work", eval_every=1), environ={})) == \
        config_hash(base) != config_hash(load_config(tiny_argv(tmp_path, tmp_path / "work", eval_every=3), environ={}))


def test_a_fold_is_evaluated_every_n_epochs_and_at_its_last(tmp_path, caplog):
    data = write_blobs(tmp_path / "data", 12)
    work = tmp_path / "work"
    cfg = load_config(tiny_argv(data, work, epochs=5, eval_every=2, fold_ids=0, export="false", patience=100),
                      environ={})
    with caplog.at_level(logging.INFO, logger="seg"):
        train.run(cfg)
    assert [r["epoch"] for r in epoch_records(work)] == [1, 3, 4]
    assert re.search(r"fold 0 epoch 1/5  train loss [\d.]+ dice [\d.]+ \| lr ", caplog.text)  # trained, not evaluated
    assert re.search(r"fold 0 epoch 2/5  train .* \| val loss", caplog.text)
    last = torch.load(work / "models" / "fold0_last.pt", weights_only=True)
    assert last["state"]["epoch"] == 4 and last["state"]["finished"]
    assert torch.load(work / "models" / "fold0_best.pt", weights_only=True)["epoch"] in (1, 3, 4)


def test_the_epoch_a_budget_stops_after_is_evaluated(tmp_path, caplog, monkeypatch):
    """EVAL_EVERY=1000: no epoch is due an evaluation, and the clock stops the fold after its third epoch. That epoch
    is evaluated, so the fold has a best checkpoint of the weights it ends with."""
    data = write_blobs(tmp_path / "data", 12)
    work = tmp_path / "work"
    cfg = load_config(tiny_argv(data, work, epochs=10, eval_every=1000, fold_ids=0, export="false", patience=100,
                                time_budget="10m"), environ={})
    answers = iter([True, True])
    monkeypatch.setattr(Budget, "next_epoch_fits", lambda self, fold_end, epoch_s: next(answers, False))
    with caplog.at_level(logging.INFO, logger="seg"):
        train.run(cfg)
    assert "fold 0: budget: stopped early after epoch 3 of 10" in caplog.text
    assert [r["epoch"] for r in epoch_records(work)] == [2]
    assert torch.load(work / "models" / "fold0_best.pt", weights_only=True)["epoch"] == 2
    last = torch.load(work / "models" / "fold0_last.pt", weights_only=True)
    assert last["state"]["epoch"] == 2 and last["state"]["finished"] and last["state"]["stopped"] == "time budget"
