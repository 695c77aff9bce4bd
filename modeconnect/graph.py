"""Moved to :mod:`modeconnect.spec` (issue 10); this module re-exports it during the move.

``from modeconnect.graph import GraphRunner, derive_spec`` keeps working until the
last importers (activation matching) use ``modeconnect.spec``; then this file goes.
"""

from __future__ import annotations

from .spec import GraphRunner, derive_spec, trace

__all__ = ["GraphRunner", "derive_spec", "trace"]
