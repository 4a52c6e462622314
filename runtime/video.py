"""Videos, streams and webcams: frames in, an annotated video and a per-frame CSV out. OpenCV only.

A chain of generators: `iter_frames` reads any cv2.VideoCapture source (a file, an RTSP/HTTP
stream and a webcam share one code path), `predict_frames` runs the Segmenter on them as on
images (every --vid-stride-th frame), and `run_video` writes each one's row (the summary.csv
columns of an image, filled by the same fill_row) and its overlay (the same make_overlay). The
writer tries MP4 (mp4v) first and falls back to AVI (XVID) when that encoder is missing, saying
so in the log.

Annotating and encoding (~19 ms per 720p frame) run on one writer thread, through the folder
pipeline's `prefetch`: the caller's thread reads and predicts frame k+1 while frame k is encoded,
at most FRAMES_AHEAD frames are in flight, and the frames reach the encoder in order, so the
video is the same bytes as a sequential run. An error in the writer is raised in the caller; on
an error or Ctrl-C the writer stops and the video is closed, keeping the frames written so far.
The source is read on the caller's thread only: no thread is left waiting on a stream at the end.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from utils import LOG, UserError

# (fourcc, suffix), best first.
VIDEO_FORMATS = (("mp4v", ".mp4"), ("XVID", ".avi"))
FRAMES_AHEAD = 3  # predicted frames waiting for (or in) the writer thread: bounds the memory held


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


def iter_frames(capture: cv2.VideoCapture, max_side: int = 0, max_frames: int = 0,
                stop: threading.Event | None = None):
    """Yield (index, RGB frame), downscaled so the long side is <= max_side (0: as is); ends when `stop` is set."""
    index = 0
    while (not max_frames or index < max_frames) and not (stop is not None and stop.is_set()):
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


HEADLESS_HINT = ("--view-img needs OpenCV with GUI support, but this one is headless (opencv-python-headless, "
                 "what requirements-infer.txt installs): pip uninstall -y opencv-python-headless && "
                 "pip install opencv-python")


def opencv_is_headless(build_info: str | None = None) -> bool:
    """True when this OpenCV was built without a GUI backend (its build information says 'GUI: NONE')."""
    info = cv2.getBuildInformation() if build_info is None else build_info
    match = re.search(r"^\s*GUI:\s*(\S+)", info, re.M)
    return match is not None and match.group(1).upper() == "NONE"


class Viewer:
    """The --view-img window, or one plain log line saying why there is none."""

    def __init__(self, enabled: bool, title: str = "segmentation"):
        self.title, self.enabled = title, False
        if not enabled:
            return
        if opencv_is_headless():
            LOG.warning("%s; writing the video file only", HEADLESS_HINT)
            return
        reason = self.no_display_reason()
        if reason is None:
            try:
                cv2.namedWindow(title, cv2.WINDOW_NORMAL)
                self.enabled = True
            except cv2.error:
                reason = "this OpenCV build cannot open a window"
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


@dataclass
class Frame:
    """One frame of a video and the prediction it is shown with (inferred on it, or reused from an earlier one)."""

    index: int
    image: np.ndarray  # RGB (H, W, 3)
    prediction: object  # the Segmenter's Result, or None before the first success
    inferred: bool  # the model ran on this frame (whether or not it failed)
    error: str  # why the prediction of this frame failed, else ""
    infer_ms: float  # of the prediction shown
    start: float  # perf_counter() when the frame came in


def predict_frames(segmenter, frames, vid_stride: int = 1):
    """Yield a Frame per (index, RGB frame): every `vid_stride`-th frame, the first and any frame of a new size
    is predicted (Segmenter.predict, as images are); the frames between reuse the last prediction."""
    prediction, infer_ms = None, 0.0
    for index, image in frames:
        start = time.perf_counter()
        inferred = index % vid_stride == 0 or prediction is None or prediction.mask.shape != image.shape[:2]
        error = ""
        if inferred:
            try:
                prediction, infer_ms = segmenter.predict(image), elapsed_ms(start)
            except Exception as exc:  # noqa: BLE001 - a bad frame is a row, not the end of the video
                error = str(exc)
        yield Frame(index, image, prediction, inferred, error, infer_ms, start)


def frame_row(frame: Frame, num_classes: int, options, background: bool = True) -> tuple[dict, np.ndarray]:
    """(the frame's CSV row, the annotated RGB frame to write); a failure is an error row and the plain frame."""
    from runtime.postprocess import class_palette, make_overlay
    from runtime.report import FRAME_COLUMNS, fill_row, new_row

    row = new_row(frame.index, FRAME_COLUMNS)
    row.update(inferred=int(frame.inferred))
    if frame.error:
        row.update(status="error", error=frame.error)
        return row, frame.image
    try:
        mask, info = frame.prediction.mask, frame.prediction.info
        fill_row(row, mask, info)
        multi = int(mask.max(initial=0)) > 1 or num_classes > 1
        shown = make_overlay(frame.image, mask, options.color, options.alpha,
                             class_palette(background) if multi else None, background)
        return row, annotate(shown, f"{frame.infer_ms:.0f} ms  largest {info['largest_component_px']} px")
    except Exception as exc:  # noqa: BLE001 - a bad frame is a row, not the end of the video
        row.update(status="error", error=str(exc))
        return row, frame.image


class VideoOut:
    """The annotated video: opened at the first frame's size, later frames resized to it."""

    def __init__(self, stem: Path, fps: float):
        self.stem, self.fps, self.writer, self.path, self.size = stem, fps, None, None, None

    def write(self, shown: np.ndarray) -> None:
        if self.writer is None:
            self.size = (shown.shape[1], shown.shape[0])
            self.writer, self.path = open_video_writer(self.stem, self.fps, self.size)
        if (shown.shape[1], shown.shape[0]) != self.size:  # a stream changed resolution mid-way
            shown = cv2.resize(shown, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(cv2.cvtColor(shown, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def expected_frames(capture: cv2.VideoCapture, source, max_frames: int) -> int:
    """The frames a file promises (capped at `max_frames`); 0 for streams and webcams."""
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if Path(str(source)).is_file() else 0
    return min(total, max_frames) if max_frames and total > 0 else max(total, 0)


def encode_frame(frame: Frame, video: VideoOut, num_classes: int, options, background: bool
                 ) -> tuple[Frame, dict, np.ndarray]:
    """Annotate and encode one frame (on the writer thread) -> (the frame, its CSV row, the frame shown)."""
    row, shown = frame_row(frame, num_classes, options, background)
    video.write(shown)
    row.update(ms=elapsed_ms(frame.start))
    return frame, row, shown


def write_frames(segmenter, capture: cv2.VideoCapture, stem: Path, log, options, progress, total: int
                 ) -> tuple[dict, bool]:
    """Predict, annotate and write every frame of an open capture, a CSV row each -> (tally, quit early).

    The model runs on this thread, annotating and encoding on a writer thread (FRAMES_AHEAD frames
    at most in flight). The tally counts frames, inferences and each row status, and names the video
    written (None: no frame). On q the frames already predicted are written too, so the CSV and the
    video hold the same frames; on an exception the writer stops and the video is closed.
    """
    from runtime.pipeline import prefetch

    tally = {"images": 0, "inferences": 0, "video": None, "ok": 0, "no_detection": 0, "gated_clean": 0, "error": 0}
    num_classes, background = int(segmenter.meta.get("num_classes", 1)), bool(segmenter.meta.get("background", True))
    video, viewer = VideoOut(stem, capture_fps(capture)), Viewer(options.view_img)
    stop = threading.Event()
    frames = iter_frames(capture, options.video_max_side, options.max_frames, stop)
    encode = partial(encode_frame, video=video, num_classes=num_classes, options=options, background=background)
    writer = ThreadPoolExecutor(1, thread_name_prefix="video-writer")  # one thread: frames reach the encoder in order

    def count(frame: Frame, row: dict) -> None:
        tally["video"] = video.path
        log.write(row)
        tally[row["status"]] += 1
        tally["images"] += 1
        tally["inferences"] += int(frame.inferred and not frame.error)
        if progress is not None:
            progress(tally["images"], total or None)

    try:
        written = prefetch(writer, encode, predict_frames(segmenter, frames, options.vid_stride), FRAMES_AHEAD)
        for frame, row, shown in written:
            count(frame, row)
            if not viewer.show(shown):
                stop.set()  # read no more frames; write those already predicted
                for rest in written:
                    count(*rest[:2])
                return tally, True
    finally:
        writer.shutdown(wait=True, cancel_futures=True)  # after an error: the frame being encoded, no more
        capture.release()
        viewer.close()
        video.close()
    return tally, False


def run_video(segmenter, source, output: Path, options, progress=None) -> dict:
    """Annotated video OUT/<name>.mp4 (or .avi) and OUT/<name>_frames.csv from a file, stream or webcam.

    Every `options.vid_stride`-th frame is inferred; frames between reuse the last mask.
    An unopenable source gives one error row and an empty result, not an exception.
    """
    from runtime.report import FRAME_COLUMNS, CsvLog, error_row

    name = video_name(source)
    csv_path = output / f"{name}_frames.csv"
    result = {"images": 0, "inferences": 0, "with_gt": 0, "mean_dice": None, "mean_iou": None, "timing_ms": {},
              "summary_csv": csv_path, "video": None}
    with CsvLog(csv_path, FRAME_COLUMNS) as log:
        try:
            capture = open_capture(source)
        except UserError as exc:
            LOG.warning("%s", exc)
            log.write(error_row(str(source), str(exc), FRAME_COLUMNS))
            return {**result, "ok": 0, "no_detection": 0, "errors": 1}
        total = expected_frames(capture, source, options.max_frames)
        tally, quit_early = write_frames(segmenter, capture, output / name, log, options, progress, total)
        reason = ended_early_reason(source, tally["images"], total, quit_early)
        if reason:
            LOG.warning("%s", reason)
            log.write(error_row(str(source), reason, FRAME_COLUMNS))
            tally["error"] += 1
    return {**result, "images": tally["images"], "inferences": tally["inferences"], "video": tally["video"],
            "ok": tally["ok"], "no_detection": tally["no_detection"], "gated_clean": tally["gated_clean"],
            "errors": tally["error"]}
