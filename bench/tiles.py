"""Large images: tiles at the model's scale against the image shrunk to a model's size, Dice and memory peak.

    python bench/tiles.py --model runs/cfd_mosaic/model.onnx --shrunk runs/cfd_mosaic_512/model.onnx \
        --images ../data/cfd_mosaic/images/test --out bench/results/tiles_cfd_mosaic.json

Each contender is `inference.py --gt` on the held-out large images in a process of its own (so its peak resident
memory is its own: the child's ru_maxrss), one after the other, --repeats times, alternating:
- tiles: a model trained on native-size patches (TRAIN_PATCH + TILE), its images run as Gaussian-blended tiles;
- whole: the same model on each whole image at once (--tile off): the answer without tiles, and its memory;
- shrunk: a model trained on the images shrunk to its INPUT_SIZE (e.g. 512), as every image was before tiles.
Reported: mean per-image Dice and the Dice pooled over every pixel at the original size (the model's own rule),
the median wall time of the run and the largest peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, machine_info, median, print_table, write_result  # noqa: E402


def run_once(model: Path, images: Path, masks: Path, out: Path, flags: list[str]) -> dict:
    """One inference.py --gt run in a fresh process: its scores, seconds and peak RSS (MiB, the child's own)."""
    cmd = [sys.executable, "inference.py", "--model", str(model), "--source", str(images), "--output", str(out),
           "--gt", str(masks), *flags]
    log = out.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own resource usage
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(cmd)} failed:\n{log.read_text()[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"dice": metrics["mean_dice"], "pixel_dice": metrics["pixel_dice"], "seconds": seconds,
            "peak_rss_mib": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="the patch-trained model (its metadata: tile)")
    parser.add_argument("--shrunk", type=Path, default=None, help="a model trained on shrunk whole images")
    parser.add_argument("--images", type=Path, required=True, help="large held-out images; masks beside, images -> masks")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    masks = Path(str(args.images).replace("/images", "/masks", 1))
    contenders = {"tiles": (args.model, []), "whole": (args.model, ["--tile", "off"])}
    if args.shrunk:
        contenders["shrunk"] = (args.shrunk, [])
    start = machine_info()
    runs: dict[str, list[dict]] = {name: [] for name in contenders}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):
            for name, (model, flags) in contenders.items():
                runs[name].append(run_once(model, args.images, masks, Path(tmp) / f"{name}_{k}", flags))
    rows, result = [], {}
    for name, rs in runs.items():
        row = {"dice": rs[0]["dice"], "pixel_dice": rs[0]["pixel_dice"],
               "median_s": median([r["seconds"] for r in rs]), "peak_rss_mib": max(r["peak_rss_mib"] for r in rs)}
        result[name] = row
        rows.append([name, f"{row['dice']:.4f}", f"{row['pixel_dice']:.4f}", f"{row['median_s']:.1f}",
                     f"{row['peak_rss_mib']:.0f}"])
    print_table(["contender", "Dice", "pooled Dice", "median s", "peak RSS MiB"], rows)
    write_result("tiles", {"command": "python bench/tiles.py " + " ".join(sys.argv[1:]), "images": str(args.images),
                           "model": str(args.model), "shrunk": str(args.shrunk) if args.shrunk else None,
                           "results": result, "runs": runs}, args.out, start)


if __name__ == "__main__":
    main()
