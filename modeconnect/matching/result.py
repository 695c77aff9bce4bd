"""The result of any alignment method."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Alignment:
    """Permutations that carry B into A's basis, and how they were found.

    ``perm`` holds one index tensor per group (see :data:`modeconnect.spec.Permutation`).
    ``objective`` is the method's own objective at the solution; ``iterations``
    counts sweeps (or solver iterations); ``params`` records the method's settings;
    ``profile`` says where the time went (for the descent methods: ``sweeps``,
    ``solves``, ``skipped``, ``similarity_seconds``, ``assignment_seconds``).
    """

    method: str
    perm: dict[str, torch.Tensor]
    objective: float
    iterations: int
    seconds: float
    seed: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)
    profile: Mapping[str, float | int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "objective": self.objective,
            "iterations": self.iterations,
            "seconds": self.seconds,
            "seed": self.seed,
            "params": dict(self.params),
            "profile": dict(self.profile),
        }
