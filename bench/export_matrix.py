"""Which architectures export to ONNX, and do onnxruntime and OpenCV DNN agree with torch?

Run book:
    python bench/export_matrix.py                     # every architecture, writes docs/export_matrix.{md,json}
    python bench/export_matrix.py --arch Unet PSPNet  # a subset, printed only

Each model is built with random weights (encoder_weights=None, nothing downloaded). BatchNorm
running statistics are first calibrated on random images (train-mode forward passes): with the
init statistics (mean 0, var 1) deep nets such as HRNet blow activations up to ~1e7 in eval mode,
which hides every real difference (see the HRNet note in the output).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from exporting import checks  # noqa: E402
from exporting.ensembles import ExportEnsemble  # noqa: E402
from exporting.tracing import to_onnx_bytes  # noqa: E402
from config import ARCHITECTURES  # noqa: E402
from model import build_model  # noqa: E402

ENCODERS = {"DPT": "tu-vit_tiny_patch16_224", "HRNetLite": "hrnet_w18"}  # default: resnet18
MIN_SIZE = {"PAN": 128}  # PAN's feature-pyramid attention pools stride 32 three more times
EXTRA = [("Unet", "tu-hrnet_w18")]
NOTES = """Notes
- PSPNet, UPerNet: adaptive average pooling on dynamic H/W is rejected by the TorchScript exporter;
  export.py traces it as two exact matmuls (`traceable_adaptive_avg_pool2d`), so both export with dynamic shapes.
- OpenCV DNN: "mismatch" means it loads and runs but gives wrong values; "unsupported" that it
  cannot run the graph. Both are warnings in export.py (onnxruntime remains the reference runtime).
- DPT: timm ViTs resample their position embedding with antialiased bicubic interpolation for a
  new image size, an operator the TorchScript exporter cannot write; use another architecture for ONNX.
- HRNet (`tu-hrnet_w18`): with random init, BatchNorm running statistics (mean 0, var 1) do not
  normalise, so activations grow through HRNet's repeated fuse-adds to logits of ~1e7 in eval mode.
  Probabilities then saturate to exactly 0/1 and raw logits differ by ~70 between torch and
  onnxruntime, which is only float32 rounding (relative 7e-6). With calibrated statistics (as after
  training) logits are ~30 and probabilities differ by ~5e-4: against a float64 torch run onnxruntime
  is off by 1.6e-3 in logits and float32 torch by 2.4e-3, so the graph is right and the difference
  is float32 rounding in a deep network. export.py accepts such a difference with a warning."""


def build_random(arch: str, encoder: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if arch == "DPT":  # a ViT needs dynamic_img_size to take any H/W (build_model does not set it)
        import segmentation_models_pytorch as smp

        model = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=1, dynamic_img_size=True)
    else:
        model = build_model(arch, encoder, None, 1)
    return model


def calibrate_batchnorm(model: torch.nn.Module, size: int, steps: int = 3) -> torch.nn.Module:
    """Replace init BatchNorm statistics by those of random images, as training would."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the steps
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(2, 3, size, size))
    return model.eval()


def compare(module, model_bytes: bytes, shape: tuple) -> dict:
    x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
    with torch.inference_mode():
        want = module(torch.from_numpy(x)).numpy()
    got = checks.run_onnxruntime(model_bytes, x)
    result = {"ort_diff": checks.max_diff(got, want, "ort"), "opencv": checks.check_opencv(model_bytes, x, got)}
    if result["ort_diff"] > checks.PARITY_TOLERANCE:  # a wrong graph, or float32 rounding? ask float64
        result["ort_vs_f64"], result["torch_vs_f64"] = checks.float64_errors(module, x, got, want)
    return result


def check_architecture(arch: str, encoder: str, size: int | None = None, calibrate: bool = True) -> dict:
    """One row: exports?, onnxruntime/OpenCV parity at the export shape and at a new batch/shape."""
    size = size or MIN_SIZE.get(arch, 64)
    row = {"arch": arch, "encoder": encoder, "size": size, "exports": False, "error": ""}
    start = time.perf_counter()
    try:
        model = build_random(arch, encoder)
        if calibrate:
            calibrate_batchnorm(model, size)
        module = ExportEnsemble([model.eval()], 1).eval()
        model_bytes = to_onnx_bytes(module, size, 17)
        row["exports"] = True
        row["static"] = compare(module, model_bytes, (1, 3, size, size))
        row["dynamic"] = compare(module, model_bytes, (2, 3, size + 32, size + 64))
    except Exception as exc:  # a row records the failure; the matrix goes on
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}"
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def cell_ort(result: dict | None) -> str:
    if not result:
        return "-"
    if result["ort_diff"] <= checks.PARITY_TOLERANCE:
        return f"yes ({result['ort_diff']:.0e})"
    if result["ort_vs_f64"] <= 2 * result["torch_vs_f64"]:  # the rule exporting.checks.check_parity applies
        return (f"yes* ({result['ort_diff']:.0e}; vs float64: ORT {result['ort_vs_f64']:.0e}, "
                f"torch {result['torch_vs_f64']:.0e})")
    return f"NO ({result['ort_diff']:.0e})"


def cell_opencv(row: dict) -> str:
    if not row["exports"]:
        return "-"
    parts = []
    for key in ("static", "dynamic"):
        cv = row[key]["opencv"]
        parts.append(f"{cv['status']}" + (f" ({cv['max_diff']:.0e})" if cv["max_diff"] is not None else ""))
    return " / ".join(parts)


def to_markdown(rows: list[dict], env: str) -> str:
    lines = [
        "# ONNX export matrix", "",
        f"Generated by `python bench/export_matrix.py` ({env}). Random weights, BatchNorm statistics",
        "calibrated on random images, one model, sigmoid probabilities, opset 17. Parity is the max abs",
        f"difference of probabilities: onnxruntime vs torch (tolerance {checks.PARITY_TOLERANCE:.0e}), OpenCV DNN vs",
        f"onnxruntime (tolerance {checks.OPENCV_TOLERANCE:.0e}). *Export shape* is (1, 3, S, S); *dynamic* is",
        "(2, 3, S+32, S+64) through the same file. yes* = above the tolerance, but onnxruntime is no",
        "further from a float64 torch run than float32 torch itself: float32 rounding, which the export's",
        "parity check accepts with a warning.", "",
        "| architecture | encoder | S | exports | onnxruntime, export shape | onnxruntime, dynamic | "
        "OpenCV DNN (export shape / dynamic) | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        note = r["error"] or r.get("note", "")
        lines.append(f"| {r['arch']} | {r['encoder']} | {r['size']} | {'yes' if r['exports'] else 'NO'} | "
                     f"{cell_ort(r.get('static'))} | {cell_ort(r.get('dynamic'))} | {cell_opencv(r)} | {note} |")
    return "\n".join(lines + ["", NOTES]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="*", default=None, help="architectures (default: all, plus HRNet)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "export_matrix"), help="output path without suffix")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    jobs = [(a, ENCODERS.get(a, "resnet18")) for a in (args.arch or ARCHITECTURES)]
    if not args.arch:
        jobs += EXTRA
    rows = []
    for arch, encoder in jobs:
        row = check_architecture(arch, encoder)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.arch:
        return
    import cv2
    import onnxruntime as ort

    env = f"torch {torch.__version__}, onnxruntime {ort.__version__}, OpenCV {cv2.__version__}"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps({"env": env, "rows": rows}, indent=1) + "\n")
    Path(args.out + ".md").write_text(to_markdown(rows, env))
    print(to_markdown(rows, env))


if __name__ == "__main__":
    main()
