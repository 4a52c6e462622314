"""Every equal-budget comparison the README and docs/results.md publish, re-run with the current code, and their tables.

    python bench/results_suite.py                               # every set, seeds 42 and 1, 10-minute budgets: hours
    python bench/results_suite.py --sets horse cfd --seeds 42   # some of them
    python bench/results_suite.py --sets camvid --rows pipeline  # one row again, the JSON's other rows kept
    python bench/results_suite.py --tables                      # README and docs tables (hand-tuned too), from JSONs
    python bench/results_suite.py --quick --out-dir /tmp/suite  # a smoke run on generated data (the test suite's)

For every set, seed by seed (a slow hour of the host hits every row) and each run alone (it starts below a 1-minute
load of --quiet), three rows, all Unet/resnet18 from scratch on the same photos with the same --budget:
- plain: bench/plain_unet.py as a user writes it: every training image squashed to a square of the set's PLAIN_SIZE
  px, horizontal flips, AdamW + OneCycle (peak 1e-3), Dice + BCE, fp32, the last epoch, threshold 0.5;
- plain + recipe: the same script given the pipeline's augmentation (AUGMENT as its recipe chose) and threshold rule
  (the best threshold on a tenth of the training images held back);
- pipeline: train.py with --time-budget and nothing else of the recipe (RECIPE=auto plans it: size, folds, EMA,
  schedule), scored by inference.py --gt with the model's own rule.
Each is scored on the set's held-out photos at their original size: the mean per-image Dice and the Dice pooled
over every pixel. One JSON per set in --out-dir (default bench/results/suite/); --tables rewrites the table between
the <!-- results-suite --> markers of README.md and docs/results.md from those JSONs, and a test checks that the
published numbers are the JSONs'.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import HORSE, ISBI, ROOT, host_gflops, load_average, machine_info, median, write_result  # noqa: E402
from equal_budget import hold_out, masks_of, run, wait_quiet  # noqa: E402

SUITE = ROOT / "bench" / "results" / "suite"
DATA = ROOT.parent / "data"  # sets built by bench/camvid.py and bench/crackforest.py (never committed)
ARCH = ["--model", "Unet", "--encoder", "resnet18", "--encoder-weights", "none"]
ROWS = ("pipeline", "plain_recipe", "plain")
ROW_NAMES = {"pipeline": "pipeline", "plain_recipe": "plain + recipe", "plain": "plain script"}
# name: (train images, held-out images or None (the last --holdout of train), holdout, plain size, what it is)
SETS = {
    "horse": (HORSE / "images" / "train", HORSE / "images" / "val", 0, 256,
              "Weizmann horses: 250 train / 77 val photos, about 300x200"),
    "isbi": (ISBI / "images", None, 6, 512, "ISBI 2012 EM membranes: 24 train / the last 6 of 30 slices, 512x512"),
    # CamVid's plain size is 256 (the recipe plans 320 there): at 480 px the plain script's fp32 epoch takes 5.6
    # minutes, so a 10-minute budget gives it one epoch (Dice 0.31), a baseline no user would keep
    "camvid": (DATA / "camvid_car" / "images" / "train", DATA / "camvid_car" / "images" / "test", 0, 256,
               "CamVid cars: 367 train / 233 test street photos, 480x360 (bench/camvid.py)"),
    "cfd": (DATA / "cfd" / "images" / "train", DATA / "cfd" / "images" / "test", 0, 480,
            "CrackForest road cracks: 79 train / 39 test photos, 480x320, cracks 1-6 px wide (bench/crackforest.py)"),
    "cfd_mosaic": (DATA / "cfd_mosaic" / "images" / "train", DATA / "cfd_mosaic" / "images" / "test", 0, 512,
                   "CrackForest as large images: 3x3 photos, 1440x960, 8 train / 4 test (bench/crackforest.py --mosaic 3)"),
}
MARKERS = ("<!-- results-suite:start -->", "<!-- results-suite:end -->")


# ----------------------------------------------------------------------------- runs


def run_pipeline(train: Path, val: Path, budget: str, seed: int, work: Path, extra: list[str]) -> dict:
    env = {**os.environ, "RAW_IMG_DIR": str(train), "RAW_MASK_DIR": str(masks_of(train)), "WORK_DIR": str(work)}
    wall = run([sys.executable, "train.py", *ARCH, "--name", "model", "--time-budget", budget, "--seed", str(seed),
                *extra], work.with_suffix(".train.log"), env)
    run([sys.executable, "inference.py", "--model", str(work / "model.onnx"), "--source", str(val), "--output",
         str(work / "pred"), "--gt", str(masks_of(val))], work.with_suffix(".score.log"))
    scores = json.loads((work / "pred" / "metrics.json").read_text())
    config = json.loads((work / "config.json").read_text())
    records = [r for r in json.loads((work / "logs" / "metrics.json").read_text()) if r.get("kind") == "epoch"]
    return {"dice": scores["mean_dice"], "pixel_dice": scores["pixel_dice"], "epochs": records[-1]["epoch"] + 1,
            "wall_s": round(wall, 1), "recipe": config.get("recipe_plan", []), "augment": config["augment"],
            "input_size": config["input_size"], "rule": scores.get("model", {}).get("rule")}


def run_plain(train: Path, val: Path, budget: str, seed: int, size: int, work: Path, flags: list[str]) -> dict:
    out = work / "plain.json"
    work.mkdir(parents=True, exist_ok=True)
    wall = run([sys.executable, "bench/plain_unet.py", "--train", str(train), "--val", str(val), "--size", str(size),
                "--epochs", "1000", "--time-budget", budget, "--seed", str(seed), "--out", str(out), *flags],
               work.with_suffix(".train.log"))
    result = json.loads(out.read_text())
    return {"dice": result["val_dice"], "pixel_dice": result["val_pixel_dice"], "epochs": result["epochs_reached"],
            "wall_s": round(wall, 1), "threshold": result["threshold"], "flags": flags}


def code_version() -> str:
    """The commit the runs measure, '+changes' when tracked files differ from it ('unknown' outside git)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode:
        return "unknown"
    status = ["git", "status", "--porcelain", "--untracked-files=no"]
    dirty = subprocess.run(status, cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + ("+changes" if dirty else "")


def measured(fn) -> dict:
    before = {"matmul_gflops": host_gflops(), "load": (load_average() or [None])[0]}
    result = fn()
    return {**result, "before": before, "after": {"matmul_gflops": host_gflops(), "load": (load_average() or [None])[0]}}


def pipeline_augment(runs: dict[str, list[dict]], earlier: dict | None, seed: int) -> str:
    """The AUGMENT the pipeline's recipe chose for `seed`: in this invocation, else in the set's JSON (--rows
    without the pipeline)."""
    for run_ in [*runs["pipeline"], *((earlier or {}).get("runs", {}).get("pipeline", []))]:
        if run_["seed"] == seed:
            return run_["augment"]
    raise SystemExit(f"plain + recipe needs the pipeline's AUGMENT for seed {seed}: run the pipeline row too")


def run_set(name: str, train: Path, val: Path | None, holdout: int, plain_size: int, about: str, args,
            tmp: Path, earlier: dict | None = None) -> dict:
    (tmp / name).mkdir(parents=True, exist_ok=True)
    where = {"train": str(train), "val": str(val) if val else f"the last {holdout} of train"}  # not the scratch split
    if val is None:
        train, val = hold_out(train, holdout, tmp / name / "split")
    runs: dict[str, list[dict]] = {row: [] for row in ROWS}
    code = code_version()
    for seed in args.seeds:
        for row in args.rows:
            wait_quiet(args.quiet)
            work = tmp / name / f"{row}_{seed}"
            if row == "pipeline":
                result = measured(lambda: run_pipeline(train, val, args.budget, seed, work, args.pipeline_flags))
            else:
                flags = [] if row == "plain" else ["--augment", pipeline_augment(runs, earlier, seed), "--threshold",
                                                   "heldout"]
                result = measured(lambda: run_plain(train, val, args.budget, seed, plain_size, work, flags))
            runs[row].append({"seed": seed, "code": code, **result})
            print(f"{name} {row} seed {seed}: Dice {result['dice']:.4f} (pooled {result['pixel_dice']:.4f}), "
                  f"{result['epochs']} epochs, {result['wall_s']:.0f} s", flush=True)
    summary = summarize(runs) if all(runs.values()) else {}
    return {"set": name, "about": about, "budget": args.budget,
            "seeds": args.seeds, **where, "plain_size": plain_size, "runs": runs, "rows": list(args.rows),
            "summary": summary}


def summarize(runs: dict[str, list[dict]]) -> dict:
    return {row: {"mean_dice": sum(r["dice"] for r in rs) / len(rs),
                  "mean_pixel_dice": sum(r["pixel_dice"] for r in rs) / len(rs),
                  "epochs": [r["epochs"] for r in rs], "median_wall_s": median([r["wall_s"] for r in rs])}
            for row, rs in runs.items()}


def earlier_result(path: Path, budget: str) -> dict | None:
    """What an earlier run of the same set and budget wrote to `path`, or None."""
    if not path.is_file():
        return None
    old = json.loads(path.read_text())
    return old if old.get("budget") == budget else None


def merged(old: dict | None, result: dict) -> dict:
    """`result` plus the other seeds and rows an earlier run of the same set and budget wrote (`old`): one seed per
    invocation adds up, and a seed's row run again replaces that row's run (--rows re-runs some rows only)."""
    rows = result.pop("rows", ROWS)
    if old is None:
        if set(rows) != set(ROWS):
            raise SystemExit(f"{result['set']}: no earlier JSON of budget {result['budget']} to keep the rows "
                             f"{', '.join(r for r in ROWS if r not in rows)} from: run every row")
        return result
    runs = {row: sorted([r for r in old["runs"].get(row, []) if row not in rows or r["seed"] not in result["seeds"]]
                        + result["runs"][row], key=lambda r: r["seed"]) for row in ROWS}
    seeds = sorted({r["seed"] for rs in runs.values() for r in rs})
    for row in ROWS:
        if sorted(r["seed"] for r in runs[row]) != seeds:
            lacking = sorted(set(seeds) - {r["seed"] for r in runs[row]})
            raise SystemExit(f"{result['set']}: the {row} row lacks seeds {lacking}: run it for them (--rows {row})")
    for seed in seeds:
        augment = pipeline_augment(runs, None, seed)
        given = next(r for r in runs["plain_recipe"] if r["seed"] == seed)["flags"][1]
        if augment != given:
            print(f"WARNING: {result['set']} seed {seed}: the pipeline's recipe now chooses AUGMENT={augment}, its "
                  f"plain + recipe row ran with {given}: re-run that row too (--rows plain_recipe)", flush=True)
    return {**result, "seeds": seeds, "runs": runs, "summary": summarize(runs)}


# ----------------------------------------------------------------------------- tables


def load_results(folder: Path = SUITE) -> list[dict]:
    order = {name: i for i, name in enumerate(SETS)}
    found = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    return sorted(found, key=lambda r: order.get(r["set"], len(order)))


def table(results: list[dict]) -> str:
    """The README's table: per set, each row's mean per-image Dice (pooled over pixels) and the pipeline's lead."""
    lines = ["| data (held-out photos) | pipeline | plain + recipe | plain script | lead over plain | seeds |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        s = r["summary"]
        cells = [f"{s[row]['mean_dice']:.3f} ({s[row]['mean_pixel_dice']:.3f})" for row in ROWS]
        lead = s["pipeline"]["mean_dice"] - s["plain"]["mean_dice"]
        pooled = s["pipeline"]["mean_pixel_dice"] - s["plain"]["mean_pixel_dice"]
        lines.append(f"| {r['about'].split(':')[0]} | {' | '.join(cells)} | {lead:+.3f} ({pooled:+.3f}) | "
                     f"{', '.join(map(str, r['seeds']))} |")
    return "\n".join(lines)


def details(results: list[dict]) -> str:
    """docs/results.md's section: every run, with its epochs, the pipeline's recipe and the host's speed."""
    out = [table(results), ""]
    for r in results:
        out += [f"**{r['about']}**, budget {r['budget']} each:", "",
                "| row | seed | Dice | pooled Dice | epochs | wall s | host GFLOP/s before | code |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for row in ROWS:
            for x in r["runs"][row]:
                out.append(f"| {ROW_NAMES[row]} | {x['seed']} | {x['dice']:.4f} | {x['pixel_dice']:.4f} | {x['epochs']} | "
                           f"{x['wall_s']:.0f} | {x['before']['matmul_gflops']} | {x.get('code', '-')} |")
        plans: dict[tuple, list] = {}  # each plan the recipe made, with the seeds it made it for
        for x in r["runs"]["pipeline"]:
            plans.setdefault(tuple(x.get("recipe", [])), []).append(x["seed"])
        out.append("")
        for plan, seeds in sorted(plans.items(), key=lambda item: sorted(item[1])):
            said = f", seed {', '.join(map(str, sorted(seeds)))}" if len(plans) > 1 else ""
            out += [f"The pipeline's recipe{said}: " + ("; ".join(p.split(": ", 2)[1] for p in plan) or "-"), ""]
    return "\n".join(out).rstrip() + "\n"


def replace_between(path: Path, text: str, markers: tuple[str, str] = MARKERS) -> bool:
    """Put `text` between the markers of `path`; False when the file has no markers."""
    content = path.read_text(encoding="utf-8")
    start, end = markers
    if start not in content or end not in content:
        return False
    head, rest = content.split(start, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(f"{head}{start}\n{text.rstrip()}\n{end}{tail}", encoding="utf-8")
    return True


def published(path: Path, markers: tuple[str, str] = MARKERS) -> str | None:
    """The text between the markers of `path` (what --tables wrote there), or None."""
    content = path.read_text(encoding="utf-8")
    match = re.search(re.escape(markers[0]) + r"\n(.*?)\n" + re.escape(markers[1]), content, re.S)
    return match.group(1) if match else None


def write_tables(folder: Path = SUITE) -> None:
    results = load_results(folder)
    if not results:
        raise SystemExit(f"no results in {folder}: run the suite first")
    for path, text in ((ROOT / "README.md", table(results)), (ROOT / "docs" / "results.md", details(results))):
        print(f"{path.name}: {'updated' if replace_between(path, text) else 'no markers, left alone'}")
    import hand_tuned  # it imports this module; its table sets hand-picked settings against these pipeline rows

    if folder == SUITE and load_results(hand_tuned.HAND_DIR):
        hand_tuned.write_tables()


# ----------------------------------------------------------------------------- quick


def quick_sets(folder: Path) -> dict:
    """A generated set of bright discs (tests/conftest.py's blobs) for --quick."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import write_blobs

    for split, count, seed in (("train", 20, 0), ("val", 6, 1)):
        blobs = write_blobs(folder / split, count, size=(48, 64), seed=seed)
        for kind in ("images", "masks"):
            target = folder / kind / split
            target.parent.mkdir(parents=True, exist_ok=True)
            (blobs / kind).rename(target)
    return {"blobs": (folder / "images" / "train", folder / "images" / "val", 0, 64, "generated blobs")}


def rerun(name: str, seeds: list[int], args) -> str:
    """The command that re-runs one set's JSON, every seed it holds (no --out-dir or --work: no path of this machine
    in the JSON; write_result makes the data paths relative)."""
    flags = f" --pipeline-flags '{' '.join(args.pipeline_flags)}'" if args.pipeline_flags else ""
    return (f"python bench/results_suite.py --sets {name} --seeds {' '.join(map(str, seeds))} "
            f"--budget {args.budget}{flags}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1])
    parser.add_argument("--budget", default="10m", help="TIME_BUDGET of every run")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS,
                        help="re-run only these rows, keeping the others' runs from the set's JSON (after a change "
                             "to the pipeline alone, say)")
    parser.add_argument("--quiet", type=float, default=1.0, help="start each run below this 1-minute load average")
    parser.add_argument("--pipeline-flags", default="", help="extra train.py flags (none for the published tables)")
    parser.add_argument("--out-dir", type=Path, default=SUITE)
    parser.add_argument("--work", type=Path, default=None, help="keep every run's folder here")
    parser.add_argument("--tables", action="store_true", help="only rewrite the tables from --out-dir's JSONs")
    parser.add_argument("--quick", action="store_true", help="generated data, 20 s budgets, one seed: a smoke run")
    args = parser.parse_args()
    args.pipeline_flags = args.pipeline_flags.split()
    args.rows = [row for row in ROWS if row in args.rows]  # the pipeline first: plain + recipe takes its AUGMENT
    if args.tables:
        write_tables(args.out_dir)
        return
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.work or Path(scratch)
        sets = {name: SETS[name] for name in args.sets}
        if args.quick:
            sets, args.seeds, args.budget, args.quiet = quick_sets(tmp / "quick"), args.seeds[:1], "20s", 99.0
            args.pipeline_flags += ["--int8", "off", "--workers", "0"]
        missing = [f"{name} ({spec[0]})" for name, spec in sets.items() if not Path(spec[0]).is_dir()]
        if missing:
            raise SystemExit(f"data not found: {', '.join(missing)}; build it as the SETS table says")
        for name, (train, val, holdout, plain_size, about) in sets.items():
            wait_quiet(args.quiet)  # after the set before: its own start, quiet, as each run's
            start = machine_info()  # each set's JSON compares the host at its own start and end
            earlier = earlier_result(args.out_dir / f"{name}.json", args.budget)
            if earlier is None and args.rows != list(ROWS):
                raise SystemExit(f"{name}: --rows {' '.join(args.rows)} keeps the other rows from an earlier JSON of "
                                 f"budget {args.budget} in {args.out_dir}, and there is none: run every row")
            result = run_set(name, Path(train), Path(val) if val else None, holdout, plain_size, about, args, tmp,
                             earlier)
            result = merged(earlier, result)
            write_result("results_suite", {"command": rerun(name, result["seeds"], args), **result},
                         args.out_dir / f"{name}.json", start)


if __name__ == "__main__":
    main()
