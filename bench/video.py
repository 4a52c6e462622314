"""Video: frames/s of the engine on a generated 720p clip with --vid-stride 1 and 3, against decode-only frames/s.

    python bench/video.py                                   # 150 frames 1280x720, Unet/resnet18 @192 (README recipe)
    python bench/video.py --arch UnetPlusPlus --encoder resnet34 --size 512 --frames 60
    python bench/video.py --frames 6 --width 320 --height 180 --size 64 --repeats 1 --out smoke.json   # smoke

The clip (moving discs on a gradient, mp4v) is written with cv2.VideoWriter. Rows, alternating
round by round after a warm-up (medians of --repeats): decode only (open_capture + iter_frames:
read and BGR->RGB, the limit for this clip), and inference.run() on the clip in-process (decode,
model, overlay, annotate, encode the output video, CSV) with each stride. `model only` is the
engine's predict() on one decoded frame, times the frame count: the floor with stride 1.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np

from common import (add_run_args, export_model, machine_info, median, print_table, random_model, side_by_side,
                    summary, write_result)


def write_clip(path: Path, frames: int, width: int, height: int, fps: float = 25.0) -> Path:
    """A synthetic clip: two discs moving over a colour gradient (compresses like real footage, roughly)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write mp4v video to {path}")
    ramp = np.linspace(40, 200, width, dtype=np.float32)
    base = np.stack([np.tile(ramp, (height, 1)), np.tile(ramp[::-1], (height, 1)),
                     np.full((height, width), 90, np.float32)], axis=-1).astype(np.uint8)
    noise = np.random.default_rng(0)
    for i in range(frames):
        frame = base.copy()
        cv2.circle(frame, (int(width * (0.2 + 0.6 * i / max(frames, 1))), height // 2), height // 5, (240, 240, 250), -1)
        cv2.circle(frame, (width // 3, int(height * (0.8 - 0.6 * i / max(frames, 1)))), height // 8, (30, 60, 220), -1)
        frame = cv2.add(frame, noise.integers(0, 12, frame.shape, dtype=np.uint8))
        writer.write(frame)
    writer.release()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--arch", default="Unet")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--size", type=int, default=192, help="input size (long side) of the exported model")
    parser.add_argument("--strides", nargs="+", type=int, default=[1, 3])
    add_run_args(parser)
    args = parser.parse_args()

    import inference
    from runtime.video import iter_frames, open_capture

    start_info = machine_info()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        clip = write_clip(tmp / "clip.mp4", args.frames, args.width, args.height)
        onnx_path = export_model(random_model(args.arch, args.encoder), args.arch, args.encoder, args.size,
                                 tmp / "model.onnx")
        segmenter = inference.Segmenter(onnx_path, device="cpu", threads=args.threads)
        frame = next(iter_frames(open_capture(clip)))[1]
        counter = iter(range(10**6))

        def decode_only():
            capture = open_capture(clip)
            for _ in iter_frames(capture):
                pass
            capture.release()

        fns = {"decode only": decode_only,
               "model only (x frames)": lambda: [segmenter.predict(frame) for _ in range(args.frames)]}
        for stride in args.strides:
            fns[f"inference, --vid-stride {stride}"] = lambda s=stride: inference.run(
                segmenter, str(clip), tmp / f"out{next(counter)}", vid_stride=s)
        times = side_by_side(fns, repeats=args.repeats)
    fps = {name: args.frames / median(t) for name, t in times.items()}
    decode = fps["decode only"]
    print_table(["what", f"median s ({args.frames} frames {args.width}x{args.height})", "frames/s", "of decode-only"],
                [[name, f"{median(t):.2f}", f"{fps[name]:.1f}", f"{fps[name] / decode:.0%}"] for name, t in times.items()])
    write_result("video", {"command": "python bench/video.py", "args": {k: str(v) for k, v in vars(args).items()},
                           "frames": args.frames, "runs": {k: summary(v) for k, v in times.items()},
                           "frames_per_s": fps}, args.out, start_info)


if __name__ == "__main__":
    main()
