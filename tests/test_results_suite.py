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
