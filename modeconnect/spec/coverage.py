"""How much of a model a spec can align, at a glance.

:class:`Coverage` counts the units the spec permutes, the weight matrices whose
output axis it had to leave fixed (each with the reason), and the fixed axes by
the op that fixed them. A classifier whose only fixed output axis is its
classifier's is fully covered; many frozen outputs name the op to look at.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .permutations import Fixed, PermutationSpec


@dataclass(frozen=True)
class Coverage:
    """What a spec permutes and what it leaves fixed.

    ``units``: permuted units, a batched group counted once per block of its outer
    group (``heads × head dim``). ``weights``: weight matrices (tensors of two or
    more dims that an op uses as its weights: Linear, Conv, Embedding, Conv1D; an
    embedding tied to the output head counts twice, once per use).
    ``frozen_outputs``: those whose output axis is entirely fixed, with the reason
    (a tied pair goes by its first name).
    ``reasons``: the number of fixed axes of any tensor per reason (the op or rule
    that fixed them, without shapes), partly fixed axes included.
    """

    groups: int
    units: int
    weights: int
    frozen_outputs: Mapping[str, str] = field(default_factory=dict)
    reasons: Mapping[str, int] = field(default_factory=dict)

    @staticmethod
    def of(spec: PermutationSpec) -> Coverage:
        units = 0
        for g in spec.groups.values():
            outer = spec.groups.get(g.batch_over) if g.batch_over is not None else None
            blocks = outer.size if outer is not None else 1
            units += g.size * blocks
        whys = {(f.key, f.axis): f.reason for f in spec.fixed if not f.partial}
        uses = [(key, axis) for key, axes in spec.weight_outputs.items() for axis in axes]
        frozen = {
            key: whys.get((key, axis), "fixed")
            for key, axis in uses
            if isinstance(spec.layouts[key][axis], Fixed)
        }
        reasons = Counter(reason_op(f.reason) for f in spec.fixed)
        return Coverage(len(spec.groups), units, len(uses), frozen,
                        dict(reasons.most_common()))  # fmt: skip

    @property
    def frozen(self) -> int:
        """How many weight matrices have a fixed output axis."""
        return len(self.frozen_outputs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": self.groups,
            "units": self.units,
            "weights": self.weights,
            "frozen_outputs": dict(self.frozen_outputs),
            "reasons": dict(self.reasons),
        }


def reason_op(reason: str) -> str:
    """A fixed-axis reason without its details: ``view [2, 6] -> [12]: ...`` -> ``view``."""
    head = reason.split(":", 1)[0].strip()
    return head.split(" [", 1)[0].strip() or reason
