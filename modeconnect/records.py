"""Result dataclasses as JSON-ready dicts, from their fields (one rule, not a list per class).

A result is a frozen dataclass whose JSON keys are its field names. :func:`record` reads
them with :func:`dataclasses.fields`, so a field added to a result reaches its JSON with
nothing else to edit; a class adds derived values (properties) or converts a field by
passing them as keywords.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Point:
...     alpha: float
...     losses: tuple[float, ...]
>>> record(Point(0.5, (1.0, 2.0)), mean=1.5)
{'alpha': 0.5, 'losses': [1.0, 2.0], 'mean': 1.5}
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["Record", "record"]


def record(result: Any, **extra: Any) -> dict[str, Any]:
    """``{field: value}`` for every field of the dataclass ``result``, then ``extra``.

    Tuples become lists (as JSON writes them) and values with a ``to_dict`` are written
    by it; ``extra`` adds keys or replaces a field's value.
    """
    out = {f.name: _plain(getattr(result, f.name)) for f in dataclasses.fields(result)}
    out.update(extra)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    to_dict = getattr(value, "to_dict", None)
    return to_dict() if callable(to_dict) and not isinstance(value, type) else value


class Record:
    """A result dataclass whose JSON is its fields: ``to_dict()`` is :func:`record`."""

    def to_dict(self) -> dict[str, Any]:
        return record(self)
