"""Fusing models whose hidden widths may differ, into one model of a chosen width.

:func:`fuse` derives each model's spec, pairs their groups (one architecture
family: same tensors, same group structure, sizes free), streams the joint
activation statistics of every group on ``data``, computes merge and unmerge
matrices per group with the chosen method, and carries every tensor through them
(:mod:`modeconnect.fusion.maps`):

* ``"zip"``: ZipIt! (Stoica et al. 2024), greedy merging by correlation within and
  across models (:mod:`~modeconnect.fusion.zip`); with one model it compresses it;
* ``"otfusion"``: OT fusion with unequal marginals (Singh & Jaggi 2020), soft or
  hardened (:mod:`~modeconnect.fusion.transport`);
* ``"universe"``: models of one width permuted into one universe basis by
  Frank-Wolfe (C2M3-style, :mod:`~modeconnect.fusion.universe`), then averaged;
* ``"cca"``: CCA Merge (Horoi et al. 2024), linear maps into the first model's basis
  (:mod:`~modeconnect.fusion.cca`).

The fused model is the object evaluated: it is not claimed to compute what any
input computes, and no equivalence guard applies to it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..errors import ModeconnectError
from ..merging import check_state_dicts, normalize_weights
from ..probe import probe_inputs
from ..spec import Concat, Fixed, Leaf, PermutationSpec, Product, derive_spec
from .cca import cca_map
from .features import JointStatistics, joint_statistics
from .maps import GroupMap, concat_map, corresponding_groups, fuse_state_dicts, target_shapes
from .norms import norm_scales, rescaled
from .transport import transport_map
from .universe import universe_map
from .zip import zip_map

StateDict = Mapping[str, Tensor]
Widths = int | Mapping[str, int] | None

FUSION_METHODS = ("zip", "otfusion", "universe", "cca")
"""The fusion methods :func:`fuse` runs."""

__all__ = ["FUSION_METHODS", "FusionResult", "fuse", "resolve_widths", "width_groups"]


@dataclass(frozen=True)
class FusionResult:
    """The fused weights, the width of every group, and how they were obtained.

    ``maps[g]`` holds the merge and unmerge matrices of group ``g`` (named as in
    ``spec``, the first model's spec); ``widths`` the fused width of every group.
    """

    state_dict: dict[str, Tensor]
    widths: dict[str, int]
    maps: Mapping[str, GroupMap]
    method: str
    weights: tuple[float, ...]
    options: Mapping[str, Any]
    seconds: float
    spec: PermutationSpec
    input_widths: tuple[dict[str, int], ...]
    bn: str = "none"
    """BatchNorm statistics are carried through the merge matrices (never reset here)."""
    norm_scales: tuple[Mapping[str, float], ...] = ()
    """Per model, the factor its norm scales took across a change of width
    (:mod:`~modeconnect.fusion.norms`; empty where none changed)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no tensors)."""
        return {
            "method": self.method,
            "weights": list(self.weights),
            "options": dict(self.options),
            "widths": dict(self.widths),
            "input_widths": [dict(w) for w in self.input_widths],
            "seconds": self.seconds,
            **(
                {"norm_scales": [dict(f) for f in self.norm_scales]}
                if any(self.norm_scales)
                else {}
            ),
            "equivalence_guard": "not applicable: the fused model is the evaluated object; "
            "it is not claimed to compute what any input computes",
        }


def width_groups(spec: PermutationSpec) -> tuple[str, ...]:
    """The groups of ``spec`` that can change width: each appears only as a plain leaf
    (alone, in a concatenation or in a product), never per block of another group or in
    a channel shuffle. A group that is the block structure of others (attention heads,
    whose head dimensions are a group per head) can change its number of blocks when it
    is the outermost factor of every product it is in, with only its blocks' own groups
    and fixed sizes inside: whole blocks merge, and the groups per block keep their width.

    >>> import torch
    >>> from modeconnect.models import mlp
    >>> from modeconnect.spec import derive_spec
    >>> width_groups(derive_spec(mlp(4, [8, 6], 3), (torch.randn(2, 4),)))
    ('P0', 'P1')
    """
    ok = set(spec.groups)
    for g in spec.groups.values():
        if g.batch_over is not None:
            ok.discard(g.name)

    def blocks(layout: Product) -> str | None:
        """The outer group of a product of whole blocks (heads × their own axes), if one."""
        first, rest = layout.factors[0], layout.factors[1:]
        if not isinstance(first, Leaf) or first.over is not None:
            return None
        inner = all(
            (isinstance(f, Leaf) and f.over == first.group) or isinstance(f, Fixed) for f in rest
        )
        return first.group if inner and rest else None

    def visit(layout: Any, plain: bool) -> None:
        if isinstance(layout, Leaf):
            if not plain or layout.over is not None:
                ok.discard(layout.group)
        elif isinstance(layout, Product) and plain and blocks(layout) is not None:
            for factor in layout.factors[1:]:
                visit(factor, True)
        elif isinstance(layout, (Concat, Product)):
            parts = layout.parts if isinstance(layout, Concat) else layout.factors
            for part in parts:
                if isinstance(part, Leaf) and part.group in outer:
                    ok.discard(part.group)  # blocks not whole: their count is fixed
                visit(part, plain)
        elif hasattr(layout, "inner"):  # a channel shuffle fixes its order's length
            visit(layout.inner, False)

    outer = {g.batch_over for g in spec.groups.values() if g.batch_over is not None}
    for name in outer:
        if not any(
            isinstance(x, Product) and blocks(x) == name
            for layouts in spec.layouts.values()
            for x in layouts
        ):
            ok.discard(name)
    for layouts in spec.layouts.values():
        for layout in layouts:
            visit(layout, True)
    return tuple(g for g in spec.groups if g in ok)


def resolve_widths(spec: PermutationSpec, widths: Widths) -> dict[str, int]:
    """Every group's target width: ``spec``'s own sizes, one number for every group that
    can change width (head counts, the groups of whole blocks, excepted: they keep
    ``spec``'s unless named), or ``{group: width}`` for some (the others keep ``spec``'s)."""
    sizes = spec.group_sizes()
    free = width_groups(spec)
    if widths is None:
        return sizes
    if isinstance(widths, Mapping):
        unknown = sorted(set(widths) - set(sizes))
        fixed = sorted(set(widths) & (set(sizes) - set(free)))
        if unknown or fixed:
            raise ModeconnectError(
                f"widths: {'unknown groups ' + str(unknown) if unknown else ''}"
                f"{' groups that cannot change width ' + str(fixed) if fixed else ''}; the groups "
                f"that can change width are {list(free)}"
            )
        chosen = dict(widths)
    else:
        blocks = {g.batch_over for g in spec.groups.values()}
        chosen = {g: widths for g in free if g not in blocks}
    for g, w in chosen.items():
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise ModeconnectError(f"widths: group {g} width {w!r} must be a positive integer")
    return {**sizes, **chosen}


def _spec_for(
    model: nn.Module, probe: Sequence[Any], given: PermutationSpec | None
) -> PermutationSpec:
    return given if given is not None else derive_spec(model, tuple(x[:2] for x in probe))


def _group_map(
    method: str,
    stats: JointStatistics,
    g: str,
    target: int,
    weights: Sequence[float],
    options: Mapping[str, Any],
) -> GroupMap:
    corr = stats.correlation[g] / stats.sites[g]
    sizes = stats.sizes[g]
    if method == "zip":
        return zip_map(corr, sizes, target, alpha=options["alpha"], beta=options["beta"])
    if method in ("universe", "cca"):
        if target != sizes[0]:
            raise ModeconnectError(
                f"{method} keeps the first model's width: group {g} cannot become {target} wide; "
                "use --method otfusion or zip to change widths"
            )
        if method == "cca":
            return cca_map(stats.covariance[g] / stats.sites[g], sizes, weights, reg=options["reg"])
        return universe_map(corr, sizes, weights, iterations=options["iterations"])
    hard = options["transport"] == "hard"
    return transport_map(
        corr, stats.live(g), sizes, target, weights, hard=hard, iterations=options["iterations"]
    )


def _identity_map(sizes: Sequence[int], weights: Sequence[float], g: str) -> GroupMap:
    import torch

    if len(set(sizes)) != 1:
        raise ModeconnectError(
            f"group {g} differs in width ({list(sizes)}) but no activation site shows its units "
            "plainly; fuse models of this architecture at one width"
        )
    eye = torch.eye(sizes[0], dtype=torch.float64)
    return GroupMap(tuple(w * eye for w in weights), tuple(eye for _ in weights))


def fuse(
    models: Sequence[nn.Module],
    state_dicts: Sequence[StateDict],
    *,
    data: Iterable[Any] | None,
    method: str = "otfusion",
    widths: Widths = None,
    weights: Sequence[float] | None = None,
    specs: Sequence[PermutationSpec] | None = None,
    inputs: Sequence[Any] | None = None,
    alpha: float = 0.5,
    beta: float = 1.0,
    transport: str = "soft",
    iterations: int = 10,
    reg: float = 0.1,
    zip_until: float | None = None,
    max_batches: int | None = None,
    labels: Sequence[str] | None = None,
) -> FusionResult:
    """Fuse ``state_dicts`` (model ``j`` is ``models[j]``'s, widths may differ) into one
    model whose groups have ``widths`` (default: the first model's).

    ``data`` feeds the activation statistics; ``weights`` (default equal) weigh the
    models; ``alpha`` / ``beta`` are ZipIt!'s knobs, ``transport`` (``soft`` or ``hard``)
    and ``iterations`` OT fusion's (and the universe's Frank-Wolfe), ``reg`` CCA Merge's
    (``method="cca"``). ``zip_until`` (partial zipping, ZipIt! §4.3) merges only the
    first groups in the spec's order (a count, or a fraction of them if below 1) and
    keeps every model's own units in the others, side by side: the result is a wider
    model of the same family whose later layers are block-diagonal, i.e. one head per
    model, with the outputs averaged (``0``: the ensemble of the models' outputs).
    Raises :class:`~modeconnect.ModeconnectError` for models of different families, bad
    widths or options.

    Examples
    --------
    A model fused with a copy of itself padded with dead units gives the model back:

    >>> import torch
    >>> from modeconnect.models import mlp
    >>> _ = torch.manual_seed(0)
    >>> small, wide = mlp(4, [6], 3), mlp(4, [9], 3)
    >>> a = small.state_dict()
    >>> b = {k: torch.zeros_like(v) for k, v in wide.state_dict().items()}
    >>> b["1.weight"][:6], b["1.bias"][:6] = a["1.weight"], a["1.bias"]
    >>> b["3.weight"][:, :6] = a["3.weight"]
    >>> b["3.bias"] = a["3.bias"].clone()
    >>> data = [(torch.randn(64, 4), torch.zeros(64, dtype=torch.long))]
    >>> out = fuse([small, wide], [a, b], data=data)
    >>> out.widths, all(torch.allclose(out.state_dict[k], a[k], atol=1e-6) for k in a)
    ({'P0': 6}, True)
    """
    start = time.perf_counter()
    if method not in FUSION_METHODS:
        raise ModeconnectError(
            f"unknown fusion method {method!r}; valid: {', '.join(FUSION_METHODS)}"
        )
    if transport not in ("soft", "hard"):
        raise ModeconnectError(f"transport={transport!r} must be 'soft' or 'hard'")
    if len(models) != len(state_dicts) or not models:
        raise ModeconnectError(f"fuse: got {len(models)} models for {len(state_dicts)} state dicts")
    labels = list(labels) if labels is not None else [f"model {j}" for j in range(len(models))]
    w = normalize_weights(weights, len(state_dicts))
    for m, sd, label in zip(models, state_dicts, labels, strict=True):
        _check_fits(m, sd, label)
    probe = probe_inputs(models[0], inputs, data)
    specs = [_spec_for(m, probe, specs[j] if specs else None) for j, m in enumerate(models)]
    names = corresponding_groups(specs, labels)
    _check_blocks(specs, names, labels)
    target = resolve_widths(specs[0], widths)
    _check_targets(target, specs, names, labels)
    stats = joint_statistics(models, state_dicts, specs, names, data, max_batches=max_batches)
    options = _options(method, alpha, beta, transport, iterations, reg)
    if zip_until is not None:
        options["zip_until"] = zip_until
    maps: dict[str, GroupMap] = {}
    zipped = _zipped_groups(specs[0], zip_until)
    for g in specs[0].groups:
        if g not in zipped:  # partial zipping: each model keeps its own units
            maps[g] = concat_map([specs[j].groups[names[j][g]].size for j in range(len(specs))])
            target[g] = maps[g].width
        elif g in stats.correlation:
            maps[g] = _group_map(method, stats, g, target[g], w, options)
        else:
            maps[g] = _identity_map(
                [specs[j].groups[names[j][g]].size for j in range(len(specs))], w, g
            )
            target[g] = maps[g].width
    scales = norm_scales(models, specs, names, state_dicts, stats, maps, labels)
    scaled = [rescaled(sd, f) for sd, f in zip(state_dicts, scales, strict=True)]
    fused = fuse_state_dicts(scaled, specs, names, maps, w)
    _check_shapes(fused, target_shapes(specs[0], target))
    inputs_w = tuple(
        {g: s.groups[n[g]].size for g in specs[0].groups} for s, n in zip(specs, names, strict=True)
    )
    return FusionResult(
        fused, target, maps, method, w, options, time.perf_counter() - start, specs[0], inputs_w,
        norm_scales=tuple(scales),
    )  # fmt: skip


def _check_fits(model: nn.Module, sd: StateDict, label: str) -> None:
    """``sd`` has ``model``'s keys and shapes (the model may live on the meta device) and
    finite values."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing, unexpected = sorted(expected.keys() - sd.keys()), sorted(sd.keys() - expected.keys())
    wrong = [k for k in expected if k in sd and tuple(sd[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
                  if unexpected else f"{wrong[0]!r} is {tuple(sd[wrong[0]].shape)}, the model's "
                  f"{expected[wrong[0]]}")  # fmt: skip
        raise ModeconnectError(f"{label}: does not fit its model ({detail}); pass its own model")
    check_state_dicts([sd], [label])


def _check_blocks(
    specs: Sequence[PermutationSpec], names: Sequence[Mapping[str, str]], labels: Sequence[str]
) -> None:
    """A group repeated per block of another (a head's dimensions, query heads per key/value
    head) has one width in every model: whole blocks merge, each keeps its shape."""
    for g, group in specs[0].groups.items():
        if group.batch_over is None:
            continue
        for spec, n, label in zip(specs[1:], names[1:], labels[1:], strict=True):
            other = spec.groups[n[g]]
            if other.size != group.size:
                key = group.members[0].key
                shape = target_shapes(spec, {})[key]
                first = target_shapes(specs[0], {})[key]
                raise ModeconnectError(
                    f"{label}: {key!r} is {shape} where {labels[0]}'s is {first}: group {g} "
                    f"(one per block of {group.batch_over}: head dimensions, or query heads per "
                    f"key/value head) is {other.size} wide, not {group.size}; only the number of "
                    "heads can change: fuse models of one head_dim and one "
                    "num_attention_heads / num_key_value_heads ratio"
                )


def _check_targets(
    target: Mapping[str, int],
    specs: Sequence[PermutationSpec],
    names: Sequence[Mapping[str, str]],
    labels: Sequence[str],
) -> None:
    """A fused group can hold at most every unit of every model (ZipIt! merges none then)."""
    for g, t in target.items():
        total = sum(s.groups[n[g]].size for s, n in zip(specs, names, strict=True))
        if t > total:
            raise ModeconnectError(
                f"width {t} for group {g} exceeds the {total} units that {', '.join(labels)} "
                f"hold together; choose a width up to {total}"
            )


def _zipped_groups(spec: PermutationSpec, zip_until: float | None) -> set[str]:
    """The groups merged under partial zipping: the first ``zip_until`` (or that fraction)."""
    names = list(spec.groups)
    if zip_until is None:
        return set(names)
    if isinstance(zip_until, bool) or not zip_until >= 0 or zip_until != zip_until:
        raise ModeconnectError(
            f"zip_until={zip_until!r} must be a count >= 0 or a fraction in (0, 1)"
        )
    count = round(zip_until * len(names)) if 0 < zip_until < 1 else int(zip_until)
    return set(names[:count])


def _options(
    method: str, alpha: float, beta: float, transport: str, iterations: int, reg: float
) -> dict[str, Any]:
    if method == "cca":
        return {"reg": reg}
    if method == "zip":
        return {"alpha": alpha, "beta": beta}
    if method == "universe":
        return {"iterations": iterations}
    return {"transport": transport, "iterations": iterations}


def _check_shapes(fused: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]]) -> None:
    for key, shape in shapes.items():
        if key in fused and tuple(fused[key].shape) != shape:
            raise ModeconnectError(
                f"fused tensor {key!r} has shape {tuple(fused[key].shape)}, expected {shape}"
            )
