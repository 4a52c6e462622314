"""CACHE=ram: is the decoded buffer shared with the DataLoader workers, or copied into each?

    python bench/ramcache_memory.py                      # 300 random 512x512 images: a 300 MB buffer, 2 workers
    python bench/ramcache_memory.py --images 20 --size 64 --out smoke.json

For each mode (disk, ram), a fresh process builds the cache of --images random images, wraps it in the training
dataset (augmentation included) and a DataLoader with --workers persistent workers, runs --epochs epochs, then
reads each process's memory from /proc/<pid>/smaps_rollup (Linux): Shared_Dirty (pages the processes share) and
Private_Dirty (pages only this process holds). Under the fork start method the buffer should appear as shared
memory in the main process and in every worker, and the workers' private memory should be about what it is with
CACHE=disk (the augmentation's own); a copy per worker would add the buffer's size to each worker's private memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, machine_info, print_table, write_result  # noqa: E402

FIELDS = ("Rss", "Shared_Dirty", "Private_Dirty")


def memory_mib(pid: int) -> dict:
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in FIELDS:
                values[key] = int(rest.split()[0]) // 1024
    return values


def child(mode: str, args) -> dict:
    """One mode, in this (fresh) process."""
    import torch

    from dataset import SegDataset, build_cache, get_transform, pad_collate
    from training.sources.folders import pair_by_stem
    from training import ramcache

    data = Path(args.tmp) / "data"
    entries = build_cache(pair_by_stem(data / "images", data / "masks"), Path(args.tmp) / "work", args.size)
    if mode == "ram":
        entries = ramcache.load(entries)
    dataset = SegDataset(entries, get_transform(True, args.size, patch=True))
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, num_workers=args.workers, collate_fn=pad_collate,
                                         persistent_workers=True)
    for _ in range(args.epochs):
        for _ in loader:
            pass
    workers = [w.pid for w in loader._iterator._workers]
    return {"buffer_mib": round(ramcache.decoded_bytes([e.pixels[1].shape for e in entries]) / 2 ** 20, 1)
            if mode == "ram" else 0,
            "main": memory_mib(os.getpid()), "workers": [memory_mib(p) for p in workers]}


def write_images(folder: Path, count: int, size: int) -> None:
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(count):
        cv2.imwrite(str(folder / "images" / f"{i:04d}.png"), rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        cv2.imwrite(str(folder / "masks" / f"{i:04d}.png"), (rng.random((size, size)) > 0.5).astype(np.uint8) * 255)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--child", choices=("disk", "ram"), help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    start = machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        write_images(Path(tmp) / "data", args.images, args.size)
        runs = {}
        for mode in ("disk", "ram"):
            cmd = [sys.executable, __file__, "--child", mode, "--tmp", tmp, *sys.argv[1:]]
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
            runs[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    rows = [[mode, process, m["Rss"], m["Shared_Dirty"], m["Private_Dirty"]]
            for mode, run in runs.items()
            for process, m in [("main", run["main"]), *((f"worker {i}", w) for i, w in enumerate(run["workers"]))]]
    print(f"CACHE=ram buffer: {runs['ram']['buffer_mib']} MiB ({args.images} images of {args.size} px, "
          f"{args.workers} workers, {args.epochs} epochs)")
    print_table(["cache", "process", "RSS MiB", "shared dirty MiB", "private dirty MiB"], rows)
    write_result("ramcache_memory", {"command": "python bench/ramcache_memory.py", "args": {
        k: str(v) for k, v in vars(args).items() if k not in ("child", "tmp")}, "runs": runs}, args.out, start)


if __name__ == "__main__":
    main()
