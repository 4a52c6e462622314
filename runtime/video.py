"""Videos, streams and webcams: frames in, an annotated video and a per-frame CSV out. OpenCV only.

`iter_frames` is a generator over any cv2.VideoCapture source, so a file, an RTSP/HTTP stream
and a webcam share one code path. The writer tries MP4 (mp4v) first and falls back to AVI
(XVID) when that encoder is missing, saying so in the log.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from utils import LOG, UserError

# (fourcc, suffix), best first.
VIDEO_FORMATS = (("mp4v", ".mp4"), ("XVID", ".avi"))


def open_capture(source) -> cv2.VideoCapture:
    """A VideoCapture for a file path, a stream URL or a webcam index; UserError when it will not open."""
    text = str(source).strip()
    capture = cv2.VideoCapture(int(text) if text.isdigit() else text)
    if not capture.isOpened():
        capture.release()
        path = Path(text)
        if text.isdigit() or "://" in text:
            raise UserError(f"cannot open video {source} (no such camera, or an unreachable stream)")
        if not path.is_file():
            raise UserError(f"cannot open video {source}: no such file")
        raise UserError(f"cannot open video {source}: no decodable video stream in {path.stat().st_size} bytes "
                        f"(empty, truncated, not a video, or an unsupported codec)")
    return capture


def iter_frames(capture: cv2.VideoCapture, max_side: int = 0, max_frames: int = 0):
    """Yield (index, RGB frame), downscaled so the long side is <= max_side (0: as is)."""
    index = 0
    while not max_frames or index < max_frames:
        ok, frame = capture.read()
        if not ok or frame is None:
            return
        h, w = frame.shape[:2]
        if max_side and max(h, w) > max_side:
            scale = max_side / max(h, w)
            frame = cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        index += 1


def make_writer(path: Path, fourcc: str, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    return cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)


def open_video_writer(stem: Path, fps: float, size: tuple[int, int]) -> tuple[cv2.VideoWriter, Path]:
    """A writer for `stem` + the first suffix whose encoder opens; logs a fallback."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    tried = []
    for fourcc, suffix in VIDEO_FORMATS:
        path = stem.with_suffix(suffix)
        writer = make_writer(path, fourcc, fps, size)
        if writer.isOpened():
            if tried:
                LOG.warning("video encoder %s unavailable; wrote %s (%s) instead", tried[0], path.name, fourcc)
            return writer, path
        writer.release()
        Path(path).unlink(missing_ok=True)
        tried.append(f"{fourcc}{suffix}")
    raise UserError(f"no video encoder available (tried {', '.join(tried)}); install opencv-python with FFmpeg")


def annotate(frame: np.ndarray, text: str) -> np.ndarray:
    """Frame with `text` in a dark box at the top left (RGB in, RGB out)."""
    out = frame.copy()
    scale = max(0.4, min(frame.shape[:2]) / 600)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(out, (0, 0), (tw + 8, th + base + 8), (0, 0, 0), -1)
    cv2.putText(out, text, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


class Viewer:
    """The --view-img window, or one plain log line saying why there is none."""

    def __init__(self, enabled: bool, title: str = "segmentation"):
        self.title, self.enabled = title, False
        if not enabled:
            return
        reason = self.no_display_reason()
        if reason is None:
            try:
                cv2.namedWindow(title, cv2.WINDOW_NORMAL)
                self.enabled = True
            except cv2.error:
                reason = "this OpenCV build has no GUI support (opencv-python-headless)"
        if reason is not None:
            LOG.warning("--view-img: no display available (%s); writing the video file only", reason)

    @staticmethod
    def no_display_reason() -> str | None:
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            return "no DISPLAY or WAYLAND_DISPLAY set"
        return None

    def show(self, frame_rgb: np.ndarray) -> bool:
        """Show a frame; False when the user pressed q or Esc."""
        if not self.enabled:
            return True
        cv2.imshow(self.title, cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR))
        return cv2.waitKey(1) & 0xFF not in (ord("q"), 27)

    def close(self) -> None:
        if self.enabled:
            cv2.destroyWindow(self.title)


def capture_fps(capture: cv2.VideoCapture, default: float = 25.0) -> float:
    fps = capture.get(cv2.CAP_PROP_FPS)
    return float(fps) if fps and 1.0 <= fps <= 240.0 else default


def elapsed_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1e3, 1)


def video_name(source) -> str:
    text = str(source).strip()
    if text.isdigit():
        return f"webcam{text}"
    if "://" in text:
        return "stream"
    return Path(text).stem


