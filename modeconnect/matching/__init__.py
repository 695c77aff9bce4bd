"""Alignment methods, chosen by name from one registry that declares what each takes.

Importing this package loads no numerics (torch, SciPy, POT): each registry entry
is a :class:`MethodInfo` that names the method's module and function and declares
its parameters (:class:`Param`: name, type, default, range, help, flag). The
function is imported the first time the method is looked up (``METHODS[name]``,
:func:`get_method`), so the command line lists :data:`METHOD_NAMES` and builds each
method's flags and ``--help`` from the declarations at once. :func:`method_options`
routes options by the same declarations and refuses one the method does not take.
The other names (``match_weights``, ``Alignment``, ``solve_assignment``, ...) load
their module on first access (PEP 562).

Adding a method is one module (its function ``fn(spec, a, b, *, model, data, seed,
...) -> Alignment``) and one :class:`MethodInfo` in :data:`_BUILTIN` (or a call of
:func:`register_method`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ModeconnectError
from .params import (
    ASSIGNMENT_SOLVER,
    MAX_BATCHES,
    MAX_ITER,
    RTOL,
    STATISTIC,
    TOL,
    MethodInfo,
    Param,
    unknown_options,
)

if TYPE_CHECKING:  # for type checkers only; at run time these load lazily
    from .activation import match_activations
    from .assignment import solve_assignment
    from .descent import coordinate_descent
    from .ot import fuse_ot, match_ot
    from .result import Alignment
    from .weight import match_weights

_BUILTIN: tuple[MethodInfo, ...] = (
    MethodInfo(
        "weight", f"{__name__}.weight", "match_weights",
        params=(
            Param("restarts", int, 1, "Runs from successive seeds; the best objective is kept.",
                  min=1, flag="--restarts"),
            MAX_ITER, TOL, RTOL, ASSIGNMENT_SOLVER,
        ),
        summary="Git Re-Basin weight matching: permute B to maximise sum_W <W_A, pi(W_B)>.",
        context=("dtype", "max_bytes", "device", "progress"),
    ),
    MethodInfo(
        "activation", f"{__name__}.activation", "match_activations",
        params=(STATISTIC, MAX_BATCHES, ASSIGNMENT_SOLVER, MAX_ITER, TOL, RTOL),
        summary="Git Re-Basin activation matching: permute B to best match A's activations "
                "on the training data.",
    ),
    MethodInfo(
        "ot", f"{__name__}.ot", "match_ot",
        params=(
            Param("solver", str, "emd", "Optimal-transport solver: exact (emd) or entropic.",
                  choices=("emd", "sinkhorn"), flag="--ot-solver"),
            Param("reg", float, 0.01, "Sinkhorn regularisation, relative to the cost range.",
                  min=0, min_open=True, flag="--reg"),
            Param("cost", str, "weights", "OT ground cost: from weights or from activations.",
                  choices=("weights", "activations"), flag="--cost"),
            STATISTIC, MAX_BATCHES, MAX_ITER, TOL, RTOL,
            Param("num_itermax", int, None, "Iterations of the OT solver at most [default: "
                  "5000 for sinkhorn, 100000 for emd].", min=1),
        ),
        summary="OTFusion (Singh & Jaggi 2020): permutations from hardened "
                "optimal-transport plans.",
    ),
    MethodInfo(
        "learned", "modeconnect.symmetry.learned", "match_learned",
        params=(
            Param("epochs", int, 1, "Passes over --train learning the residual rotation.",
                  min=1, flag="--learn-epochs"),
            Param("lr", float, 1e-3, "Adam's learning rate for the residual rotation.",
                  min=0, min_open=True, flag="--learn-lr"),
            Param("random_alpha", bool, False, "Learn at a random α per step instead of the "
                  "midpoint.", flag="--random-alpha"),
            Param("permutations", str, "fixed", "Permutations: weight matching's (fixed), or "
                  "then learned by the straight-through estimator (ste; Git Re-Basin alg. 3) "
                  "or through a Sinkhorn relaxation (sinkhorn; Sinkhorn re-basin).",
                  choices=("fixed", "ste", "sinkhorn"), flag="--learn-permutations"),
            Param("sides", str, "one", "Learn B's rotation toward A (one), or both models' "
                  "toward one shared path (two; arXiv 2606.23607).",
                  choices=("one", "two"), flag="--learn-sides"),
            Param("heads", str, "learned", "Per-head maps of --symmetry full: the closed form's "
                  "(fixed), or then learned with the rotation (learned: orthogonal maps of "
                  "each head's class).", choices=("fixed", "learned"), flag="--learn-heads"),
            MAX_BATCHES,
        ),
        summary="Weight matching, then residual-stream rotations and attention-head maps "
                "learned on the loss at the path's midpoint (implies --symmetry full; Theus et "
                "al. 2025).",
    ),
)  # fmt: skip
"""The built-in methods, declared: one entry per method."""

METHOD_NAMES: tuple[str, ...] = tuple(m.name for m in _BUILTIN)
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
    return getattr(importlib.import_module(module), attr)


class MethodRegistry(MutableMapping[str, Callable[..., Any]]):
    """Name -> alignment function, each with its declaration (:meth:`info`).

    A declared function is imported on first lookup. Setting ``METHODS[name] = fn``
    keeps the declaration already registered under ``name``, or declares a method
    that takes only the shared parameters (``seed``); :func:`register_method`
    declares its parameters.
    """

    def __init__(self, methods: Sequence[MethodInfo]) -> None:
        self._infos: dict[str, MethodInfo] = {m.name: m for m in methods}
        self._loaded: dict[str, Callable[..., Any]] = {}

    def __getitem__(self, name: str) -> Callable[..., Any]:
        if name not in self._loaded:
            info = self._infos[name]  # KeyError for an unknown name
            self._loaded[name] = _load(info.module, info.function)
        return self._loaded[name]

    def __setitem__(self, name: str, fn: Callable[..., Any]) -> None:
        if name not in self._infos:
            module, function = getattr(fn, "__module__", ""), getattr(fn, "__qualname__", "")
            self._infos[name] = MethodInfo(name, module, function)
        self._loaded[name] = fn

    def __delitem__(self, name: str) -> None:
        del self._infos[name]
        self._loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._infos))

    def __len__(self) -> int:
        return len(self._infos)

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def __repr__(self) -> str:
        return f"METHODS({', '.join(self._infos)})"

    def register(self, info: MethodInfo, fn: Callable[..., Any] | None = None) -> None:
        """Declare a method; ``fn`` is its function, else imported from ``info`` on first use."""
        self._infos[info.name] = info
        self._loaded.pop(info.name, None)
        if fn is not None:
            self._loaded[info.name] = fn

    def info(self, name: str) -> MethodInfo:
        """The declaration of ``name``; an unknown name raises an error listing the valid ones."""
        if name not in self._infos:
            raise ModeconnectError(
                f"unknown alignment method {name!r}; valid methods: {', '.join(sorted(self))}"
            )
        return self._infos[name]


METHODS = MethodRegistry(_BUILTIN)
"""Method name -> alignment function ``fn(spec, a, b, **options) -> Alignment``."""


def get_method(name: str) -> Callable[..., Alignment]:
    """The alignment function registered as ``name``."""
    METHODS.info(name)  # an unknown name: the error that lists the valid ones
    return METHODS[name]


def method_info(name: str) -> MethodInfo:
    """What method ``name`` takes: its declared parameters, their defaults, ranges and help.

    >>> [p.name for p in method_info("ot").params][:3]
    ['solver', 'reg', 'cost']
    >>> method_info("weight").flags
    ('--restarts', '--rtol')
    """
    return METHODS.info(name)


def describe_method(name: str) -> str:
    """A text listing of method ``name``: its summary and one line per parameter."""
    return METHODS.info(name).describe()


def takes(method: str, keyword: str) -> bool:
    """Whether method ``method`` takes ``keyword`` (a parameter or run context), by its declaration.

    >>> takes("weight", "max_bytes"), takes("ot", "max_bytes")
    (True, False)
    """
    return METHODS.info(method).takes(keyword)


_PASSED_THROUGH = ("progress", "max_bytes", "device", "dtype")
"""Run context an options mapping may carry to a method that takes it."""


def _own(info: MethodInfo, options: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``options`` that ``info`` takes, by keyword, and the keys it does not take."""
    taken: dict[str, Any] = {}
    foreign: list[str] = []
    for key, value in options.items():
        if value is None:
            continue
        param = info.param(key)
        if param is not None:
            taken[param.name] = value
        elif key in _PASSED_THROUGH and info.takes(key):
            taken[key] = value
        else:
            foreign.append(key)
    return taken, foreign


