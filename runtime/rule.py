"""The post-processing rule a model carries: how its probabilities become a mask. numpy-free, no torch.

export.py records one rule in the metadata (`rule`), chosen by its flags, and every runtime applies it unless the
user overrides a part of it: inference.py, Segmenter, the app, the Ray engine, and the end-to-end graph, which bakes
it in (exporting/e2e.py). One rule, one answer for one image wherever the model runs.

    {"mode": "cv", "threshold": 0.6, "min_area": 64, "close": 0, "open": 0, "fill_holes": false, ...}
    {"mode": "fixed", "threshold": 0.4, ...}                # export.py --threshold 0.4
    {"mode": "adaptive", "cascade": [0.5, 0.3, 0.15], ...}  # export.py --threshold adaptive

- cv (the default): the threshold cross-validation chose (cv_summary.json best_threshold), what train.py scored.
- fixed: a number given at export.
- adaptive: the cascade, tried in order; the first level whose mask holds at least min_area foreground pixels in
  all (its total area, what an ONNX graph can count) wins, else an empty mask. One definition in Python and in ONNX.
- otsu: only as a runtime override (inference.py --threshold otsu); no file records it.

min_area: foreground pixels a mask needs to count as a detection (status ok / no_detection; the cascade's test).
Morphology (close, open, fill_holes, min_component_area, keep_largest) runs after the threshold, in
runtime/postprocess.py's order; the end-to-end graph has none of it, so its export refuses a rule that has any.
"""

from __future__ import annotations

from utils import UserError, is_int, is_number

MODES = ("cv", "fixed", "adaptive")  # what a file may record
DEFAULT_CASCADE = (0.5, 0.3, 0.15)
MORPHOLOGY = {"close": 0, "open": 0, "fill_holes": False, "min_component_area": 0, "keep_largest": 0}  # all off
MODE_WORDS = {"cv": "cross-validated", "fixed": "fixed at export", "model": "cross-validated"}


def _unit(value) -> bool:
    return is_number(value) and 0 < value < 1


def make_rule(threshold=None, cv_threshold: float = 0.5, cascade=DEFAULT_CASCADE, min_area: int = 64,
              **morphology) -> dict:
    """The rule export.py records. `threshold`: None (the cross-validated `cv_threshold`), 'adaptive' or a number
    in (0, 1); `morphology`: MORPHOLOGY's fields (0 / False: off). A bad value is a UserError naming the flag."""
    unknown = set(morphology) - set(MORPHOLOGY)
    assert not unknown, f"not rule fields: {unknown}"
    text = str(threshold).strip().lower() if threshold is not None else None
    if text is None or text == "model":
        head = {"mode": "cv", "threshold": float(cv_threshold)}
    elif text == "adaptive":
        head = {"mode": "adaptive", "cascade": [float(t) for t in cascade]}
    else:
        try:
            value = float(threshold)
        except (TypeError, ValueError):
            value = float("nan")
        if not 0 < value < 1:
            raise UserError(f"--threshold {threshold!r} is not valid; use a number in (0, 1), 'adaptive' (the "
                            "cascade) or leave it out (the cross-validated threshold)")
        head = {"mode": "fixed", "threshold": value}
    rule = {**head, "min_area": int(min_area), **MORPHOLOGY,
            **{k: (bool(v) if k == "fill_holes" else int(v)) for k, v in morphology.items() if v is not None}}
    if (problem := rule_problem(rule)) is not None:
        raise UserError(f"the post-processing rule is not valid: {problem}")
    return rule


def rule_problem(rule) -> str | None:
    """Why `rule` is not a valid recorded rule, or None (the metadata check of key `rule`)."""
    if not isinstance(rule, dict) or rule.get("mode") not in MODES:
        return f"mode must be one of {', '.join(MODES)}"
    if rule["mode"] == "adaptive":
        cascade = rule.get("cascade")
        if not isinstance(cascade, list) or not cascade or not all(_unit(t) for t in cascade):
            return "cascade must be a non-empty list of numbers in (0, 1)"
    elif not _unit(rule.get("threshold")):
        return "threshold must be a number in (0, 1)"
    for name in ("min_area", "close", "open", "min_component_area", "keep_largest"):
        if not is_int(rule.get(name, 0)) or rule.get(name, 0) < 0:
            return f"{name} must be an integer >= 0 (0: off)"
    if not isinstance(rule.get("fill_holes", False), bool):
        return "fill_holes must be true or false"
    return None


def recorded_rule(meta: dict) -> tuple[dict, str]:
    """(the rule `meta` records, where it came from). Files exported before rules existed get the rule their
    metadata implies: an end-to-end graph its baked-in mask rule (e2e_mask), any other file its cross-validated
    threshold and min_area."""
    if isinstance(meta.get("rule"), dict) and rule_problem(meta["rule"]) is None:
        return dict(meta["rule"]), "recorded in the model"
    old = meta.get("e2e_mask") if meta.get("end_to_end") else None
    if isinstance(old, dict) and old.get("mode") in ("fixed", "adaptive"):
        fixed = old.get("threshold") if old.get("threshold") != meta.get("threshold") else None  # None: the CV one
        return make_rule(fixed if old["mode"] == "fixed" else "adaptive", meta.get("threshold", 0.5),
                         cascade=old.get("cascade") or DEFAULT_CASCADE,
                         min_area=int(old.get("min_area", meta.get("min_area", 64)))), "the graph's own (e2e_mask)"
    cv = meta.get("threshold", 0.5)
    return make_rule(None, cv if _unit(cv) else 0.5, meta.get("thresholds") or DEFAULT_CASCADE,
                     int(meta.get("min_area", 64))), "its cross-validated threshold (exported before rules)"


