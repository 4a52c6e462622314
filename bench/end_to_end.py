"""End to end on a folder: inference.py vs the plain PyTorch eager script (bench/eager_baseline.py).

    python bench/end_to_end.py                       # horse val (77 images), Unet/resnet18 @192 (the README recipe)
    python bench/end_to_end.py --cli                 # plus both scripts as cold command lines
    python bench/end_to_end.py --arch UnetPlusPlus --encoder resnet34 --size 512 --repeats 5   # the default model
    python bench/end_to_end.py --limit 4 --size 64 --repeats 1 --out smoke.json               # smoke

One random-init model (BatchNorm calibrated) is exported with export.py's code and its state dict
saved, so both sides run the same weights. Same work on each side: read, resize the long side to
--size, pad, model, sigmoid, threshold 0.5, closing 5 px, overlay, write mask and overlay PNGs and
a CSV row. Measured, alternating round by round after a warm-up (--repeats rounds, medians):

- engine:  inference.run() in-process (session already open), batch 1, --threads threads
- eager:   eager_baseline.run_folder() in-process (model already loaded), torch threads = --threads
- model:   only session.run over the same preprocessed inputs, one by one: the pure model time
- CLIs:    with --cli, `python inference.py ...` and `python bench/eager_baseline.py ...` as
           subprocesses (imports, session/model load included)
- stubbed: inference.run() with session.run answered from a cache of real outputs: all the
           engine's work except the model (decode, resize, post-processing, overlay, PNG writes)
Overhead = engine time / pure model time (1.00 means decode, post-processing and writing are hidden).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

from common import (HORSE, add_run_args, export_model, machine_info, median, ort_session, print_table, random_model,
                    run_python, side_by_side, summary, verdict, write_result)

TARGET_SPEEDUP, TARGET_OVERHEAD = 2.0, 1.15


def prepare_inputs(segmenter, paths: list[Path]) -> list:
    """The exact (1, 3, H', W') tensors the engine feeds the model."""
    from utils import read_image

    return [segmenter.prepare(read_image(path))[0][None] for path in paths]


class CachedSession:
    """A session stand-in that returns a stored real output per input shape: the engine minus the model."""

    def __init__(self, session):
        self.session, self.outputs = session, {}

    def __getattr__(self, name):
        return getattr(self.session, name)

    def run(self, names, feeds):
        x = next(iter(feeds.values()))
        if x.shape not in self.outputs:
            self.outputs[x.shape] = self.session.run(names, feeds)
        return self.outputs[x.shape]


def build(args, tmp: Path) -> tuple[Path, Path]:
    model = random_model(args.arch, args.encoder)
    onnx_path, weights = tmp / "model.onnx", tmp / "model.pt"
    export_model(model, args.arch, args.encoder, args.size, onnx_path, weights)
    return onnx_path, weights


def contenders(args, tmp: Path, onnx_path: Path, weights: Path, paths: list[Path]) -> dict:
    import eager_baseline
    import inference

    segmenter = inference.Segmenter(onnx_path, device="cpu", threads=args.threads, threshold=0.5, close=5,
                                    precision="fp32")  # fp32, like the torch baseline
    session = ort_session(onnx_path, args.threads)
    tensors = prepare_inputs(segmenter, paths)
    stubbed = inference.Segmenter(onnx_path, session=CachedSession(session), threshold=0.5, close=5)
    for x in tensors:  # fill the cache outside the timed runs
        stubbed.session.run(None, {"image": x})
    model = eager_baseline.load_model(weights)
    rounds = iter(range(10**6))

    def fresh(name: str) -> Path:
        out = tmp / f"{name}_{next(rounds)}"
        return out

    def engine():
        inference.run(segmenter, str(args.source), fresh("engine"), batch_size=1, io_threads=2)

    def eager():
        eager_baseline.run_folder(model, paths, fresh("eager"), args.size, 0.5, 5, 0.5)

    def pure_model():
        for x in tensors:
            session.run(None, {"image": x})

    def engine_stubbed():
        inference.run(stubbed, str(args.source), fresh("stubbed"), batch_size=1, io_threads=2)

    fns = {"engine": engine, "eager": eager, "model": pure_model, "stubbed": engine_stubbed}
    if args.cli:
        common = ["--threads", str(args.threads)]
        fns["cli_inference"] = lambda: run_python(
            ["inference.py", "--model", str(onnx_path), "--source", str(args.source), "--output",
             str(fresh("cli_engine")), "--device", "cpu", "--threshold", "0.5", "--close", "5", *common])
        fns["cli_eager"] = lambda: run_python(
            ["bench/eager_baseline.py", "--weights", str(weights), "--source", str(args.source), "--output",
             str(fresh("cli_eager")), "--size", str(args.size), *common])
    return fns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=HORSE / "images" / "val")
    parser.add_argument("--arch", default="Unet")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--size", type=int, default=192, help="input size (long side) of the exported model")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N images (0: all)")
    add_run_args(parser)
    parser.add_argument("--cli", action="store_true", help="add the two subprocess rows (cold start included)")
    args = parser.parse_args()

    start_info = machine_info()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.limit:  # a copy holding only the first N images, so that the CLI sees the same set
            subset = tmp / "source"
            subset.mkdir()
            for path in sorted(args.source.iterdir())[:args.limit]:
                shutil.copy(path, subset / path.name)
            args.source = subset
        from runtime.sources import image_items

        paths = [item.path for item in image_items(str(args.source))]
        onnx_path, weights = build(args, tmp)
        times = side_by_side(contenders(args, tmp, onnx_path, weights, paths), repeats=args.repeats)
    n = len(paths)
    med = {name: median(t) for name, t in times.items()}
    speedup, overhead = med["eager"] / med["engine"], med["engine"] / med["model"]
    labels = {"engine": "inference.run (engine, in-process)", "eager": "eager_baseline.run_folder (in-process)",
              "model": "pure model (session.run only)",
              "stubbed": "inference.run with the model stubbed (all but the model)", "cli_inference": "`python inference.py` (CLI, cold)",
              "cli_eager": "`python bench/eager_baseline.py` (CLI, cold)"}
    print_table(["what", f"median s ({n} images)", "images/s", "x pure model"],
                [[labels[k], f"{med[k]:.2f}", f"{n / med[k]:.1f}", f"{med[k] / med['model']:.2f}"] for k in med])
    result = {"command": "python bench/end_to_end.py", "args": {k: str(v) for k, v in vars(args).items()},
              "images": n, "threads": args.threads, "runs": {k: summary(v) for k, v in times.items()},
              "images_per_s": {k: n / v for k, v in med.items()}, "speedup_vs_eager": speedup, "overhead": overhead,
              "target_speedup": verdict(speedup, TARGET_SPEEDUP),
              "target_overhead": verdict(overhead, TARGET_OVERHEAD, higher_is_better=False)}
    if "cli_eager" in med:
        result["cli_speedup_vs_eager"] = med["cli_eager"] / med["cli_inference"]
        print(f"CLI speed-up (cold start included): {result['cli_speedup_vs_eager']:.2f}x")
    print(f"throughput inference vs eager: {result['target_speedup']}")
    print(f"overhead end-to-end / pure model: {result['target_overhead']}")
    write_result("end_to_end", result, args.out, start_info)


if __name__ == "__main__":
    main()
