"""Fusing models that are not the same: other widths, other tasks, N models in one basis.

* :func:`fuse`: ZipIt! (``method="zip"``) and OT fusion with unequal marginals
  (``method="otfusion"``) into a chosen width, for models of one architecture family;
* :mod:`~modeconnect.fusion.maps`: merge/unmerge matrices carried through every tensor;
* :mod:`~modeconnect.fusion.universe`: N-way matching through one universe basis
  (C2M3-style), with the cycle-consistency error of pairwise maps.

No equivalence guard applies to a fused model: it is the evaluated object.
"""

from __future__ import annotations

from .core import FUSION_METHODS, FusionResult, fuse, resolve_widths, width_groups
from .maps import GroupMap, fuse_state_dicts

__all__ = [
    "FUSION_METHODS",
    "FusionResult",
    "GroupMap",
    "fuse",
    "fuse_state_dicts",
    "resolve_widths",
    "width_groups",
]
