"""Runtime engine: run an exported segmentation ONNX model on images, ZIPs, videos and streams. No torch.

Run book (only onnxruntime(-gpu), opencv-python-headless and numpy are needed):

    # a folder (recursive), an image, a quoted glob or a .txt list -> OUT/masks, OUT/overlays, OUT/summary.csv
    python inference.py --model model.onnx --source images/ --output preds/
    python inference.py --model model.onnx --source "images/**/*.jpg" --output preds/ --batch-size 8

    # a ZIP (extracted safely) -> the same plus OUT/predictions.zip
    python inference.py --model model.onnx --source batch.zip --output preds/

    # a video, a stream or webcam 0 -> OUT/<name>.mp4 (AVI if MP4 cannot be written) + OUT/<name>_frames.csv
    python inference.py --model model.onnx --source clip.mp4 --output preds/ --vid-stride 3 --video-max-side 640
    python inference.py --model model.onnx --source rtsp://camera/stream --output preds/ --max-frames 500

    # a model trained with CROP=person finds the person with <name>.detector.onnx (beside it, or --detector),
    # segments the crop and pastes the mask back; summary.csv gets crop_status and crop_box
    python inference.py --model model.onnx --source photos/ --output preds/ --detector model.detector.onnx

    # the model's recorded rule applies by default (runtime/rule.py: the cross-validated threshold unless export.py
    # recorded another); each option given replaces that part: flip TTA, Otsu, the cascade, a clean-up chain
    python inference.py --model model.onnx --source images/ --output preds/ --tta flips --threshold otsu \
        --close 5 --open 3 --fill-holes --min-component-area 100 --keep-largest 1
    python inference.py --model model.onnx --source images/ --output preds/ --threshold adaptive

    # evaluate against ground truth (paired by name) -> dice/iou columns + OUT/metrics.json (with the file that ran,
    # its precision and the rule); by default as train.py scored it (the cross-validated threshold)
    python inference.py --model model.onnx --source val/images --output preds/ --gt val/masks
    python inference.py --method otsu --source val/images --output otsu/ --gt val/masks   # model-free floor

    # force the CPU with 4 threads; --device auto picks TensorRT > CUDA > CPU
    python inference.py --model model.onnx --source images/ --output preds/ --device cpu --threads 4

    # on the CPU, --precision auto (the default) runs model.int8.onnx when export.py measured it beside model.onnx
    # on held-back images: at most 0.01 Dice lost, and faster (runtime/precision.py; one log line says which and why)
    python inference.py --model model.onnx --source images/ --output preds/ --precision fp32   # force float32
    # --backend auto (the default) runs that int8 file on OpenVINO where it is installed and the CPU has VNNI/AMX
    python inference.py --model model.onnx --source images/ --output preds/ --backend openvino --batch-size 2
    # files made from model.onnx that no longer match it (a re-export since) are warnings; --strict refuses them
    python inference.py --model model.onnx --source images/ --output preds/ --strict

    # a clean/defect gate (train.py --task classify -> gate.onnx) in front: images it judges clean are not
    # segmented (empty mask, status gated_clean); summary.csv gets gate_prob. --gate-threshold overrides its own
    python inference.py --model model.onnx --gate gate.onnx --source coil_0042/ --output preds/ --batch-size 8

    # pre-annotations for Label Studio (one task per image, brush RLE) and a Kaggle/Severstal RLE CSV
    python inference.py --model model.onnx --source unlabelled/ --output preds/ --labelstudio preds/tasks.json
    python inference.py --model model.onnx --source test_images/ --output preds/ --rle-csv preds/submission.csv

    # a model from elsewhere (no metadata): names, normalisation, size; class 0 a class like any other (ADE20k)
    python inference.py --model segformer.onnx --source photos/ --output preds/ --class-names wall,sky,tree \
        --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --input-size 512 --no-background

    # the same outputs through Ray Data: a pool of actors, one onnxruntime session (and GPU) each;
    # RAY_ADDRESS=host:6379 joins a running cluster, else a local Ray is started (pip install -r requirements-dist.txt)
    python inference.py --model model.onnx --source images/ --output preds/ --engine ray --ray-actors 4

Python API (the CLI and the app use the same code; `Segmenter` lives in runtime/segmenter.py,
providers and sessions in runtime/session.py, the shared preprocessing in utils.preprocess):

    from inference import Segmenter, run
    seg = Segmenter("model.onnx", tta="hflip", threshold="adaptive", fill_holes=True)
    result = seg.predict(rgb_image)            # Result(mask, probs, info)
    for result in seg.predict_paths(paths):    # a generator; bad files give info["status"] == "error"
        ...

Post-processing order: threshold -> close -> open -> fill holes -> min component area -> keep largest
(see runtime/postprocess.py). Masks are PNGs at the original image size: 0/255 for binary models,
class ids plus a colour PNG and OUT/legend.png for multi-class ones. summary.csv is written row by
row. A bad input gets an `error` row and the run goes on; --strict makes the exit code 1 then.
Untrusted input (docs/reliability.md): images whose header claims more than --max-pixels (env
MAX_IMAGE_PIXELS) are refused undecoded, symlinks leaving a source folder are not followed
(--follow-symlinks), and OUT/.lock refuses a second run on the same output folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from functools import partial
from pathlib import Path

from runtime.arguments import (
    add_foreign_args, add_model_args, add_output_args, add_post_args, add_ray_args, add_source_args, add_untrusted_args,
    add_video_args, add_writer_args, add_zip_args, parse_ignore_index,
)
from runtime.foreign import parse_class_names, parse_floats
from runtime.pipeline import RunOptions, check_output_folder, output_lock, run_items, run_zip, with_model_classes
from runtime.postprocess import PostOptions
from runtime.ray_engine import RayOptions, run_items_ray
from runtime.report import load_gt_index
from runtime.segmenter import OtsuSegmenter, Segmenter
from runtime.sources import detect_source, image_items, list_items, path_items
from runtime.video import HEADLESS_HINT, opencv_is_headless, run_video
from runtime.writers import PredictionWriters, WriterOptions
from utils import LOG, MAX_IMAGE_PIXELS, UserError, run_cli, setup_logging

IMAGE_KINDS = ("folder", "glob", "list", "image", "paths")  # sources that are lists of images
# Options that only a binary (one-channel) model uses, with their defaults: given to a multi-class model, one warning.
BINARY_ONLY = (("threshold", None), ("color", "red"))


# ----------------------------------------------------------------------------- runs


def run(segmenter, source, output, options: RunOptions | None = None, progress=None, writers=None,
        **overrides) -> dict:
    """Segment whatever `source` is (see runtime/sources.py; a list: several image files) into `output`.

    Returns a summary dict. `overrides` are RunOptions fields, or threshold/min_area (and other PostOptions)
    for this run. `progress(done, total)` is called after each item (total None for streams). `writers`
    (runtime/writers.PredictionWriters) get every image's prediction; the caller closes them.
    """
    post = {k: overrides.pop(k) for k in list(overrides) if k in PostOptions.__dataclass_fields__}
    if any(v is not None for v in post.values()):
        segmenter = segmenter.with_options(**post)
    options = dataclasses.replace(options or RunOptions(), **overrides)
    output = Path(output)
    kind = detect_source(source)
    gt_index = load_gt_index(options.gt_dir, int(segmenter.meta.get("num_classes", 1)), options.ignore_index,
                             options.max_pixels)
    with output_lock(output):  # one run per output folder: a second one is refused, not interleaved
        if kind in ("video", "stream", "webcam"):
            if writers is not None:
                raise UserError(f"--labelstudio and --rle-csv write one entry per image; {source} is a {kind}: "
                                "run them on images, a folder, a list or a ZIP")
            return run_video(segmenter, source, output, options, progress)
        if kind == "zip":
            return run_zip(segmenter, Path(source), output, options, gt_index, progress, writers)
        items = source_items(source, kind, output, options)
        return run_items(segmenter, items, output, options, gt_index, progress, writers)


def source_items(source, kind: str, output: Path, options: RunOptions) -> list:
    """The image items of a folder, glob, image, .txt list or several files (`kind` from detect_source);
    `output` is skipped."""
    if kind == "paths":
        return path_items(source, exclude=output)
    if kind == "list":
        return list_items(Path(source))
    return image_items(source, exclude=output, follow_symlinks=options.follow_symlinks)


# ----------------------------------------------------------------------------- CLI


class ProgressBar:
    """Text progress on stderr with items/s: redrawn in place on a terminal, a line every ~10% otherwise."""

    def __init__(self, label: str = "images", stream=None, width: int = 30):
        self.label, self.width = label, width
        self.stream = stream if stream is not None else sys.stderr
        self.is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self.last_step = -1

    def __call__(self, done: int, total: int | None) -> None:
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        if not total:  # a stream: no end known
            step = int(time.perf_counter() - self.start) // 5
            if self.is_tty or step > self.last_step:
                self.last_step = step
                self.stream.write(("\r" if self.is_tty else "") + f"{self.label} {done} {rate:.1f}/s"
                                  + ("" if self.is_tty else "\n"))
                self.stream.flush()
            return
        fraction = done / total
        text = f"{self.label} {done}/{total} {fraction:4.0%} {rate:.1f}/s"
        if self.is_tty:
            filled = int(self.width * fraction)
            bar = "#" * filled + "." * (self.width - filled)
            self.stream.write(f"\r[{bar}] {text}" + ("\n" if done >= total else ""))
        elif int(fraction * 10) > self.last_step:
            self.last_step = int(fraction * 10)
            self.stream.write(text + "\n")
        self.stream.flush()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Segment images, ZIPs, videos and streams with an exported ONNX model (torch not needed).",
        epilog="Writes OUT/masks/*.png, OUT/overlays/*.png and OUT/summary.csv (videos: OUT/<name>.mp4 and "
               "OUT/<name>_frames.csv). Post-processing order: threshold -> close -> open -> fill holes -> "
               "min component area -> keep largest.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for add_group in (add_source_args, add_model_args, add_foreign_args, add_post_args, add_output_args,
                      add_writer_args, add_zip_args, add_untrusted_args, add_video_args, add_ray_args):
        group = parser.add_argument_group(add_group.__doc__.splitlines()[0].rstrip("."))
        add_group(group.add_argument)
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if len(args.source) == 1:
        args.source = args.source[0]  # one value: what it names decides (several: image files, see path_items)
    return args


def model_description(args: argparse.Namespace) -> dict:
    """--class-names, --mean, --std, --input-size, --[no-]background as a Segmenter description (None: not given)."""
    return {"class_names": parse_class_names(args.class_names), "mean": parse_floats(args.mean, "--mean"),
            "std": parse_floats(args.std, "--std"), "input_size": args.input_size, "background": args.background}


def build_segmenter(args: argparse.Namespace):
    post = dict(threshold=args.threshold, min_area=args.min_area, close=args.close, open=args.open,
                fill_holes=args.fill_holes, min_component_area=args.min_component_area, keep_largest=args.keep_largest)
    check = {k: v for k, v in post.items() if v is not None}
    if str(args.threshold).strip().lower() == "model":
        check["threshold"] = 0.5  # resolved from the model's metadata once it is loaded
    PostOptions(**check)  # fail on bad options before loading a model
    if args.method == "otsu":
        if args.gate is not None:
            raise UserError("--gate needs a segmentation model (--model), not --method otsu")
        if args.tta not in (None, "none"):
            LOG.warning("--tta is ignored with --method otsu")
        return OtsuSegmenter(**{**post, "threshold": "otsu"})
    if args.model is None:
        raise UserError("--model is required (the .onnx from export.py), or use --method otsu for the baseline")
    return Segmenter(args.model, device=args.device, threads=args.threads, tta=args.tta, detector=args.detector,
                     gate=args.gate, gate_threshold=args.gate_threshold, description=model_description(args),
                     spinning=args.ort_spinning == "on", precision=args.precision, backend=args.backend,
                     strict=args.strict, tile=args.tile, tile_overlap=args.tile_overlap, **post)


def warn_binary_only(args: argparse.Namespace, meta: dict) -> None:
    """One warning naming the binary-only options a multi-class model was given: it takes the argmax."""
    classes = int(meta.get("num_classes", 1))
    given = [f"--{name} {getattr(args, name)}" for name, default in BINARY_ONLY
             if getattr(args, name) is not None and str(getattr(args, name)).strip().lower() != default]
    if classes > 1 and given:
        LOG.warning("%s: not applied, this model has %d classes (argmax; masks and overlays use the class colours "
                    "of legend.png); these options apply to binary models only", ", ".join(given), classes)


def run_ray(args: argparse.Namespace, options: RunOptions, progress=None, environ=os.environ) -> dict:
    """--engine ray: the folder/glob/list run of `run`, with the model run by Ray actors."""
    ray_options = RayOptions(args.ray_actors, args.ray_num_cpus, args.ray_cpus_per_actor, args.ray_gpus_per_actor,
                             args.ray_block_size)
    kind = detect_source(args.source)
    if kind not in IMAGE_KINDS:
        raise UserError(f"--engine ray runs folders, globs and .txt lists; {args.source} is a {kind}: "
                        "use --engine local for it")
    probe = build_segmenter(argparse.Namespace(**{**vars(args), "device": "cpu", "threads": 1}))  # fail fast, here
    warn_binary_only(args, probe.meta)
    options = with_model_classes(options, probe.meta)  # per-class CSV columns
    output = Path(args.output)
    with output_lock(output):
        items = source_items(args.source, kind, output, options)
        # without --threads each actor's session gets the CPUs the actor reserved, not the whole machine
        threads = args.threads or max(1, round(args.ray_cpus_per_actor))
        model = os.path.abspath(args.model) if args.model else None  # actors may run in another directory
        gate = os.path.abspath(args.gate) if args.gate else None
        actor_args = argparse.Namespace(**{**vars(args), "threads": threads, "model": model, "gate": gate})
        import inference  # by module name, so actors unpickle it even when this file runs as __main__

        return run_items_ray(partial(inference.build_segmenter, actor_args), items, output, options,
                             load_gt_index(options.gt_dir, int(probe.meta.get("num_classes", 1)), options.ignore_index,
                                           options.max_pixels), progress, ray_options, environ)


def print_summary(result: dict, with_gt: bool) -> None:
    for label, key in (("masks", "masks"), ("overlays", "overlays"), ("video", "video"), ("summary", "summary_csv"),
                       ("metrics", "metrics_json"), ("zip", "predictions_zip")):
        if result.get(key):
            print(f"{label + ':':<12} {result[key]}")
    unit = "frames" if "video" in result else "images"
    print(f"{unit}: {result['images']}  ok: {result['ok']}  no_detection: {result['no_detection']}  "
          f"errors: {result['errors']}" + (f"  gated_clean: {result['gated_clean']}" if result.get("gated_clean") else "")
          + (f"  inferences: {result['inferences']}" if "inferences" in result else ""))
    if result["timing_ms"]:
        print("time per image: " + "  ".join(f"{k[:-3]} {v:.1f} ms" for k, v in result["timing_ms"].items()))
    if with_gt and result["mean_dice"] is None:
        print("mean dice: n/a  (no ground-truth mask matched an image name)")
    elif with_gt:
        metrics = result.get("metrics") or {}
        pooled = (f"  pixel dice: {metrics['pixel_dice']:.3f}  pixel iou: {metrics['pixel_iou']:.3f}"
                  if metrics.get("pixel_dice") is not None else "")
        print(f"mean dice: {result['mean_dice']:.3f}  mean iou: {result['mean_iou']:.3f}  "
              f"({result['with_gt']} images with ground truth){pooled}")
        for name, scores in (metrics.get("per_class") or {}).items():
            print(f"  class {name + ':':<14} dice {scores['mean_dice']:.3f}  iou {scores['mean_iou']:.3f}  "
                  f"(true in {scores['images_true']} images, predicted in {scores['images_predicted']})")


def resolve_max_pixels(flag: int | None, environ) -> int:
    """--max-pixels, else env MAX_IMAGE_PIXELS, else the built-in limit (default < env < flag)."""
    if flag is not None:
        return flag
    text = environ.get("MAX_IMAGE_PIXELS", "").strip()
    if not text:
        return MAX_IMAGE_PIXELS
    try:
        return int(text.replace("_", ""))
    except ValueError:
        raise UserError(f"MAX_IMAGE_PIXELS={text!r} is not a valid positive int (e.g. 100000000)") from None


def run_options(args: argparse.Namespace) -> RunOptions:
    """The run's output and source settings, checked (before any model is loaded)."""
    return RunOptions(
        alpha=args.alpha, color=args.color, gt_dir=args.gt, ignore_index=parse_ignore_index(args.ignore_index),
        save_probs=args.save_probs, batch_size=args.batch_size,
        io_threads=args.io_threads, zip_max_mb=args.zip_max_mb, zip_max_ratio=args.zip_max_ratio,
        zip_max_entries=args.zip_max_entries, video_max_side=args.video_max_side, vid_stride=args.vid_stride,
        max_frames=args.max_frames, view_img=args.view_img,
        max_pixels=resolve_max_pixels(args.max_pixels, os.environ), follow_symlinks=args.follow_symlinks,
        gated_overlay=args.gated_overlay,
    )


