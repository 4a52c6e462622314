"""Models, losses and checkpoints for the training side.

    build_model("UnetPlusPlus", "resnet34", encoder_weights=None, classes=1)
    load_checkpoint(model, "work/models/fold0_best.pt")
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
import torch.nn as nn
import torch.nn.functional as F

from config import ARCHITECTURES, GATE_POOLS
from utils import DISK_FULL, IGNORE_INDEX, LOG, UserError, disk_full_error


# The clean/defect gate (TASK=classify): an encoder and a pooling head, one logit per image.
GATE_ARCH = "GateClassifier"
GATE_DROPOUT = 0.2
GATE_POOL = GATE_POOLS[0]  # avgmax; checkpoints from before the setting existed pooled "avg"


def model_args(arch: str, encoder: str, classes: int, gate_pool: str = GATE_POOL) -> dict:
    """The arguments that rebuild a model; stored in every checkpoint (nanoGPT style), with the task."""
    if arch == GATE_ARCH:
        return {"arch": arch, "encoder": encoder, "classes": 1, "task": "classify", "pool": gate_pool}
    return {"arch": arch, "encoder": encoder, "classes": classes}


class GateClassifier(nn.Module):
    """Image-level "has any foreground" classifier: image (B, 3, H, W) -> logits (B, 1).

    An smp encoder (smp names and tu-<timm> names alike, as for the segmenters), global pooling of its
    deepest feature map (`pool`: "avgmax" = average and max concatenated, "avg", "max"), dropout and one
    linear layer. No decoder: far cheaper than a segmenter. The max half answers "is there a defect
    anywhere": a few pits on a 1600 px strip are a peak in one feature cell, which an average dilutes.
    """

    def __init__(self, encoder: str = "resnet18", weights: str | None = None, dropout: float = GATE_DROPOUT,
                 pool: str = GATE_POOL):
        super().__init__()
        if pool not in GATE_POOLS:
            raise UserError(f"unknown gate pooling {pool!r}; choose one of: {', '.join(GATE_POOLS)}")
        self.pool = pool
        self.encoder = smp.encoders.get_encoder(encoder, in_channels=3, depth=5, weights=weights)
        self.dropout = nn.Dropout(dropout)
        channels = self.encoder.out_channels[-1]
        self.head = nn.Linear(channels * 2 if pool == "avgmax" else channels, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.encoder(image)[-1]  # (B, C, H/32, W/32)
        pooled = []
        if self.pool in ("avgmax", "avg"):
            pooled.append(features.mean(dim=(2, 3)))
        if self.pool in ("avgmax", "max"):
            pooled.append(features.amax(dim=(2, 3)))
        return self.head(self.dropout(torch.cat(pooled, dim=1)))  # (B, 1)


class HRNetLite(nn.Module):
    """HRNet backbone (timm, features_only) with a light fusion head.

    Each of the four branch outputs (strides 4, 8, 16, 32) goes through a 1x1 lateral conv, is
    upsampled to stride 4 and concatenated; a 1x1 classifier and a bilinear upsample give
    logits (B, classes, H, W).
    """

    def __init__(self, encoder: str = "hrnet_w48", classes: int = 1, head_channels: int = 64,
                 pretrained: bool = False):
        super().__init__()
        import timm

        # feature_location="" gives the raw HRNet branches instead of the classification "incre" path.
        self.encoder = timm.create_model(encoder, features_only=True, pretrained=pretrained,
                                         feature_location="", out_indices=(1, 2, 3, 4))
        self.laterals = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, head_channels, 1, bias=False), nn.BatchNorm2d(head_channels), nn.ReLU(inplace=True))
            for c in self.encoder.feature_info.channels()
        )
        self.classifier = nn.Conv2d(head_channels * len(self.laterals), classes, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.encoder(image)  # 4 x (B, C_i, H/s_i, W/s_i)
        size = features[0].shape[-2:]
        fused = [lateral(f) for lateral, f in zip(self.laterals, features)]
        fused = [fused[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in fused[1:]]
        logits = self.classifier(torch.cat(fused, dim=1))  # (B, classes, H/4, W/4)
        return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)


def _create(arch: str, encoder: str, weights: str | None, classes: int, gate_pool: str) -> nn.Module:
    if arch == GATE_ARCH:
        return GateClassifier(encoder, weights, pool=gate_pool)
    if arch == "HRNetLite":
        if not encoder.startswith("hrnet"):
            raise UserError(f"ARCH=HRNetLite needs an HRNet encoder, got ENCODER={encoder!r}; "
                            "use --encoder hrnet_w48 (or hrnet_w18/w32 for a lighter model)")
        return HRNetLite(encoder, classes, pretrained=weights == "imagenet")
    extra = {}
    if arch == "DPT" and encoder.startswith("tu-"):
        extra["dynamic_img_size"] = True  # ViT encoders: any H, W (multiple of the patch), not only 224
    return smp.create_model(arch, encoder_name=encoder, encoder_weights=weights, classes=classes, **extra)


def resolve_arch(name: str) -> str:
    """An architecture name as smp spells it, matched case-insensitively ('unet' -> 'Unet')."""
    known = {arch.lower(): arch for arch in ARCHITECTURES + (GATE_ARCH,)}
    try:
        return known[str(name).strip().lower()]
    except KeyError:
        raise UserError(f"unknown architecture {name!r}; choose one of: {', '.join(ARCHITECTURES)}") from None


def build_model(arch: str, encoder: str, encoder_weights: str | None = None, classes: int = 1,
                gate_pool: str = GATE_POOL) -> nn.Module:
    """A model returning logits (B, classes, H, W): any smp architecture, or HRNetLite; or the gate
    (arch GateClassifier, pooling `gate_pool`), returning logits (B, 1).

    encoder_weights: None/"none" (random init, works offline), "imagenet" (downloaded once by
    smp/timm), or a path to a local encoder state dict (.pth/.pt).
    """
    arch = resolve_arch(arch)
    weights = None if encoder_weights in (None, "", "none", "None") else encoder_weights
    local_file = weights is not None and weights not in ("imagenet",) and (
        os.sep in weights or weights.endswith((".pth", ".pt", ".bin", ".safetensors"))
    )
    if local_file and not Path(weights).is_file():
        raise UserError(f"ENCODER_WEIGHTS={weights!r}: file not found (give a local .pth, 'imagenet' or 'none')")
    try:
        model = _create(arch, encoder, None if local_file else weights, classes, gate_pool)
    except KeyError as exc:
        raise UserError(f"ENCODER={encoder!r} is not available for {arch}: {exc}") from None
    except UserError:
        raise
    except (OSError, RuntimeError, ValueError) as exc:
        if weights is None:
            raise
        raise UserError(
            f"could not load ENCODER_WEIGHTS={weights!r} for encoder {encoder!r} ({type(exc).__name__}: {exc}). "
            "Offline? Use ENCODER_WEIGHTS=none or a local .pth file."
        ) from None
    if local_file:
        load_encoder_weights(model, weights)
    return model


def load_encoder_weights(model: nn.Module, path: str) -> None:
    """Load a local encoder state dict (e.g. a torchvision/timm backbone) into model.encoder."""
    state = unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    own = model.encoder.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise UserError(f"ENCODER_WEIGHTS={path!r} matched no encoder parameter; is it for this encoder?")
    # smp encoders override load_state_dict (and return None), so match keys ourselves.
    own.update(usable)
    model.encoder.load_state_dict(own)
    LOG.info("encoder weights %s: %d of %d tensors loaded, %d ignored",
             path, len(usable), len(own), len(state) - len(usable))

# ----------------------------------------------------------------------------- losses


class ComboLoss(nn.Module):
    """dice_weight * Dice + bce_weight * BCEWithLogits, for binary segmentation.

    logits, target: (B, 1, H, W); target holds {0, 1} as float, and `ignore_index` (void) where the pixel is left out
    of both terms.
    """

    def __init__(self, dice_weight: float = 0.5, bce_weight: float = 0.5, ignore_index: int | None = None):
        super().__init__()
        self.dice_weight = dice_weight
        self.bce_weight = bce_weight
        self.ignore_index = ignore_index
        self.dice = smp.losses.DiceLoss(mode="binary", from_logits=True, ignore_index=ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.ignore_index is None:
            bce = F.binary_cross_entropy_with_logits(logits, target)
        else:
            valid = (target != self.ignore_index).to(logits.dtype)
            bce = F.binary_cross_entropy_with_logits(logits, target * valid, reduction="none")
            bce = (bce * valid).sum() / valid.sum().clamp_min(1)
        return self.dice_weight * self.dice(logits, target) + self.bce_weight * bce


class MultiClassComboLoss(nn.Module):
    """dice_weight * Dice + ce_weight * CrossEntropy. logits (B, C, H, W), target (B, H, W) long; pixels of
    `ignore_index` (void) are left out of both terms."""

    def __init__(self, dice_weight: float = 0.5, ce_weight: float = 0.5, class_weights: torch.Tensor | None = None,
                 ignore_index: int | None = None):
        super().__init__()
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        self.ignore_index = ignore_index
        self.dice = smp.losses.DiceLoss(mode="multiclass", from_logits=True, ignore_index=ignore_index)
        self.register_buffer("class_weights", class_weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.ignore_index is not None and not (target != self.ignore_index).any():
            ce = logits.sum() * 0.0  # every pixel void: cross-entropy's mean would be 0 / 0
        else:
            ce = F.cross_entropy(logits, target, weight=self.class_weights,
                                 ignore_index=-100 if self.ignore_index is None else self.ignore_index)
        return self.dice_weight * self.dice(logits, target) + self.ce_weight * ce


def image_labels(masks: torch.Tensor, ignore_index: int | None = IGNORE_INDEX) -> torch.Tensor:
    """(B, 1) float: 1 where the image's mask has a class pixel (> 0, void left out). masks (B, 1, H, W) or (B, H, W)."""
    labelled = masks > 0
    if ignore_index is not None:
        labelled &= masks != ignore_index
    return labelled.flatten(1).any(1, keepdim=True).float()