def method_options(method: str | None, options: Mapping[str, Any]) -> dict[str, Any]:
    """The keywords to call ``method`` with, from ``options`` by its declaration.

    ``options`` names each parameter by its key (its flag's destination: ``ot_solver``
    for OT's ``solver``; otherwise its name); ``None`` values (not given) are left out.
    A given option the method does not take raises :class:`ModeconnectError` naming it
    and listing the ones the method takes; so does any option given with ``method``
    ``None`` (no alignment).

    >>> method_options("ot", {"ot_solver": "sinkhorn", "reg": 0.1, "rtol": None})
    {'solver': 'sinkhorn', 'reg': 0.1}
    >>> method_options("weight", {"reg": 0.1})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    modeconnect.errors.ModeconnectError: method 'weight' takes no option 'reg'; its options: ...
    """
    if method is None:
        given = [k for k, v in options.items() if v is not None]
        if given:
            raise unknown_options([], given)
        return {}
    info = METHODS.info(method)
    taken, foreign = _own(info, options)
    if foreign:
        raise unknown_options([info], foreign)
    return taken


def route_options(methods: Sequence[str], options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each of ``methods``' keywords from one ``options`` mapping (as :func:`method_options`).

    An option is given to every method that takes it; one that none of them takes
    raises :class:`ModeconnectError` listing what they take.

    >>> route_options(["weight", "ot"], {"restarts": 3, "reg": 0.1})
    {'weight': {'restarts': 3}, 'ot': {'reg': 0.1}}
    """
    infos = [METHODS.info(m) for m in dict.fromkeys(methods)]
    routed = {info.name: _own(info, options) for info in infos}
    foreign = [k for k in options if all(k in f for _, f in routed.values())]
    if foreign:
        raise unknown_options(infos, foreign)
    return {name: taken for name, (taken, _) in routed.items()}


def register_method(
    name: str,
    fn: Callable[..., Any],
    *,
    params: Sequence[Param] = (),
    context: Sequence[str] = (),
    summary: str = "",
) -> MethodInfo:
    """Add an alignment method to the registry, with the parameters it declares.

    ``fn(spec, a, b, *, model, data, seed, **params) -> Alignment``; ``params`` are
    its own keyword parameters (``seed`` is shared), ``context`` the optional run
    context it takes (``progress``, ``max_bytes``, ``device``, ``dtype``).
    """
    module, function = getattr(fn, "__module__", ""), getattr(fn, "__qualname__", "")
    info = MethodInfo(name, module, function, tuple(params), summary, tuple(context))
    METHODS.register(info, fn)
    return info


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = _load(f"{__name__}.{module}", name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "METHODS",
    "METHOD_NAMES",
    "Alignment",
    "MethodInfo",
    "MethodRegistry",
    "Param",
    "coordinate_descent",
    "describe_method",
    "fuse_ot",
    "get_method",
    "match_activations",
    "match_ot",
    "match_weights",
    "method_info",
    "method_options",
    "register_method",
    "route_options",
    "solve_assignment",
    "takes",
]
