"""The global random generators (torch, CUDA, numpy, random) saved and put back: the budget probe (training/loop.py)
and the recipe's trial (training/trial.py) run real steps that must leave no trace in the run that follows."""

from __future__ import annotations

import random

import numpy as np
import torch


def random_state() -> dict:
    """The global random generators (torch, CUDA, numpy, random), for set_random_state to put back."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_random_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])
