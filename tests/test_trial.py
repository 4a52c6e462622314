"""RECIPE=auto's trial of both AUGMENT candidates (training/trial.py): when it runs, how it chooses, and a tiny real run
that tries both, trains the main run with the choice, records it, and never repeats a finished trial."""

from __future__ import annotations

import json
import logging

import pytest

import train
from config import load_config
from conftest import tiny_argv, write_blobs
from training import trial


@pytest.mark.parametrize("argv, env, wanted", [
    (["--time-budget", "30m"], {}, True),  # TRIAL=auto: from 30 minutes on
    (["--time-budget", "29m"], {}, False),
    (["--time-budget", "10m", "--trial", "on"], {}, True),
    ([], {"TRIAL": "on"}, False),  # no budget: nothing to share
    (["--time-budget", "1h", "--trial", "off"], {}, False),
    (["--time-budget", "1h", "--augment", "flip"], {}, False),  # a given AUGMENT is never tried against another
    (["--time-budget", "1h"], {"AUGMENT": "full"}, False),
    (["--time-budget", "1h", "--recipe", "off"], {}, False),
    (["--time-budget", "1h", "--task", "classify"], {}, False),
])
def test_the_trial_runs_only_under_a_budget_that_affords_it_and_never_overrides_a_given_augment(argv, env, wanted):
    from config import explicit_settings

    cfg = load_config(argv, environ=env)
    assert trial.wanted(cfg, explicit_settings(cfg)) is wanted


@pytest.mark.parametrize("rule, scores, chosen", [
    ("full", {"full": 0.70, "flip": 0.705}, "full"),  # a lead within the margin is noise: the rule stands
    ("full", {"full": 0.70, "flip": 0.7101}, "flip"),
    ("full", {"full": 0.72, "flip": 0.60}, "full"),
    ("flip", {"full": 0.705, "flip": 0.70}, "flip"),
    ("flip", {"full": 0.7101, "flip": 0.70}, "full"),
])
def test_the_other_candidate_must_lead_by_more_than_the_margin(rule, scores, chosen):
    picked, why = trial.choose(rule, scores)
    assert picked == chosen and f"{scores['full']:.4f}" in why and f"{scores['flip']:.4f}" in why


def records(work, keys) -> list[list]:
    return [[r[k] for k in keys] for r in json.loads((work / "logs" / "metrics.json").read_text())
            if r.get("kind") == "epoch"]


def test_a_trial_tries_both_then_trains_the_choice_and_a_rerun_does_not_try_again(tmp_path, caplog, monkeypatch):
    data = write_blobs(tmp_path / "data", 12)
    work = tmp_path / "work"
    cfg = load_config(tiny_argv(data, work, time_budget="60s", trial="on", epochs=2, batch_size=2, export="false",
                                threads=1), environ={})
    seen = []
    plan_recipe = train.plan_recipe
    monkeypatch.setattr(train, "plan_recipe", lambda *a: seen.append(a[3]) or plan_recipe(*a))
    with caplog.at_level(logging.INFO, logger="seg"):
        train.run(cfg)
    text = caplog.text
    assert seen and seen[0] <= 60 - trial.reserve_s(cfg)  # the recipe plans on what the trials leave
    assert "trial 1/2: AUGMENT=full" in text and "trial 2/2: AUGMENT=flip" in text  # 12 images: the rule says full
    scores = json.loads((work / "trial.json").read_text())["scores"]
    assert set(scores) == {"full", "flip"} and all(0 <= s <= 1 for s in scores.values())
    chosen, why = trial.choose("full", scores)
    saved = json.loads((work / "config.json").read_text())
    assert saved["augment"] == chosen and saved["recipe_plan"][-1] == f"recipe: AUGMENT={chosen}: {why}"
    assert sum(line.startswith("recipe: AUGMENT=") for line in saved["recipe_plan"]) == 1
    assert saved["trial_scores"] == scores and saved["trial"] == "on"
    for candidate in ("full", "flip"):  # each trial in its own folder, one model with its share of the budget
        trial_work = work / "trial" / candidate
        assert (trial_work / "models" / "fold0_best.pt").is_file()
        assert json.loads((trial_work / "models" / "budget_plan.json").read_text())["budget_s"] == 6
        assert json.loads((trial_work / "cv_summary.json").read_text())[trial.SCORE] == scores[candidate]
    for folder in (work, work / "trial" / "full", work / "trial" / "flip"):  # each run logged in its own folder
        epochs = [r["epoch"] for r in json.loads((folder / "logs" / "metrics.json").read_text())
                  if r.get("kind") == "epoch" and r["fold"] == 0]
        assert epochs and epochs == list(range(len(epochs))), folder
    assert json.loads((work / "cv_summary.json").read_text())["folds"].keys() == {"0", "1"}

    # the main run trains as it would have without the trials (they leave the random state as they found it)
    alone = tmp_path / "alone"
    train.run(load_config(tiny_argv(data, alone, time_budget="60s", augment=chosen, epochs=2, batch_size=2,
                                    export="false", threads=1), environ={}))
    assert not (alone / "trial").exists()
    keys = ("fold", "epoch", "train_loss", "val_loss", "val_dice", "lr")
    assert records(work, keys) == records(alone, keys)

    monkeypatch.setattr(trial, "train_candidate", lambda *a: pytest.fail("a finished trial was tried again"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="seg"):
        train.run(cfg)
    assert "AUGMENT=full scored" in caplog.text and "not tried again" in caplog.text
    assert json.loads((work / "config.json").read_text())["augment"] == chosen
