"""RECIPE=auto's trial of two candidates: under a TIME_BUDGET that can afford it, the plan's costliest guess, AUGMENT
(full: flips, affine and colour; flip: flips alone), is tried both ways before the main run, and the better one kept.

    python train.py --raw-img-dir data/images --raw-mask-dir data/masks --time-budget 1h   # TRIAL=auto: from 30 min
    python train.py ... --time-budget 20m --trial on                                       # under any budget

Why AUGMENT: the recipe's rule (full below MANY_IMAGES training images, flip from there on) is a guess from the image
count, and a wrong guess cost more than the pipeline's lead in the comparisons (-0.035 Dice on CamVid with full,
-0.016 on horse with flip). The size is planned from measured costs and the rest rarely matters as much.

Each candidate trains one model for TRIAL_SHARE of the budget, on the same split (a tenth of the images held back,
the run's seed), planned and scheduled by the budget as the main run is, and is scored as the main run scores its
folds: per-image Dice at each image's own size, at its best threshold. The rule's choice stands unless the other
candidate beats it by more than TRIAL_MARGIN, because two runs of one script differ by up to 0.03 Dice and a short
run's small lead is noise. A short trial also favours the weaker augmentation (it learns faster at first), so the
margin guards the rule from that bias too.

The main run plans its size and epochs on what the trials leave of the budget. WORK_DIR/trial/<candidate>/ holds each
trial's models and logs, and WORK_DIR/trial.json the scores: a killed run resumes a trial where it stopped and never
repeats a finished one. The choice is logged, and saved in config.json (`recipe_plan`) like every other decision.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from config import Config, config_hash, explicit_settings, with_explicit
from training.recipe import Decision, held_out_folds
from utils import LOG, atomic_write_json

TRIAL_MIN_S = 30 * 60  # under this a trial gets under 3 minutes: too few epochs on a CPU to rank the candidates
TRIAL_SHARE = 0.1  # of TIME_BUDGET, each candidate's run
TRIAL_MARGIN = 0.01  # the other candidate replaces the rule's choice only when it leads by more than this
CANDIDATES = ("full", "flip")
TRIAL_FILE = "trial.json"  # in WORK_DIR: {"key": ..., "scores": {candidate: dice}}; config.json: trial_scores
SCORE = "oof_dice_at_best_threshold"  # cv_summary.json's per-image Dice at each image's own size, best threshold


def wanted(cfg: Config, explicit: frozenset[str] | set[str]) -> bool:
    """Whether this run tries both AUGMENT candidates first: RECIPE=auto, a segmenter under TIME_BUDGET, AUGMENT not
    given, and TRIAL=on (or auto with at least TRIAL_MIN_S of budget)."""
    if cfg.recipe != "auto" or cfg.task != "segment" or not cfg.time_budget or "augment" in explicit:
        return False
    return cfg.trial == "on" or (cfg.trial == "auto" and cfg.time_budget >= TRIAL_MIN_S)


def reserve_s(cfg: Config) -> float:
    """The budget the trials take, which the recipe's size plan leaves to them."""
    return len(CANDIDATES) * TRIAL_SHARE * cfg.time_budget


def choose(rule: str, scores: dict[str, float]) -> tuple[str, str]:
    """(the AUGMENT to train with, why): the rule's choice unless the other one leads by more than TRIAL_MARGIN."""
    other = next(c for c in scores if c != rule)
    said = f"the trial on a tenth held back: {other} {scores[other]:.4f}, {rule} {scores[rule]:.4f}"
    if scores[other] > scores[rule] + TRIAL_MARGIN:
        return other, f"{said}: {other} leads by more than {TRIAL_MARGIN:g}"
    return rule, f"{said}: {other} does not lead by more than {TRIAL_MARGIN:g}, so the rule's {rule} stands"


