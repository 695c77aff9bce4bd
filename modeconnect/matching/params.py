"""What an alignment method takes: its parameters, declared once, read by library and CLI.

A method is a function ``fn(spec, a, b, *, model, data, seed, **params) -> Alignment``.
Its :class:`MethodInfo` names the function and declares each keyword it takes as a
:class:`Param` (name, type, default, range or choices, help, and the command-line flag
if it has one). :func:`~modeconnect.matching.method_options` routes options by this
declaration and refuses the ones a method does not take; the command line builds its
method flags and their ``--help`` from it. A test checks every declaration against its
function's keyword-only signature, so the two cannot drift.

Two kinds of keywords are declared here once, for every method:

* :data:`SHARED` parameters (``seed``), which every method takes;
* the run context (:data:`CONTEXT`: ``model``, ``data``, ``progress``, ``max_bytes``,
  ``device``, ``dtype``), which the pipeline passes and no flag sets. Every method is
  called with ``model`` and ``data``; a method lists the others it takes in
  :attr:`MethodInfo.context`.

This module imports nothing heavy: the command line reads it to answer ``--help``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ModeconnectError


@dataclass(frozen=True)
class Computed:
    """A default the method computes when it loads, from what is installed (``text`` says how)."""

    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Param:
    """One keyword parameter of a method.

    ``type`` is the Python type of a value (``int``, ``float``, ``str``, ``bool``);
    ``default`` the function's default (``None``: the help says what it means);
    ``choices`` the valid values of a ``str``; ``min``/``max`` the closed range of a
    number (``min_open``: ``min`` itself excluded). ``flag`` is the command-line flag
    (``"--ot-solver"``); ``None`` keeps the parameter to library calls. An options
    mapping names a parameter by :attr:`key`: its flag's destination, else its name.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    flag: str | None = None

    @property
    def key(self) -> str:
        """The name of this parameter in an options mapping (``ot_solver`` for ``--ot-solver``)."""
        return self.flag.lstrip("-").replace("-", "_") if self.flag else self.name

    def describe(self) -> str:
        """One line: name, flag, type, range or choices, default, help."""
        flag = f" ({self.flag})" if self.flag else ""
        default = "" if self.default is None else f" [default: {self.default}]"
        return f"{self.name}{flag}: {self.domain()}{default}. {self.help}"

    def _number(self, x: float) -> str:
        return str(int(x)) if self.type is int else f"{x:g}"

    def domain(self) -> str:
        """The values it takes, in words: ``one of emd, sinkhorn``, ``int >= 1``, ``float``."""
        if self.choices is not None:
            return f"one of {', '.join(self.choices)}"
        bounds = []
        if self.min is not None:
            bounds.append(f"{'>' if self.min_open else '>='} {self._number(self.min)}")
        if self.max is not None:
            bounds.append(f"<= {self._number(self.max)}")
        return f"{self.type.__name__} {' and '.join(bounds)}" if bounds else self.type.__name__


@dataclass(frozen=True)
class MethodInfo:
    """An alignment method: the function that runs it and the parameters it declares.

    ``module`` and ``function`` locate the function (imported on first use, so that
    listing methods loads no numerics). ``params`` are the method's own parameters,
    after the :data:`SHARED` ones; ``context`` the optional run-context keywords of
    :data:`CONTEXT` it takes (``model`` and ``data`` go to every method).
    """

    name: str
    module: str
    function: str
    params: tuple[Param, ...] = ()
    summary: str = ""
    context: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        keys = [p.key for p in self.parameters]
        doubled = sorted({k for k in keys if keys.count(k) > 1})
        unknown = sorted(set(self.context) - set(CONTEXT))
        if doubled or unknown or set(keys) & set(CONTEXT):
            raise ModeconnectError(
                f"method {self.name!r}: parameters declared twice {doubled}, unknown run "
                f"context {unknown}, or a parameter named like the run context "
                f"({', '.join(CONTEXT)}); declare each keyword once"
            )

    @property
    def parameters(self) -> tuple[Param, ...]:
        """Every parameter it takes: the :data:`SHARED` ones, then its own."""
        return (*SHARED, *self.params)

    @property
    def keywords(self) -> tuple[str, ...]:
        """Every keyword its function takes: parameters, then run context."""
        return (*(p.name for p in self.parameters), *self.context, *ALWAYS)

    @property
    def flags(self) -> tuple[str, ...]:
        """Its command-line flags, in declaration order."""
        return tuple(p.flag for p in self.params if p.flag)

    def param(self, key: str) -> Param | None:
        """The parameter named ``key`` in an options mapping (:attr:`Param.key`), if any."""
        return next((p for p in self.parameters if p.key == key), None)

    def takes(self, keyword: str) -> bool:
        """Whether its function takes ``keyword`` (a parameter or run context)."""
        return keyword in self.keywords

    def describe(self) -> str:
        """A listing: the summary, then one line per parameter, then the run context."""
        lines = [f"{self.name}: {self.summary}" if self.summary else self.name]
        lines += [f"  {p.describe()}" for p in self.parameters]
        lines.append(f"  run context: {', '.join((*ALWAYS, *self.context))}")
        return "\n".join(lines)


