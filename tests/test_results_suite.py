"""bench/results_suite.py: the quick smoke run, and the published tables equal to what their JSONs say."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
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
