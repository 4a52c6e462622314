"""Run an end-to-end ONNX (exporting/e2e.py): an RGB uint8 image in, (mask, probs) out. onnxruntime + numpy.

    import onnxruntime as ort
    from runtime.e2e import is_end_to_end, predict_e2e

    session = ort.InferenceSession("model.e2e.onnx", providers=["CPUExecutionProvider"])
    if is_end_to_end(session):
        mask, probs = predict_e2e(session, rgb)   # (H, W) uint8; (C, H, W) float32

The mask is the graph's own: 0/255 for a binary model (cut by the rule recorded at export, runtime/rule.py),
class ids for a multi-class one. `probs` are the probabilities at the image size, so the engine's
morphology or another threshold (runtime.postprocess) can still run on them.
"""

from __future__ import annotations

import numpy as np

from runtime.metadata import check_metadata, decode_metadata
from utils import LOG, UserError

MASK, PROBS = "mask", "probs"


def is_end_to_end(session) -> bool:
    """True for a graph that takes the uint8 image itself: its metadata says so, or its input is uint8."""
    meta, _ = decode_metadata(session.get_modelmeta().custom_metadata_map)
    return bool(meta.get("end_to_end")) or session.get_inputs()[0].type == "tensor(uint8)"


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB uint8 as is; grey (H, W) repeated to 3 channels, RGBA loses its alpha."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise UserError(f"image must be uint8, got {image.dtype} (scale it to 0..255 first)")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise UserError(f"image of shape {image.shape} is not an RGB image (H, W, 3)")
    return np.ascontiguousarray(image)


def predict_e2e(session, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 (H, W, 3) -> (mask (H, W) uint8, probs (C, H, W) float32) from an end-to-end session.

    A batch graph (input (N, H, W, 3), exported with --batch) is fed a batch of one.
    """
    model_input = session.get_inputs()[0]
    if model_input.type != "tensor(uint8)":
        raise UserError(f"model input '{model_input.name}' is {model_input.type}, not uint8: this is a plain model; "
                        "convert it with python -m exporting.e2e MODEL.onnx or run it with inference.py")
    image = as_rgb_uint8(image)
    batched = len(model_input.shape) == 4
    mask, probs = session.run([MASK, PROBS], {model_input.name: image[None] if batched else image})
    return (mask[0], probs[0]) if batched else (mask, probs)


def load_e2e_metadata(session, model_path, tta: str | None = None) -> tuple[dict, bool]:
    """The metadata of an end-to-end graph for the Python engine: checked like a plain model's. Its TTA is
    baked in; asking for more is refused (the graph takes one image, not its flipped copies)."""
    meta, found = decode_metadata(session.get_modelmeta().custom_metadata_map)
    if tta not in (None, "none"):
        raise UserError(f"TTA {tta}: {model_path} is an end-to-end graph with its TTA baked in "
                        f"({meta.get('e2e_tta') or meta.get('tta') or 'none'}); set TTA to none (inference.py without "
                        "--tta, the app's Flip TTA box), or bake it in with python -m exporting.e2e --tta")
    check_metadata({k: v for k, v in meta.items() if k != "tta"} | {"tta": "none"})
    LOG.info("%s is an end-to-end graph: it resizes, normalises and runs the model itself; the engine applies "
             "its post-processing to the graph's probs (its recorded rule, the default, cuts where the graph's mask "
             "does)", model_path)
    return meta, found
