"""Alignment methods, chosen by name from one registry.

Importing this package loads no numerics (torch, SciPy, POT): the registry maps
each name to a loader, and a method's module is imported the first time the
method is looked up (``METHODS[name]``, :func:`get_method`). So the command line
can list :data:`METHOD_NAMES` as the choices of ``--method`` at once. The other
names (``match_weights``, ``Alignment``, ``solve_assignment``, ...) load their
module on first access (PEP 562).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from ..errors import ModeconnectError

if TYPE_CHECKING:  # for type checkers only; at run time these load lazily
    from .activation import match_activations
    from .assignment import solve_assignment
    from .descent import coordinate_descent
    from .ot import fuse_ot, match_ot
    from .result import Alignment
    from .weight import match_weights

_BUILTIN: Mapping[str, tuple[str, str]] = {
    "weight": ("weight", "match_weights"),
    "activation": ("activation", "match_activations"),
    "ot": ("ot", "match_ot"),
}
"""Method name -> (module of this package, function)."""

METHOD_NAMES: tuple[str, ...] = tuple(_BUILTIN)
"""The built-in methods' names, known without importing them."""

_LAZY: Mapping[str, str] = {
    "Alignment": "result",
    "match_weights": "weight",
    "match_activations": "activation",
    "match_ot": "ot",
    "fuse_ot": "ot",
    "solve_assignment": "assignment",
    "coordinate_descent": "descent",
}
"""Attribute -> the module of this package that defines it."""


def _load(module: str, attr: str) -> Any:
    return getattr(importlib.import_module(f"{__name__}.{module}"), attr)


class _Registry(MutableMapping[str, Callable[..., Any]]):
    """Name -> alignment function; built-in entries are imported on first lookup."""

    def __init__(self) -> None:
        self._loaded: dict[str, Callable[..., Any]] = {}
        self._names: list[str] = list(_BUILTIN)

    def __getitem__(self, name: str) -> Callable[..., Any]:
        if name not in self._loaded:
            if name not in _BUILTIN or name not in self._names:
                raise KeyError(name)
            self._loaded[name] = _load(*_BUILTIN[name])
        return self._loaded[name]

    def __setitem__(self, name: str, fn: Callable[..., Any]) -> None:
        self._loaded[name] = fn
        if name not in self._names:
            self._names.append(name)

    def __delitem__(self, name: str) -> None:
        if name not in self._names:
            raise KeyError(name)
        self._names.remove(name)
        self._loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names))

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __repr__(self) -> str:
        return f"METHODS({', '.join(self._names)})"


METHODS: MutableMapping[str, Callable[..., Any]] = _Registry()
"""Method name -> alignment function ``fn(spec, a, b, **options) -> Alignment``."""


def get_method(name: str) -> Callable[..., Alignment]:
    """The alignment function registered as ``name``."""
    if name not in METHODS:
        raise ModeconnectError(
            f"unknown alignment method {name!r}; valid methods: {', '.join(sorted(METHODS))}"
        )
    return METHODS[name]


_RENAMES: Mapping[str, Mapping[str, str]] = {"ot": {"ot_solver": "solver"}}
"""Command-line option names that a method knows under another name."""


def method_options(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options ``method`` accepts, by its signature; ``None`` values are left out.

    Lets one set of command-line options (``--restarts``, ``--statistic``,
    ``--ot-solver``, ``--reg``, ...) drive every method: each takes the ones it
    names (``ot_solver`` becomes the OT method's ``solver``).
    """
    import inspect  # not at the top: this package imports in milliseconds

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = _load(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "METHODS",
    "METHOD_NAMES",
    "Alignment",
    "coordinate_descent",
    "fuse_ot",
    "get_method",
    "match_activations",
    "match_ot",
    "match_weights",
    "method_options",
    "register_method",
    "solve_assignment",
]
