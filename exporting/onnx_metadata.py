"""The metadata contract (runtime/metadata.py) written into an ONNX proto, with this export's package versions.

torch and smp are imported only for their versions, so the end-to-end and Triton writers use set_metadata without
them."""

from __future__ import annotations

import onnx

from runtime import metadata as contract
from runtime.metadata import METADATA_KEY, encode_metadata


def package_versions() -> dict:
    import onnxruntime as ort
    import segmentation_models_pytorch as smp
    import torch

    return {"torch": torch.__version__, "smp": smp.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__}


def build_metadata(ckpt: dict, folds: list[int], threshold: float | None, min_area: int | None,
                   tta: str = "none", output: str = "probs", detector_name: str = "", rule: dict | None = None,
                   weights: dict | None = None) -> dict:
    """The segmenter's metadata (runtime/metadata.py), with the package versions of this export, its rule
    (runtime/rule.py) and the SHA-256 of each checkpoint file it was traced from (`weights`)."""
    meta = contract.build_metadata(ckpt, folds, threshold, min_area, tta, output, detector_name, package_versions(),
                                   rule)
    return {**meta, "weights_sha256": weights} if weights else meta


def build_gate_metadata(ckpt: dict, folds: list[int], summary: dict | None, threshold: float | None) -> dict:
    return contract.build_gate_metadata(ckpt, folds, summary, threshold, package_versions())


def set_metadata(proto: onnx.ModelProto, metadata: dict) -> onnx.ModelProto:
    """Replace our metadata_props entry (other entries, e.g. from tools, are kept)."""
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    for key, value in keep + [(METADATA_KEY, encode_metadata(metadata))]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "segpipe-export"
    return proto


def add_metadata(model_bytes: bytes, metadata: dict) -> onnx.ModelProto:
    proto = set_metadata(onnx.load_from_string(model_bytes), metadata)
    onnx.checker.check_model(proto, full_check=True)
    return proto
