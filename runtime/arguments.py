"""inference.py's command line, one argument group per function (each takes `parser.add_argument`-like `add`).

`inference.parse_args` builds the parser from these groups; `--help` lists them in this order. No torch.
"""

from __future__ import annotations

import argparse

from runtime.backend import BACKENDS
from runtime.metadata import DEFAULT_INPUT_SIZE
from runtime.precision import MAX_DICE_LOSS, PRECISIONS
from runtime.segmenter import TTA_FLIPS
from runtime.session import DEFAULT_SPINNING, PROVIDER_CHOICES
from runtime.sources import ZIP_MAX_BYTES, ZIP_MAX_ENTRIES, ZIP_MAX_RATIO
from runtime.writers import LABEL_STUDIO_PREFIX
from utils import IGNORE_INDEX, MAX_IMAGE_PIXELS, UserError


def parse_ignore_index(text: str | None) -> int | None:
    """--ignore-index: a void label 0-255, or none."""
    text = str(IGNORE_INDEX if text is None else text).strip().lower()
    if text in ("", "none", "off"):
        return None
    if not text.isdigit() or int(text) > 255:
        raise UserError(f"--ignore-index {text!r} is not valid; give the void label 0-255 (default 255), or none")
    return int(text)


def add_source_args(add) -> None:
    """What to run on."""
    add("--model", default=None, help="the .onnx file written by export.py (not needed with --method otsu)")
    add("--source", required=True, nargs="+",
        help="an image, a folder (recursive), a quoted glob, a .txt list of paths, a .zip, a video (mp4/avi/mov/mkv), "
             "an rtsp:// or http:// stream URL, or a webcam index such as 0; several image files (an unquoted glob "
             "the shell expanded) are run as one list")
    add("--output", required=True, help="output folder")
    add("--method", default="model", choices=("model", "otsu"), help="'otsu': model-free baseline on grey levels")


def add_model_args(add) -> None:
    """Model, device and the stages around the model."""
    add("--device", "--providers", dest="device", default="auto", choices=PROVIDER_CHOICES,
        help="execution provider; auto tries TensorRT > CUDA > CPU (--providers is the old name)")
    add("--precision", default="auto", choices=PRECISIONS,
        help="auto: on the CPU, the <stem>.int8.onnx export.py measured beside the model when it loses at most "
             f"{MAX_DICE_LOSS} Dice, was measured faster and is not stale, else the model as given; fp32 / int8 "
             "force one (one log line and metrics.json say which file runs and why)")
    add("--backend", default="auto", choices=BACKENDS,
        help="the engine of the model: auto runs OpenVINO (requirements-openvino.txt) for int8 on a CPU with int8 "
             "dot products (VNNI/AMX) when it is installed, onnxruntime otherwise; one log line says which and why")
    add("--threads", type=int, default=0, help="CPU threads for onnxruntime (or OpenVINO), 0 = automatic")
    add("--ort-spinning", choices=("on", "off"), default="on" if DEFAULT_SPINNING else "off",
        help="onnxruntime's idle threads spin-wait for work (on) or sleep (off: they leave the cores to the "
             "decode and write threads)")
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
    add("--tile", default="auto", help="auto: images larger than the tile size the model's metadata records (a "
        "model trained on native-size patches) run as overlapping tiles, Gaussian-blended; off: whole images; HxW: "
        "that tile size, multiples of 32 (docs/inference.md#large-images-tiles)")
    add("--tile-overlap", type=float, default=None, help="the share of a tile its neighbours overlap (default: the "
        "metadata's, else 0.5)")


def add_post_args(add) -> None:
    """Thresholding and morphology, applied in this order; each one given overrides that part of the model's rule."""
    add("--threshold", default=None,
        help="None: the model's recorded rule (export.py chose it; the cross-validated threshold unless told "
             "otherwise); 'model' (the cross-validated threshold), 'adaptive' (the cascade, e.g. 0.5 -> 0.3 -> "
             "0.15, the first level whose mask holds --min-area px), 'otsu' or a number in (0, 1)")
    add("--min-area", type=int, default=None,
        help="foreground pixels a mask needs to count as a detection (None: the model's rule, else 64)")
    add("--close", type=int, default=None, help="morphological closing kernel in px, 0 = off (None: the rule's)")
    add("--open", type=int, default=None, help="morphological opening kernel in px, 0 = off (None: the rule's)")
    add("--fill-holes", action=argparse.BooleanOptionalAction, default=None,
        help="fill holes enclosed by the mask (bays open to the border stay); None: the rule's")
    add("--min-component-area", type=int, default=None,
        help="drop components smaller than this many px, 0 = off (None: the rule's)")
    add("--keep-largest", type=int, default=None, help="keep only the N largest components, 0 = all (None: the "
        "rule's)")


