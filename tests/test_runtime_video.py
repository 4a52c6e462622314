"""Videos through inference.run: output video, per-frame CSV, --vid-stride, fallbacks. Generated clips only."""

from __future__ import annotations

import logging

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

