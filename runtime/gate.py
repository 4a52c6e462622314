"""The clean/defect gate at runtime: a small classifier ONNX in front of the segmenter. numpy + OpenCV, no torch.

On a line where most images are clean, the gate (train.py --task classify, exported as gate.onnx)
judges every image first, at its own small input size; only images whose defect probability is
>= its threshold reach the segmenter. The others get an empty mask, status `gated_clean` and no
segmenter time. `inference.Segmenter(model, gate="gate.onnx")` wires it in; alone:

    gate = Gate("gate.onnx", session)        # session: an onnxruntime.InferenceSession of the file
    probs = gate.predict(rgb_images)          # (N,) float32 defect probabilities
    keep = probs >= gate.threshold            # the images to segment

The gate reads its preprocessing from its own metadata (long side to `input_size`, normalise with
`mean`/`std`, pad to `stride`), with the same torch-free rule training used (utils.preprocess).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np

from runtime.metadata import GATE, PREPROCESS_KEYS, decode_metadata, metadata_problems
from utils import LOG, UserError, is_number, preprocess

GATED_STATUS = "gated_clean"


GATE_KEYS = ("threshold",) + PREPROCESS_KEYS  # what the gate uses from its metadata


def check_gate_metadata(meta: dict, found: bool, model_path) -> None:
    """A gate must say it is one (task 'gate'); a segmenter given as the gate is named as such."""
    if not found:
        raise UserError(f"{model_path} has no 'segmentation' metadata, so it is not a gate exported by export.py: "
                        "train one with `train.py --task classify` and pass its gate.onnx as --gate")
    if meta.get("task") != "gate":
        raise UserError(f"{model_path} is a segmentation model (task {meta.get('task')!r}), not a gate: give it as "
                        "--model, and as --gate the gate.onnx of a `train.py --task classify` run")
    problems = metadata_problems(meta, GATE, GATE_KEYS)
    if problems:
        raise UserError(f"gate metadata of {model_path} is invalid: {'; '.join(problems)}. Re-export it with export.py")


def check_threshold(threshold: float) -> float:
    if not is_number(threshold) or not 0.0 <= threshold <= 1.0:
        raise UserError(f"--gate-threshold {threshold!r} is not valid; use a probability from 0 (segment every "
                        "image) to 1")
    return float(threshold)


class Gate:
    """Owns the gate's ONNX Runtime session: RGB images in, defect probabilities (N,) out.

    `session` is built by the caller (runtime.session.create_session, the segmenter's providers and threads)
    or injected in tests. `threshold` (None: the metadata's out-of-fold one) decides what is segmented.
    """

    def __init__(self, model_path, session, threshold: float | None = None):
        self.model_path = Path(model_path) if model_path is not None else None
        self.session = session
        self.meta, found = decode_metadata(session.get_modelmeta().custom_metadata_map)
        check_gate_metadata(self.meta, found, self.model_path)
        self.input_name = self._check_io()
        self.threshold = check_threshold(self.meta["threshold"] if threshold is None else threshold)
        self.timing = {"gate_ms": 0.0}
        LOG.info("gate %s: %s/%s at %s px, threshold %.6g%s, running on %s", self.model_path, self.meta.get("arch"),
                 self.meta.get("encoder"), self.meta.get("input_size"), self.threshold,
                 "" if threshold is None else " (given)", list(session.get_providers())[0])

    def _check_io(self) -> str:
        """Input (N, 3, H, W); output (N, 1). Returns the input name."""
        model_input, output = self.session.get_inputs()[0], self.session.get_outputs()[0]
        if len(model_input.shape) != 4:
            raise UserError(f"gate {self.model_path}: input shape {model_input.shape}, expected (N, 3, H, W)")
        shape = list(output.shape)
        if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != 1):
            raise UserError(f"gate {self.model_path}: output shape {shape}, expected (N, 1) probabilities; "
                            "a (N, C, H, W) output is a segmenter's")
        return model_input.name

    def with_threshold(self, threshold: float | None) -> "Gate":
        """A copy sharing the session, with another threshold (None: the metadata's)."""
        clone = copy.copy(self)
        clone.threshold = check_threshold(self.meta["threshold"] if threshold is None else threshold)
        return clone

    def predict(self, images: list[np.ndarray]) -> np.ndarray:
        """RGB uint8 images (H, W, 3) -> (N,) float32 defect probabilities; one session.run per input shape."""
        t0 = time.perf_counter()
        tensors = [preprocess(image, self.meta)[0] for image in images]  # (3, H', W') each
        groups: dict[tuple, list[int]] = {}
        for index, x in enumerate(tensors):
            groups.setdefault(x.shape, []).append(index)
        probs = np.zeros(len(tensors), np.float32)
        for indices in groups.values():
            batch = np.stack([tensors[i] for i in indices]).astype(np.float32)  # (B, 3, H', W')
            out = np.asarray(self.session.run(None, {self.input_name: batch})[0], dtype=np.float32)
            if out.shape[0] != len(indices) or out.size != len(indices):
                raise UserError(f"gate output has shape {out.shape} for {len(indices)} images; (N, 1) is needed")
            probs[indices] = out.reshape(-1)
        self.timing = {"gate_ms": (time.perf_counter() - t0) * 1e3 / max(len(images), 1)}
        return probs


def clean_prediction(hw: tuple[int, int], num_classes: int, gate_prob: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """(mask, probs, info) of an image the gate judged clean: an all-zero (background) mask of its size.

    probs is a read-only broadcast view (no H x W x C allocation): background 1 for multi-class models.
    """
    mask = np.zeros(hw, np.uint8)
    background = np.zeros((num_classes, 1, 1), np.float32)
    if num_classes > 1:
        background[0] = 1.0
    probs = np.broadcast_to(background, (num_classes, *hw))
    info = {"status": GATED_STATUS, "gated": True, "gate_prob": gate_prob, "detected": False, "threshold": None,
            "max_prob": None, "area_px": 0, "components": 0, "largest_component_px": 0}
    return mask, probs, info
