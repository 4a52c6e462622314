"""An OpenVINO CPU model behind the slice of onnxruntime.InferenceSession the engine uses. No torch.

    session = OpenVinoSession(Path("horse.int8.onnx"), threads=2)
    session.get_inputs()[0].name, session.get_inputs()[0].type, session.get_inputs()[0].shape
    probs = session.run(None, {"image": batch})[0]        # as onnxruntime: a list of outputs, in order

OpenVINO is an optional extra (requirements-openvino.txt); runtime/backend.py decides when it runs.
What this adapter does, each measured by bench/backends.py:
- float layers run in float32 (INFERENCE_PRECISION_HINT f32): OpenVINO's own default on CPUs with bfloat16
  (AVX512_BF16, AMX) computes them in bfloat16, faster but no longer the file's float32 answer;
- one dynamic-shape compile at load (any image size at once); a shape that keeps coming back
  (STATIC_AFTER runs) gets its own static compile, which OpenVINO runs faster, for up to MAX_STATIC shapes;
- batch 1 runs on a LATENCY compile (every thread on one image); a batch of several images (--batch-size,
  TTA flips) is split over the streams of a THROUGHPUT compile, one image per stream, in parallel.
Inference requests are pooled per compile, so one session serves several threads, as onnxruntime's does.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.precision import file_props
from utils import UserError

MISSING = ("--backend openvino needs OpenVINO, which is not installed: pip install -r requirements-openvino.txt "
           "(or use --backend auto)")
STATIC_AFTER = 4  # runs of one input shape after which it gets a static compile of its own (0: never)
MAX_STATIC = 4  # static compiles kept per mode (a folder of photos of many sizes stays on the dynamic one)
ONNX_TYPES = {"f32": "float", "f16": "float16", "f64": "double", "u8": "uint8", "i8": "int8", "i32": "int32",
              "i64": "int64", "boolean": "bool"}


def import_openvino():
    """The openvino module, or a UserError saying what to install."""
    try:
        import openvino
    except ImportError:
        raise UserError(MISSING) from None
    return openvino


@dataclass(frozen=True)
class NodeArg:
    """onnxruntime's NodeArg: name, 'tensor(float)'-style type, dims (int when static, None when dynamic)."""

    name: str
    type: str
    shape: list


@dataclass(frozen=True)
class ModelMeta:
    """onnxruntime's ModelMetadata, as far as the engine reads it."""

    custom_metadata_map: dict = field(default_factory=dict)


def node_args(ports) -> list[NodeArg]:
    args = []
    for port in ports:
        dims = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
        kind = port.get_element_type().to_string()
        args.append(NodeArg(port.get_any_name(), f"tensor({ONNX_TYPES.get(kind, kind)})", dims))
    return args


class Compiled:
    """One compiled model and its pool of idle inference requests."""

    def __init__(self, compiled):
        self.compiled, self.idle, self.lock = compiled, [], threading.Lock()
        self.streams = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))

    def take(self):
        with self.lock:
            return self.idle.pop() if self.idle else self.compiled.create_infer_request()

    def give(self, requests) -> None:
        with self.lock:
            self.idle.extend(requests)

    def infer(self, feeds: dict) -> list[np.ndarray]:
        """One request on the whole feed; the outputs in order (copies: the request is reused)."""
        request = self.take()
        try:
            result = request.infer(feeds)
            return [result[port] for port in self.compiled.outputs]
        finally:
            self.give([request])

    def infer_split(self, name: str, x: np.ndarray) -> list[np.ndarray]:
        """(B, ...) -> each image on its own request, up to `streams` at once; the outputs stacked back."""
        parts: list[list[np.ndarray]] = []
        for start in range(0, len(x), self.streams):
            requests, started = [self.take() for _ in range(min(self.streams, len(x) - start))], []
            try:
                for i, request in enumerate(requests):
                    request.start_async({name: x[start + i:start + i + 1]})
                    started.append(request)
                for request in requests:
                    request.wait()
                    parts.append([request.get_output_tensor(k).data.copy() for k in range(len(self.compiled.outputs))])
            finally:
                for request in started:  # never pool a request that is still running
                    with contextlib.suppress(Exception):
                        request.wait()
                self.give(requests)
        return [np.concatenate([p[k] for p in parts]) for k in range(len(self.compiled.outputs))]


