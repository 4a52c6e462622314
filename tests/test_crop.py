"""runtime/crop.py: the ROI rule on hand-computed boxes, paste-back round trips, the YOLO-seg decoder."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from runtime.crop import (
    CropSettings, CropStage, PersonDetector, crop_from_masks, crop_square, decode_yolo_seg, letterbox, load_crop_stage,
    nms, paste_back, person_box, select_person, whole_image_box,
)
from utils import UserError


def person(hw=(200, 200), rows=(40, 160), cols=(80, 120)) -> np.ndarray:
    """A rectangular 'person' mask: rows/cols are [start, end)."""
    mask = np.zeros(hw, bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


# ----------------------------------------------------------------------------- geometry


def test_centred_person_box_by_hand():
    # head top 40, height 120 -> band rows [64, 100): 36 rows x 40 cols, torso 40, centre (99.5, 81.5)
    assert person_box(person(), roi_factor=2.0, min_size=16) == (60, 42, 140, 122)


def test_min_size_clamps_the_side():
    box = person_box(person(), roi_factor=1.0, min_size=100)  # 1.0 x 40 < 100
    assert box == (50, 32, 150, 132)


def test_person_at_the_border_is_padded():
    mask = person(rows=(40, 160), cols=(0, 30))  # band 36 x 30: torso 36, centre (14.5, 81.5), side 72
    box = person_box(mask, roi_factor=2.0, min_size=16)
    assert box == (-21, 46, 51, 118)
    image = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    crop = crop_square(image, box, size=72, pad_value=7)
    assert crop.shape == (72, 72, 3)
    assert (crop[:, :21] == 7).all()  # 21 columns left of the image
    np.testing.assert_array_equal(crop[:, 21:], image[46:118, 0:51])


def test_no_person_falls_back_to_the_whole_image_letterboxed():
    image = np.full((150, 200, 3), 50, np.uint8)
    settings = CropSettings("person", roi_factor=2.0, min_size=16, pad_value=114, input_size=100)
    crop = crop_from_masks(image, np.zeros((0, 150, 200), bool), np.zeros(0), settings)
    assert crop.status == "fallback" and crop.box == whole_image_box((150, 200)) == (0, 0, 200, 200)
    assert crop.image.shape == (100, 100, 3)
    assert (crop.image[:75] == 50).all() and (crop.image[75:] == 114).all()  # padded at the bottom only


def test_two_people_the_largest_mask_wins_then_the_score():
    small, large = person(cols=(20, 40)), person(cols=(120, 180))
    assert select_person(np.stack([small, large]), np.array([0.9, 0.3])) == 1  # area beats confidence
    assert select_person(np.stack([small, small]), np.array([0.3, 0.9])) == 1  # equal area: higher score
    assert select_person(np.stack([small, small]), np.array([0.5, 0.5])) == 0  # full tie: the first
    image = np.zeros((200, 200, 3), np.uint8)
    settings = CropSettings("person", roi_factor=2.0, min_size=16, input_size=64)
    crop = crop_from_masks(image, np.stack([small, large]), np.array([0.9, 0.3]), settings)
    # large: band 36 rows x 60 cols -> torso 60, centre (149.5, 81.5), side 120
    assert crop.status == "ok" and crop.box == (90, 22, 210, 142)


def test_empty_masks_select_nobody():
    assert select_person(np.zeros((2, 10, 10), bool), np.array([0.9, 0.8])) is None
    assert person_box(np.zeros((10, 10), bool), 2.0, 4) is None


# ----------------------------------------------------------------------------- paste back


def red_patch_image(hw=(300, 400), patch=(120, 150, 170, 230)) -> tuple[np.ndarray, np.ndarray]:
    """A noisy grey image with a red patch; returns (image, the patch's true mask)."""
    image = np.random.default_rng(1).integers(80, 120, hw + (3,), dtype=np.uint8)
    y0, x0, y1, x1 = patch
    image[y0:y1, x0:x1] = (230, 20, 20)
    truth = np.zeros(hw, np.uint8)
    truth[y0:y1, x0:x1] = 1
    return image, truth


def redness(crop: np.ndarray) -> np.ndarray:
    """A stand-in segmenter that is right by construction: (1, S, S) 'probabilities' of red pixels."""
    return (crop[..., 0].astype(np.int16) - crop[..., 1] > 100).astype(np.float32)[None]


@pytest.mark.parametrize("box, size", [((100, 60, 300, 260), 200), ((100, 60, 300, 260), 64),
                                       ((-50, 100, 350, 500), 128)])
def test_mask_predicted_on_the_crop_lands_on_the_original_pixels(box, size):
    image, truth = red_patch_image()
    crop = crop_square(image, box, size, pad_value=0)
    probs = paste_back(redness(crop), box, image.shape[:2])  # (1, H, W)
    mask = probs[0] > 0.5
    if box[2] - box[0] == size:  # no resize: exact
        np.testing.assert_array_equal(mask, truth.astype(bool))
    inter = np.logical_and(mask, truth).sum()
    assert 2 * inter / (mask.sum() + truth.sum()) > 0.97
    assert np.abs(np.argwhere(mask).mean(0) - np.argwhere(truth).mean(0)).max() < 1.0  # same place


def test_paste_back_fills_background_outside_the_box():
    probs = np.full((3, 8, 8), 1 / 3, np.float32)
    out = paste_back(probs, (2, 2, 10, 10), (20, 20), fill=[1.0, 0.0, 0.0])
    assert out.shape == (3, 20, 20)
    assert (out[0, :2] == 1).all() and (out[1:, :2] == 0).all()
    np.testing.assert_allclose(out[:, 2:10, 2:10], 1 / 3)


# ----------------------------------------------------------------------------- decoder


def test_nms_suppresses_overlaps_above_the_iou_only():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 20]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    assert nms(boxes, scores, 0.7).tolist() == [0, 2, 3]  # IoU(0,1) = 0.82, IoU(0,3) = 0.5


