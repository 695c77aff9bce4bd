"""What each fusion method takes, declared once (no numerics imported).

The command line builds ``merge``'s fusion flags (``--zip-alpha``, ``--transport``,
...) from these declarations, as it does the alignment methods' from
:mod:`modeconnect.matching`; :func:`fusion_options` routes an options mapping by them
and refuses an option the chosen method does not take.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ModeconnectError
from ..matching.params import MAX_BATCHES, MethodInfo, Param, unknown_options

_MODULE = "modeconnect.fusion.core"

ITERATIONS = Param(
    "iterations", int, 10,
    "OT fusion: barycenter iterations (plans, then the target units); universe: "
    "Frank-Wolfe iterations at most.", min=1, flag="--fusion-iterations",
)  # fmt: skip

FUSION_INFOS: tuple[MethodInfo, ...] = (
    MethodInfo(
        "zip", _MODULE, "fuse",
        params=(
            Param("alpha", float, 0.5, "ZipIt!'s alpha: a merged feature's correlations are "
                  "multiplied by it (0: a merged feature merges no more).",
                  min=0, max=1, flag="--zip-alpha"),
            Param("beta", float, 1.0, "ZipIt!'s beta: each model's budget of merges within "
                  "itself, as a fraction of the merges per model (0: only across models).",
                  min=0, max=1, flag="--zip-beta"),
            Param("zip_until", float, None, "Partial zipping: merge only the first groups in the "
                  "spec's order (a count, or a fraction below 1); later layers stay one head "
                  "per model, side by side, outputs averaged [default: all].",
                  min=0, flag="--zip-until"),
            MAX_BATCHES,
        ),
        summary="ZipIt! (Stoica et al. 2024): merge features by activation correlation "
                "within and across models, into --width.",
    ),
    MethodInfo(
        "otfusion", _MODULE, "fuse",
        params=(
            Param("transport", str, "soft", "OT fusion: transport-weighted (soft) merge, or each "
                  "unit sent to its heaviest target unit (hard).", choices=("soft", "hard"),
                  flag="--transport"),
            ITERATIONS, MAX_BATCHES,
        ),
        summary="OT fusion with unequal marginals (Singh & Jaggi 2020), from activations, "
                "into --width.",
    ),
    MethodInfo(
        "universe", _MODULE, "fuse",
        params=(ITERATIONS, MAX_BATCHES),
        summary="N models of one width permuted into one universe basis by Frank-Wolfe "
                "(C2M3-style, Crisostomi et al. 2024); cycle-consistent maps.",
    ),
    MethodInfo(
        "cca", _MODULE, "fuse",
        params=(
            Param("reg", float, 0.1, "CCA Merge: covariance regularisation, relative to the "
                  "mean variance.", min=0, flag="--cca-reg"),
            MAX_BATCHES,
        ),
        summary="CCA Merge (Horoi et al. 2024): linear maps from canonical correlation of "
                "activations into the first model's basis; not a permutation.",
    ),
)  # fmt: skip
"""The fusion methods, declared (``merge --method zip|otfusion|universe|cca``)."""

FUSION_NAMES: tuple[str, ...] = tuple(i.name for i in FUSION_INFOS)


def fusion_info(name: str) -> MethodInfo:
    """The declaration of fusion method ``name``."""
    for info in FUSION_INFOS:
        if info.name == name:
            return info
    raise ModeconnectError(f"unknown fusion method {name!r}; valid: {', '.join(FUSION_NAMES)}")


def fusion_options(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The keywords of :func:`~modeconnect.fusion.fuse` for ``method`` from ``options``
    (keys as flag destinations; ``None``: not given). An option the method does not
    take raises :class:`ModeconnectError` listing the ones it takes.

    >>> fusion_options("zip", {"zip_alpha": 0.3, "transport": None})
    {'alpha': 0.3}
    """
    info = fusion_info(method)
    taken: dict[str, Any] = {}
    foreign = []
    for key, value in options.items():
        if value is None:
            continue
        param = next((p for p in info.params if p.key == key), None)
        if param is None:
            foreign.append(key)
        else:
            taken[param.name] = value
    if foreign:
        raise unknown_options(
            [MethodInfo(info.name, info.module, info.function, info.params)], foreign
        )
    return taken
