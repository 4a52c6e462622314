"""The pipeline's own plan against settings chosen by hand, at the results suite's budget, seeds and data.

    python bench/hand_tuned.py --sets horse isbi --seeds 42 1   # each set's hand-tuned candidates (HAND), 10 min each
    python bench/hand_tuned.py --sets camvid --only 384px       # one candidate
    python bench/hand_tuned.py --tables                         # docs/results.md's table, from the JSONs only

Every candidate is train.py with --time-budget and the candidate's flags (every flag given wins over the recipe's
plan, the rest is planned as usual), scored as the suite's pipeline row is (inference.py --gt on the held-out
photos). The table sets each set's best candidate (by mean per-image Dice over the seeds it ran) against the
suite's pipeline row on the same seeds (bench/results/suite/<set>.json), so a plan that loses to a hand-picked size
or augmentation shows. One JSON per set in --out-dir (default bench/results/hand/); a candidate run again for a
seed replaces that run, the others are kept. Each run alone, as in the suite.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import results_suite as suite
from common import ROOT, machine_info, write_result
from equal_budget import hold_out, wait_quiet

HAND_DIR = ROOT / "bench" / "results" / "hand"
MARKERS = ("<!-- hand-tuned:start -->", "<!-- hand-tuned:end -->")
# set: [(label, train.py flags, why a user would try it)]: the levers a user tunes first, size and augmentation,
# each set where the recipe's choice is least clear-cut
HAND = {
    "horse": [("256px", ["--input-size", "256"], "the photos' own 256 px instead of the plan's 192 px: fewer epochs")],
    "isbi": [("512px", ["--input-size", "512"], "the slices' own 512 px instead of the plan's 448 px: fewer epochs")],
    "camvid": [("384px", ["--input-size", "384"], "384 px instead of the plan's 320 px: fewer epochs"),
               ("full-aug", ["--augment", "full"], "affine and colour jitter too, where the plan keeps flips alone")],
    "cfd": [("flip-aug", ["--augment", "flip"], "flips alone, where the plan adds affine and colour jitter")],
    "cfd_mosaic": [("512-patches", ["--input-size", "1440", "--train-patch", "512x512", "--tile", "512x512",
                                    "--patches-per-image", "6"], "512 px patches and tiles instead of the plan's 384")],
}


def merged(old: dict | None, result: dict) -> dict:
    """`result`'s runs plus an earlier JSON's (`old`) for other candidates and seeds; a (candidate, seed) run again
    replaces the earlier one."""
    candidates = {label: dict(c) for label, c in (old or {}).get("candidates", {}).items()}
    for label, new in result["candidates"].items():
        seeds = {r["seed"] for r in new["runs"]}
        kept = [r for r in candidates.get(label, {}).get("runs", []) if r["seed"] not in seeds]
        candidates[label] = {**new, "runs": sorted(kept + new["runs"], key=lambda r: r["seed"])}
    return {**result, "candidates": candidates}


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def compare(hand: dict, pipeline_runs: list[dict]) -> dict | None:
    """The best candidate of one set's JSON against the suite's pipeline runs on the seeds that candidate ran; None
    when no candidate shares a seed with the pipeline row."""
    by_seed = {r["seed"]: r for r in pipeline_runs}
    rows = []
    for label, c in hand["candidates"].items():
        runs = [r for r in c["runs"] if r["seed"] in by_seed]
        if runs:
            seeds = sorted(r["seed"] for r in runs)
            rows.append({"label": label, "flags": c["flags"], "seeds": seeds,
                         "dice": mean([r["dice"] for r in runs]), "pixel_dice": mean([r["pixel_dice"] for r in runs]),
                         "pipeline": mean([by_seed[s]["dice"] for s in seeds]),
                         "pipeline_pixel": mean([by_seed[s]["pixel_dice"] for s in seeds])})
    return max(rows, key=lambda row: row["dice"]) if rows else None


def table(hands: list[dict], suites: dict[str, dict]) -> str:
    lines = ["| data | pipeline (its own plan) | best hand-tuned | its flags | pipeline - best | seeds |",
             "| --- | --- | --- | --- | --- | --- |"]
    for hand in hands:
        best = compare(hand, suites.get(hand["set"], {}).get("runs", {}).get("pipeline", []))
        if best is None:
            continue
        about = suites[hand["set"]]["about"].split(":")[0]
        lines.append(f"| {about} | {best['pipeline']:.3f} ({best['pipeline_pixel']:.3f}) | {best['dice']:.3f} "
                     f"({best['pixel_dice']:.3f}) | `{' '.join(best['flags'])}` | "
                     f"{best['pipeline'] - best['dice']:+.3f} ({best['pipeline_pixel'] - best['pixel_dice']:+.3f}) | "
                     f"{', '.join(map(str, best['seeds']))} |")
    out = [*lines, ""]
    for hand in hands:  # every candidate's runs, not only the best
        for label, c in hand["candidates"].items():
            runs = "; ".join(f"seed {r['seed']}: {r['dice']:.4f} ({r['pixel_dice']:.4f}), {r['input_size']} px, "
                             f"{r['epochs']} epochs, {r['wall_s']:.0f} s, code {r['code']}" for r in c["runs"])
            out.append(f"- {hand['set']} `{' '.join(c['flags'])}` ({c['why']}): {runs}")
    return "\n".join(out).rstrip()


def write_tables(folder: Path = HAND_DIR, suite_folder: Path = suite.SUITE) -> None:
    hands = suite.load_results(folder)
    if not hands:
        raise SystemExit(f"no results in {folder}: run some candidates first")
    suites = {r["set"]: r for r in suite.load_results(suite_folder)}
    path = ROOT / "docs" / "results.md"
    done = suite.replace_between(path, table(hands, suites), MARKERS)
    print(f"{path.name}: {'updated' if done else 'no markers, left alone'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=list(HAND), choices=list(HAND))
    parser.add_argument("--only", nargs="+", default=None, help="candidate labels to run (default: each set's all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1])
    parser.add_argument("--budget", default="10m", help="TIME_BUDGET of every run (the suite's)")
    parser.add_argument("--quiet", type=float, default=1.0, help="start each run below this 1-minute load average")
    parser.add_argument("--out-dir", type=Path, default=HAND_DIR)
    parser.add_argument("--work", type=Path, default=None, help="keep every run's folder here")
    parser.add_argument("--tables", action="store_true", help="only rewrite the table from --out-dir's JSONs")
    args = parser.parse_args()
    if args.tables:
        write_tables(args.out_dir)
        return
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.work or Path(scratch)
        for name in args.sets:
            train, val, holdout, _, about = suite.SETS[name]
            if not Path(train).is_dir():
                raise SystemExit(f"data not found: {name} ({train}); build it as bench/results_suite.py's SETS says")
            chosen = [c for c in HAND[name] if args.only is None or c[0] in args.only]
            if not chosen:
                raise SystemExit(f"{name}: no candidate named {' '.join(args.only)} (HAND has "
                                 f"{', '.join(c[0] for c in HAND[name])})")
            wait_quiet(args.quiet)
            start = machine_info()
            (tmp / name).mkdir(parents=True, exist_ok=True)
            train, val = (Path(train), Path(val)) if val else hold_out(Path(train), holdout, tmp / name / "split")
            code = suite.code_version()
            candidates = {label: {"flags": flags, "why": why, "runs": []} for label, flags, why in chosen}
            for seed in args.seeds:  # seeds interleaved, as the suite's rows
                for label, flags, _ in chosen:
                    wait_quiet(args.quiet)
                    work = tmp / name / f"{label}_{seed}"
                    result = suite.measured(lambda: suite.run_pipeline(train, val, args.budget, seed, work, flags))
                    candidates[label]["runs"].append({"seed": seed, "code": code, **result})
                    print(f"{name} {label} seed {seed}: Dice {result['dice']:.4f} (pooled {result['pixel_dice']:.4f}),"
                          f" {result['epochs']} epochs, {result['wall_s']:.0f} s", flush=True)
            path = args.out_dir / f"{name}.json"
            earlier = suite.earlier_result(path, args.budget)
            result = merged(earlier, {"set": name, "about": about, "budget": args.budget, "candidates": candidates})
            labels = " ".join(result["candidates"])
            seeds = " ".join(map(str, sorted({r["seed"] for c in result["candidates"].values() for r in c["runs"]})))
            command = f"python bench/hand_tuned.py --sets {name} --only {labels} --seeds {seeds} --budget {args.budget}"
            write_result("hand_tuned", {"command": command, **result}, path, start)


if __name__ == "__main__":
    main()