def add_output_args(add) -> None:
    """What is written."""
    add("--alpha", type=float, default=0.5, help="overlay opacity, 0..1")
    add("--color", default="red", help="overlay colour of binary masks: a name, #rrggbb or R,G,B")
    add("--save-probs", action="store_true", help="also write OUT/probs/<name>.npy (float16, C x H x W)")
    add("--gt", default=None, help="folder of ground-truth masks, paired by name: dice/iou columns + metrics.json")
    add("--ignore-index", default="255", help="the void label of --gt masks (VOC's 255 border): those pixels are "
        "left out of dice/iou; none = no void")
    add("--gated-overlay", default="fast", choices=("fast", "png", "skip"),
        help="with --gate, the overlay of an image judged clean (the image itself): fast = uncompressed PNG (about "
             "6x less CPU than png, about 3x the bytes), png = compressed as every other overlay, skip = none")
    add("--strict", action="store_true",
        help="exit with code 1 when any item failed (otherwise failures are error rows and the exit code is 0), and "
             "refuse to start when a file made from the model (int8, fp16, e2e, a variant) no longer matches it")


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
    add("--ray-actors", type=int, default=2, help="actors in the pool, one model session each")
    add("--ray-num-cpus", type=int, default=0, help="CPUs of the local Ray started when RAY_ADDRESS is unset, 0 = all")
    add("--ray-cpus-per-actor", type=float, default=1.0, help="CPUs reserved by each actor")
    add("--ray-gpus-per-actor", type=float, default=None,
        help="GPUs per actor (fractions share a GPU); default 1 when the cluster has GPUs, else 0")
    add("--ray-block-size", type=int, default=8,
        help="images per actor call (rounded up to a multiple of --batch-size)")


def add_foreign_args(add) -> None:
    """Models without this project's metadata (Hugging Face and others); on our own models these replace its values."""
    add("--class-names", default=None,
        help="comma-separated names, one per output channel, class 0 first (default: the metadata, else labels.txt "
             "or a Hugging Face config.json id2label beside the model, else numbered)")
    add("--mean", default=None, help="RGB mean, e.g. 0.485,0.456,0.406 (0..255 values are divided by 255; default: "
        "the metadata, else preprocessor_config.json beside the model, else ImageNet)")
    add("--std", default=None, help="RGB std, e.g. 0.229,0.224,0.225 (same sources as --mean)")
    add("--input-size", type=int, default=None,
        help="long side images are resized to, 0 = as is (default: the metadata, a fixed input size, "
             f"preprocessor_config.json, else {DEFAULT_INPUT_SIZE})")
    add("--background", action=argparse.BooleanOptionalAction, default=None,
        help="--no-background: class 0 is a class like any other (ADE20k's wall): argmax over all classes, nothing "
             "is 'empty', class 0 is drawn, counted and scored (default: the metadata; a foreign model whose "
             "class 0 is not named background has none)")


def add_writer_args(add) -> None:
    """Predictions for other tools (folders, globs, lists and ZIPs)."""
    add("--labelstudio", default=None, metavar="OUT.json",
        help="also write one Label Studio task per image, the prediction as brush RLE (Import in Label Studio)")
    add("--labelstudio-config", default=None, metavar="CONFIG.xml",
        help="the project's labelling config, for its from_name/to_name/labels (default: one the class names imply)")
    add("--labelstudio-polygons", action="store_true", help="also write each region as a polygon")
    add("--labelstudio-image-prefix", default=LABEL_STUDIO_PREFIX,
        help="put before each image's relative path: what Label Studio opens (local files storage by default; "
             "an http(s):// or s3:// URL prefix works too)")
    add("--model-version", default=None,
        help="the predictions' model_version in Label Studio (default: the model file's stem and metadata name)")
    add("--rle-csv", default=None, metavar="OUT.csv",
        help="also write a Kaggle/Severstal RLE CSV: ImageId,ClassId,EncodedPixels, one row per (image, class), "
             "empty where nothing was found")
