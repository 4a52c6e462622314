"""An NVIDIA Triton model repository for an exported graph: config.pbtxt described from the graph, 1/model.onnx."""

from __future__ import annotations

from pathlib import Path

import onnx

from exporting.onnx_metadata import set_metadata
from exporting.variants import guard_overwrite
from runtime.lineage import source_record
from runtime.metadata import read_metadata
from runtime.rule import describe_rule
from utils import LOG, UserError, atomic_write_bytes

TRITON_DTYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
                 onnx.TensorProto.DOUBLE: "TYPE_FP64", onnx.TensorProto.UINT8: "TYPE_UINT8",
                 onnx.TensorProto.INT8: "TYPE_INT8", onnx.TensorProto.INT32: "TYPE_INT32",
                 onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.BOOL: "TYPE_BOOL"}


def tensor_spec(value: onnx.ValueInfoProto) -> tuple[str, list[int]]:
    """(Triton data type, dims with -1 for every symbolic or unknown dim) of one graph input/output."""
    tensor = value.type.tensor_type
    if tensor.elem_type not in TRITON_DTYPES:
        raise UserError(f"--triton-repo: {value.name} has ONNX element type {tensor.elem_type}, "
                        f"which this writer does not map; supported: {sorted(TRITON_DTYPES.values())}")
    return TRITON_DTYPES[tensor.elem_type], [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]


def triton_config(proto: onnx.ModelProto, name: str, max_batch_size: int = 8, kind: str = "gpu", instances: int = 1,
                  dynamic_batching: bool = False) -> str:
    """config.pbtxt for Triton's onnxruntime backend, every tensor described from the graph itself.

    A dynamic first dim becomes Triton's batch dim (max_batch_size > 0, dims without it); a static
    one means max_batch_size 0 and full dims, and no dynamic batching.
    """
    initializers = {init.name for init in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in initializers]
    specs = [(section, v.name, *tensor_spec(v))
             for section, values in (("input", inputs), ("output", proto.graph.output)) for v in values]
    batched = max_batch_size > 0 and all(dims and dims[0] == -1 for *_, dims in specs)
    if dynamic_batching and not batched:
        raise UserError("--triton-dynamic-batching needs a dynamic batch dim in every input and output and "
                        "--triton-max-batch > 0")
    lines = [f'name: "{name}"', 'platform: "onnxruntime_onnx"', 'backend: "onnxruntime"',
             f"max_batch_size: {max_batch_size if batched else 0}"]
    skip = 1 if batched else 0  # Triton's batch dim is implicit
    for section in ("input", "output"):
        entries = [f'  {{\n    name: "{tensor}"\n    data_type: {dtype}\n'
                   f'    dims: [ {", ".join(map(str, dims[skip:]))} ]\n  }}'
                   for kind_, tensor, dtype, dims in specs if kind_ == section]
        lines.append(f"{section} [\n" + ",\n".join(entries) + "\n]")
    lines.append(f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_{kind.upper()}\n  }}\n]")
    if dynamic_batching:
        lines.append("dynamic_batching {\n  max_queue_delay_microseconds: 100\n}")
    return "\n".join(lines) + "\n"


def write_triton_repo(onnx_path: Path, repo: str | Path, name: str | None = None, force: bool = False,
                      **config) -> Path:
    """REPO/<name>/config.pbtxt + REPO/<name>/1/model.onnx; returns the model folder. Triton itself is not run.

    The copy records the SHA-256 of the file it was made from and its rule (its metadata's `source`, `rule`; a
    comment in config.pbtxt); an existing model.onnx of another variant is replaced only with `force`."""
    proto = onnx.load(str(onnx_path), load_external_data=False)
    meta = read_metadata(proto)
    name = name or meta.get("name") or onnx_path.stem
    if not name.replace("_", "").replace("-", "").isalnum():
        raise UserError(f"--triton-name {name!r} is not a valid Triton model name; use letters, digits, - and _")
    folder = Path(repo) / name
    source = source_record(Path(onnx_path), "triton")
    meta = {**meta, "source": source}
    guard_overwrite(folder / "1" / "model.onnx", meta, force)
    rule = f"; the client's mask rule: {describe_rule(meta['rule'])}" if meta.get("rule") else ""
    text = f"# made from {source['file']} (sha256 {source['sha256']}){rule}\n"
    text += triton_config(proto, name, **config)
    atomic_write_bytes(folder / "1" / "model.onnx", set_metadata(proto, meta).SerializeToString())
    atomic_write_bytes(folder / "config.pbtxt", text.encode())
    LOG.info("Triton model repository: %s (config.pbtxt + 1/model.onnx)", folder)
    return folder