def trial_config(cfg: Config, candidate: str, images: int) -> Config:
    """One candidate's run: its own WORK_DIR under WORK_DIR/trial, one model with a tenth held back (split lists, when
    given, as the main run splits them: the test list never trains), its share of the budget, no export, no tracker."""
    folds = held_out_folds(images, cfg.folds)
    return dataclasses.replace(cfg, work_dir=str(Path(cfg.work_dir) / "trial" / candidate), augment=candidate,
                               folds=folds, fold_ids="0", time_budget=max(1, round(cfg.time_budget * TRIAL_SHARE)),
                               export=False, tracker="none")


def load_scores(path: Path, key: dict) -> dict[str, float]:
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return dict(saved.get("scores", {})) if isinstance(saved, dict) and saved.get("key") == key else {}


def train_candidate(cfg: Config, entries: list, sources: dict, device) -> float:
    """Train and score one candidate (train.run's loop on its own WORK_DIR and budget) -> its held-back Dice."""
    from training.budget import Budget
    from training.distributed import is_main
    from training.loop import cross_validate
    from training.metrics import MetricsLog, Tracker
    from training.splits import resolve_splits
    from training.tasks import make_task

    work = Path(cfg.work_dir)
    splits, fold_ids, _ = resolve_splits(cfg, entries)
    metrics = MetricsLog(work / "logs" / "metrics.json", write=is_main())
    budget = Budget(cfg.time_budget, time.monotonic())
    summary, _ = cross_validate(make_task(cfg), entries, sources, splits, fold_ids[:1], [], device, metrics,
                                Tracker("none", work / "logs", {}), budget)
    if is_main():
        atomic_write_json(work / "cv_summary.json", summary)
    return float(summary[SCORE])


def run_trial(cfg: Config, entries: list, sources: dict, device) -> Config:
    """Train both candidates (those WORK_DIR/trial.json does not hold yet), choose, log, and record the choice in
    config.json -> `cfg` with the chosen AUGMENT. Each candidate, and the main run after them, starts from the random
    state the run had before the trials: both candidates from the same initial weights, and the main run as if no
    trial had run (so a resumed run that skips them trains the same)."""
    from training.budget import format_duration
    from training.distributed import broadcast, is_main
    from training.rng import random_state, set_random_state

    work, rule = Path(cfg.work_dir), cfg.augment
    path = work / TRIAL_FILE
    key = {"config_hash": config_hash(cfg), "share": TRIAL_SHARE, "images": len(entries)}
    scores = broadcast(load_scores(path, key) if is_main() and cfg.resume else {})
    order = [rule] + [c for c in CANDIDATES if c != rule]
    before = random_state()
    for number, candidate in enumerate(order, 1):
        trial = trial_config(cfg, candidate, len(entries))
        if candidate in scores:
            LOG.info("trial %d/%d: AUGMENT=%s scored %.4f before (%s), not tried again", number, len(order),
                     candidate, scores[candidate], path.name)
            continue
        LOG.info("trial %d/%d: AUGMENT=%s for %s on a tenth of the images held back (in %s)", number, len(order),
                 candidate, format_duration(trial.time_budget), Path("trial") / candidate)
        set_random_state(before)
        scores[candidate] = broadcast(train_candidate(trial, entries, sources, device))
        LOG.info("trial %d/%d: AUGMENT=%s: held-back Dice %.4f", number, len(order), candidate, scores[candidate])
        if is_main():
            atomic_write_json(path, {"key": key, "scores": scores})
    set_random_state(before)
    chosen, why = choose(rule, scores)
    decision = Decision("augment", chosen, why)
    LOG.info("%s", decision.line())
    chosen_cfg = with_explicit(dataclasses.replace(cfg, augment=chosen), explicit_settings(cfg))
    if is_main():  # the trial's line replaces the rule's: the plan names one AUGMENT
        saved = work / "config.json"
        lines = json.loads(saved.read_text()).get("recipe_plan", []) if saved.is_file() else []
        lines = [line for line in lines if not line.startswith("recipe: AUGMENT=")] + [decision.line()]
        chosen_cfg.save(extra={"recipe_plan": lines, "trial_scores": scores})
    return chosen_cfg