SEED = Param(
    "seed", int, 0, "Seed of the method's randomness: group order, restarts.", min=0, max=2**63 - 1
)
SHARED: tuple[Param, ...] = (SEED,)
"""Parameters every method takes (the command line sets ``seed`` with its ``--seed``)."""

CONTEXT: Mapping[str, str] = {
    "model": "the network, for methods that run it (activation statistics)",
    "data": "batches of the training split, for methods that run the network",
    "progress": "progress(task, done, total), told of each step",
    "max_bytes": "a bound on the bytes the similarity keeps (large models)",
    "device": "where the similarity products run",
    "dtype": "the dtype of the similarity products",
}
"""Run-context keywords: passed by the pipeline from what it runs on, never a flag."""
ALWAYS: tuple[str, ...] = ("model", "data")
"""Run context every method is called with."""

# Parameters several methods take, declared once.
MAX_ITER = Param("max_iter", int, 100, "Sweeps over all groups at most.", min=0)
TOL = Param("tol", float, 1e-12, "A sweep must gain more than this to go on.", min=0)
RTOL = Param(
    "rtol", float, 1e-3,
    "The descent stops when a sweep gains less than this fraction of the objective "
    "(0: only when nothing improves).", min=0, flag="--rtol",
)  # fmt: skip
ASSIGNMENT_SOLVER = Param(
    "solver", str, Computed("lapjvh if lapx is installed, else scipy"),
    "Linear assignment solver.", choices=("lapjvh", "scipy"),
)  # fmt: skip
STATISTIC = Param(
    "statistic", str, "correlation",
    "Activation statistic: correlation, or the uncentred cross-moment.",
    choices=("correlation", "moment"), flag="--statistic",
)  # fmt: skip
MAX_BATCHES = Param(
    "max_batches", int, None, "Batches of --train for activation statistics [default: all].",
    min=1, flag="--max-batches",
)  # fmt: skip


def unknown_options(methods: Sequence[MethodInfo], keys: Sequence[str]) -> ModeconnectError:
    """The error for option ``keys`` (sorted) that none of ``methods`` takes, listing theirs."""
    names = ", ".join(repr(k) for k in sorted(keys))
    plural = "s" if len(keys) > 1 else ""
    known = list(dict.fromkeys(p.key for m in methods for p in m.parameters))
    if not methods:
        return ModeconnectError(
            f"no alignment method is chosen, so nothing takes option{plural} {names}; "
            "choose a method or leave them out"
        )
    if len(methods) == 1:
        who = f"method {methods[0].name!r} takes no option{plural} {names}; its options"
    else:
        listed = ", ".join(m.name for m in methods)
        who = f"no method of {listed} takes option{plural} {names}; their options"
    return ModeconnectError(f"{who}: {', '.join(known)}")


__all__ = [
    "ALWAYS",
    "ASSIGNMENT_SOLVER",
    "CONTEXT",
    "MAX_BATCHES",
    "MAX_ITER",
    "RTOL",
    "SEED",
    "SHARED",
    "STATISTIC",
    "TOL",
    "Computed",
    "MethodInfo",
    "Param",
    "unknown_options",
]
