"""The building blocks of the end-to-end graph (exporting/e2e.py): a node builder and the engine's resize.

utils.resize_long_side in standard ONNX ops: the long side to `size`, cv2.INTER_AREA when shrinking
(exact: integer prefix sums, then the window integrals), cv2.INTER_LINEAR's half-pixel grid when
enlarging, rounded to whole grey levels as cv2 rounds. Nothing here imports torch.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MIN_OPSET = 13
MATMUL_SIDE = 256  # up to this input_size the area resize's column pass is a matmul (see area_resize)
INT64_MAX = np.iinfo(np.int64).max
INPUT = "image"


class Builder:
    """Collects nodes and constants; every name carries the stage prefix (pre/, post/) for profiling."""

    def __init__(self):
        self.nodes, self.constants, self.count, self.stage = [], [], 0, "pre/"

    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{self.stage}{hint}_{self.count}"

    def const(self, value, dtype=np.int64) -> str:
        name = self.fresh("const")
        self.constants.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        output = out or self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=self.fresh(op_type), **attrs))
        return output

    def cast(self, x: str, to: int) -> str:
        return self.op("Cast", x, to=to)

    def dims(self, x: str, start: int, end: int) -> str:
        """Shape(x)[start:end] as an int64 vector."""
        return self.op("Slice", self.op("Shape", x), self.const([start]), self.const([end]))

    def axis_slice(self, x: str, axis: int, start, end) -> str:
        """x[..., start:end, ...] along `axis`; start/end are ints or int64 [1] tensors."""
        start = start if isinstance(start, str) else self.const([start])
        end = end if isinstance(end, str) else self.const([end])
        return self.op("Slice", x, start, end, self.const([axis]))

    def flip(self, x: str, axes) -> str:
        if not axes:
            return x
        n = len(axes)
        return self.op("Slice", x, self.const([-1] * n), self.const([-INT64_MAX] * n), self.const(list(axes)),
                       self.const([-1] * n))

    def resize(self, x: str, sizes: str) -> str:
        """Bilinear with half-pixel centres: cv2.INTER_LINEAR's sampling grid."""
        return self.op("Resize", x, "", "", sizes, mode="linear", coordinate_transformation_mode="half_pixel")


# ----------------------------------------------------------------------------- preprocessing


def target_size(b: Builder, hw: str, size: int) -> tuple[str, str, str]:
    """(new (h, w), (H/h, W/w) as float64, shrinking?) of utils.resize_long_side, in float64 as Python computes it."""
    hw_d = b.cast(hw, TensorProto.DOUBLE)  # [2]
    scale = b.op("Div", b.const([float(size)], np.float64), b.op("ReduceMax", hw_d, keepdims=1))  # all axes: any opset
    new_hw = b.op("Max", b.cast(b.op("Round", b.op("Mul", hw_d, scale)), TensorProto.INT64), b.const([1]))
    steps = b.op("Div", hw_d, b.cast(new_hw, TensorProto.DOUBLE))
    return new_hw, steps, b.op("Less", scale, b.const([1.0], np.float64))


def coords(b: Builder, n: str) -> str:
    """0, 1, ..., n - 1 as float64, for an int64 [1] tensor n."""
    return b.cast(b.op("Range", b.const(0), b.op("Squeeze", n, b.const([0])), b.const(1)), TensorProto.DOUBLE)


def area_axis(b: Builder, x: str, axis: int, n_in: str, n_out: str, step: str, sum_type: int) -> str:
    """cv2.INTER_AREA along `axis` (2 of NCHW) -> float32: output i averages input [i*s, (i+1)*s).

    With E the exclusive prefix sums, the integral up to p is E[k] + (p - k) * x[k], k = min(floor p,
    n_in - 1); output i is the integral up to (i+1)*s less the one up to i*s: O(input) work, and Gather
    moves whole rows along an outer axis. `sum_type` INT32 keeps the sums of uint8 data exact (and the
    window sums small enough for float32); DOUBLE is for the float output of the first pass.
    """
    to = TensorProto.FLOAT if sum_type == TensorProto.INT32 else TensorProto.DOUBLE
    pos = b.op("Mul", coords(b, b.op("Add", n_out, b.const([1]))), step)  # (n_out + 1,) float64
    low = b.op("Min", b.cast(b.op("Floor", pos), TensorProto.INT64), b.op("Sub", n_in, b.const([1])))
    weight = b.op("Div", b.op("Sub", pos, b.cast(low, TensorProto.DOUBLE)), step)  # (p - k) / s
    inner = b.const(list(range(1, 4 - axis)))  # broadcast over the axes inside `axis`
    prefix = b.op("CumSum", b.cast(x, sum_type), b.const(axis), exclusive=1)
    ends = []
    for start, stop in ((1, INT64_MAX), (0, -1)):  # the integral's upper and lower ends
        k = b.axis_slice(low, 0, start, stop)
        part = b.op("Unsqueeze", b.cast(b.axis_slice(weight, 0, start, stop), to), inner)
        pixel = b.cast(b.op("Gather", x, k, axis=axis), to)
        ends.append((b.op("Gather", prefix, k, axis=axis), b.op("Mul", pixel, part)))
    (sum_hi, edge_hi), (sum_lo, edge_lo) = ends
    window = b.op("Div", b.cast(b.op("Sub", sum_hi, sum_lo), to), b.cast(step, to))
    return b.cast(b.op("Sub", b.op("Add", window, edge_hi), edge_lo), TensorProto.FLOAT)


