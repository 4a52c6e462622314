"""EMA=<decay>: an exponential moving average of the weights (and the BatchNorm statistics), updated after every
optimizer step. When it is on, the average is what each epoch evaluates, what the best checkpoint keeps, so what the
out-of-fold scores and the ONNX export see; the raw weights keep training and are kept in fold<K>_last.pt beside it
for a resume.

The decay warms up as timm's ModelEmaV3 and the Ultralytics trainer do: after n updates the average takes
min(EMA, (1 + n) / (10 + n)), so the first, random weights are forgotten within a few steps instead of weighing on
a short run for ~1 / (1 - EMA) steps.
"""

from __future__ import annotations

import copy

import torch


def warm_decay(decay: float, updates: int) -> float:
    """The decay of the `updates`-th update (1-based): min(decay, (1 + n) / (10 + n))."""
    return min(decay, (1 + updates) / (10 + updates))


class WeightEma:
    """The averaged copy of a model (`module`, in eval mode, no gradients)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be between 0 and 1, got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average towards `model`'s current weights; integer buffers (BatchNorm's step count) are copied."""
        self.updates += 1
        keep = warm_decay(self.decay, self.updates)
        averaged, current = [], []
        for mine, theirs in zip(self.module.state_dict().values(), model.state_dict().values()):
            if mine.dtype.is_floating_point:
                averaged.append(mine)
                current.append(theirs.detach())
            else:
                mine.copy_(theirs)
        if averaged:
            torch._foreach_lerp_(averaged, current, 1.0 - keep)

    def state_dict(self) -> dict:
        return {"model": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])
