"""A permutation spec as JSON-ready data, and back (kept for imports of 0.2.0).

The codec lives beside the types it encodes, in :mod:`modeconnect.spec.layout`
(:meth:`~modeconnect.spec.PermutationSpec.to_dict` and
:meth:`~modeconnect.spec.PermutationSpec.from_dict`); this module re-exports it.
"""

from __future__ import annotations

from .layout import (
    FORMAT,
    check_consistent,
    layout_from_data,
    layout_to_data,
    spec_from_dict,
    spec_to_dict,
)

__all__ = [
    "FORMAT",
    "check_consistent",
    "layout_from_data",
    "layout_to_data",
    "spec_from_dict",
    "spec_to_dict",
]
