"""The post-processing rule a model carries (runtime/rule.py): recorded, read back from older files, overridden."""

from __future__ import annotations

import pytest

from runtime.rule import (
    DEFAULT_CASCADE, MORPHOLOGY, apply_overrides, describe_rule, graph_problem, identity, make_rule, post_fields,
    recorded_rule, rule_problem,
)
from utils import UserError


@pytest.mark.parametrize("threshold, head", [
    (None, {"mode": "cv", "threshold": 0.6}), ("model", {"mode": "cv", "threshold": 0.6}),
    ("0.4", {"mode": "fixed", "threshold": 0.4}), ("adaptive", {"mode": "adaptive", "cascade": [0.5, 0.3, 0.15]}),
])
def test_export_records_one_of_three_modes(threshold, head):
    rule = make_rule(threshold, 0.6, DEFAULT_CASCADE, 64, fill_holes=True)
    assert rule == {**head, "min_area": 64, **MORPHOLOGY, "fill_holes": True} and rule_problem(rule) is None


@pytest.mark.parametrize("threshold", ["otsu", "1.5", "0", "nan", "half"])
def test_a_bad_threshold_is_one_line_naming_the_flag(threshold):
    with pytest.raises(UserError, match=rf"^--threshold '{threshold}' is not valid; use a number in \(0, 1\)"):
        make_rule(threshold)


def test_older_files_get_the_rule_their_metadata_implies():
    assert recorded_rule({"threshold": 0.42, "min_area": 10}) == (make_rule(None, 0.42, min_area=10),
                                                                  "its cross-validated threshold (exported before "
                                                                  "rules)")
    old_e2e = {"end_to_end": True, "threshold": 0.42, "e2e_mask": {"mode": "fixed", "threshold": 0.42}}
    assert recorded_rule(old_e2e)[0]["mode"] == "cv"  # the old default cut at the CV threshold
    old_e2e["e2e_mask"] = {"mode": "fixed", "threshold": 0.3}
    assert recorded_rule(old_e2e)[0] == make_rule(0.3, 0.42)
    old_e2e["e2e_mask"] = {"mode": "adaptive", "cascade": [0.6, 0.2], "min_area": 9}
    assert recorded_rule(old_e2e)[0] == make_rule("adaptive", 0.42, [0.6, 0.2], 9)
    assert recorded_rule({"rule": {"mode": "nonsense"}, "threshold": 0.3})[0]["threshold"] == 0.3  # invalid: ignored


def test_each_option_given_replaces_its_part_only():
    rule = make_rule(None, 0.6, min_area=64, close=5)
    meta = {"threshold": 0.6, "thresholds": [0.5, 0.3]}
    assert apply_overrides(rule, {}, meta) == rule
    cascade = {k: v for k, v in rule.items() if k != "threshold"} | {"mode": "adaptive", "cascade": [0.5, 0.3]}
    assert apply_overrides(rule, {"threshold": "adaptive"}, meta) == cascade  # the model's own cascade levels
    given = apply_overrides(rule, {"threshold": "0.3", "min_area": 0, "close": 0}, meta)
    assert given == {**rule, "mode": "given", "threshold": 0.3, "min_area": 0, "close": 0}
    assert post_fields(given)["threshold"] == 0.3 and post_fields(apply_overrides(rule, {"threshold": "otsu"},
                                                                                  meta))["threshold"] == "otsu"


def test_the_rule_reads_as_one_line():
    assert describe_rule(make_rule(None, 0.6)) == "threshold 0.6 (cross-validated), detection >= 64 px"
    assert describe_rule(make_rule("adaptive", min_area=9, fill_holes=True, close=3)) == (
        "adaptive 0.5 -> 0.3 -> 0.15 (first level with >= 9 px in all, else empty), then close 3, fill holes")
    assert describe_rule({**make_rule(), "mode": "given", "threshold": 0.3}).startswith("threshold 0.3 (given)")


def test_a_retrain_keeps_the_variant_another_rule_does_not():
    assert identity(make_rule(None, 0.6)) == identity(make_rule(None, 0.45))
    assert identity(make_rule(0.6)) != identity(make_rule(0.45))
    assert identity(make_rule(None, 0.6)) != identity(make_rule("adaptive", 0.6))


@pytest.mark.parametrize("morphology, refused", [({}, None), ({"close": 1, "open": 1}, None),
                                                 ({"keep_largest": 1}, "--keep-largest"),
                                                 ({"fill_holes": True, "close": 3}, "--close, --fill-holes")])
def test_the_end_to_end_graph_takes_only_a_threshold_rule(morphology, refused):
    problem = graph_problem(make_rule("adaptive", **morphology))
    assert problem is None if refused is None else problem.startswith(f"the rule has {refused}, which the end-to-end")
