"""Footprint: install size (infer vs train), cold start of inference.py, and peak RSS over 30 vs 300 images.

    python bench/footprint.py                     # all three (the fresh infer venv needs the package index)
    python bench/footprint.py --no-venv           # sizes from package metadata only
    python bench/footprint.py --no-venv --size 64 --rss-images 3 30 --repeats 1 --rss-repeats 1 --out smoke.json

Install size, two methods: (a) a fresh venv with `pip install -r requirements-infer.txt`, its size
minus the size of the same venv before the install; (b) for both files, the dependency closure
resolved from the installed packages' metadata (Requires-Dist, markers evaluated for this machine)
and the sum of the sizes of their installed files (RECORD), read from this environment. Closure
members not installed here (e.g. torch's CUDA wheels on a CPU-only torch) are listed, not counted.
Cold start: `python -c` importing inference and opening a Segmenter on the default model
(UnetPlusPlus/resnet34 @512, random init), timed inside the process (import, session) and as
process wall time, --repeats runs, medians. Peak RSS: `python inference.py` on N images (the same
30 horse photos, repeated under new names), ru_maxrss of that process from os.wait4.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from common import HORSE, ROOT, machine_info, median, print_table, summary, verdict, write_result

RSS_TOLERANCE = 1.10
COLD_START = """
import time, sys
t0 = time.perf_counter()
import inference
t1 = time.perf_counter()
segmenter = inference.Segmenter(sys.argv[1], device="cpu")
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(path: Path) -> list[str]:
    """Top-level requirements of a requirements file (following -r), markers evaluated here."""
    from packaging.requirements import Requirement

    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r"):
            names += requirement_names(path.parent / line[2:].strip())
        elif line:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate():
                names.append(canonical(req.name))
    return names


def closure(roots: list[str]) -> tuple[set[str], set[str]]:
    """(installed, missing) canonical names reachable from roots through Requires-Dist (no extras)."""
    from packaging.requirements import Requirement

    installed, missing, todo = set(), set(), list(roots)
    while todo:
        name = todo.pop()
        if name in installed or name in missing:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.add(name)
            continue
        installed.add(name)
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonical(req.name))
    return installed, missing


def installed_bytes(names: set[str]) -> int:
    total = 0
    for name in names:
        for file in metadata.distribution(name).files or []:
            path = Path(file.locate())
            if path.is_file():
                total += path.stat().st_size
    return total


def fresh_venv_bytes(requirements: Path, tmp: Path) -> dict:
    venv = tmp / "venv-infer"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    before = dir_size(venv)
    start = time.perf_counter()
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-r", str(requirements)], check=True)
    seconds = time.perf_counter() - start
    return {"bytes": dir_size(venv) - before, "install_s": seconds}


def sizes(args, tmp: Path) -> dict:
    result = {}
    for kind in ("infer", "train"):
        installed, missing = closure(requirement_names(ROOT / f"requirements-{kind}.txt"))
        result[kind] = {"method": "metadata closure", "packages": len(installed), "bytes": installed_bytes(installed),
                        "not_installed_here": sorted(missing)}
    if args.venv:
        result["infer_fresh_venv"] = {"method": "fresh venv", **fresh_venv_bytes(ROOT / "requirements-infer.txt", tmp)}
    return result


def cold_start(model: Path, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", COLD_START, str(model)], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.split()
        runs.append((float(out[-2]), float(out[-1]), time.perf_counter() - start))
    return {"import": summary([r[0] for r in runs]), "session": summary([r[1] for r in runs]),
            "process": summary([r[2] for r in runs])}


# A small wrapper process: Linux keeps a process's RSS high-water mark across fork and exec, so a
# child forked straight from this (torch-sized) process would report our RSS, not its own.
MAXRSS_WRAPPER = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def peak_rss_mb(model: Path, source: Path, output: Path) -> float:
    """ru_maxrss of one `python inference.py` run on `source`, in MiB."""
    done = subprocess.run([sys.executable, "-c", MAXRSS_WRAPPER, sys.executable, "inference.py", "--model", str(model),
                           "--source", str(source), "--output", str(output), "--device", "cpu"], cwd=ROOT,
                          capture_output=True, text=True)
    code, kib = done.stdout.split()[-2:]
    if done.returncode != 0 or code != "0":
        raise RuntimeError(f"inference.py failed: {done.stderr[-2000:]}")
    return int(kib) / 1024  # Linux: KiB


def rss(model: Path, counts: list[int], repeats: int, tmp: Path) -> dict:
    photos = sorted((HORSE / "images" / "val").iterdir())[:min(counts)]
    result = {}
    for count in counts:
        folder = tmp / f"images{count}"
        folder.mkdir()
        for i in range(count):
            shutil.copy(photos[i % len(photos)], folder / f"{i:04d}_{photos[i % len(photos)].name}")
        result[count] = [peak_rss_mb(model, folder, tmp / f"out{count}_{r}") for r in range(repeats)]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-venv", dest="venv", action="store_false", help="skip the fresh-venv install")
    parser.add_argument("--arch", default="UnetPlusPlus")
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--size", type=int, default=512, help="input size of the cold-start model")
    parser.add_argument("--rss-size", type=int, default=192, help="Unet/resnet18 input size for the RSS runs")
    parser.add_argument("--rss-images", nargs=2, type=int, default=[30, 300])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rss-repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from common import export_model, random_model

    start_info = machine_info()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        installs = sizes(args, tmp)
        model = export_model(random_model(args.arch, args.encoder), args.arch, args.encoder, args.size, tmp / "m.onnx")
        light = export_model(random_model("Unet", "resnet18"), "Unet", "resnet18", args.rss_size, tmp / "light.onnx")
        cold = cold_start(model, args.repeats)
        peaks = rss(light, args.rss_images, args.rss_repeats, tmp)
    small, large = (median(peaks[n]) for n in args.rss_images)
    print_table(["install", "method", "packages", "MB"],
                [[kind, installs[kind]["method"], installs[kind].get("packages", "-"), f"{installs[kind]['bytes'] / 1e6:.0f}"]
                 for kind in installs])
    for kind in ("infer", "train"):
        if installs[kind]["not_installed_here"]:
            print(f"{kind}: closure members not installed here (not counted): "
                  f"{', '.join(installs[kind]['not_installed_here'])}")
    print()
    print_table(["cold start", "median s"], [["import inference", f"{cold['import']['median_ms'] / 1e3:.2f}"],
                                            ["open the session (Segmenter)", f"{cold['session']['median_ms'] / 1e3:.2f}"],
                                            ["whole `python -c` process", f"{cold['process']['median_ms'] / 1e3:.2f}"]])
    print()
    ratio = large / small
    print_table(["images", "peak RSS MiB (median)", "runs"], [[n, f"{median(peaks[n]):.0f}", json.dumps(
        [round(v) for v in peaks[n]])] for n in args.rss_images])
    target = verdict(ratio, RSS_TOLERANCE, higher_is_better=False)
    print(f"peak RSS {args.rss_images[1]} / {args.rss_images[0]} images: {target}")
    write_result("footprint", {"command": "python bench/footprint.py", "args": {k: str(v) for k, v in vars(args).items()},
                               "install": installs, "cold_start": cold, "peak_rss_mib": peaks, "rss_ratio": ratio,
                               "target_rss": target}, args.out, start_info)


if __name__ == "__main__":
    main()