def area_matrix(b: Builder, n_in: str, n_out: str, step: str) -> str:
    """(n_in, n_out) float32 cv2.INTER_AREA weights along one axis: overlap of pixel j and [i*s, (i+1)*s), / s."""
    j = b.op("Unsqueeze", coords(b, n_in), b.const([1]))  # (n_in, 1)
    start = b.op("Mul", coords(b, n_out), step)  # (n_out,)
    overlap = b.op("Sub", b.op("Min", b.op("Add", j, b.const(1.0, np.float64)), b.op("Add", start, step)),
                   b.op("Max", j, start))
    return b.cast(b.op("Div", b.op("Relu", overlap), step), TensorProto.FLOAT)


def area_resize(b: Builder, x: str, hw: str, new_hw: str, steps: str, size: int) -> str:
    """cv2.INTER_AREA of uint8 (N, H, W, 3) -> float32 (N, 3, h, w): the rows of the image by prefix sums,
    then the columns of the much smaller result: by a matmul with the (W, w) weights while w <= MATMUL_SIDE
    (fewest nodes), else by prefix sums too (its work does not grow with w). Only NCHW <-> NHWC and
    last-two-axes transposes: onnxruntime's fast ones."""
    (h, w), (new_h, new_w), (step_h, step_w) = ([b.axis_slice(v, 0, i, i + 1) for i in (0, 1)]
                                                for v in (hw, new_hw, steps))
    x = b.op("Transpose", x, perm=[0, 3, 1, 2])  # (N, 3, H, W) uint8
    rows = area_axis(b, x, 2, h, new_h, step_h, TensorProto.INT32)  # (N, 3, h, W)
    if size <= MATMUL_SIDE:
        return b.op("MatMul", rows, area_matrix(b, w, new_w, step_w))
    cols = area_axis(b, b.op("Transpose", rows, perm=[0, 1, 3, 2]), 2, w, new_w, step_w, TensorProto.DOUBLE)
    return b.op("Transpose", cols, perm=[0, 1, 3, 2])


def linear_resize(b: Builder, x: str, new_hw: str, size: int) -> str:
    """cv2.INTER_LINEAR's grid (half-pixel centres) in float: uint8 (N, H, W, 3) -> float32 (N, 3, h, w).

    The engine enlarges only images with H, W <= size; cropping there first bounds the work done in vain
    when the image is shrunk instead (both paths run: OpenCV's DNN importer cannot load an If)."""
    x = b.op("Slice", x, b.const([0, 0]), b.const([size, size]), b.const([1, 2]))
    x = b.cast(b.op("Transpose", x, perm=[0, 3, 1, 2]), TensorProto.FLOAT)
    return b.resize(x, b.op("Concat", b.dims(x, 0, 2), new_hw, axis=0))


def resize_image(b: Builder, x: str, size: int) -> tuple[str, str]:
    """(N, H, W, 3) uint8 -> ((N, 3, h, w) float32 whole grey levels, (h, w)): the long side to `size`."""
    hw = b.dims(x, 1, 3)
    new_hw, steps, shrink = target_size(b, hw, size)
    chosen = b.op("Where", shrink, area_resize(b, x, hw, new_hw, steps, size), linear_resize(b, x, new_hw, size))
    # cv2 rounds half to even, except in its exact 2x2 shrink (half up): there every value is a multiple of
    # 1/4, so a nudge of 1e-3 moves exactly the halves up
    halves = b.op("ReduceMin", b.cast(b.op("Equal", hw, b.op("Mul", new_hw, b.const([2]))), TensorProto.FLOAT),
                  keepdims=1)
    return b.op("Round", b.op("Add", chosen, b.op("Mul", halves, b.const(1e-3, np.float32)))), new_hw


def resize_model(size: int) -> onnx.ModelProto:
    """The resize stage alone, uint8 (H, W, 3) -> float32 (3, h, w) whole grey levels (tests, benchmarks)."""
    b = Builder()
    b.op("Squeeze", resize_image(b, b.op("Unsqueeze", INPUT, b.const([0])), size)[0], b.const([0]), out="resized")
    graph = helper.make_graph(b.nodes, "resize", [helper.make_tensor_value_info(INPUT, TensorProto.UINT8, None)],
                              [helper.make_tensor_value_info("resized", TensorProto.FLOAT, None)], b.constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", MIN_OPSET)], ir_version=8)
