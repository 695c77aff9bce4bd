"""``tomllib`` on Python 3.11+, the ``tomli`` backport on 3.10 (``requires-python >= 3.10``;
the ``test`` extra installs tomli there)."""

from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["tomllib"]
