"""Run every alignment method on one pair and compare time, objective and barriers.

Each method goes through :func:`modeconnect.alignment.align` (so the equivalence
guard checks every result) and :func:`modeconnect.alignment.compare_interpolations`
(naive and aligned curves on the evaluation data, one barrier definition for all).
Activation statistics come from ``train`` when given, else from ``data``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .alignment import SYMMETRIES, align, compare_interpolations
from .distributed import Cluster, map_chunks
from .errors import ModeconnectError
from .evaluation import Barrier
from .matching import METHODS, get_method, method_options, route_options
from .probe import Batch, probe_inputs
from .spec import derive_spec

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class MethodResult:
    """One row of a comparison: a method's time, objective, and barriers before and after."""

    method: str
    seconds: float
    objective: float
    iterations: int
    naive: Barrier
    aligned: Barrier
    params: Mapping[str, Any] = field(default_factory=dict)
    symmetry: str | None = None
    """The symmetry aligned under, when the comparison names symmetries (else ``None``)."""

    def to_dict(self) -> dict[str, Any]:
        sym = {} if self.symmetry is None else {"symmetry": self.symmetry}
        return {
            "method": self.method,
            **sym,
            "seconds": self.seconds,
            "objective": self.objective,
            "iterations": self.iterations,
            "naive": self.naive.to_dict(),
            "aligned": self.aligned.to_dict(),
            "params": dict(self.params),
        }


@dataclass(frozen=True)
class Comparison:
    """All methods on one pair, in the order run; barriers under ``definition``."""

    rows: tuple[MethodResult, ...]
    definition: str
    steps: int

    def row(self, method: str, symmetry: str | None = None) -> MethodResult:
        """The first row of ``method`` (under ``symmetry``, when given)."""
        for r in self.rows:
            if r.method == method and symmetry in (None, r.symmetry):
                return r
        raise ModeconnectError(
            f"no row for method {method!r}; methods compared: {', '.join(self.methods)}"
        )

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(r.method for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "definition": self.definition,
            "steps": self.steps,
            "rows": [r.to_dict() for r in self.rows],
        }


def _methods(methods: Sequence[str] | None) -> list[str]:
    names = list(METHODS) if methods is None else list(dict.fromkeys(methods))
    if not names:
        raise ModeconnectError(
            f"no methods to compare; valid methods: {', '.join(sorted(METHODS))}"
        )
    for name in names:
        get_method(name)  # unknown names: an error that lists the valid ones
    return names


def compare_methods(
    model: nn.Module,
    a: StateDict,
    b: StateDict,
    data: Iterable[Batch],
    *,
    methods: Sequence[str] | None = None,
    steps: int = 25,
    seed: int = 0,
    train: Iterable[Batch] | None = None,
    options: Mapping[str, Any] | None = None,
    definition: str = "lerp",
    inputs: Sequence[Any] | None = None,
    permute_output: bool = False,
    loss: Any = None,
    cluster: Cluster | None = None,
    symmetries: Sequence[str] | None = None,
) -> Comparison:
    """Align B to A with each method in ``methods`` (default: all registered) and evaluate.

    ``data`` is the evaluation split; activation statistics come from ``train``
    (default ``data``). ``options`` holds method settings by command-line name
    (see :func:`method_options`): each goes to the methods that take it, and one
    that none of them takes raises (:func:`~modeconnect.matching.route_options`);
    ``seed`` goes to every method. The spec is
    derived once and shared. ``loss`` scores the curves (as ``interpolation_curve``'s).
    With ``cluster`` (:class:`~modeconnect.distributed.Cluster`) each method is a Ray task
    (the same rows, but for the measured seconds). ``symmetries`` (names of
    :data:`~modeconnect.alignment.SYMMETRIES`) give a row per method and symmetry, in
    that order, each recording its symmetry; ``None`` runs each method as it is by default.
    """
    names = _methods(methods)
    syms = _symmetries(symmetries)
    routed = route_options(names, {**dict(options or {}), "seed": seed})
    stats_data = train if train is not None else data
    probe = probe_inputs(model, inputs, stats_data)
    spec = derive_spec(model, tuple(x[:2] for x in probe), permute_output=permute_output)
    shared = (model, a, b, data, stats_data, probe, spec, routed, steps, definition, loss)
    chunks = [(name, sym) for name in names for sym in syms]
    rows = map_chunks(_method_row, shared, chunks, cluster=cluster, task="methods")
    return Comparison(tuple(rows), definition, steps)


def _symmetries(symmetries: Sequence[str] | None) -> list[str | None]:
    """The symmetries compared, each once (``[None]``: the methods' default)."""
    if symmetries is None:
        return [None]
    names = list(dict.fromkeys(symmetries))
    bad = [s for s in names if s not in SYMMETRIES]
    if bad or not names:
        raise ModeconnectError(
            f"compare: unknown symmetry {', '.join(map(repr, bad)) or '(none given)'}; "
            f"choose from {', '.join(SYMMETRIES)}"
        )
    return list(names)


def _method_row(shared: tuple[Any, ...], chunk: tuple[str, str | None]) -> MethodResult:
    """One method under one symmetry on the pair (here, or as a Ray task): align, then both
    curves (the aligned one from A folded, under a larger symmetry)."""
    model, a, b, data, stats_data, probe, spec, routed, steps, definition, loss = shared
    name, sym = chunk
    under: dict[str, Any] = {} if sym is None else {"symmetry": sym}
    result = align(
        model, a, b, method=name, inputs=probe, data=stats_data, spec=spec, loss=loss,
        **routed[name], **under,
    )  # fmt: skip
    curves = compare_interpolations(
        model, a, b, result.aligned, data, steps=steps, definition=definition, loss=loss,
        start=result.start(a),
    )  # fmt: skip
    al = result.alignment
    return MethodResult(
        name, al.seconds, al.objective, al.iterations, curves.naive_barrier,
        curves.aligned_barrier, dict(al.params), sym,
    )  # fmt: skip


__all__ = [
    "Comparison",
    "MethodResult",
    "compare_methods",
    "method_options",
]