class GateLoss(nn.Module):
    """BCEWithLogits of the gate's logits (B, 1) against image_labels(masks); pos_weight optional.

    Takes the masks the segmentation loader yields, so both tasks share the training loop.
    """

    def __init__(self, pos_weight: float | None = None, ignore_index: int | None = IGNORE_INDEX):
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("pos_weight", None if pos_weight is None else torch.tensor([float(pos_weight)]))

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, image_labels(masks, self.ignore_index).to(logits.dtype),
                                                  pos_weight=self.pos_weight)


def build_loss(classes: int, dice_weight: float = 0.5, bce_weight: float = 0.5,
               class_weights: list[float] | None = None, ignore_index: int | None = None) -> nn.Module:
    """Binary: ComboLoss (Dice + BCE). Multi-class: Dice + cross-entropy, optionally class-weighted. Pixels of
    `ignore_index` (IGNORE_INDEX, void) are left out."""
    if classes == 1:
        return ComboLoss(dice_weight, bce_weight, ignore_index)
    weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
    return MultiClassComboLoss(dice_weight, bce_weight, weights, ignore_index)


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """torch.save to a temp file, then rename: a crash never leaves half a checkpoint.

    Out of space (ENOSPC/EDQUOT), the temp file is removed and the previous checkpoint stays (UserError).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # A Python file object, not a path: torch's own C++ writer reports a full disk only as an "unexpected pos"
        # RuntimeError, while Python's write raises OSError(ENOSPC), which torch keeps as the error's context.
        with os.fdopen(fd, "wb") as file:
            torch.save(payload, file)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        cause = exc
        while cause is not None and not (isinstance(cause, OSError) and cause.errno in DISK_FULL):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise disk_full_error(path, cause) from exc
        raise


def unwrap_state_dict(obj) -> dict:
    """Accept a bare state dict, {'state_dict': ...} or {'model': ...}, or a whole nn.Module (also wrapped);
    strip DataParallel/DDP's 'module.'."""
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), (dict, nn.Module)):
            obj = obj[key]
            break
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError("checkpoint holds no state dict (expected tensors, {'state_dict': ...} or {'model': ...})")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


