"""Ray Data with N actors vs the single-process engine: images/s on one folder, side by side in one run.

    python bench/ray_vs_single.py --model runs/horse/horse.onnx --source ../shared/data/weizmann_horse/images/val

Both go through inference.py's own code paths with the same options: `run` (one onnxruntime session
with --threads CPU threads, reading and writing in background threads) and `run_ray` (a pool of
--actors actors, one single-threaded session each, on a local Ray with --num-cpus CPUs). The Ray
cluster is started once, and its start-up is reported apart; every Ray round still pays for
scheduling, creating the actors and loading one session per actor, as a real job does. The
single-process engine also runs with 1 thread ("single_1thread": what one actor does alone). A
warm-up of each, then ROUNDS rounds alternating the engines so that machine noise hits all alike;
medians of images/s. The fixed cost of a run (model load; for Ray also scheduling and actor start)
is measured the same way on the first 2 images (a .txt list). Writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import inference  # noqa: E402
from runtime.pipeline import RunOptions  # noqa: E402
from runtime.sources import image_items  # noqa: E402


def single_run(argv: list[str], output: Path) -> float:
    """Seconds for one single-process run, model load included (as the CLI does it)."""
    args = inference.parse_args([*argv, "--output", str(output)])
    start = time.perf_counter()
    inference.run(inference.build_segmenter(args), args.source, output, RunOptions(batch_size=args.batch_size))
    return time.perf_counter() - start


def ray_run(argv: list[str], output: Path) -> float:
    """Seconds for one --engine ray run on the already started cluster (actors and sessions created inside)."""
    args = inference.parse_args([*argv, "--output", str(output), "--engine", "ray"])
    start = time.perf_counter()
    inference.run_ray(args, RunOptions(batch_size=args.batch_size), environ={})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--source", required=True)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads of the single-process engine")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/ray_vs_single.json"))
    args = parser.parse_args()

    import ray

    items = image_items(args.source)
    images = len(items)
    per_actor = str(args.num_cpus / args.actors)
    engines = {"single": (single_run, ["--threads", str(args.threads)]),
               "single_1thread": (single_run, ["--threads", "1"]),
               "ray": (ray_run, ["--ray-actors", str(args.actors), "--ray-cpus-per-actor", per_actor])}
    start = time.perf_counter()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})
    ray_start_s = time.perf_counter() - start
    seconds = {name: [] for name in engines}
    fixed = {name: [] for name in engines}
    with tempfile.TemporaryDirectory() as tmp:
        two = Path(tmp) / "two.txt"
        two.write_text("".join(f"{item.path.resolve()}\n" for item in items[:2]))
        for round_ in range(args.rounds + 1):  # round 0: warm-up, not counted
            for name, (fn, extra) in engines.items():
                argv = ["--model", str(args.model), "--batch-size", str(args.batch_size), "--device", "cpu", *extra]
                took = fn([*argv, "--source", args.source], Path(tmp) / f"{name}{round_}")
                took_two = fn([*argv, "--source", str(two)], Path(tmp) / f"{name}{round_}_two")
                if round_:
                    seconds[name].append(took)
                    fixed[name].append(took_two)
                print(f"round {round_} {name}: {images / took:.2f} images/s, 2 images in {took_two:.1f} s", flush=True)
    ray.shutdown()
    rate = {name: float(np.median([images / s for s in values])) for name, values in seconds.items()}
    result = {
        "images": images, "source": args.source, "model": args.model.name, "actors": args.actors,
        "ray_num_cpus": args.num_cpus, "single_threads": args.threads, "batch_size": args.batch_size,
        "rounds": args.rounds, "images_per_s": rate, "ray_over_single": rate["ray"] / rate["single"],
        "seconds_per_run_of_2_images": {name: float(np.median(v)) for name, v in fixed.items()},
        "seconds": seconds, "ray_start_s": ray_start_s, "load_average_at_end": os.getloadavg(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("images_per_s", "ray_over_single", "seconds_per_run_of_2_images",
                                             "ray_start_s")}, indent=2))


if __name__ == "__main__":
    main()
