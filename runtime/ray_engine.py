"""`inference.py --engine ray`: the folder/glob/list engine on a Ray cluster, through Ray Data. No torch.

ray.data holds the list of images in input order; `map_batches` streams blocks of it through a pool
of actors. Each actor owns one Segmenter (one onnxruntime session, on its own GPU when the cluster
has GPUs, or an OpenVINO one: --backend reaches every actor), reads its images with the same
header-checked reader as the local engine and writes masks/overlays with the same `finish_item`, so
masks are byte-identical; the driver writes
summary.csv row by row in input order. On several nodes the images and the output folder must be on
a filesystem every node sees. Ray is imported only when this engine is asked for
(requirements-dist.txt); the base runtime does not need it.
"""

from __future__ import annotations

import heapq
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path

import numpy as np

from runtime.pipeline import RunOptions, finish_item, load_item, predict_loaded, summarize
from runtime.report import CsvLog, csv_columns, write_metrics
from runtime.sources import Item
from utils import LOG, UserError

ROOT = Path(__file__).resolve().parents[1]
# Shipped to a remote cluster as the job's working_dir: the code, not the data or the environment.
UPLOAD_EXCLUDES = [".venv", ".git", "tests", "bench/results", "docs", "*.onnx", "*.pt"]


@dataclass(frozen=True)
class RayOptions:
    actors: int = 2  # size of the actor pool: one onnxruntime session each
    num_cpus: int = 0  # CPUs of a local Ray started here (0: all); ignored with RAY_ADDRESS
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0
    block_size: int = 8  # images per map_batches call (a multiple of --batch-size)

    def __post_init__(self):
        if self.actors < 1 or self.block_size < 1 or self.cpus_per_actor <= 0 or self.num_cpus < 0:
            raise UserError("--ray-actors and --ray-block-size must be >= 1, --ray-cpus-per-actor > 0, "
                            "--ray-num-cpus >= 0 (0: every CPU)")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise UserError(f"--ray-gpus-per-actor {self.gpus_per_actor} is not valid; use 0 or more (e.g. 1 or 0.5)")


def connect(ray, environ, num_cpus: int) -> bool:
    """Join the cluster named by RAY_ADDRESS, else start a local one; True when this call started Ray."""
    if ray.is_initialized():
        return False
    address = environ.get("RAY_ADDRESS", "").strip()
    if address:
        LOG.info("ray: connecting to %s", address)
        ray.init(address=address, log_to_driver=False, configure_logging=False,
                 runtime_env={"working_dir": str(ROOT), "excludes": UPLOAD_EXCLUDES})
    else:
        path = os.pathsep.join(p for p in (str(ROOT), environ.get("PYTHONPATH", "")) if p)
        ray.init(num_cpus=num_cpus or None, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path}})
        LOG.info("ray: started a local cluster with %d CPUs", int(ray.cluster_resources().get("CPU", 0)))
    return True