def ended_early_reason(source, frames_read: int, frames_expected: int, quit_early: bool) -> str | None:
    """Why a video gave fewer frames than it should (None when it did not): empty, or truncated mid-file.

    `frames_expected` is the container's frame count (0 for streams and webcams, which may end at any time).
    A file whose header promises more frames than could be decoded is truncated or corrupt past that point;
    the frames before it have been processed and written, this says where it stopped.
    """
    if frames_read == 0:
        return f"no frames could be read from {source} (empty, truncated or not a video)"
    # Some containers only estimate their frame count (duration x fps): a shortfall of 1% (at least one frame) is
    # within that estimate and not called truncation.
    if not quit_early and frames_expected - frames_read > max(1, frames_expected // 100):
        return (f"video ended after {frames_read} of {frames_expected} frames: {source} is truncated or corrupt "
                f"past frame {frames_read - 1}; the frames before it were processed")
    return None


def run_video(segmenter, source, output: Path, options, progress=None) -> dict:
    """Annotated video OUT/<name>.mp4 (or .avi) and OUT/<name>_frames.csv from a file, stream or webcam.

    Every `options.vid_stride`-th frame is inferred; frames between reuse the last mask.
    An unopenable source gives one error row and an empty result, not an exception.
    """
    from runtime.postprocess import PALETTE, make_overlay
    from runtime.report import FRAME_COLUMNS, CsvLog, error_row, fill_row, new_row

    name = video_name(source)
    csv_path = output / f"{name}_frames.csv"
    counts = {"ok": 0, "no_detection": 0, "gated_clean": 0, "error": 0}
    result = {"images": 0, "inferences": 0, "with_gt": 0, "mean_dice": None, "mean_iou": None, "timing_ms": {},
              "summary_csv": csv_path, "video": None}
    with CsvLog(csv_path, FRAME_COLUMNS) as log:
        try:
            capture = open_capture(source)
        except UserError as exc:
            LOG.warning("%s", exc)
            log.write(error_row(str(source), str(exc), FRAME_COLUMNS))
            return {**result, "ok": 0, "no_detection": 0, "errors": 1}
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if Path(str(source)).is_file() else 0
        total = min(total, options.max_frames) if options.max_frames and total > 0 else max(total, 0)
        writer, viewer, mask, info, infer_ms = None, Viewer(options.view_img), None, None, 0.0
        quit_early = False
        try:
            for index, frame in iter_frames(capture, options.video_max_side, options.max_frames):
                start = time.perf_counter()
                row = new_row(index, FRAME_COLUMNS)
                inferred = index % options.vid_stride == 0 or mask is None or mask.shape != frame.shape[:2]
                try:
                    if inferred:
                        prediction = segmenter.predict(frame)
                        mask, info, infer_ms = prediction.mask, prediction.info, elapsed_ms(start)
                        result["inferences"] += 1
                    fill_row(row, mask, info)
                    multi = int(mask.max(initial=0)) > 1 or int(segmenter.meta.get("num_classes", 1)) > 1
                    shown = make_overlay(frame, mask, options.color, options.alpha, PALETTE if multi else None)
                    shown = annotate(shown, f"{infer_ms:.0f} ms  largest {info['largest_component_px']} px")
                except Exception as exc:  # noqa: BLE001 - a bad frame is a row, not the end of the video
                    row.update(status="error", error=str(exc))
                    shown = frame
                if writer is None:
                    size = (frame.shape[1], frame.shape[0])
                    writer, result["video"] = open_video_writer(output / name, capture_fps(capture), size)
                if (shown.shape[1], shown.shape[0]) != size:  # a stream changed resolution mid-way
                    shown = cv2.resize(shown, size, interpolation=cv2.INTER_AREA)
                writer.write(cv2.cvtColor(shown, cv2.COLOR_RGB2BGR))
                row.update(inferred=int(inferred), ms=elapsed_ms(start))
                log.write(row)
                counts[row["status"]] += 1
                result["images"] += 1
                if progress is not None:
                    progress(result["images"], total or None)
                if not viewer.show(shown):
                    quit_early = True
                    break
        finally:
            capture.release()
            viewer.close()
            if writer is not None:
                writer.release()
        reason = ended_early_reason(source, result["images"], total, quit_early)
        if reason:
            LOG.warning("%s", reason)
            log.write(error_row(str(source), reason, FRAME_COLUMNS))
            counts["error"] += 1
    return {**result, "ok": counts["ok"], "no_detection": counts["no_detection"], "gated_clean": counts["gated_clean"],
            "errors": counts["error"]}