def writer_options(args: argparse.Namespace) -> WriterOptions:
    """--labelstudio*, --model-version and --rle-csv, checked; they need a local run on images."""
    options = WriterOptions(args.labelstudio, args.labelstudio_config, args.labelstudio_polygons,
                            args.labelstudio_image_prefix, args.model_version, args.rle_csv)
    if options.wanted and args.engine == "ray":
        raise UserError("--labelstudio and --rle-csv run with --engine local (the default)")
    if options.wanted and detect_source(args.source) not in IMAGE_KINDS + ("zip",):
        raise UserError(f"--labelstudio and --rle-csv write one entry per image; {args.source} is a "
                        f"{detect_source(args.source)}: run them on images, a folder, a list or a ZIP")
    return options


def run_local(args: argparse.Namespace, options: RunOptions, progress) -> dict:
    """The local run, with the Label Studio / RLE writers closed (written) even when the run is interrupted."""
    wanted = writer_options(args)
    segmenter = build_segmenter(args)
    warn_binary_only(args, segmenter.meta)
    writers = PredictionWriters(wanted, segmenter.meta, args.model) if wanted.wanted else None
    try:
        return run(segmenter, args.source, args.output, options, progress=progress, writers=writers)
    finally:
        for path in writers.close() if writers is not None else []:
            print(f"{'written:':<12} {path}")


def main(argv=None) -> None:
    args = parse_args(argv)
    setup_logging(level=10 if args.verbose else 20)
    if args.view_img and opencv_is_headless():
        raise UserError(HEADLESS_HINT)
    check_output_folder(Path(args.output))
    options = run_options(args)  # fail on bad options before loading the model
    kind = detect_source(args.source)
    progress = ProgressBar("frames" if kind in ("video", "stream", "webcam") else "images")
    if args.engine == "ray":
        writer_options(args)
        result = run_ray(args, options, progress=progress)
    else:
        result = run_local(args, options, progress)
    if result["errors"]:
        LOG.warning("%d item(s) failed; see the error column of %s", result["errors"], result["summary_csv"])
    print_summary(result, with_gt=args.gt is not None)
    if args.strict and result["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
