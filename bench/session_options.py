"""Session options, idle A/B: onnxruntime spinning off/on x intra-op threads 1/N, and ORT_PARALLEL inter-op 2.

    python bench/session_options.py                          # UnetPlusPlus/resnet34 @512, 10 ISBI slices (idle machine)
    python bench/session_options.py --limit 30 --repeats 9
    python bench/session_options.py --size 64 --limit 2 --repeats 1 --out smoke.json     # smoke

Every variant is a session from runtime.session.create_session (spinning, intra-op threads,
inter-op threads) on the same exported random-init model. Two measurements, each alternating the
variants round by round after a warm-up (medians of --repeats rounds):

- latency: one session.run, batch 1, on a random (1, 3, size, size) input
- folder:  inference.run() over the first --limit images of --images, the real engine with its decode
           and write threads, a Segmenter around each variant's session, into a temporary folder
Speed-up = the current default's median time / the variant's (> 1: faster than the default, which is
runtime.session.DEFAULT_SPINNING with --threads intra-op threads). Spinning threads take cores from
whatever runs next, so the result means something on an idle machine only: the load average before
and after is printed and recorded.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np

from common import (HORSE, add_run_args, export_model, machine_info, machine_line, median, print_table, random_model,
                    side_by_side, summary, write_result)

ISBI = HORSE.parent / "isbi_membrane" / "images"


@dataclass(frozen=True)
class Variant:
    """One way to open the session."""

    spinning: bool
    threads: int  # intra-op
    inter_op: int = 0  # > 0: ORT_PARALLEL with that many inter-op threads

    @property
    def name(self) -> str:
        text = f"spinning {'on' if self.spinning else 'off'}, intra-op {self.threads}"
        return text + (f", ORT_PARALLEL inter-op {self.inter_op}" if self.inter_op else "")


def variants(threads: int, spinning_default: bool) -> list[Variant]:
    """The current default first, then spinning off/on x intra-op 1/`threads`, then ORT_PARALLEL inter-op 2."""
    found = [Variant(spinning_default, threads)]
    found += [Variant(spinning, intra) for spinning in (False, True) for intra in (1, threads)]
    found.append(Variant(spinning_default, threads, inter_op=2))
    return list(dict.fromkeys(found))  # one of each (a 1-core machine has one intra-op count)


def image_list(folder: Path, limit: int, tmp: Path) -> tuple[Path, int]:
    """A .txt list of the first `limit` images of `folder` (0: all) -> (its path, its length)."""
    from runtime.sources import image_items

    paths = [item.path.resolve() for item in image_items(str(folder))]
    paths = paths[:limit] if limit else paths
    listing = tmp / "images.txt"
    listing.write_text("".join(f"{path}\n" for path in paths), encoding="utf-8")
    return listing, len(paths)


def measure(args, tmp: Path) -> tuple[list[Variant], dict, dict, int]:
    """(variants, latency times, folder times, images) for a model exported into `tmp`."""
    import inference
    from runtime.session import CPU, DEFAULT_SPINNING, create_session

    onnx_path = export_model(random_model(args.arch, args.encoder), args.arch, args.encoder, args.size,
                             tmp / "model.onnx")
    found = variants(args.threads, DEFAULT_SPINNING)
    sessions = {v.name: create_session(onnx_path, [CPU], v.threads, spinning=v.spinning, inter_op_threads=v.inter_op)
                for v in found}
    x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size), dtype=np.float32)
    latency = side_by_side({name: partial(s.run, None, {s.get_inputs()[0].name: x}) for name, s in sessions.items()},
                           repeats=args.repeats)
    print(f"latency measured ({len(found)} variants); the folder next", flush=True)

    listing, n = image_list(args.images, args.limit, tmp)
    rounds = iter(range(10**6))

    def run_folder(segmenter):
        inference.run(segmenter, str(listing), tmp / f"out{next(rounds)}")

    segmenters = {name: inference.Segmenter(onnx_path, session=s) for name, s in sessions.items()}
    folder = side_by_side({name: partial(run_folder, seg) for name, seg in segmenters.items()}, repeats=args.repeats)
    return found, latency, folder, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="UnetPlusPlus")
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--size", type=int, default=512, help="input size (long side) of the exported model")
    parser.add_argument("--images", type=Path, default=ISBI, help="folder of images for the folder measurement")
    parser.add_argument("--limit", type=int, default=10, help="use only the first N images (0: all)")
    add_run_args(parser)
    args = parser.parse_args()

    start_info = machine_info()
    print(f"before: {machine_line(start_info)}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        found, latency, folder, n = measure(args, Path(tmp))
    default = found[0].name
    speedup = {part: {name: median(times[default]) / median(t) for name, t in times.items()}
               for part, times in (("latency", latency), ("folder", folder))}
    images_per_s = {name: n / median(t) for name, t in folder.items()}
    print(f"\nlatency, {args.arch}/{args.encoder} @{args.size}, batch 1 (speed-up: default ms / variant ms)")
    print_table(["variant", "median ms", "speed-up vs default"],
                [[name, 1e3 * median(t), f"{speedup['latency'][name]:.2f}x"] for name, t in latency.items()])
    where = f"{args.images.parent.name}/{args.images.name}"
    print(f"\nfolder, inference.run over {n} images of {where} (speed-up: variant images/s / default's)")
    print_table(["variant", f"median s ({n} images)", "images/s", "speed-up vs default"],
                [[name, median(t), images_per_s[name], f"{speedup['folder'][name]:.2f}x"]
                 for name, t in folder.items()])
    end_info = machine_info()
    print(f"after: {machine_line(end_info)}")
    write_result("session_options", {
        "command": "python bench/session_options.py", "args": {k: str(v) for k, v in vars(args).items()},
        "variants": [{"name": v.name, **asdict(v)} for v in found], "default": default, "images": n,
        "latency": {k: summary(v) for k, v in latency.items()}, "folder": {k: summary(v) for k, v in folder.items()},
        "images_per_s": images_per_s, "speedup": speedup}, args.out, start_info)


if __name__ == "__main__":
    main()
