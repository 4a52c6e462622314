"""What a training run leaves for export: the fold checkpoints (models/fold<K>_best.pt) and cv_summary.json."""

from __future__ import annotations

import json
from pathlib import Path

import torch.nn as nn

from model import build_model_from_checkpoint
from utils import UserError


def find_checkpoints(work_dir: Path, folds: list[int] | None) -> dict[int, Path]:
    models_dir = Path(work_dir) / "models"
    found = {int(p.stem[4:-5]): p for p in models_dir.glob("fold*_best.pt") if p.stem[4:-5].isdigit()}
    if not found:
        raise UserError(f"no fold checkpoints (models/fold<K>_best.pt) in {work_dir}; run train.py first")
    if folds is None:
        return dict(sorted(found.items()))
    missing = [k for k in folds if k not in found]
    if missing:
        raise UserError(f"folds {missing} have no checkpoint in {models_dir}; available: {sorted(found)}")
    return {k: found[k] for k in folds}


def describe_model_args(args: dict) -> str:
    """A checkpoint's model_args in words, e.g. 'Unet/resnet18 with 1 class(es)'."""
    return f"{args['arch']}/{args['encoder']} with {args['classes']} class(es)"


def load_fold_models(checkpoints: dict[int, Path]) -> tuple[list[nn.Module], dict]:
    """Rebuild every fold model; all must share one architecture, encoder and class count."""
    models, first, first_path = [], None, None
    for path in checkpoints.values():
        model, ckpt = build_model_from_checkpoint(path)
        if first is None:
            first, first_path = ckpt, path
        elif ckpt["model_args"] != first["model_args"]:
            raise UserError(f"{path.name} is {describe_model_args(ckpt['model_args'])} but {first_path.name} is "
                            f"{describe_model_args(first['model_args'])}; one ONNX graph needs one architecture: "
                            "export them separately with --fold K")
        models.append(model.eval())
    return models, first


def read_summary(work_dir: Path) -> dict | None:
    summary = work_dir / "cv_summary.json"
    return json.loads(summary.read_text()) if summary.is_file() else None


def read_recommended_threshold(work_dir: Path) -> float | None:
    return (read_summary(work_dir) or {}).get("best_threshold")
