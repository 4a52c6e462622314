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

    # flip TTA, Otsu instead of the adaptive cascade, and a clean-up chain
    python inference.py --model model.onnx --source images/ --output preds/ --tta flips --threshold otsu \
        --close 5 --open 3 --fill-holes --min-component-area 100 --keep-largest 1

    # evaluate against ground truth (paired by name) -> dice/iou columns + OUT/metrics.json;
    # --threshold model applies the threshold cross-validation recommended (as train.py scores it)
    python inference.py --model model.onnx --source val/images --output preds/ --gt val/masks --threshold model
    python inference.py --method otsu --source val/images --output otsu/ --gt val/masks   # model-free floor

    # force the CPU with 4 threads; --device auto picks TensorRT > CUDA > CPU
    python inference.py --model model.onnx --source images/ --output preds/ --device cpu --threads 4

    # a clean/defect gate (train.py --task classify -> gate.onnx) in front: images it judges clean are not
    # segmented (empty mask, status gated_clean); summary.csv gets gate_prob. --gate-threshold overrides its own
    python inference.py --model model.onnx --gate gate.onnx --source coil_0042/ --output preds/ --batch-size 8

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

from runtime.pipeline import RunOptions, model_class_names, output_lock, run_items, run_zip
from runtime.postprocess import PostOptions
from runtime.ray_engine import RayOptions, run_items_ray
from runtime.report import load_gt_index
from runtime.segmenter import TTA_FLIPS, OtsuSegmenter, Segmenter
from runtime.session import PROVIDER_CHOICES
from runtime.sources import ZIP_MAX_BYTES, ZIP_MAX_ENTRIES, ZIP_MAX_RATIO, detect_source, image_items, list_items
from runtime.video import run_video
from utils import LOG, MAX_IMAGE_PIXELS, UserError, run_cli, setup_logging


# ----------------------------------------------------------------------------- runs


def run(segmenter, source, output, options: RunOptions | None = None, progress=None, **overrides) -> dict:
    """Segment whatever `source` is (see runtime/sources.py) into `output`; returns a summary dict.

    `overrides` are RunOptions fields, or threshold/min_area (and other PostOptions) for this run.
    `progress(done, total)` is called after each item (total None for streams).
    """
    post = {k: overrides.pop(k) for k in list(overrides) if k in PostOptions.__dataclass_fields__}
    if any(v is not None for v in post.values()):
        segmenter = segmenter.with_options(**post)
    options = dataclasses.replace(options or RunOptions(), **overrides)
    output = Path(output)
    kind = detect_source(source)
    gt_index = load_gt_index(options.gt_dir)
    with output_lock(output):  # one run per output folder: a second one is refused, not interleaved
        if kind in ("video", "stream", "webcam"):
            return run_video(segmenter, source, output, options, progress)
        if kind == "zip":
            return run_zip(segmenter, Path(source), output, options, gt_index, progress)
        return run_items(segmenter, source_items(source, kind, output, options), output, options, gt_index, progress)


def source_items(source, kind: str, output: Path, options: RunOptions) -> list:
    """The image items of a folder, glob, image or .txt list (`kind` from detect_source); `output` is skipped."""
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


def add_source_args(add) -> None:
    """What to run on."""
    add("--model", default=None, help="the .onnx file written by export.py (not needed with --method otsu)")
    add("--source", required=True, help="an image, a folder (recursive), a quoted glob, a .txt list of paths, a "
        ".zip, a video (mp4/avi/mov/mkv), an rtsp:// or http:// stream URL, or a webcam index such as 0")
    add("--output", required=True, help="output folder")
    add("--method", default="model", choices=("model", "otsu"), help="'otsu': model-free baseline on grey levels")


