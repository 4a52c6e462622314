"""Smart crop at inference: our numpy YOLO-seg decoding vs ultralytics' predict on the same ONNX file.

    python bench/smart_crop.py --images ../shared/data/weizmann_horse/images/val --limit 20
    python bench/smart_crop.py --images photos/ --detector weights/yolo11n-seg.pt   # real weights

Without --detector, a YOLO11n-seg is built from its yaml (random weights, no download) and exported with
export_detector; --conf defaults very low so random weights still give many detections to decode.
For each image both paths run on the same ONNX file (ours: runtime/crop.PersonDetector; theirs:
ultralytics YOLO(onnx).predict with rect=False, retina_masks=True). Parity: the largest box difference
in px and the share of equal mask pixels. Latency: a warm-up, then ROUNDS rounds alternating the two
paths per image (machine noise hits both alike); medians per image. Writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.crop import PersonDetector, select_person  # noqa: E402
from training.smartcrop import export_detector, random_detector  # noqa: E402  (sets ultralytics' offline switches first)
from utils import atomic_write_json, list_images, read_image  # noqa: E402


def detector_onnx(weights: str | None, folder: Path) -> Path:
    if weights is None:
        weights = random_detector(folder / "yolo11n-seg.pt")
    return export_detector(weights, folder / "detector.onnx")


def compare(ours: PersonDetector, theirs, image: np.ndarray, conf: float) -> dict:
    found = ours.detect(image)
    result = theirs.predict(image[..., ::-1], conf=conf, classes=[0], rect=False, retina_masks=True, verbose=False)[0]
    boxes = result.boxes.xyxy.numpy()
    masks = result.masks.data.numpy().astype(bool) if result.masks is not None else np.zeros((0,) + image.shape[:2], bool)
    same_count = len(boxes) == len(found.boxes)
    return {
        "detections": len(found.boxes), "same_count": same_count,
        "box_max_diff_px": float(np.abs(boxes - found.boxes).max()) if same_count and len(boxes) else 0.0,
        "mask_agreement": float((masks == found.masks).mean()) if same_count and len(boxes) else 1.0,
        "same_person": select_person(masks, result.boxes.conf.numpy()) == select_person(found.masks, found.scores),
    }


def timed_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", required=True, help="folder of photos")
    parser.add_argument("--detector", default=None, help="YOLO11-seg .pt/.onnx (default: yaml-built, random weights)")
    parser.add_argument("--conf", type=float, default=1e-3)
    parser.add_argument("--limit", type=int, default=20, help="images used")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "smart_crop.json"))
    args = parser.parse_args()

    from ultralytics import YOLO

    images = [read_image(p) for p in list_images(args.images)[:args.limit]]
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = detector_onnx(args.detector, Path(tmp))
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        ours = PersonDetector(ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"]),
                              args.conf)
        theirs = YOLO(str(onnx_path), task="segment")
        parity = [compare(ours, theirs, image, args.conf) for image in images]  # also the warm-up
        times = {"ours": [], "ultralytics": []}
        for _ in range(args.rounds):
            for image in images:
                times["ours"].append(timed_ms(lambda: ours.detect(image)))
                times["ultralytics"].append(timed_ms(lambda: theirs.predict(
                    image[..., ::-1], conf=args.conf, classes=[0], rect=False, retina_masks=True, verbose=False)))
    medians = {name: statistics.median(values) for name, values in times.items()}
    report = {
        "images": len(images), "conf": args.conf, "rounds": args.rounds, "threads": args.threads,
        "detector": args.detector or "yolo11n-seg.yaml (random weights)", "machine": platform.processor() or platform.machine(),
        "mean_detections": float(np.mean([p["detections"] for p in parity])),
        "same_count_all": all(p["same_count"] for p in parity),
        "box_max_diff_px": max(p["box_max_diff_px"] for p in parity),
        "mask_agreement_min": min(p["mask_agreement"] for p in parity),
        "same_person_all": all(p["same_person"] for p in parity),
        "median_ms": medians, "ratio_ultralytics_over_ours": medians["ultralytics"] / medians["ours"],
    }
    atomic_write_json(args.out, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
