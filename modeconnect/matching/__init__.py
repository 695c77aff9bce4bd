"""Alignment methods, chosen by name from one registry."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ModeconnectError
from .activation import match_activations
from .assignment import solve_assignment
from .ot import match_ot
from .result import Alignment
from .weight import match_weights

METHODS: dict[str, Callable[..., Alignment]] = {
    "weight": match_weights,
    "activation": match_activations,
    "ot": match_ot,
}


def get_method(name: str) -> Callable[..., Alignment]:
    """The alignment function registered as ``name``."""
    try:
        return METHODS[name]
    except KeyError:
        raise ModeconnectError(
            f"unknown alignment method {name!r}; valid methods: {', '.join(sorted(METHODS))}"
        ) from None


_RENAMES: Mapping[str, Mapping[str, str]] = {"ot": {"ot_solver": "solver"}}
"""Command-line option names that a method knows under another name."""


def method_options(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options ``method`` accepts, by its signature; ``None`` values are left out.

    Lets one set of command-line options (``--restarts``, ``--statistic``,
    ``--ot-solver``, ``--reg``, ...) drive every method: each takes the ones it
    names (``ot_solver`` becomes the OT method's ``solver``).
    """
    params = inspect.signature(get_method(method)).parameters
    known = {
        name
        for name, p in params.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and name not in ("model", "data")
    }
    renames = _RENAMES.get(method, {})
    taken = set(renames.values())  # "solver" of OT comes only from --ot-solver
    out: dict[str, Any] = {}
    for key, value in options.items():
        name = renames.get(key, None if key in taken else key)
        if value is not None and name in known:
            out[name] = value
    return out


def register_method(name: str, fn: Callable[..., Any]) -> None:
    """Add an alignment method to the registry."""
    METHODS[name] = fn


__all__ = [
    "METHODS",
    "Alignment",
    "get_method",
    "method_options",
    "match_weights",
    "register_method",
    "solve_assignment",
]