def add_model_args(add) -> None:
    """Model, device and the stages around the model."""
    add("--device", "--providers", dest="device", default="auto", choices=PROVIDER_CHOICES,
        help="execution provider; auto tries TensorRT > CUDA > CPU (--providers is the old name)")
    add("--threads", type=int, default=0, help="CPU threads for onnxruntime, 0 = automatic")
    add("--batch-size", type=int, default=1, help="images per model run for folders, lists and ZIPs")
    add("--io-threads", type=int, default=2, help="background threads for decoding and for writing")
    add("--gate", default=None,
        help="clean/defect gate .onnx (train.py --task classify): images it judges clean skip the segmenter "
             "(empty mask, status gated_clean, gate_prob in summary.csv)")
    add("--gate-threshold", type=float, default=None,
        help="segment images whose gate probability is >= this (None: the gate's own out-of-fold threshold)")
    add("--detector", default=None,
        help="smart-crop models: the YOLO11-seg .onnx (default: the file the model's metadata names, beside it)")
    add("--tta", default=None, choices=tuple(TTA_FLIPS),
        help="flip test-time augmentation, batched into one run (None: none, and flips already baked into "
             "the model are not repeated)")


def add_post_args(add) -> None:
    """Thresholding and morphology, applied in this order."""
    add("--threshold", default="adaptive",
        help="'adaptive' (the model's cascade, e.g. 0.5 -> 0.3 -> 0.15), 'model' (the model's recommended "
             "threshold from cross-validation), 'otsu' or a number in (0, 1)")
    add("--min-area", type=int, default=None,
        help="pixels a region needs to count as a detection (None: the model's min_area, else 64)")
    add("--close", type=int, default=0, help="morphological closing kernel in px, 0 = off")
    add("--open", type=int, default=0, help="morphological opening kernel in px, 0 = off")
    add("--fill-holes", action="store_true", help="fill holes enclosed by the mask (bays open to the border stay)")
    add("--min-component-area", type=int, default=0, help="drop components smaller than this many px, 0 = off")
    add("--keep-largest", type=int, default=0, help="keep only the N largest components, 0 = all")


def add_output_args(add) -> None:
    """What is written."""
    add("--alpha", type=float, default=0.5, help="overlay opacity, 0..1")
    add("--color", default="red", help="overlay colour of binary masks: a name, #rrggbb or R,G,B")
    add("--save-probs", action="store_true", help="also write OUT/probs/<name>.npy (float16, C x H x W)")
    add("--gt", default=None, help="folder of ground-truth masks, paired by name: dice/iou columns + metrics.json")
    add("--gated-overlay", default="fast", choices=("fast", "png", "skip"),
        help="with --gate, the overlay of an image judged clean (the image itself): fast = uncompressed PNG (about "
             "6x less CPU than png, about 3x the bytes), png = compressed as every other overlay, skip = none")
    add("--strict", action="store_true", help="exit with code 1 when any item failed (otherwise failures are error rows and the exit code is 0)")


def add_zip_args(add) -> None:
    """ZIP limits, checked before anything is extracted."""
    add("--zip-max-mb", type=float, default=ZIP_MAX_BYTES / 2**20, help="refuse a ZIP expanding past this size")
    add("--zip-max-ratio", type=float, default=ZIP_MAX_RATIO, help="refuse a ZIP entry compressed more than this")
    add("--zip-max-entries", type=int, default=ZIP_MAX_ENTRIES, help="refuse a ZIP with more entries")


def add_untrusted_args(add) -> None:
    """Untrusted files."""
    add("--max-pixels", type=int, default=None,
        help=f"refuse images whose header claims more pixels, before decoding (decompression bombs); "
             f"default: env MAX_IMAGE_PIXELS, else {MAX_IMAGE_PIXELS}")
    add("--follow-symlinks", action="store_true",
        help="read symlinks in a source folder that point outside it (by default they are error rows)")


def add_video_args(add) -> None:
    """Videos and streams."""
    add("--video-max-side", type=int, default=0, help="downscale frames to this long side, 0 = as is")
    add("--vid-stride", type=int, default=1, help="infer every Nth frame and reuse the last mask between")
    add("--max-frames", type=int, default=0, help="stop after this many frames, 0 = all")
    add("--view-img", action="store_true", help="show a window with the annotated frames (when a display exists)")


