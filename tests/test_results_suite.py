"""bench/results_suite.py and bench/hand_tuned.py: the quick smoke run, the merges, and the published tables equal to
what their JSONs say."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import hand_tuned  # noqa: E402
import results_suite  # noqa: E402


def test_quick_run_writes_three_rows_per_seed(tmp_path):
    out = tmp_path / "suite"
    done = subprocess.run([sys.executable, "bench/results_suite.py", "--quick", "--out-dir", str(out), "--work",
                           str(tmp_path / "work")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "blobs.json").read_text())
    assert set(result["runs"]) == set(results_suite.ROWS) and result["seeds"] == [42]
    for row, runs in result["runs"].items():
        [run] = runs
        assert 0 <= run["dice"] <= 1 and 0 <= run["pixel_dice"] <= 1 and run["epochs"] >= 1, row
        assert run["before"]["matmul_gflops"] > 0
    pipeline, matched = result["runs"]["pipeline"][0], result["runs"]["plain_recipe"][0]
    assert any("recipe: " in line for line in pipeline["recipe"])  # RECIPE=auto planned it
    assert matched["flags"] == ["--augment", pipeline["augment"], "--threshold", "heldout"]
    assert result["runs"]["plain"][0]["threshold"] == 0.5 and result["runs"]["plain"][0]["flags"] == []
    table = results_suite.table([result])
    assert table.count("\n") == 2 and "generated blobs" in table


@pytest.mark.parametrize("path, render", [("README.md", results_suite.table), ("docs/results.md", results_suite.details)])
def test_published_numbers_are_their_jsons(path, render):
    """The tables between the results-suite markers are exactly what --tables writes from bench/results/suite/."""
    results = results_suite.load_results()
    assert results, "bench/results/suite/ holds no results"
    assert results_suite.published(ROOT / path) == render(results).rstrip(), (
        f"{path} disagrees with bench/results/suite/*.json: run python bench/results_suite.py --tables")


def _run(seed: int, dice: float, augment: str | None = None) -> dict:
    run = {"seed": seed, "dice": dice, "pixel_dice": dice, "epochs": 3, "wall_s": 590.0}
    if augment is not None:
        run["augment"] = augment
    return run


def _set(seeds: list[int], rows=results_suite.ROWS, dice: float = 0.5, augment: str = "flip") -> dict:
    runs = {row: [] for row in results_suite.ROWS}
    for row in rows:
        for seed in seeds:
            run = _run(seed, dice, augment if row == "pipeline" else None)
            if row != "pipeline":
                run["flags"] = [] if row == "plain" else ["--augment", augment, "--threshold", "heldout"]
            runs[row].append(run)
    return {"set": "s", "budget": "10m", "seeds": seeds, "runs": runs, "rows": list(rows), "summary": {}}


def test_rerun_rows_replace_their_seed_and_keep_the_rest(capsys):
    """--rows pipeline: the seed's pipeline run is replaced, the plain rows and the other seed are kept."""
    old = _set([1, 42], dice=0.5)
    old.pop("rows")
    result = results_suite.merged(old, _set([1], rows=("pipeline",), dice=0.7))
    assert [(r["seed"], r["dice"]) for r in result["runs"]["pipeline"]] == [(1, 0.7), (42, 0.5)]
    for row in ("plain_recipe", "plain"):
        assert [(r["seed"], r["dice"]) for r in result["runs"][row]] == [(1, 0.5), (42, 0.5)]
    assert result["seeds"] == [1, 42] and "rows" not in result
    assert result["summary"]["pipeline"]["mean_dice"] == pytest.approx(0.6)
    assert "WARNING" not in capsys.readouterr().out
    # a recipe that now picks another augmentation than its plain + recipe row ran with is said out loud
    results_suite.merged(old, _set([1], rows=("pipeline",), dice=0.7, augment="full"))
    assert "AUGMENT=full" in capsys.readouterr().out


def test_rerun_rows_need_the_rows_they_keep():
    with pytest.raises(SystemExit, match="no earlier JSON"):
        results_suite.merged(None, _set([1], rows=("pipeline",)))
    old = _set([42])
    with pytest.raises(SystemExit, match="lacks seeds"):  # a new seed must run every row
        results_suite.merged(old, _set([1], rows=("pipeline",)))


def _hand(runs: dict[str, list[tuple[int, float]]]) -> dict:
    return {"set": "s", "budget": "10m", "candidates": {
        label: {"flags": ["--input-size", label], "why": "w", "runs": [
            {"seed": seed, "dice": dice, "pixel_dice": dice, "input_size": int(label), "epochs": 3, "wall_s": 590.0,
             "code": "abc"} for seed, dice in seeds]} for label, seeds in runs.items()}}


def test_hand_tuned_runs_add_up_and_a_rerun_replaces_its_seed():
    old = _hand({"256": [(1, 0.5), (42, 0.6)], "320": [(42, 0.7)]})
    result = hand_tuned.merged(old, _hand({"256": [(1, 0.9)]}))
    assert [(r["seed"], r["dice"]) for r in result["candidates"]["256"]["runs"]] == [(1, 0.9), (42, 0.6)]
    assert [(r["seed"], r["dice"]) for r in result["candidates"]["320"]["runs"]] == [(42, 0.7)]
    assert hand_tuned.merged(None, old) == old


def test_the_best_hand_tuned_candidate_is_compared_on_its_own_seeds():
    """Each candidate is set against the pipeline's runs of the seeds it ran, and the best mean wins."""
    pipeline = [{"seed": 1, "dice": 0.8, "pixel_dice": 0.8}, {"seed": 42, "dice": 0.6, "pixel_dice": 0.6}]
    hand = _hand({"256": [(1, 0.75), (42, 0.65)], "320": [(42, 0.71)], "384": [(7, 0.99)]})
    best = hand_tuned.compare(hand, pipeline)
    assert best["label"] == "320" and best["seeds"] == [42]  # seed 7 has no pipeline run: not comparable
    assert best["pipeline"] == pytest.approx(0.6) and best["dice"] == pytest.approx(0.71)
    suites = {"s": {"about": "S set: more", "runs": {"pipeline": pipeline}}}
    text = hand_tuned.table([hand], suites)
    assert "| S set | 0.600 (0.600) | 0.710 (0.710) | `--input-size 320` | -0.110 (-0.110) | 42 |" in text
    assert text.count("- s `") == 3  # every candidate's runs listed, not only the best
    assert hand_tuned.compare(_hand({"384": [(7, 0.99)]}), pipeline) is None


def test_published_hand_tuned_table_is_its_jsons():
    hands = results_suite.load_results(hand_tuned.HAND_DIR)
    assert hands, "bench/results/hand/ holds no results"
    suites = {r["set"]: r for r in results_suite.load_results()}
    assert results_suite.published(ROOT / "docs" / "results.md", hand_tuned.MARKERS) == hand_tuned.table(hands, suites), (
        "docs/results.md disagrees with bench/results/hand/*.json: run python bench/hand_tuned.py --tables")
