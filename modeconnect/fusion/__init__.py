"""Fusing models that are not the same: other widths, other tasks, N models in one basis.

* :func:`fuse`: ZipIt! (``method="zip"``), OT fusion with unequal marginals
  (``method="otfusion"``) into a chosen width, for models of one architecture
  family, and N-way matching through one universe basis (``method="universe"``,
  C2M3-style);
* :mod:`~modeconnect.fusion.maps`: merge/unmerge matrices carried through every tensor;
* :mod:`~modeconnect.fusion.universe`: the universe permutations and the
  cycle-consistency error of pairwise maps;
* :func:`fused_fedavg`: federated averaging of clients of different widths;
  :func:`state_widths` and :func:`rebuilt_model` read a client's widths (head counts
  included) from its arrays and rebuild the model at them (a Hugging Face model from its
  config with the widths written in).

No equivalence guard applies to a fused model: it is the evaluated object.
Importing this package loads no numerics; the names below load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .declared import FUSION_INFOS, FUSION_NAMES, fusion_info, fusion_options

_LAZY = {
    "FUSION_METHODS": "core",
    "FusionResult": "core",
    "fuse": "core",
    "resolve_widths": "core",
    "width_groups": "core",
    "GroupMap": "maps",
    "fuse_state_dicts": "maps",
    "fused_fedavg": "federated",
    "model_builder": "resize",
    "rebuilt_model": "resize",
    "resized_model": "resize",
    "state_widths": "resize",
    "cycle_error": "universe",
    "universe_permutations": "universe",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)


__all__ = [
    "FUSION_INFOS",
    "FUSION_METHODS",
    "FUSION_NAMES",
    "FusionResult",
    "GroupMap",
    "cycle_error",
    "fuse",
    "fuse_state_dicts",
    "fused_fedavg",
    "fusion_info",
    "fusion_options",
    "model_builder",
    "rebuilt_model",
    "resized_model",
    "resolve_widths",
    "state_widths",
    "universe_permutations",
    "width_groups",
]