def apply_overrides(rule: dict, overrides: dict, meta: dict) -> dict:
    """`rule` with the user's values in: threshold ('model', 'adaptive', 'otsu' or a number), cascade, min_area and
    the morphology fields. Values are checked later by runtime.postprocess.PostOptions."""
    rule = dict(rule)
    threshold = overrides.get("threshold")
    cascade = overrides.get("cascade") or rule.get("cascade") or meta.get("thresholds") or DEFAULT_CASCADE
    text = str(threshold).strip().lower() if threshold is not None else None
    if text == "model":
        rule = {**_strip(rule), "mode": "cv", "threshold": float(meta.get("threshold") or 0.5)}
    elif text in ("adaptive", "otsu"):
        rule = {**_strip(rule), "mode": text, **({"cascade": [float(t) for t in cascade]} if text == "adaptive" else {})}
    elif threshold is not None:
        try:
            threshold = float(threshold)
        except (TypeError, ValueError):
            pass  # PostOptions names the bad value
        rule = {**_strip(rule), "mode": "given", "threshold": threshold}
    elif "cascade" in overrides and rule["mode"] == "adaptive":
        rule["cascade"] = [float(t) for t in cascade]
    rule.update({k: v for k, v in overrides.items() if k in MORPHOLOGY or k == "min_area"})
    return rule


def _strip(rule: dict) -> dict:
    return {k: v for k, v in rule.items() if k not in ("mode", "threshold", "cascade")}


def post_fields(rule: dict) -> dict:
    """runtime.postprocess.PostOptions fields of a rule."""
    mode = rule["mode"]
    threshold = mode if mode in ("adaptive", "otsu") else rule["threshold"]
    fields = {"threshold": threshold, "min_area": rule.get("min_area", 64),
              **{k: rule.get(k, off) for k, off in MORPHOLOGY.items()}}
    if mode == "adaptive":
        fields["cascade"] = tuple(rule["cascade"])
    return fields


def describe_rule(rule: dict) -> str:
    """One line: 'threshold 0.60 (cross-validated), detection >= 64 px' / 'adaptive 0.5 -> 0.3 -> 0.15 ...'."""
    mode = rule["mode"]
    if mode == "adaptive":
        head = "adaptive " + " -> ".join(f"{t:g}" for t in rule["cascade"]) + " (first level with >= "
        head += f"{rule.get('min_area', 64)} px in all, else empty)"
    elif mode == "otsu":
        head = "Otsu's threshold"
    else:
        value = rule["threshold"]
        head = f"threshold {value:.4g}" if is_number(value) else f"threshold {value}"
        head += f" ({MODE_WORDS[mode]})" if mode in MODE_WORDS else " (given)"
    if mode != "adaptive":
        head += f", detection >= {rule.get('min_area', 64)} px"
    steps = [f"{name.replace('_', ' ')} {rule[name]}" for name in ("close", "open", "min_component_area",
                                                                    "keep_largest") if rule.get(name)]
    steps += ["fill holes"] if rule.get("fill_holes") else []
    return head + (", then " + ", ".join(steps) if steps else "")


def identity(rule: dict | None) -> dict | None:
    """What makes two recorded rules the same variant for the overwrite guard: the cross-validated value is not
    part of it (a retrain moves it; the file stays the same variant)."""
    if not isinstance(rule, dict):
        return None
    return {k: v for k, v in rule.items() if not (k == "threshold" and rule.get("mode") == "cv")}


def morphology_steps(rule: dict) -> list[str]:
    """The morphology steps `rule` turns on, as flags ('--close', '--fill-holes', ...); sizes 0 and 1 are off."""
    on = {"close": rule.get("close", 0) > 1, "open": rule.get("open", 0) > 1, "fill_holes": bool(rule.get("fill_holes")),
          "min_component_area": rule.get("min_component_area", 0) > 1, "keep_largest": rule.get("keep_largest", 0) > 0}
    return ["--" + name.replace("_", "-") for name, active in on.items() if active]


def graph_problem(rule: dict) -> str | None:
    """Why an end-to-end graph cannot apply `rule` (None when it can): it thresholds (cv, fixed or the cascade)
    and nothing after."""
    if rule["mode"] not in MODES:
        return f"threshold mode {rule['mode']!r} has no end-to-end form"
    if steps := morphology_steps(rule):
        return (f"the rule has {', '.join(steps)}, which the end-to-end graph cannot apply (ONNX has no connected "
                "components); record a rule without them, or serve this model with inference.py")
    return None