def test_decoder_on_a_synthetic_output():
    """One confident person box and its mask from hand-made coefficients; other classes and low scores dropped."""
    nc, nm, n = 2, 2, 4
    out = np.zeros((4 + nc + nm, n), np.float32)
    out[:4, 0] = (320, 320, 200, 400)  # cx, cy, w, h on the 640 input
    out[4, 0] = 0.9  # person
    out[:4, 1] = (100, 100, 50, 50)
    out[5, 1] = 0.95  # class 1: not a person
    out[4, 2] = 0.01  # too weak
    out[6, 0] = 1.0  # coefficient of the all-positive prototype
    protos = np.stack([np.ones((160, 160)), -np.ones((160, 160))]).astype(np.float32)
    found = decode_yolo_seg(out, protos, (640, 640), (480, 640), conf=0.25)
    assert len(found.boxes) == 1 and found.classes.tolist() == [0]
    # the 480-row image is padded by 80 rows at the top of the 640 input: y 120..520 -> 40..440
    np.testing.assert_allclose(found.boxes[0], [220, 40, 420, 440], atol=1e-4)
    mask = found.masks[0]
    assert mask.shape == (480, 640)
    assert mask[40:440, 220:420].all() and not mask[:, :220].any() and not mask[:, 420:].any()


def test_decoder_with_nobody_above_the_threshold_gives_a_fallback_crop():
    out = np.zeros((4 + 2 + 2, 5), np.float32)
    out[4] = 0.1  # every box below conf
    found = decode_yolo_seg(out, np.ones((2, 160, 160), np.float32), (640, 640), (300, 200), conf=0.25)
    assert found.boxes.shape == (0, 4) and found.masks.shape == (0, 300, 200)
    settings = CropSettings("person", input_size=32)
    crop = crop_from_masks(np.zeros((300, 200, 3), np.uint8), found.masks, found.scores, settings)
    assert crop.status == "fallback" and crop.box == (0, 0, 300, 300)


def test_letterbox_matches_ultralytics_padding():
    x = letterbox(np.zeros((480, 640, 3), np.uint8), (640, 640))
    assert x.shape == (1, 3, 640, 640)
    assert np.allclose(x[0, :, :80], 114 / 255) and np.allclose(x[0, :, 80:560], 0) and np.allclose(x[0, :, 560:], 114 / 255)


def test_decoder_matches_ultralytics(yolo_files):
    """Random YOLO11n-seg weights, a very low confidence: our numpy decoding of the ONNX output against
    ultralytics' own predict on the .pt (boxes within 1 px) and on the .onnx (same file, same numbers)."""
    from ultralytics import YOLO

    pt, onnx_path = yolo_files
    image = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    ours = PersonDetector(ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]), conf=1e-4)
    found = ours.detect(image)
    assert len(found.boxes) >= 5  # enough detections for the comparison to mean something
    for weights in (pt, onnx_path):
        theirs = YOLO(str(weights), task="segment").predict(image[..., ::-1], conf=1e-4, classes=[0], rect=False,
                                                           retina_masks=True, verbose=False)[0]
        boxes = theirs.boxes.xyxy.numpy()
        assert len(boxes) == len(found.boxes)
        assert np.abs(boxes - found.boxes).max() <= 1.0
        masks = theirs.masks.data.numpy().astype(bool)
        assert (masks == found.masks).mean() >= 0.99
        assert select_person(masks, theirs.boxes.conf.numpy()) == select_person(found.masks, found.scores)


# ----------------------------------------------------------------------------- runtime stage


def test_crop_stage_from_metadata(yolo_files, tmp_path):
    _, onnx_path = yolo_files
    make = lambda path: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # noqa: E731
    assert load_crop_stage({"crop_mode": "off"}, tmp_path / "m.onnx", make) is None
    meta = {"crop_mode": "person", "detector": "m.detector.onnx",
            "crop": {"conf": 1e-4, "roi_factor": 2.0, "min_size": 32, "pad_value": 0, "input_size": 64}}
    with pytest.raises(UserError, match=r"needs its person detector .*m\.detector\.onnx.*--detector"):
        load_crop_stage(meta, tmp_path / "m.onnx", make)
    (tmp_path / "m.detector.onnx").write_bytes(onnx_path.read_bytes())
    stage = load_crop_stage(meta, tmp_path / "m.onnx", make)
    assert isinstance(stage, CropStage) and stage.settings.roi_factor == 2.0 and stage.settings.input_size == 64
    image = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    crop = stage.crop([image])[0]
    assert crop.status == "ok" and crop.image.shape == (64, 64, 3)  # random weights at conf 1e-4 find someone
    probs = stage.paste(np.ones((1, 64, 64), np.float32), crop, image.shape[:2])
    x0, y0, x1, y1 = crop.box
    inside = np.zeros((240, 320), bool)
    inside[max(y0, 0):y1, max(x0, 0):x1] = True
    assert probs.shape == (1, 240, 320) and (probs[0][inside] == 1).all() and (probs[0][~inside] == 0).all()
    assert stage.crop_columns(crop) == {"crop_status": "ok", "crop_box": f"{x0} {y0} {x1} {y1}"}
