"""training/recipe.py: the plan from the data check's report and the budget; explicit settings always win."""

from __future__ import annotations

import pytest

from config import explicit_settings, load_config
from training.recipe import MANY_IMAGES, TARGET_EPOCHS, apply_recipe, load_saved, plan_recipe, save


def report(width=256, height=198, images=250, thin=17.5, fractions=None):
    spread = lambda v: {"min": v, "median": v, "max": v}  # noqa: E731
    return {"images": images, "sizes": {"width": spread(width), "height": spread(height)},
            "class_fractions": fractions or {"background": 0.8, "foreground": 0.2},
            "objects": {"foreground": {"thickness_px": {"p10": thin, "median": thin * 1.2}}}}


def plan(rep, argv=(), image_s=None, budget_s=None):
    cfg = load_config(list(argv), environ={})
    return {d.setting: d.value for d in plan_recipe(rep, cfg, set(explicit_settings(cfg)), image_s, budget_s)}, cfg


def test_without_a_budget_the_images_own_size_and_full_augmentation_for_a_small_set():
    decided, _ = plan(report(width=300, height=200, images=120))
    assert decided == {"input_size": 320, "ema": 0.999}  # 300 rounded up to the stride; AUGMENT's default is full


def test_many_images_get_flips_only():
    assert plan(report(images=MANY_IMAGES))[0]["augment"] == "flip"


def test_the_budget_buys_the_largest_size_with_enough_epochs():
    cost = lambda size: 1e-6 * size * size  # noqa: E731  seconds per image
    decided, cfg = plan(report(width=512, height=512, images=100, thin=30), ["--time-budget", "10m", "--folds", "5"],
                        cost)
    size = decided["input_size"]
    epochs = lambda s: 600 * 0.8 / (5 * 80 * cost(s))  # noqa: E731  5 folds of 80 training images
    assert epochs(size) >= TARGET_EPOCHS > epochs(size + 32)
    assert decided["epochs"] == 1000


def test_thin_structures_set_a_floor_the_budget_cannot_push_below():
    slow = lambda size: 10.0  # noqa: E731  nothing fits
    decided, _ = plan(report(width=512, height=512, thin=4.8), ["--time-budget", "5m"], slow)
    assert decided["input_size"] == 448  # 4.8 px membranes keep 4 px: 512 * 4 / 4.8 = 427, up to the stride
    cfg = load_config(["--time-budget", "5m"], environ={})
    [size] = [d for d in plan_recipe(report(width=480, height=320, thin=2.3), cfg, set(explicit_settings(cfg)), slow)
              if d.setting == "input_size"]
    assert size.value == 480 and "need the images' own size (480 px)" in size.reason  # 2.3 px cracks: every pixel


def test_large_images_with_thin_structures_train_on_native_patches():
    decided, _ = plan(report(width=4032, height=3024, thin=6.0))
    assert decided["input_size"] == 4032 and decided["train_patch"] == decided["tile"] == "384x384"
    assert decided["patches_per_image"] == 83  # 4032 x 3024 / 384^2, rounded up


def test_explicit_settings_are_never_replanned():
    decided, _ = plan(report(images=1000), ["--input-size", "192", "--augment", "full", "--ema", "0"])
    assert decided == {}
    assert "input_size" not in plan(report(), ["--patch-size", "160"])[0]  # the alias counts too


def test_rare_classes_get_weights():
    rep = report(fractions={"background": 0.9, "scratch": 0.005, "dent": 0.095})
    assert plan(rep, ["--classes", "3"])[0]["class_weights"] == "auto"


def test_a_config_built_in_code_counts_every_setting_as_given():
    from dataclasses import replace

    cfg = replace(load_config([], environ={}))
    assert plan_recipe(report(images=1000), cfg, set(explicit_settings(cfg))) == []


def test_the_plan_is_applied_and_saved_for_a_resumed_run(tmp_path):
    decided, cfg = plan(report(width=300, height=200))
    decisions = plan_recipe(report(width=300, height=200), cfg, set(explicit_settings(cfg)))
    assert apply_recipe(cfg, decisions).input_size == decided["input_size"] == 320
    save(tmp_path, {"k": 1}, decisions)
    assert load_saved(tmp_path, {"k": 1}) == decisions
    assert load_saved(tmp_path, {"k": 2}) is None and load_saved(tmp_path, None) == decisions


@pytest.mark.parametrize("env", [{"INPUT_SIZE": "256"}, {"AUGMENT": "none"}])
def test_an_env_var_counts_as_given(env):
    cfg = load_config([], environ=env)
    assert set(env.lower() for env in env) <= explicit_settings(cfg)