def add_ray_args(add) -> None:
    """Scale-out (folders, globs and lists): Ray Data over a local or remote (RAY_ADDRESS) Ray cluster."""
    add("--engine", default="local", choices=("local", "ray"),
        help="'ray': the same outputs through Ray Data and a pool of actors (requirements-dist.txt)")
    add("--ray-actors", type=int, default=2, help="actors in the pool, one onnxruntime session each")
    add("--ray-num-cpus", type=int, default=0, help="CPUs of the local Ray started when RAY_ADDRESS is unset, 0 = all")
    add("--ray-cpus-per-actor", type=float, default=1.0, help="CPUs reserved by each actor")
    add("--ray-gpus-per-actor", type=float, default=None,
        help="GPUs per actor (fractions share a GPU); default 1 when the cluster has GPUs, else 0")
    add("--ray-block-size", type=int, default=8,
        help="images per actor call (rounded up to a multiple of --batch-size)")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Segment images, ZIPs, videos and streams with an exported ONNX model (torch not needed).",
        epilog="Writes OUT/masks/*.png, OUT/overlays/*.png and OUT/summary.csv (videos: OUT/<name>.mp4 and "
               "OUT/<name>_frames.csv). Post-processing order: threshold -> close -> open -> fill holes -> "
               "min component area -> keep largest.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for add_group in (add_source_args, add_model_args, add_post_args, add_output_args,
                      add_zip_args, add_untrusted_args, add_video_args, add_ray_args):
        add_group(parser.add_argument)
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


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
                     gate=args.gate, gate_threshold=args.gate_threshold, **post)


def run_ray(args: argparse.Namespace, options: RunOptions, progress=None, environ=os.environ) -> dict:
    """--engine ray: the folder/glob/list run of `run`, with the model run by Ray actors."""
    ray_options = RayOptions(args.ray_actors, args.ray_num_cpus, args.ray_cpus_per_actor, args.ray_gpus_per_actor,
                             args.ray_block_size)
    kind = detect_source(args.source)
    if kind not in ("folder", "glob", "list", "image"):
        raise UserError(f"--engine ray runs folders, globs and .txt lists; {args.source} is a {kind}: "
                        "use --engine local for it")
    probe = build_segmenter(argparse.Namespace(**{**vars(args), "device": "cpu", "threads": 1}))  # fail fast, here
    options = dataclasses.replace(options, class_names=model_class_names(probe.meta))  # per-class CSV columns
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
                             load_gt_index(options.gt_dir), progress, ray_options, environ)


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


def main(argv=None) -> None:
    args = parse_args(argv)
    setup_logging(level=10 if args.verbose else 20)
    options = RunOptions(  # fail on bad options before loading the model
        alpha=args.alpha, color=args.color, gt_dir=args.gt, save_probs=args.save_probs, batch_size=args.batch_size,
        io_threads=args.io_threads, zip_max_mb=args.zip_max_mb, zip_max_ratio=args.zip_max_ratio,
        zip_max_entries=args.zip_max_entries, video_max_side=args.video_max_side, vid_stride=args.vid_stride,
        max_frames=args.max_frames, view_img=args.view_img,
        max_pixels=resolve_max_pixels(args.max_pixels, os.environ), follow_symlinks=args.follow_symlinks,
        gated_overlay=args.gated_overlay,
    )
    kind = detect_source(args.source)
    label = "frames" if kind in ("video", "stream", "webcam") else "images"
    if args.engine == "ray":
        result = run_ray(args, options, progress=ProgressBar(label))
    else:
        result = run(build_segmenter(args), args.source, args.output, options, progress=ProgressBar(label))
    if result["errors"]:
        LOG.warning("%d item(s) failed; see the error column of %s", result["errors"], result["summary_csv"])
    print_summary(result, with_gt=args.gt is not None)
    if args.strict and result["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
