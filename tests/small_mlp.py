"""The small MLP (6 -> 10 -> 12 -> 3) whose seeded state dicts the merging, FedAvg and
Flower tests permute, merge and average."""

from __future__ import annotations

import torch
from torch import nn

from modeconnect.models import mlp


def small_net() -> nn.Module:
    return mlp(6, [10, 12], 3)


def small_state(seed: int) -> dict[str, torch.Tensor]:
    """The state dict of a :func:`small_net` initialised from torch seed ``seed``."""
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in small_net().state_dict().items()}