class SegmentActor:
    """One Ray actor: one Segmenter, built once; each call segments a block of items and writes their outputs."""

    def __init__(self, make_segmenter, output: str, options: RunOptions, gt_index: dict):
        self.segmenter = make_segmenter()
        self.output, self.options, self.gt_index = Path(output), options, gt_index
        self.pool = ThreadPoolExecutor(options.io_threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [Item(str(name), Path(path) if path else None, Path(out), str(error))
                 for name, path, out, error in zip(batch["name"], batch["path"], batch["out"], batch["error"])]
        loaded = iter(self.pool.map(partial(load_item, max_pixels=self.options.max_pixels), items))
        done = []
        while chunk := list(islice(loaded, self.options.batch_size)):
            start = time.perf_counter()
            outcomes = predict_loaded(self.segmenter, chunk)
            share = (time.perf_counter() - start) * 1e3 / len(chunk)
            done += [self.pool.submit(finish_item, item, image, outcome, share, self.output, self.options,
                                      self.gt_index) for (item, image, _), outcome in zip(chunk, outcomes)]
        results = [future.result() for future in done]  # (row, gt counts, timing)
        model = json.dumps(self.segmenter.run_info())  # which file ran here, and under which rule
        return {"index": batch["index"], "result": np.array([json.dumps(r) for r in results], dtype=object),
                "model": np.array([model] * len(results), dtype=object)}


def dataset_records(items: list[Item]) -> list[dict]:
    """Plain rows for ray.data; absolute paths, since an actor's working directory is not the driver's."""
    return [{"index": i, "name": item.name, "path": os.path.abspath(item.path) if item.path else "",
             "out": str(item.out), "error": item.error} for i, item in enumerate(items)]


def run_items_ray(make_segmenter, items: list[Item], output: Path, options: RunOptions, gt_index: dict, progress,
                  ray_options: RayOptions, environ=os.environ) -> dict:
    """runtime.pipeline.run_items on Ray: the same files and summary.csv (timing columns aside)."""
    try:
        import ray
    except ImportError:
        raise UserError("--engine ray needs Ray: pip install -r requirements-dist.txt") from None
    output.mkdir(parents=True, exist_ok=True)
    started = connect(ray, environ, ray_options.num_cpus)
    try:
        gpus = ray_options.gpus_per_actor
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        LOG.info("ray: %d actor(s), %.2g CPU and %.2g GPU each, %d images", ray_options.actors,
                 ray_options.cpus_per_actor, gpus, len(items))
        check_fits(ray.cluster_resources(), ray_options, gpus, strict=started)
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        block = -(-ray_options.block_size // options.batch_size) * options.batch_size
        dataset = ray.data.from_items(dataset_records(items), override_num_blocks=max(1, -(-len(items) // block)))
        gt_index = {name: Path(os.path.abspath(path)) for name, path in gt_index.items()}
        dataset = dataset.map_batches(
            SegmentActor, fn_constructor_args=(make_segmenter, os.path.abspath(output), options, gt_index),
            batch_size=block, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=ray_options.actors),
            num_cpus=ray_options.cpus_per_actor, num_gpus=gpus)
        return collect(dataset, len(items), output, gt_index, progress, options.class_names, options.background)
    except ray.exceptions.RayError as exc:  # e.g. an actor could not load the model on its node
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise UserError(f"--engine ray failed: {lines[-1] if lines else type(exc).__name__} (the rows finished "
                        f"before it are in {output / 'summary.csv'})") from exc
    finally:
        if started:
            ray.shutdown()


def check_fits(resources: dict, ray_options: RayOptions, gpus: float, strict: bool) -> None:
    """A pool the cluster cannot hold would wait forever: refuse it on a local Ray, warn on a remote
    one (an autoscaler may still add nodes)."""
    for what, per_actor, flag in (("CPU", ray_options.cpus_per_actor, "--ray-cpus-per-actor"),
                                  ("GPU", gpus, "--ray-gpus-per-actor")):
        need, have = ray_options.actors * per_actor, resources.get(what, 0)
        if need > have + 1e-9:
            message = (f"{ray_options.actors} actors x {per_actor:g} {what} need {need:g} {what}s but the Ray "
                       f"cluster has {have:g}; lower --ray-actors or {flag}")
            if strict:
                raise UserError(message)
            LOG.warning("%s (waiting for the cluster to grow)", message)


def collect(dataset, total: int, output: Path, gt_index: dict, progress, class_names=(), background=True) -> dict:
    """Write summary.csv in input order as results stream in; the same summary dict as run_items."""
    rows, counts, timings, waiting, next_index, models = [], [], [], [], 0, {}
    with CsvLog(output / "summary.csv", csv_columns(class_names, background)) as log:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for index, result in zip(batch["index"], batch["result"]):
                heapq.heappush(waiting, (int(index), result))
            models.update(dict.fromkeys(batch.get("model", ())))
            while waiting and waiting[0][0] == next_index:  # preserve_order makes this immediate
                row, count, timing = json.loads(heapq.heappop(waiting)[1])
                log.write(row)
                rows.append(row)
                counts += [tuple(count)] if count is not None else []
                timings += [timing] if timing else []
                next_index += 1
                if progress is not None:
                    progress(len(rows), total)
    assert next_index == total, f"ray returned {next_index} of {total} results"
    result = summarize(rows, timings, output)
    if gt_index:
        found = [json.loads(m) for m in models]  # one per distinct actor set-up (say GPU and CPU nodes)
        result["metrics"] = write_metrics(output / "metrics.json", rows, counts, class_names, background,
                                          found[0] if len(found) == 1 else {"actors": found} if found else None)
        result["metrics_json"] = output / "metrics.json"
    return result
