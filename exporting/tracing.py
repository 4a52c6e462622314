"""torch module -> ONNX bytes: the opset range, the trace size, traceable adaptive pooling, onnxslim."""

from __future__ import annotations

import contextlib
import io
import warnings

import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

from exporting import check_opset
from exporting.onnx_metadata import set_metadata
from runtime.metadata import DEFAULT_METADATA, read_metadata
from utils import LOG, UserError



def trace_side(ckpt: dict) -> int:
    """Side of the square the graph is traced and checked at: INPUT_SIZE, or the long side of the
    TRAIN_PATCH crops (a 1600x1600 trace of a strip model costs minutes and gigabytes for nothing:
    H and W stay dynamic either way)."""
    cfg = ckpt.get("config", {})
    if cfg.get("train_patch"):
        return max(int(side) for side in cfg["train_patch"].split("x"))
    return int(cfg.get("input_size", DEFAULT_METADATA["input_size"]))


def _pool_matrix(n, k: int, like: torch.Tensor) -> torch.Tensor:
    """(k, n) averaging matrix of adaptive pooling n -> k bins; n may be a traced size."""
    n = torch.as_tensor(n)
    i = torch.arange(k)
    start = torch.div(i * n, k, rounding_mode="floor")
    end = torch.div((i + 1) * n + k - 1, k, rounding_mode="floor")
    j = torch.arange(n)
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


def traceable_adaptive_avg_pool2d(x: torch.Tensor, output_size) -> torch.Tensor:
    """F.adaptive_avg_pool2d as two matmuls: exact, and exportable with dynamic H/W."""
    kh, kw = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if kh is None or kw is None:
        return _ADAPTIVE_AVG_POOL2D(x, output_size)
    if (kh, kw) == (1, 1):
        return x.mean(dim=(-2, -1), keepdim=True)
    ph, pw = _pool_matrix(x.shape[-2], kh, x), _pool_matrix(x.shape[-1], kw, x)  # (kh, H), (kw, W)
    return torch.matmul(torch.matmul(ph, x), pw.transpose(0, 1))  # (N, C, kh, kw)


_ADAPTIVE_AVG_POOL2D = F.adaptive_avg_pool2d


@contextlib.contextmanager
def exportable_adaptive_pooling():
    """The TorchScript exporter rejects adaptive_avg_pool2d on dynamic H/W (PSPNet, UPerNet; also
    F.interpolate(mode='area')); swap in the matmul form while tracing. Parity checks prove it."""
    F.adaptive_avg_pool2d = traceable_adaptive_avg_pool2d
    try:
        yield
    finally:
        F.adaptive_avg_pool2d = _ADAPTIVE_AVG_POOL2D


def to_onnx_bytes(module: nn.Module, input_size: int, opset: int, output_name: str = "probs",
                  output_axes: dict | None = None) -> bytes:
    """Trace with the TorchScript exporter: dynamic N/H/W, stable for the smp architectures.

    output_axes: the output's dynamic axes (default N, H, W; the gate's (N, 1) output: N only)."""
    check_opset(opset)
    dummy = torch.randn(1, 3, input_size, input_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(), exportable_adaptive_pooling():
        warnings.simplefilter("ignore")  # tracer warnings about python ints are expected here
        torch.onnx.export(
            module, (dummy,), buffer, dynamo=False, opset_version=opset,
            input_names=["image"], output_names=[output_name],
            dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                          output_name: output_axes or {0: "batch", 2: "height", 3: "width"}},
        )
    return buffer.getvalue()


def simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    """onnxslim: constant folding, dead-node removal, fusions. Our metadata is re-attached."""
    try:
        import onnxslim
    except ImportError:
        raise UserError("--simplify needs onnxslim: pip install -r requirements-train.txt") from None
    metadata = read_metadata(proto)
    before = len(proto.graph.node)
    slim = onnxslim.slim(proto)
    LOG.info("onnxslim: %d -> %d nodes", before, len(slim.graph.node))
    return set_metadata(slim, metadata)
