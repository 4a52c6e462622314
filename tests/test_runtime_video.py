"""Videos through inference.run: output video, per-frame CSV, --vid-stride, fallbacks. Generated clips only."""

from __future__ import annotations

import logging
import threading
import time

import cv2
import numpy as np
import pytest

import inference
from runtime import video
from runtime.pipeline import RunOptions
from test_inference import TEST_META, build_model, read_rows, records  # noqa: F401  (records is a fixture)

FRAMES, H, W = 30, 48, 64


def write_clip(path, frames: int = FRAMES, size=(H, W), fourcc: str = "mp4v"):
    """A white square moving right on black, `frames` frames at 10 fps."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (size[1], size[0]))
    assert writer.isOpened()
    for i in range(frames):
        frame = np.zeros((*size, 3), np.uint8)
        frame[12:36, 4 + i: 28 + i] = 255
        writer.write(frame)
    writer.release()
    return path


def video_info(path) -> tuple[int, int, int]:
    """(frames actually decodable, width, height)."""
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    size = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    capture.release()
    return count, *size


class Counting:
    """Wraps a Segmenter and counts predict calls."""

    def __init__(self, inner):
        self.inner, self.calls, self.meta = inner, 0, inner.meta

    def predict(self, image):
        self.calls += 1
        return self.inner.predict(image)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4")


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    return inference.Segmenter(build_model(tmp_path_factory.mktemp("m") / "m.onnx", TEST_META), device="cpu")


def test_video_gives_an_annotated_mp4_and_a_frame_csv(segmenter, clip, tmp_path):
    result = inference.run(segmenter, clip, tmp_path / "out")
    assert result["video"] == tmp_path / "out" / "clip.mp4"
    assert video_info(result["video"]) == (FRAMES, W, H)
    rows = read_rows(tmp_path / "out" / "clip_frames.csv")
    assert [int(r["frame"]) for r in rows] == list(range(FRAMES))
    assert all(r["status"] == "ok" and r["inferred"] == "1" for r in rows)
    # the square (24x24 px, blurred a little by the codec) is found in every frame
    assert all(abs(int(r["largest_component_px"]) - 576) < 120 for r in rows)
    assert result["images"] == FRAMES and result["inferences"] == FRAMES and result["errors"] == 0


def test_vid_stride_3_infers_10_of_30_frames(segmenter, clip, tmp_path):
    counting = Counting(segmenter)
    result = video.run_video(counting, clip, tmp_path, RunOptions(vid_stride=3))
    rows = read_rows(tmp_path / "clip_frames.csv")
    assert counting.calls == 10 and result["inferences"] == 10
    assert [r["inferred"] for r in rows] == ["1", "0", "0"] * 10
    assert all(r["area_px"] == rows[i - i % 3]["area_px"] for i, r in enumerate(rows))  # mask reused
    assert video_info(result["video"])[0] == FRAMES


def test_max_frames_and_downscale(segmenter, clip, tmp_path):
    result = inference.run(segmenter, clip, tmp_path / "out", max_frames=7, video_max_side=32)
    assert video_info(result["video"]) == (7, 32, 24)
    rows = read_rows(tmp_path / "out" / "clip_frames.csv")
    assert len(rows) == 7 and {(r["width"], r["height"]) for r in rows} == {("32", "24")}


def test_avi_fallback_when_mp4_cannot_be_written(segmenter, clip, tmp_path, monkeypatch, records):  # noqa: F811
    real = video.make_writer
    monkeypatch.setattr(video, "make_writer", lambda path, fourcc, fps, size: real(
        path, "ZZZZ" if fourcc == "mp4v" else fourcc, fps, size))
    result = inference.run(segmenter, clip, tmp_path / "out", max_frames=12)
    assert result["video"] == tmp_path / "out" / "clip.avi" and not (tmp_path / "out" / "clip.mp4").exists()
    assert video_info(result["video"]) == (12, W, H)
    assert any("mp4v.mp4 unavailable" in r.getMessage() for r in records.records if r.levelno == logging.WARNING)


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 50])
def test_unopenable_video_is_an_error_row(segmenter, tmp_path, content):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    result = inference.run(segmenter, bad, tmp_path / "out")
    rows = read_rows(tmp_path / "out" / "bad_frames.csv")
    assert len(rows) == 1 and rows[0]["status"] == "error" and rows[0]["error"]
    assert result["errors"] == 1 and result["video"] is None


def test_stream_code_path_via_a_file_generator(clip):
    """Streams and webcams use open_capture + iter_frames; a file stands in for the network here."""
    frames = video.iter_frames(video.open_capture(str(clip)), max_side=0, max_frames=5)
    first = next(frames)
    assert first[0] == 0 and first[1].shape == (H, W, 3)
    assert [index for index, _ in frames] == [1, 2, 3, 4]
    assert video.video_name("0") == "webcam0" and video.video_name("rtsp://h/s") == "stream"


def test_view_img_without_display_says_so(monkeypatch, records):  # noqa: F811
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(video.sys, "platform", "linux")
    monkeypatch.setattr(video, "opencv_is_headless", lambda build_info=None: False)  # a GUI build, no display
    viewer = video.Viewer(True)
    assert not viewer.enabled and viewer.show(np.zeros((4, 4, 3), np.uint8))
    assert any("no display" in r.getMessage() for r in records.records)


def test_video_with_zero_frames_is_a_specific_error_row(segmenter, tmp_path):
    """A container written with no frames at all (what a crashed recorder leaves): one row that says so."""
    empty = tmp_path / "empty.mp4"
    cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"mp4v"), 10, (W, H)).release()
    assert empty.stat().st_size > 0
    result = inference.run(segmenter, empty, tmp_path / "out")
    rows = read_rows(tmp_path / "out" / "empty_frames.csv")
    assert len(rows) == 1 and rows[0]["status"] == "error"
    assert "no decodable video stream" in rows[0]["error"] and result["errors"] == 1 and result["video"] is None


def test_video_truncated_mid_file_keeps_every_decodable_frame_then_says_where_it_stopped(segmenter, tmp_path):
    """An MJPG AVI cut in half: its header still promises 30 frames. Every frame that decodes is inferred
    and written to the annotated video, then one error row names the shortfall."""
    whole = write_clip(tmp_path / "whole.avi", fourcc="MJPG")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    decodable = video_info(cut)[0]
    assert 0 < decodable < FRAMES
    result = inference.run(segmenter, cut, tmp_path / "out")
    rows = read_rows(tmp_path / "out" / "cut_frames.csv")
    frames, tail = rows[:-1], rows[-1]
    assert [int(r["frame"]) for r in frames] == list(range(decodable))
    assert all(r["status"] == "ok" for r in frames)
    assert tail["status"] == "error" and f"ended after {decodable} of {FRAMES} frames" in tail["error"]
    assert "truncated" in tail["error"]
    assert result["images"] == decodable and result["errors"] == 1
    assert video_info(result["video"])[0] == decodable


def test_a_complete_video_is_not_called_truncated(segmenter, clip, tmp_path):
    inference.run(segmenter, clip, tmp_path / "out", max_frames=5)  # stopping at --max-frames is not truncation
    rows = read_rows(tmp_path / "out" / "clip_frames.csv")
    assert len(rows) == 5 and all(r["status"] == "ok" for r in rows)
    assert video.ended_early_reason("v.mkv", 99, 100, False) is None  # within a container's estimate
    assert video.ended_early_reason("v.mp4", 10, 30, True) is None  # the user pressed q


class Failing:
    """A segmenter whose predict fails on the frames in `bad`."""

    def __init__(self, inner, bad):
        self.inner, self.bad, self.meta, self.calls = inner, set(bad), inner.meta, 0

    def predict(self, image):
        self.calls += 1
        if self.calls in self.bad:
            raise RuntimeError("model failed")
        return self.inner.predict(image)


def test_predict_frames_is_a_lazy_generator_that_reuses_the_last_prediction(segmenter):
    counting = Counting(segmenter)
    frames = ((i, np.zeros((H, W, 3), np.uint8)) for i in range(5))
    stream = video.predict_frames(counting, frames, vid_stride=2)
    first = next(stream)
    assert counting.calls == 1 and first.inferred and not first.error and first.prediction.mask.shape == (H, W)
    rest = list(stream)
    assert [f.inferred for f in [first, *rest]] == [True, False, True, False, True] and counting.calls == 3
    assert rest[0].prediction is first.prediction and rest[1].prediction is not first.prediction


def test_a_failed_frame_is_an_error_and_the_next_frame_is_predicted_again(segmenter):
    failing = Failing(segmenter, bad={1})
    frames = [(i, np.zeros((H, W, 3), np.uint8)) for i in range(3)]
    got = list(video.predict_frames(failing, frames, vid_stride=3))
    assert got[0].error == "model failed" and got[0].prediction is None
    assert got[1].inferred and not got[1].error and not got[2].inferred
    row, shown = video.frame_row(got[0], 1, RunOptions())
    assert row["status"] == "error" and row["error"] == "model failed" and shown is got[0].image



@pytest.mark.parametrize("info, headless", [
    ("  GUI:                           NONE\n    VTK support: NO\n", True),
    ("  GUI:                           GTK3\n    GTK+:  YES (ver 3.24)\n", False),
    ("  GUI: \n    QT:  YES (ver 5.15)\n", False),
    ("no GUI section at all", False),
])
def test_opencv_is_headless_reads_the_gui_line_of_the_build_information(info, headless):
    assert video.opencv_is_headless(info) is headless


def test_view_img_on_a_headless_build_names_the_package(monkeypatch, records):  # noqa: F811
    monkeypatch.setattr(video, "opencv_is_headless", lambda build_info=None: True)
    assert not video.Viewer(True).enabled
    assert any("pip install opencv-python" in r.getMessage() for r in records.records)


# ----------------------------------------------------------------------------- the writer thread


def within(seconds: float, fn):
    """(fn's result, the exception it raised) from a helper thread; fails when fn is still running after `seconds`."""
    out = {}

    def target():
        try:
            out["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt included: it is what is tested
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: a hang"
    return out.get("result"), out.get("error")


def sequential_video(segmenter, source, stem, options) -> tuple:
    """The frame loop without the writer thread: predict, annotate, encode one frame after another."""
    capture = video.open_capture(source)
    out, rows = video.VideoOut(stem, video.capture_fps(capture)), []
    frames = video.iter_frames(capture, options.video_max_side, options.max_frames)
    for frame in video.predict_frames(segmenter, frames, options.vid_stride):
        row, shown = video.frame_row(frame, 1, options)
        out.write(shown)
        rows.append(row)
    out.close()
    capture.release()
    return out.path, rows


def decoded_frames(path) -> list[np.ndarray]:
    capture, frames = cv2.VideoCapture(str(path)), []
    while (got := capture.read())[0]:
        frames.append(got[1])
    capture.release()
    return frames


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("video-writer")]


@pytest.mark.parametrize("stride", [1, 3])
def test_the_writer_thread_writes_the_same_bytes_as_a_sequential_loop(segmenter, clip, tmp_path, stride,
                                                                       monkeypatch):
    monkeypatch.setattr(video, "elapsed_ms", lambda start: 7.0)  # the annotation shows the model's ms: pin it
    options = RunOptions(vid_stride=stride)
    result = video.run_video(segmenter, clip, tmp_path / "threaded", options)
    reference, expected = sequential_video(segmenter, clip, tmp_path / "sequential" / "clip", options)
    assert result["video"].read_bytes() == reference.read_bytes()  # same frames, same order, same annotation
    got = decoded_frames(result["video"])
    assert len(got) == FRAMES and all(np.array_equal(a, b) for a, b in zip(got, decoded_frames(reference)))
    rows = read_rows(tmp_path / "threaded" / "clip_frames.csv")
    keys = ("frame", "status", "inferred", "area_px", "largest_component_px", "error")
    assert [[r[k] for k in keys] for r in rows] == [[str(r[k]) for k in keys] for r in expected]


def test_an_error_in_the_writer_thread_reaches_the_caller_and_the_video_is_closed(segmenter, clip, tmp_path,
                                                                                   monkeypatch):
    real, calls = video.VideoOut.write, []

    def failing(self, shown):
        calls.append(1)
        if len(calls) > 4:
            raise OSError("disk full")
        real(self, shown)

    monkeypatch.setattr(video.VideoOut, "write", failing)
    _, error = within(30, lambda: video.run_video(segmenter, clip, tmp_path, RunOptions()))
    assert isinstance(error, OSError) and str(error) == "disk full"
    assert video_info(tmp_path / "clip.mp4")[0] == 4  # finalised: the frames before the error play
    assert len(read_rows(tmp_path / "clip_frames.csv")) == 4
    assert len(calls) <= 4 + video.FRAMES_AHEAD and not writer_threads()


class EndlessStream:
    """A capture that never ends, as a webcam or an RTSP stream: a moving square, frame after frame."""

    def __init__(self):
        self.reads, self.released = 0, False

    def read(self):
        self.reads += 1
        frame = np.zeros((H, W, 3), np.uint8)
        frame[12:36, self.reads % 30: self.reads % 30 + 24] = 255
        return True, frame

    def get(self, prop):
        return 0.0  # no fps, no frame count

    def isOpened(self):
        return True

    def release(self):
        self.released = True


def test_ctrl_c_on_a_stream_stops_at_once_and_keeps_the_frames_written(segmenter, tmp_path, monkeypatch):
    stream = EndlessStream()
    monkeypatch.setattr(video, "open_capture", lambda source: stream)

    def progress(done, total):
        assert total is None  # a stream has no length
        if done == 6:
            raise KeyboardInterrupt

    _, error = within(30, lambda: video.run_video(segmenter, "rtsp://camera/live", tmp_path, RunOptions(),
                                                  progress))
    assert isinstance(error, KeyboardInterrupt) and stream.released and not writer_threads()
    assert 6 <= video_info(tmp_path / "stream.mp4")[0] <= 6 + video.FRAMES_AHEAD  # closed, playable
    assert [int(r["frame"]) for r in read_rows(tmp_path / "stream_frames.csv")] == list(range(6))
    assert stream.reads <= 6 + video.FRAMES_AHEAD + 1  # it stopped reading


def test_the_model_runs_at_most_frames_ahead_of_a_stalled_writer(segmenter, tmp_path, monkeypatch):
    """Bounded memory: while the encoder is stuck, the frame loop waits after FRAMES_AHEAD frames."""
    stream, counting, release = EndlessStream(), Counting(segmenter), threading.Event()
    monkeypatch.setattr(video, "open_capture", lambda source: stream)
    real = video.VideoOut.write
    monkeypatch.setattr(video.VideoOut, "write", lambda self, shown: release.wait(30) and real(self, shown))
    thread = threading.Thread(target=video.run_video, daemon=True,
                              args=(counting, "0", tmp_path, RunOptions(max_frames=20)))
    thread.start()
    deadline = time.monotonic() + 10
    while counting.calls < video.FRAMES_AHEAD and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    assert counting.calls == video.FRAMES_AHEAD and stream.reads == video.FRAMES_AHEAD
    release.set()
    thread.join(30)
    assert not thread.is_alive() and counting.calls == 20 and video_info(tmp_path / "webcam0.mp4")[0] == 20


def test_quit_in_the_viewer_writes_the_frames_already_predicted(segmenter, clip, tmp_path, monkeypatch):
    class QuitAtThree:
        def __init__(self, enabled):
            self.shown = 0

        def show(self, frame):
            self.shown += 1
            return self.shown < 3

        def close(self):
            pass

    monkeypatch.setattr(video, "Viewer", QuitAtThree)
    result = video.run_video(segmenter, clip, tmp_path, RunOptions(view_img=True))
    rows = read_rows(tmp_path / "clip_frames.csv")
    assert 3 <= len(rows) < FRAMES and all(r["status"] == "ok" for r in rows)  # no "ended early" row: the user quit
    assert video_info(result["video"])[0] == len(rows) == result["images"]
