"""Alignment methods, chosen by name from one registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ModeconnectError
from .assignment import solve_assignment
from .result import Alignment
from .weight import match_weights

METHODS: dict[str, Callable[..., Alignment]] = {
    "weight": match_weights,
}


def get_method(name: str) -> Callable[..., Alignment]:
    """The alignment function registered as ``name``."""
    try:
        return METHODS[name]
    except KeyError:
        raise ModeconnectError(
            f"unknown alignment method {name!r}; valid methods: {', '.join(sorted(METHODS))}"
        ) from None


def register_method(name: str, fn: Callable[..., Any]) -> None:
    """Add an alignment method to the registry."""
    METHODS[name] = fn


__all__ = ["METHODS", "Alignment", "get_method", "match_weights", "register_method", "solve_assignment"]
