"""Read-only state-dict views (moved to :mod:`modeconnect.views`; kept for imports of 0.2.0)."""

from __future__ import annotations

from modeconnect.views import Converted, Extended, Lerped, Permuted, View, materialize

__all__ = ["Converted", "Extended", "Lerped", "Permuted", "View", "materialize"]
