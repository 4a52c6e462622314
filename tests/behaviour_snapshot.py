"""Before/after behaviour check for refactors: same inputs, same outputs.

Run book (the "before" side in a checkout of the old commit, the "after" side in the new one)::

    # old checkout
    python tests/behaviour_snapshot.py models /tmp/before
    python tests/behaviour_snapshot.py snapshot --runs /tmp/before --models /tmp/before /tmp/before.json
    # new checkout: train the same seeded runs again, and run inference on the *old* models
    python tests/behaviour_snapshot.py models /tmp/after
    python tests/behaviour_snapshot.py snapshot --runs /tmp/after --models /tmp/before /tmp/after.json
    python tests/behaviour_snapshot.py compare /tmp/before.json /tmp/after.json

`models` trains three seeded 2-fold CPU runs (binary, 3-class, and a clean/defect gate) and
exports them. `snapshot` records, as one JSON file:
- training: cv_summary.json and folds.json of each run, and each ONNX file's metadata, without
  the keys that name the date or package versions;
- inference: the SHA-256 of every mask and overlay `inference.py` writes, and summary.csv
  without its `ms` column, for: binary (with --gt), binary --tta flips, binary with the gate,
  and the 3-class model.
`compare` prints every difference and exits 1 when there is one. Keys renamed on purpose are
listed in RENAMED (old name -> new name) and compared under their new name.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

# config_hash hashes the data folders' paths too, and the two sides train in different folders.
VOLATILE = {"exported_at", "date", "versions", "created", "torch", "onnx", "onnxruntime", "work_dir", "seconds",
            "source_dir", "path", "onnx_path", "config_hash"}
RENAMED = {"dice_mean": "mean_dice", "dice_std": "std_dice", "iou_mean": "mean_iou", "iou_std": "std_iou"}
RUNS = {"binary": {}, "gate": {"task": "classify", "gate_input_size": 64},
        "multi": {"classes": 3, "class_names": "background,disc,square", "class_weights": "auto"}}
INFERENCE = {  # variant -> (model run, extra inference flags, data set)
    "binary": ("binary", ["--gt", "{data}/masks"], "blobs"),
    "binary_tta_flips": ("binary", ["--tta", "flips"], "blobs"),
    "binary_gated": ("binary", ["--gate", "{models}/gate/work/gate.onnx"], "blobs"),
    "multi": ("multi", ["--gt", "{data}/masks"], "multi"),
}


def make_data(folder: Path) -> dict[str, Path]:
    from conftest import write_blobs
    from test_train import write_multiclass

    sets = {"blobs": folder / "data_blobs", "multi": folder / "data_multi"}
    if not sets["blobs"].exists():
        write_blobs(sets["blobs"], 12)
    if not sets["multi"].exists():
        write_multiclass(sets["multi"])
    return sets


def train_models(folder: Path) -> None:
    from conftest import tiny_argv

    sets = make_data(folder)
    for name, overrides in RUNS.items():
        data = sets["multi" if name == "multi" else "blobs"]
        argv = tiny_argv(data, folder / name / "work", seed=7, **overrides)
        subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], check=True, cwd=ROOT)


def clean(value):
    """Drop volatile keys (dates, versions, paths, timings) and apply RENAMED, recursively."""
    if isinstance(value, dict):
        return {RENAMED.get(k, k): clean(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def onnx_metadata(path: Path) -> dict:
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return {k: clean(json.loads(v)) if v.startswith("{") else v for k, v in props.items()}


def training_snapshot(runs: Path) -> dict:
    out = {}
    for name in RUNS:
        work = runs / name / "work"
        out[name] = {f: clean(json.loads((work / f).read_text())) for f in ("cv_summary.json", "folds.json")}
        out[name]["onnx_metadata"] = {p.name: onnx_metadata(p) for p in sorted(work.glob("*.onnx"))}
    return out


def file_hashes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix in (".png", ".jpg", ".npy")}


def summary_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return [{k: v for k, v in row.items() if k != "ms"} for row in csv.DictReader(f)]


def inference_snapshot(models: Path, scratch: Path) -> dict:
    sets = make_data(models)
    out = {}
    for variant, (run, flags, data) in INFERENCE.items():
        target = scratch / variant
        fill = {"data": sets[data], "models": models}
        cmd = [sys.executable, str(ROOT / "inference.py"), "--model", str(models / run / "work" / "model.onnx"),
               "--source", str(sets[data] / "images"), "--output", str(target), *(f.format(**fill) for f in flags)]
        subprocess.run(cmd, check=True, cwd=ROOT)
        out[variant] = {"files": file_hashes(target), "summary": summary_rows(target / "summary.csv")}
    return out


def diff(a, b, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        lines = [f"{where}/{k}: only before" for k in a.keys() - b.keys()]
        lines += [f"{where}/{k}: only after" for k in b.keys() - a.keys()]
        for k in sorted(a.keys() & b.keys()):
            lines += diff(a[k], b[k], f"{where}/{k}")
        return lines
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [line for i, (x, y) in enumerate(zip(a, b)) for line in diff(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} -> {b!r}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models").add_argument("folder", type=Path)
    snap = sub.add_parser("snapshot")
    snap.add_argument("--runs", type=Path, required=True, help="folder of `models` whose training files to record")
    snap.add_argument("--models", type=Path, required=True, help="folder of `models` whose ONNX files to run")
    snap.add_argument("output", type=Path)
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("before", type=Path)
    cmp_.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.command == "models":
        train_models(args.folder)
    elif args.command == "snapshot":
        scratch = args.output.with_suffix(".outputs")
        result = {"training": training_snapshot(args.runs), "inference": inference_snapshot(args.models, scratch)}
        args.output.write_text(json.dumps(result, indent=1, sort_keys=True))
        print(f"wrote {args.output}")
    else:
        lines = diff(json.loads(args.before.read_text()), json.loads(args.after.read_text()))
        print("\n".join(lines) if lines else "no differences")
        sys.exit(1 if lines else 0)


if __name__ == "__main__":
    main()
