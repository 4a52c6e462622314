"""Export internals: checkpoints, checks, quantization, Triton, end-to-end graphs; `build` runs the steps.

The constants export.py's command line needs live here, so that `export.py --help` imports no torch or onnx.
"""

from utils import UserError

MIN_OPSET, MAX_OPSET = 13, 20  # 13: per-channel QDQ and modern Resize; 20: torch's TorchScript exporter


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UserError(f"opset {opset} is not supported; choose {MIN_OPSET}..{MAX_OPSET} (default 17)")