class OpenVinoSession:
    """An ONNX file compiled by OpenVINO for the CPU, with onnxruntime's run / get_inputs / get_outputs /
    get_providers / get_modelmeta. `threads` 0: OpenVINO's choice (every core)."""

    def __init__(self, model_path: Path, threads: int = 0):
        ov = import_openvino()
        self.model_path, self.threads = Path(model_path), int(threads)
        self.core = ov.Core()
        self.model = read_onnx(ov, self.model_path)
        self.inputs, self.outputs = node_args(self.model.inputs), node_args(self.model.outputs)
        self.dynamic = len(self.inputs) == 1 and None in self.inputs[0].shape  # else a static compile adds nothing
        self.meta = ModelMeta(file_props(self.model_path))
        self.version = ov.get_version().split("-")[0]
        self.compiled: dict[tuple, Compiled] = {}
        self.seen: Counter = Counter()
        self.lock = threading.Lock()
        self.compile("LATENCY", None)  # fail at load, not on the first image

    # -- what onnxruntime's InferenceSession offers

    def get_inputs(self) -> list[NodeArg]:
        return list(self.inputs)

    def get_outputs(self) -> list[NodeArg]:
        return list(self.outputs)

    def get_providers(self) -> list[str]:
        return [f"OpenVINO {self.version} CPU"]

    def get_modelmeta(self) -> ModelMeta:
        return self.meta

    def run(self, output_names, feeds: dict) -> list[np.ndarray]:
        """The outputs named (None: all), in that order, for `feeds` {input name: array}."""
        if len(feeds) == 1 and len(self.inputs) == 1:
            name, x = next(iter(feeds.items()))
            x = np.asarray(x)
            batched = x.ndim == 4 and x.shape[0] > 1 and self.threads != 1
            compiled = self.compiled_for("THROUGHPUT" if batched else "LATENCY", x.shape[1:] if batched else x.shape)
            outputs = compiled.infer_split(name, x) if batched else compiled.infer({name: x})
        else:
            outputs = self.compile("LATENCY", None).infer(feeds)
        if output_names is None:
            return outputs
        index = {arg.name: i for i, arg in enumerate(self.outputs)}
        return [outputs[index[name]] for name in output_names]

    # -- compiles

    def compiled_for(self, mode: str, shape: tuple) -> Compiled:
        """The static compile of `shape` once it came STATIC_AFTER times (up to MAX_STATIC), else the dynamic one."""
        with self.lock:
            self.seen[mode, shape] += 1
            static = sum(1 for key in self.compiled if key[0] == mode and key[1] is not None)
            wanted = shape if self.dynamic and ((mode, shape) in self.compiled or (
                0 < STATIC_AFTER <= self.seen[mode, shape] and static < MAX_STATIC)) else None
        return self.compile(mode, wanted)

    def compile(self, mode: str, shape: tuple | None) -> Compiled:
        """The model compiled for `mode` (LATENCY / THROUGHPUT), static at `shape` (one image's, for THROUGHPUT)
        or dynamic (None); compiled once, then kept."""
        key = (mode, shape)
        with self.lock:
            if key not in self.compiled:
                model = self.model
                if shape is not None:
                    model = self.model.clone()
                    model.reshape({self.inputs[0].name: [1, *shape] if mode == "THROUGHPUT" else list(shape)})
                properties = {"PERFORMANCE_HINT": mode, "INFERENCE_PRECISION_HINT": "f32"}
                if self.threads > 0:
                    properties["INFERENCE_NUM_THREADS"] = self.threads
                try:
                    self.compiled[key] = Compiled(self.core.compile_model(model, "CPU", properties))
                except RuntimeError as exc:
                    raise UserError(f"OpenVINO cannot compile {self.model_path}: {last_line(exc)} (run it with "
                                    "--backend onnxruntime)") from None
            return self.compiled[key]


def last_line(exc: Exception) -> str:
    """The informative line of an OpenVINO exception (its first lines are C++ source locations)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.startswith("Exception from")]
    return lines[-1] if lines else type(exc).__name__


def read_onnx(ov, path: Path):
    """An ov.Model of an ONNX file through OpenVINO's ONNX frontend (never another framework's guess)."""
    frontend = ov.frontend.FrontEndManager().load_by_framework("onnx")
    try:
        return frontend.convert(frontend.load(str(path)))
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises its own GeneralFailure / OpConversionFailure types
        raise UserError(f"OpenVINO cannot read {path}: {last_line(exc)} (check the file, or run it with "
                        "--backend onnxruntime)") from None