def test_a_short_budget_trains_one_model_with_a_tenth_held_back():
    cost = lambda size: 1e-6 * size * size  # noqa: E731
    short, _ = plan(report(width=512, height=512, images=100, thin=30), ["--time-budget", "10m"], cost)
    assert short["folds"] == 10 and short["fold_ids"] == "0"
    epochs = lambda s: 600 * 0.8 / (90 * cost(s))  # noqa: E731  one fold of 90 training images
    assert epochs(short["input_size"]) >= TARGET_EPOCHS
    long, _ = plan(report(width=512, height=512, images=100, thin=30), ["--time-budget", "10h"], cost)
    assert "folds" not in long and "fold_ids" not in long and "input_size" not in long  # 512, the default
    given, _ = plan(report(width=512, height=512, images=100, thin=30), ["--time-budget", "10m", "--fold-ids", "1"],
                    cost)
    assert "folds" not in given and "fold_ids" not in given


def test_a_budgeted_one_cycle_run_is_not_stopped_early():
    """Early stopping near the cycle's peak rate (a 2-image val fold stopped at 72 of 176 epochs) is planned away;
    a given --patience stays."""
    budgeted, _ = plan(report(width=512, height=512, images=100, thin=30), ["--time-budget", "10m"])
    assert budgeted["scheduler"] == "onecycle" and budgeted["patience"] >= budgeted["epochs"]
    given, _ = plan(report(width=512, height=512, images=100, thin=30), ["--time-budget", "10m", "--patience", "5"])
    assert "patience" not in given
    unbudgeted, _ = plan(report(width=512, height=512, images=100, thin=30), [])
    assert "patience" not in unbudgeted


def test_a_tiny_set_does_not_pass_one_step_epochs_for_training():
    """8 images, INPUT_SIZE given: 5 folds of 6 images would run 40 one-step epochs each in the budget; an epoch
    counts as at least MIN_EPOCH_STEPS batches, so the plan trains one fold (a fifth held back: under 20 images)."""
    from training.recipe import MIN_EPOCH_STEPS

    cost = lambda size: 1e-6 * size * size  # noqa: E731
    decided, cfg = plan(report(width=1440, height=960, images=8, thin=30), ["--time-budget", "10m", "--input-size",
                                                                            "512"], cost)
    assert decided["fold_ids"] == "0" and "folds" not in decided  # FOLDS stays 5: a fifth of 8 images held back
    assert 600 * 0.8 / (5 * 6 * cost(512)) >= TARGET_EPOCHS > 600 * 0.8 / (5 * MIN_EPOCH_STEPS * cfg.batch_size
                                                                           * cost(512))


def test_a_tiny_sets_size_reason_names_its_own_epochs_too():
    """24 ISBI-like slices: 21 training images an epoch, 3 batches, counted as MIN_EPOCH_STEPS: the reason gives the
    counted epochs and the set's own (about 80/21 times as many), which the run's budget then plans."""
    import re

    cost = lambda size: 4e-6 * size * size  # noqa: E731  plans 320 px, under the default 512
    cfg = load_config(["--time-budget", "30m"], environ={})
    rep = report(width=512, height=512, images=24, thin=30)
    [size] = [d for d in plan_recipe(rep, cfg, set(explicit_settings(cfg)), cost) if d.setting == "input_size"]
    counted, own = map(int, re.search(r"~(\d+) epochs counted as 10 steps each, ~(\d+) of the set's own", size.reason
                                      ).groups())
    assert counted >= TARGET_EPOCHS and abs(own - counted * 80 / 21) <= 1


def test_patches_given_by_hand_get_the_rest_of_the_patch_plan():
    decided, _ = plan(report(width=1440, height=1080, thin=3.0), ["--train-patch", "512x512"])
    assert decided["input_size"] == 1440 and decided["tile"] == "512x512"  # native patches, served as tiles
    assert decided["patches_per_image"] == 6  # 1440 x 1080 / 512^2, rounded up
    decided, _ = plan(report(width=1600, height=256, thin=3.0),
                      ["--train-patch", "256x320", "--input-size", "800", "--patches-per-image", "2"])
    assert "tile" not in decided  # images shrunk to half: tiles cut at their own size would not match
    assert "input_size" not in decided and "patches_per_image" not in decided
    decided, _ = plan(report(width=1600, height=256, thin=3.0), ["--train-patch", "256x320"])
    assert decided["input_size"] == 1600 and decided["patches_per_image"] == 5  # 1600 x 256 / (256 x 320)
    assert "tile" not in decided  # 0.4 megapixels run whole
