"""What export reads: a training run's fold checkpoints (models/fold<K>_best.pt) and cv_summary.json, or a plain
state dict saved by another script (export.py --checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import torch.nn as nn

from model import (
    GATE_ARCH, PickledCheckpointError, build_model, build_model_from_checkpoint, load_checkpoint, model_args,
    read_checkpoint, resolve_arch, unwrap_state_dict,
)
from utils import LOG, UserError

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".ckpt", ".bin")


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


# ----------------------------------------------------------------------------- plain state dicts (--checkpoint)


def checkpoint_name(path: Path) -> str:
    """The model's name from its file: x.pth.tar -> x."""
    name = Path(path).name
    while Path(name).suffix.lower() in CHECKPOINT_SUFFIXES:
        name = Path(name).stem
    return name or "model"


def read_plain_checkpoint(path: Path, trust_pickle: bool = False):
    """torch.load, safely unless `trust_pickle` (a whole pickled nn.Module, or numpy values beside the weights)."""
    try:
        return read_checkpoint(path, weights_only=not trust_pickle)
    except PickledCheckpointError as exc:
        raise UserError(f"{exc}; if you trust the file, add --trust-pickle (this runs its pickled code)") from None


def state_classes(state: dict) -> int | None:
    """Output channels of an smp model's segmentation head, where the state dict has one."""
    head = state.get("segmentation_head.0.weight")
    return int(head.shape[0]) if head is not None and head.ndim == 4 else None


def load_plain_checkpoint(path: str | Path, arch: str | None, encoder: str | None, classes: int | None = None,
                          trust_pickle: bool = False) -> tuple[nn.Module, dict]:
    """A model rebuilt from --model/--encoder (or the file's own model_args) with the file's weights, and the
    checkpoint-like dict ({"model_args": ...}) the metadata is built from. `classes` defaults to the head's."""
    raw = read_plain_checkpoint(Path(path), trust_pickle)
    saved = raw.get("model_args") if isinstance(raw, dict) and isinstance(raw.get("model_args"), dict) else {}
    arch, encoder = arch or saved.get("arch"), encoder or saved.get("encoder")
    if not arch or not encoder:
        raise UserError(f"--checkpoint {path}: give --model ARCH and --encoder NAME of the network that saved it "
                        "(e.g. --model Unet --encoder resnet34)")
    arch = resolve_arch(arch)
    if arch == GATE_ARCH:
        raise UserError("--checkpoint exports segmenters; export a gate from its run with --work-dir")
    state = unwrap_state_dict(raw)
    classes = classes or state_classes(state) or saved.get("classes") or 1
    model = build_model(arch, encoder, None, classes)
    load_checkpoint(model, state, advice="check --model, --encoder and --classes against the script that saved it")
    LOG.info("loaded %s as %s/%s with %d class(es)", path, arch, encoder, classes)
    return model.eval(), {"model_args": model_args(arch, encoder, classes)}
