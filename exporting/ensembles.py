"""The torch modules that are traced: fold models (and flipped TTA views) averaged in one graph."""

from __future__ import annotations

import torch
import torch.nn as nn

from runtime.metadata import TTA_MODES
from utils import UserError

TTA_FLIPS = {"none": [()], "hflip": [(), (3,)], "flips": [(), (3,), (2,), (2, 3)]}  # NCHW dims per TTA_MODES mode
OUTPUTS = ("probs", "logits")
GATE_OUTPUT = "prob"  # the gate's (N, 1) defect probability


class ExportEnsemble(nn.Module):
    """Folds x TTA views in one graph: (N, 3, H, W) -> (N, C, H, W) probs or logits.

    The TTA views are stacked as extra batch entries, so each fold model runs once per call;
    the views are flipped back and averaged, then the folds are averaged (nnU-Net style).
    """

    def __init__(self, models: list[nn.Module], num_classes: int, tta: str = "none", output: str = "probs"):
        super().__init__()
        if tta not in TTA_MODES:
            raise UserError(f"tta={tta!r}: choose one of {', '.join(TTA_MODES)}")
        if output not in OUTPUTS:
            raise UserError(f"output={output!r}: choose one of {', '.join(OUTPUTS)}")
        self.models = nn.ModuleList(models)
        self.num_classes, self.flips, self.output = num_classes, TTA_FLIPS[tta], output

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        if self.output == "logits":
            return logits
        return torch.sigmoid(logits) if self.num_classes == 1 else torch.softmax(logits, dim=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        views = [image.flip(dims) if dims else image for dims in self.flips]
        batch = torch.cat(views, dim=0) if len(views) > 1 else image  # (V*N, 3, H, W)
        total = sum(self.activate(model(batch)) for model in self.models) / len(self.models)
        if len(views) == 1:
            return total
        per_view = total.unflatten(0, (len(views), -1))  # (V, N, C, H', W')
        unflipped = [per_view[i].flip(dims) if dims else per_view[i] for i, dims in enumerate(self.flips)]
        return sum(unflipped) / len(unflipped)


class GateEnsemble(nn.Module):
    """The gate's folds in one graph: image (N, 3, H, W) -> prob (N, 1), the mean of the folds' sigmoids."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.models = nn.ModuleList(models)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return sum(torch.sigmoid(model(image)) for model in self.models) / len(self.models)
