"""End to end on a folder: inference.py (fp32 and int8) vs the plain PyTorch eager script (bench/eager_baseline.py).

    python bench/end_to_end.py                       # horse val (77 images), Unet/resnet18 @192 (the README recipe)
    python bench/end_to_end.py --data isbi           # ISBI (30 greyscale 512x512 slices), UnetPlusPlus/resnet34 @512
    python bench/end_to_end.py --cli                 # plus both scripts as cold command lines
    python bench/end_to_end.py --images DIR --arch UnetPlusPlus --encoder resnet34 --size 512   # any folder
    python bench/end_to_end.py --limit 4 --size 64 --repeats 1 --out smoke.json               # smoke
    python bench/end_to_end.py --data isbi --limit 15 --precisions int8 --backends onnxruntime openvino auto \
        --batch-size 2 --out bench/results/end_to_end_isbi_backends.json   # OpenVINO (requirements-openvino.txt)

--data picks a folder and the model served on it: horse (photos of about 300x200, Unet/resnet18 @192)
or isbi (512x512 slices, UnetPlusPlus/resnet34 @512: the input needs no resizing, so the engine is
not charged for upscaling small photos); --images, --arch, --encoder and --size override it.

One random-init model (BatchNorm calibrated) is exported with export.py's code and its state dict
saved, so both sides run the same weights. With int8 in --precisions, that export is also quantized
by the repo's own code (exporting.quantize.quantize_int8: static QDQ, per-channel int8 weights,
uint8 activations) calibrated on --calib-images images spread over the folder. Same work on each
side: read (greyscale -> RGB), resize the long side to --size (none when it already is), pad to 32,
model, sigmoid, threshold 0.5, closing 5 px, overlay, write mask and overlay PNGs and a CSV row.
Measured, alternating round by round after a warm-up (--repeats rounds, medians):

- engine:      inference.run() in-process on the fp32 model (session already open), --batch-size images per
               model run (default 1), --threads threads, on onnxruntime (--backend onnxruntime)
- engine int8: the same on the int8 copy (its masks differ slightly from fp32's; accuracy: bench/quantization.py)
- engine_openvino[_int8], engine_auto[_int8]: the same with --backend openvino / auto, for each of --backends
               past onnxruntime (the JSON records which backend auto ran and why)
- eager:       eager_baseline.run_folder() in-process (model already loaded), torch threads = --threads
- model:       only session.run over the same preprocessed inputs, one by one: the pure model time (fp32, int8;
               model_openvino[_int8] and model_auto[_int8] on those engines' own sessions)
- CLIs:        with --cli, `python inference.py ...` and `python bench/eager_baseline.py ...` as
               subprocesses (imports, session/model load included; fp32)
- stubbed:     inference.run() with session.run answered from a cache of real outputs: all the
               engine's work except the model (decode, resize, post-processing, overlay, PNG writes)
Overhead = engine time / pure model time of the same precision (1.00: decode, post-processing and
writing are hidden). Targets: engine >= 2x eager with fp32 and >= 3x with int8, overhead <= 1.10; int8 on another
backend: >= 1.3x the onnxruntime int8 engine and >= 5x eager.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

from common import (HORSE, ISBI, add_run_args, export_model, machine_info, median, ort_session, print_table,
                    quantize_copy, random_model, run_python, side_by_side, summary, verdict, write_result)

TARGET_SPEEDUP = {"fp32": 2.0, "int8": 3.0}  # engine / eager script, images per second
TARGET_OVERHEAD = 1.10  # engine time / pure model time
DATA = {  # --data: the folder and the model served on it
    "horse": {"images": HORSE / "images" / "val", "arch": "Unet", "encoder": "resnet18", "size": 192},
    "isbi": {"images": ISBI / "images", "arch": "UnetPlusPlus", "encoder": "resnet34", "size": 512},
}
SUFFIX = {"fp32": "", "int8": "_int8"}  # run names: engine, engine_int8, model, model_int8
BACKEND_SUFFIX = {"onnxruntime": "", "openvino": "_openvino", "auto": "_auto"}  # engine_openvino_int8, ...
TARGET_BACKEND = {"vs_onnxruntime": 1.3, "vs_eager": 5.0}  # int8 on another backend / the onnxruntime int8 engine


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


def build(args, tmp: Path, paths: list[Path]) -> tuple[dict[str, Path], Path]:
    """({precision: ONNX path}, state-dict path) of one random-init model; int8 quantized from the fp32 file."""
    from exporting.quantize import spread

    model = random_model(args.arch, args.encoder)
    onnx_path, weights = tmp / "model.onnx", tmp / "model.pt"
    export_model(model, args.arch, args.encoder, args.size, onnx_path, weights)
    models = {"fp32": onnx_path}
    if "int8" in args.precisions:
        models["int8"] = quantize_copy(onnx_path, tmp / "model.int8.onnx", spread(paths, args.calib_images))
    return {p: models[p] for p in args.precisions}, weights


def contenders(args, tmp: Path, models: dict[str, Path], weights: Path, paths: list[Path]) -> dict:
    import eager_baseline
    import inference

    rounds = iter(range(10**6))

    def fresh(name: str) -> Path:
        return tmp / f"{name}_{next(rounds)}"

    def engine_fn(segmenter, name):
        return lambda: inference.run(segmenter, str(args.images), fresh(name), batch_size=args.batch_size,
                                     io_threads=2)

    def model_fn(session, tensors):
        def pure_model():
            for x in tensors:
                session.run(None, {"image": x})
        return pure_model

    fns, sessions, tensors = {}, {}, {}
    for precision, path in models.items():
        for backend in args.backends:
            segmenter = inference.Segmenter(path, device="cpu", threads=args.threads, threshold=0.5, close=5,
                                            precision="fp32" if precision == "fp32" else "auto",  # the file as given
                                            backend=backend)
            name = BACKEND_SUFFIX[backend] + SUFFIX[precision]
            if backend == "onnxruntime":
                sessions[precision] = ort_session(path, args.threads)
                tensors[precision] = prepare_inputs(segmenter, paths)
            args.ran[name] = [segmenter.backend, segmenter.backend_reason]
            fns["engine" + name] = engine_fn(segmenter, "engine" + name)
            fns["model" + name] = model_fn(sessions[precision] if backend == "onnxruntime" else segmenter.session,
                                           tensors[precision])  # onnxruntime comes first: its inputs serve all
    model = eager_baseline.load_model(weights)
    fns["eager"] = lambda: eager_baseline.run_folder(model, paths, fresh("eager"), args.size, 0.5, 5, 0.5)
    first = next(iter(models))  # the stubbed engine: any precision's real outputs, filled outside the timed runs
    stubbed = inference.Segmenter(models[first], session=CachedSession(sessions[first]), threshold=0.5, close=5)
    for x in tensors[first]:
        stubbed.session.run(None, {"image": x})
    fns["stubbed"] = engine_fn(stubbed, "stubbed")
    if args.cli:
        onnx_path = models.get("fp32", models[first])
        common = ["--threads", str(args.threads)]
        fns["cli_inference"] = lambda: run_python(
            ["inference.py", "--model", str(onnx_path), "--source", str(args.images), "--output",
             str(fresh("cli_engine")), "--device", "cpu", "--threshold", "0.5", "--close", "5", "--backend",
             "onnxruntime", "--batch-size", str(args.batch_size), *common])
        fns["cli_eager"] = lambda: run_python(
            ["bench/eager_baseline.py", "--weights", str(weights), "--source", str(args.images), "--output",
             str(fresh("cli_eager")), "--size", str(args.size), *common])
    return fns


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=sorted(DATA), default="horse",
                        help="folder preset and the model served on it (default: horse)")
    parser.add_argument("--images", "--source", type=Path, default=None, help="image folder (default: --data's)")
    parser.add_argument("--arch", default=None, help="default: --data's (horse: Unet, isbi: UnetPlusPlus)")
    parser.add_argument("--encoder", default=None, help="default: --data's (horse: resnet18, isbi: resnet34)")
    parser.add_argument("--size", type=int, default=None,
                        help="input size (long side) of the exported model (default: --data's, horse 192, isbi 512)")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N images (0: all)")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "int8"], default=["fp32", "int8"],
                        help="engine precisions to time (default: both)")
    parser.add_argument("--calib-images", type=int, default=8,
                        help="int8 calibration images, spread over the folder (default 8)")
    parser.add_argument("--backends", nargs="+", choices=list(BACKEND_SUFFIX), default=["onnxruntime"],
                        help="engine backends to time (onnxruntime always; openvino needs requirements-openvino.txt)")
    parser.add_argument("--batch-size", type=int, default=1, help="the engine's --batch-size (default 1)")
    add_run_args(parser)
    parser.add_argument("--cli", action="store_true", help="add the two subprocess rows (cold start included)")
    args = parser.parse_args()
    for key, value in DATA[args.data].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.precisions = [p for p in ("fp32", "int8") if p in args.precisions]
    args.backends = [b for b in BACKEND_SUFFIX if b in args.backends or b == "onnxruntime"]
    args.ran = {}  # {run name suffix: [the backend that ran, why]}, filled by contenders()
    return args


def main() -> None:
    args = parse_args()
    start_info = machine_info()
    torch.set_num_threads(args.threads)
    from runtime.sources import image_items

    folder = str(args.images)  # before --limit swaps in a copy of its first N images
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.limit:  # a copy holding only the first N images, so that the CLI sees the same set
            subset = tmp / "source"
            subset.mkdir()
            for item in image_items(str(args.images))[:args.limit]:
                shutil.copy(item.path, subset / Path(item.path).name)
            args.images = subset
        paths = [Path(item.path) for item in image_items(str(args.images))]
        models, weights = build(args, tmp, paths)
        times = side_by_side(contenders(args, tmp, models, weights, paths), repeats=args.repeats)
    report(args, folder, paths, times, start_info)


def report(args, folder: str, paths: list[Path], times: dict[str, list[float]], start_info: dict) -> None:
    n = len(paths)
    med = {name: median(t) for name, t in times.items()}
    labels = {"engine": "inference.run fp32 (engine, in-process)",
              "engine_int8": "inference.run int8 (engine, in-process)",
              "eager": "eager_baseline.run_folder (in-process)", "model": "pure model fp32 (session.run only)",
              "model_int8": "pure model int8 (session.run only)",
              "stubbed": "inference.run with the model stubbed (all but the model)",
              "cli_inference": "`python inference.py` fp32 (CLI, cold)",
              "cli_eager": "`python bench/eager_baseline.py` (CLI, cold)"}
    for name, (ran, _) in args.ran.items():
        if name not in SUFFIX.values():  # another backend's rows (onnxruntime's are "" and "_int8")
            precision = "int8" if name.endswith("_int8") else "fp32"
            labels[f"engine{name}"] = f"inference.run {precision} --backend {name.split('_')[1]} (ran {ran})"
            labels[f"model{name}"] = f"pure model {precision} on {ran} (session.run only)"
    order = [k for k in labels if k in med]
    print_table(["what", f"median s ({n} images)", "images/s", "speed-up vs eager"],
                [[labels[k], f"{med[k]:.2f}", f"{n / med[k]:.1f}", f"{med['eager'] / med[k]:.2f}"] for k in order])
    result = {"command": "python bench/end_to_end.py", "args": {**{k: str(v) for k, v in vars(args).items()}, "images": folder},
              "data": args.data, "folder": folder, "model": f"{args.arch}/{args.encoder}", "size": args.size,
              "images": n, "threads": args.threads, "precisions": args.precisions,
              "runs": {k: summary(v) for k, v in times.items()}, "images_per_s": {k: n / v for k, v in med.items()},
              "targets": {}}
    for precision in args.precisions:
        suffix = SUFFIX[precision]
        speedup = med["eager"] / med["engine" + suffix]
        overhead = med["engine" + suffix] / med["model" + suffix]
        result["speedup_vs_eager" + suffix], result["overhead" + suffix] = speedup, overhead
        result["targets"][precision] = {
            "speedup_vs_eager": verdict(speedup, TARGET_SPEEDUP[precision]),
            "overhead": verdict(overhead, TARGET_OVERHEAD, higher_is_better=False)}
        print(f"{precision}: throughput inference vs eager: {result['targets'][precision]['speedup_vs_eager']}")
        print(f"{precision}: overhead end-to-end / pure model: {result['targets'][precision]['overhead']}")
    if "engine_int8" in med and "engine" in med:
        result["int8_vs_fp32_engine"] = med["engine"] / med["engine_int8"]
        result["int8_vs_fp32_model"] = med["model"] / med["model_int8"]
        print(f"int8 vs fp32: engine {result['int8_vs_fp32_engine']:.2f}x, "
              f"pure model {result['int8_vs_fp32_model']:.2f}x")
    backend_targets(args, med, result)
    if "cli_eager" in med:
        result["cli_speedup_vs_eager"] = med["cli_eager"] / med["cli_inference"]
        print(f"CLI speed-up (cold start included): {result['cli_speedup_vs_eager']:.2f}x")
    write_result("end_to_end" if args.data == "horse" else f"end_to_end_{args.data}", result, args.out, start_info)


def backend_targets(args, med: dict, result: dict) -> None:
    """Each backend past onnxruntime against the onnxruntime engine of the same precision and the eager script; int8
    has targets (TARGET_BACKEND). Records which backend each engine row ran and why."""
    result["backends_ran"] = args.ran
    for name in args.ran:
        if name in SUFFIX.values():
            continue  # onnxruntime's own rows
        precision = "int8" if name.endswith("_int8") else "fp32"
        vs_ort, vs_eager = med["engine" + SUFFIX[precision]] / med["engine" + name], med["eager"] / med["engine" + name]
        result["vs_onnxruntime" + name], result["speedup_vs_eager" + name] = vs_ort, vs_eager
        line = (f"engine{name} ({args.ran[name][0]}): {vs_ort:.2f}x the onnxruntime {precision} engine, "
                f"{vs_eager:.2f}x eager")
        if precision == "int8":
            result["targets"][name.lstrip("_")] = {
                "vs_onnxruntime_int8": verdict(vs_ort, TARGET_BACKEND["vs_onnxruntime"]),
                "speedup_vs_eager": verdict(vs_eager, TARGET_BACKEND["vs_eager"])}
            line += f"; targets: {result['targets'][name.lstrip('_')]}"
        print(line)


if __name__ == "__main__":
    main()