class PickledCheckpointError(UserError):
    """The file holds pickled Python objects (e.g. a whole nn.Module) that safe loading refuses."""


def read_checkpoint(path: str | os.PathLike, weights_only: bool = True) -> dict:
    """Load a checkpoint file safely (weights_only=True: no pickled code runs; False only for a trusted file)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # torch raises several unrelated types for a bad file
        if weights_only and "Weights only load failed" in str(exc):
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            raise PickledCheckpointError(f"cannot read checkpoint {path} safely: it holds pickled Python objects "
                                         f"({found.group(1) if found else 'not only tensors'})") from None
        raise UserError(f"cannot read checkpoint {path} ({path.stat().st_size} bytes; truncated, corrupt or not "
                        f"written by train.py): {type(exc).__name__}: {str(exc).splitlines()[0]}") from None


def load_checkpoint(model: nn.Module, source, advice: str = "check ARCH, ENCODER and CLASSES against the run "
                    "that wrote it") -> dict:
    """Strictly load weights into `model` from a path or an already loaded object.

    Fails fast in one line, listing missing, unexpected and mis-shaped keys. Returns the raw checkpoint.
    """
    raw = read_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source
    state = unwrap_state_dict(raw)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape_errors = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shape_errors:
        def show(keys):
            return ", ".join(keys[:8]) + (f" ... (+{len(keys) - 8} more)" if len(keys) > 8 else "")
        parts = [f"checkpoint does not match the model ({type(model).__name__})"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {show(unexpected)}")
        if shape_errors:
            parts.append("shape mismatch: " + show(
                [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shape_errors]))
        raise UserError("; ".join(parts + [advice]))
    model.load_state_dict(state, strict=True)
    return raw if isinstance(raw, dict) else {}


def build_model_from_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Rebuild the model from the arguments stored in the checkpoint; no config file needed."""
    ckpt = read_checkpoint(path)
    args = ckpt.get("model_args") if isinstance(ckpt, dict) else None
    if not args:
        raise UserError(f"{path} has no 'model_args'; it was not written by train.py")
    model = build_model(args["arch"], args["encoder"], None, args["classes"], gate_pool=args.get("pool", "avg"))
    load_checkpoint(model, ckpt)
    return model, ckpt
