"""Alignment under larger symmetry groups: permutations, rotations of residual streams and
(``full``) per-head V·O and Q·K maps.

:func:`align_full` is what :func:`modeconnect.alignment.align` runs for
``symmetry="orthogonal"`` or ``"full"`` (and ``method="learned"``):

1. **classes** (:func:`~modeconnect.symmetry.residual.residual_streams`): which groups
   are residual streams, refused back to permutations (with the reason) where a norm
   weight cannot be folded (:func:`~modeconnect.symmetry.transform.foldable`) or a
   random rotation of B's stream changes B's outputs on the probe;
2. **fold** A's and B's norm weights into their readers (both keep their function);
3. **permutations** of every group by the base method (``weight`` for ``weight`` and
   ``learned``; ``activation``; ``ot``), applied to folded B; an activation-based
   run leaves the stream's own permutation to the rotation; the heads of grouped- and
   multi-query layers are then put in A's order on products no per-head map changes
   (:mod:`~modeconnect.symmetry.order`; after each matching of the weight rounds, and
   after an activation run's rotation under ``full``);
4. **rotation** of each stream: orthogonal Procrustes on the weights, alternating with
   weight matching and (``full``) the per-head maps while the distance to A falls, at
   most :data:`ROUNDS` rounds from each of two starts (:func:`_weight_rounds`); or on
   the stream's normalised activations over ``data``;
5. **heads** (``full``): each V·O group's per-head maps (:mod:`~modeconnect.symmetry.
   heads`) and Q·K group's (:mod:`~modeconnect.symmetry.qk`), orthogonal or least
   squares (:data:`HEAD_MAPS`), each group after a random map of its class passed on
   the probe (:class:`HeadSolver`);
6. **learned**: the rotation learned on the loss at the midpoint (or a random α);
7. **guard**: aligned B must compute B's function on the probe.

Aligned B is written as B's architecture and config (norm weights 1); A's folded copy
(``reference``) is the other end of the path: interpolate and merge with it, not with A.
Both models are read into memory (a lazy checkpoint is materialised).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, cast

import torch
from torch import nn

from ..errors import ModeconnectError
from ..forward import eval_mode
from ..guard import Equivalence, check_equivalence, require_equivalence
from ..matching import Alignment, get_method, takes
from ..progress import ProgressFn
from ..spec import PermutationSpec, apply_permutation
from ..spec.trace import trace
from .head_activations import head_moments, qk_maps, vo_maps
from .heads import HeadGroup, apply_head_maps, head_maps, head_positions, solve_head_maps
from .learned import HeadParam, learn_rotations
from .order import QueryHeads, query_heads, reorder
from .procrustes import activation_cross, alignment_objective, procrustes, weight_cross
from .qk import (
    QKClass,
    QKGroup,
    apply_qk_maps,
    qk_class,
    qk_groups,
    random_map,
    rotary_dims,
    solve_qk_maps,
)
from .residual import PERMUTATION, ClassifiedSpec, ResidualStream, residual_streams
from .residual import classified as graph_classified
from .sinkhorn import learn_permutations_sinkhorn
from .ste import learn_permutations
from .transform import fold, foldable, random_rotation, rotate

StateDict = Mapping[str, torch.Tensor]
INVERTIBLE = "invertible-per-head"
"""The V·O class: one invertible map per (key/value) head."""
ROUNDS = 3
ORTHOGONAL_HEADS = 1.0
"""The default bound on the per-head maps' condition numbers: orthogonal maps (measured
better on the midpoint than least squares with its scale, on tiny Llamas and ViTs)."""
"""Weight-based rounds at most: weight matching, then Procrustes, again while it gains."""
HEAD_MAPS = {"orthogonal": ORTHOGONAL_HEADS, "least-squares": 100.0,
             "activations": ORTHOGONAL_HEADS}  # fmt: skip
"""``head_maps`` (``--head-maps``): each name's bound on the per-head maps' condition
numbers: orthogonal maps, or least squares (a map above 100 falls back to its
orthogonal part), fitted to the weights; or (``--method activation`` only) orthogonal
maps fitted to the heads' activations (:mod:`~modeconnect.symmetry.head_activations`)."""


@dataclass(frozen=True)
class GroupRecord:
    """How one group was aligned: its class, solver, objective, conditioning and time."""

    group: str
    cls: str
    solver: str
    objective: float | None
    condition: float
    seconds: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "class": self.cls, "solver": self.solver,
                "objective": self.objective, "condition_number": self.condition,
                "seconds": self.seconds, "reason": self.reason}  # fmt: skip


@dataclass(frozen=True)
class FullAlignment:
    """Aligned B (folded, rotated, permuted), A's folded copy, and the record of each group."""

    alignment: Alignment
    reference: dict[str, torch.Tensor]
    aligned: dict[str, torch.Tensor]
    equivalence: Equivalence
    groups: tuple[GroupRecord, ...]
    rotations: dict[str, torch.Tensor] = field(default_factory=dict)
    rotations_a: dict[str, torch.Tensor] = field(default_factory=dict)
    """Two-sided learning (``sides="two"``): A's rotation toward the shared path (its
    rotated copy passed the guard against A); ``rotations`` are then B's relative to it."""

    def to_dict(self) -> dict[str, Any]:
        """The ``symmetry`` section of the JSON report."""
        params = self.alignment.params
        heads = {k: params[k] for k in ("head_maps", "max_condition") if k in params}
        return {"symmetry": params.get("symmetry", "full"), **heads,
                "groups": [g.to_dict() for g in self.groups]}  # fmt: skip


def stream_classes(
    model: nn.Module,
    spec: PermutationSpec,
    probe: Sequence[Any],
    a: StateDict,
    b: StateDict,
) -> list[ResidualStream]:
    """The residual streams of ``spec`` with their class for these weights (refusals kept)."""
    short = tuple(x[:2] for x in probe)
    streams = residual_streams(model, short, spec, trace(model, short))
    out = []
    for s in streams.values():
        if s.cls != PERMUTATION:
            reason = (
                foldable(a, s, "A")
                or foldable(b, s, "B")
                or _rotation_check(model, b, s, spec, probe)
            )
            s = s.refused(reason) if reason else s
        out.append(s)
    return out


def _rotation_check(
    model: nn.Module, b: StateDict, s: ResidualStream, spec: PermutationSpec, probe: Sequence[Any]
) -> str | None:
    turned = rotate(fold(b, s, spec.aliases), s, random_rotation(s, seed=12345), spec.aliases)
    eq = check_equivalence(model, b, turned, probe)
    if eq.passed:
        return None
    return (f"a random rotation of the stream changed B's outputs (relative difference "
            f"{eq.max_rel_diff:.2g}): an op on it does not commute with rotations")  # fmt: skip


def align_full(
    model: nn.Module,
    a: StateDict,
    b: StateDict,
    *,
    spec: PermutationSpec,
    probe: Sequence[Any],
    method: str = "weight",
    data: Iterable[Any] | None = None,
    tolerance: float | None = None,
    progress: ProgressFn | None = None,
    loss: Any = None,
    symmetry: str = "full",
    max_condition: float = ORTHOGONAL_HEADS,
    qk: bool = True,
    qk_condition: float | None = None,
    head_maps: str | None = None,
    device: torch.device | None = None,
    **options: Any,
) -> FullAlignment:
    """Align B to A under the full symmetry group (module docstring); the guard verifies.

    ``symmetry="orthogonal"`` rotates the residual streams only; ``"full"`` also maps each
    attention head's value dims (:mod:`~modeconnect.symmetry.heads`, condition numbers at
    most ``max_condition``, after the rotations and the learning) and, unless ``qk`` is
    false, each head's query·key dims by maps that commute with rotary embeddings
    (:mod:`~modeconnect.symmetry.qk`), whose condition numbers are bounded by
    ``qk_condition`` (``max_condition`` when ``None``). The default bound, 1
    (:data:`ORTHOGONAL_HEADS`), keeps each map's orthogonal part: a rotation per head (a
    rotation per frequency pair under RoPE). Least squares with its scale
    (``max_condition=100``) fits the weights better and the path worse (measured:
    ``docs/science/transformers.md``).
    ``head_maps`` names the bound instead (:data:`HEAD_MAPS`: ``"orthogonal"`` or
    ``"least-squares"``; ``"activations"``, with ``method="activation"``, fits orthogonal
    maps to the heads' activations); the JSON records the choice and the bound.
    ``options`` go to the permutation method; ``learned`` takes ``epochs``, ``lr``,
    ``random_alpha`` and ``max_batches`` for itself, and ``loss`` scores it; its passes
    (and the straight-through estimator's) run on ``device`` (the weight matching that
    projects the estimator's proxy stays on the CPU).
    """
    if method == "learned" and data is None:
        raise ModeconnectError(
            "method 'learned' learns the rotation on data: pass --train (or --data) batches"
        )
    if "heads" in options and method != "learned":
        raise ModeconnectError(
            "heads (--learn-heads) chooses whether --method learned learns the per-head maps: "
            "pass --method learned, or leave it out"
        )
    if head_maps is not None:
        if head_maps not in HEAD_MAPS:
            raise ModeconnectError(
                f"head_maps: unknown {head_maps!r}; choose one of {', '.join(HEAD_MAPS)}"
            )
        if head_maps == "activations" and method != "activation":
            raise ModeconnectError(
                "--head-maps activations fits the per-head maps to activations: it goes with "
                "--method activation (choose orthogonal or least-squares for the others)"
            )
        max_condition = HEAD_MAPS[head_maps]
    start = time.perf_counter()
    a, b = dict(a), dict(b)
    learn_keys = ("epochs", "lr", "random_alpha", "max_batches", "permutations", "sides", "heads")
    mine = learn_keys if method == "learned" else ()
    own: dict[str, Any] = {k: options.pop(k) for k in mine if k in options}
    with eval_mode(model):
        streams = stream_classes(model, spec, probe, a, b)
        active = [s for s in streams if s.cls != PERMUTATION]
        fa, fb = dict(a), dict(b)
        for s in active:
            fa, fb = fold(fa, s, spec.aliases), fold(fb, s, spec.aliases)
        base = "weight" if method == "learned" else method
        match = get_method(base)
        if progress is not None and takes(base, "progress"):
            options["progress"] = progress
        clock = time.perf_counter()
        records: list[GroupRecord] = []
        rotations: dict[str, torch.Tensor] = {}
        rotations_a: dict[str, torch.Tensor] = {}
        start_eq: Equivalence | None = None
        heads = HeadSolver.of(model, spec, probe, fb, max_condition, qk, qk_condition)
        inner = heads if symmetry == "full" and base == "weight" else None
        if base == "weight":
            alignment, aligned, rotations, objectives = _weight_rounds(
                spec, fa, fb, active, match, options, inner, heads.orders
            )
            solver = "orthogonal Procrustes (SVD), alternating with weight matching" + (
                " and the per-head maps" if inner is not None and heads.groups else ""
            )
        else:
            alignment = match(spec, fa, fb, model=model, data=data, **options)
            # activations: the stream's rotation is found on its own, from its activations
            perm = {**alignment.perm, **{s.group: torch.arange(s.size) for s in active}}
            aligned = apply_permutation(fb, spec, perm)
            objectives = {}
            for s in active:
                m = activation_cross(model, fa, aligned, s, data or [], progress=progress,
                                     max_batches=options.get("max_batches"))  # fmt: skip
                rotations[s.group] = procrustes(m, s.fixes_ones)
                objectives[s.group] = alignment_objective(m, rotations[s.group])
                aligned = rotate(aligned, s, rotations[s.group], spec.aliases)
            if symmetry == "full":  # the per-head maps blur the activations' head order too
                aligned = reorder(spec, fa, aligned, heads.orders)
            solver = "activation Procrustes (SVD)"
        seconds = time.perf_counter() - clock
        perm = dict(alignment.perm)
        for s in active:
            q = rotations[s.group]
            records.append(GroupRecord(s.group, s.cls, solver, objectives[s.group], _condition(q),
                                       seconds, s.reason))  # fmt: skip
        found: list[GroupRecord] = []
        if symmetry == "full":
            moments = (heads.moments(model, fa, aligned, data or [], options.get("max_batches"),
                                     progress)
                       if head_maps == "activations" else None)  # fmt: skip
            aligned, found = heads.solve(fa, aligned, moments)
        if method == "learned" and own.get("permutations") in ("ste", "sinkhorn"):
            seed = int(options.get("seed", 0))
            aligned, ste = _ste(model, spec, fa, aligned, active, match, data, loss, seed, own,
                                progress, device)  # fmt: skip
            found += ste
        learn_heads = symmetry == "full" and own.get("heads", "learned") == "learned"
        learnable = heads.learnable() if method == "learned" and learn_heads else []
        if method == "learned" and (active or learnable):  # a refused stream: the heads alone
            clock = time.perf_counter()
            batches = list(data or [])[: own.get("max_batches") or None]
            sides = own.get("sides") or "one"
            learned = learn_rotations(model, fa, aligned, active, batches, loss=loss,
                                      seed=int(options.get("seed", 0)), aliases=spec.aliases,
                                      progress=progress, sides=sides, heads=learnable,
                                      device=device, **_learn_options(own))  # fmt: skip
            for h in learnable:
                aligned = dict(h.apply(aligned, learned.head_maps[h.name]))
            for s in active:
                q = learned.rotations[s.group]
                aligned = rotate(aligned, s, q, spec.aliases)
                rotations[s.group] = q @ rotations[s.group]
            if learned.moved_a is not None:
                rotations_a = learned.moved_a
                moved = dict(fa)
                for s in active:
                    moved = rotate(moved, s, rotations_a[s.group], spec.aliases)
                start_eq = check_equivalence(model, a, moved, probe, **_tolerance(tolerance))
            seconds = time.perf_counter() - clock
            last = learned.losses[-1] if learned.losses else None
            how = " + learned (orthogonal parametrisation, Adam" + (
                ", two-sided: both models toward one path)" if sides == "two" else ")"
            )
            records = [replace(r, solver=r.solver + how, objective=last,
                               seconds=r.seconds + seconds) for r in records]  # fmt: skip
            names = {h.name for h in learnable}
            found = [replace(r, solver=r.solver + " + learned with the rotation (exp of a skew "
                             "matrix of the class, Adam)", objective=last)
                     if r.group in names else r for r in found]  # fmt: skip
        records += found
        eq = check_equivalence(model, b, aligned, probe, **_tolerance(tolerance))
    if start_eq is not None:
        require_equivalence(start_eq)
    require_equivalence(eq)
    records += _permutation_records(spec, streams, seconds, base, {r.group for r in records})
    alignment = replace(alignment, method=method, perm=perm, seconds=time.perf_counter() - start,
                        params={**alignment.params, **own, "symmetry": symmetry,
                                **_head_params(symmetry, max_condition, head_maps)})  # fmt: skip
    return FullAlignment(alignment, fa, aligned, eq, tuple(records), rotations, rotations_a)


@dataclass(frozen=True)
class HeadSolver:
    """The attention head groups of ``full`` and the class each was found sound for.

    Built once (:meth:`of`, random maps checked on the probe); :meth:`solve` fits every
    sound group's per-head maps to A from scratch, so the weight rounds call it after
    each rotation and permutation, and each map's condition stays bounded.
    """

    vo: tuple[tuple[HeadGroup, bool], ...]
    qk: tuple[tuple[QKGroup, QKClass | str], ...]
    max_condition: float
    qk_condition: float
    orders: tuple[QueryHeads, ...] = ()
    """The grouped- and multi-query attention layers whose heads the weight rounds order on
    map-invariant products after each matching (:mod:`~modeconnect.symmetry.order`)."""

    @classmethod
    def of(
        cls, model: nn.Module, spec: PermutationSpec, probe: Sequence[Any], state: StateDict,
        max_condition: float, qk: bool = True, qk_condition: float | None = None,
    ) -> HeadSolver:  # fmt: skip
        """Each V·O group with whether random per-head maps keep ``state``'s outputs, and
        each Q·K group (none unless ``qk``) with its class or the reason it has none."""
        values, queries, orders = attention_groups(spec, state)
        vo = tuple((g, _vo_sound(model, spec, probe, state, g)) for g in values)
        found = tuple((g, _qk_class_of(model, probe, state, g)) for g in (queries if qk else []))
        bound = max_condition if qk_condition is None else qk_condition
        return cls(vo, found, max_condition, bound, orders)

    @property
    def groups(self) -> bool:
        """Whether any group has maps to solve."""
        return any(sound for _, sound in self.vo) or any(not isinstance(c, str) for _, c in self.qk)

    def learnable(self) -> list[HeadParam]:
        """Every sound group's maps as :class:`~modeconnect.symmetry.learned.HeadParam`:
        orthogonal maps of its class (any for V·O and a general Q·K class; a rotation per
        frequency pair and any on the non-rotary dims under RoPE), named as its record."""
        out = []
        for group, sound in self.vo:
            if sound:
                sizes = dict(group.positions)
                apply = partial(_apply_vo, group=group, positions=sizes)
                out.append(HeadParam(group.group, group.heads, _full_mask(group.size), apply))
        for qk, found in self.qk:
            if not isinstance(found, str):
                out.append(HeadParam(f"{qk.group}.qk", qk.kv_heads, _qk_mask(qk.head_dim, found),
                                     partial(_apply_qk, group=qk)))  # fmt: skip
        return out

    def moments(
        self, model: nn.Module, fa: StateDict, state: StateDict, data: Iterable[Any],
        max_batches: int | None = None, progress: ProgressFn | None = None,
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        """Every sound group's activation cross-moment (:func:`~modeconnect.symmetry.
        head_activations.head_moments`), by record name, for :meth:`solve`."""
        vo = [g for g, sound in self.vo if sound]
        qk = [g for g, c in self.qk if not isinstance(c, str)]
        c_vo, c_qk = head_moments(model, fa, state, vo, qk, data, max_batches=max_batches,
                                  progress=progress)  # fmt: skip
        return {**{g.group: c for g, c in zip(vo, c_vo)},
                **{f"{g.group}.qk": c for g, c in zip(qk, c_qk)}}  # fmt: skip

    def solve(
        self, fa: StateDict, state: dict[str, torch.Tensor],
        moments: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[dict[str, torch.Tensor], list[GroupRecord]]:  # fmt: skip
        """``state`` with every sound group's maps fitted to ``fa`` and applied; the records.

        With ``moments`` (:meth:`moments`) the maps are orthogonal, fitted to the heads'
        activations instead of the weights (:mod:`~modeconnect.symmetry.head_activations`).
        """
        records = []
        for group, sound in self.vo:
            clock = time.perf_counter()
            if not sound:
                records.append(GroupRecord(group.group, PERMUTATION, "weight matching", None,
                                           1.0, 0.0, NOT_VO))  # fmt: skip
                continue
            sizes = dict(group.positions)
            if moments is not None:
                maps, conditions = vo_maps(moments[group.group]), [1.0]
                how = "orthogonal Procrustes per head on the values' activations (SVD)"
            else:
                maps, conditions = solve_head_maps(fa, state, group, sizes, self.max_condition)
                how = ("orthogonal Procrustes per head on V and O (SVD)"
                       if self.max_condition <= 1
                       else "least squares on V and O (Sylvester), polar fallback")  # fmt: skip
            state = apply_head_maps(state, group, maps, sizes)
            residual = sum(float((fa[k].double() - state[k].double()).pow(2).sum())
                           for k, *_ in group.members)  # fmt: skip
            records.append(GroupRecord(group.group, INVERTIBLE, how, residual, max(conditions),
                                       time.perf_counter() - clock, VO_REASON))  # fmt: skip
        for qk, found in self.qk:
            clock = time.perf_counter()
            if isinstance(found, str):
                records.append(GroupRecord(f"{qk.group}.qk", PERMUTATION, "weight matching",
                                           None, 1.0, 0.0, found))  # fmt: skip
                continue
            if moments is not None:
                maps, conditions = qk_maps(moments[f"{qk.group}.qk"], found), [1.0]
                how = ("orthogonal Procrustes per key/value head on the queries' and keys' "
                       "activations (a rotation per pair, polar elsewhere)")  # fmt: skip
            else:
                maps, conditions = solve_qk_maps(fa, state, qk, found, self.qk_condition)
                how = ("orthogonal part of the least squares on Q and K (a rotation per pair, "
                       "polar elsewhere)" if self.qk_condition <= 1 else "least squares on Q "
                       "and K (closed form per pair, Sylvester elsewhere), orthogonal "
                       "fallback")  # fmt: skip
            state = apply_qk_maps(state, qk, maps)
            residual = sum(float((fa[k].double() - state[k].double()).pow(2).sum())
                           for k in dict.fromkeys((*qk.q, *qk.k)))  # fmt: skip
            records.append(GroupRecord(f"{qk.group}.qk", found.cls, how, residual,
                                       max(conditions), time.perf_counter() - clock,
                                       found.reason))  # fmt: skip
        return state, records


def _apply_vo(
    state: StateDict, maps: torch.Tensor, *, group: HeadGroup, positions: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    return apply_head_maps(state, group, maps, positions)


def _apply_qk(state: StateDict, maps: torch.Tensor, *, group: QKGroup) -> dict[str, torch.Tensor]:
    return apply_qk_maps(state, group, maps)


def _full_mask(n: int) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.float64)


def _qk_mask(n: int, cls: QKClass) -> torch.Tensor:
    """The support of a Q·K class's skew generators: each rotary pair, the free block."""
    mask = torch.zeros(n, n, dtype=torch.float64)
    for i, j in cls.pairs:
        mask[i, j] = mask[j, i] = 1.0
    free = torch.tensor(cls.free, dtype=torch.long)
    if len(free):
        mask[free[:, None], free] = 1.0
    return mask


def attention_groups(
    spec: PermutationSpec, state: StateDict
) -> tuple[list[HeadGroup], list[QKGroup], tuple[QueryHeads, ...]]:
    """The V·O and Q·K groups with per-head maps, and the grouped- and multi-query layers
    whose heads are ordered on map-invariant products (:mod:`~modeconnect.symmetry.order`).

    A multi-query layer has no key/value head group, so its one V·O map (the value dims)
    and its one Q·K map (the query and key dims, shared by every query head) come from
    its :class:`~modeconnect.symmetry.order.QueryHeads`.
    """
    values, queries = head_maps(spec, state), qk_groups(spec, state)
    orders = tuple(query_heads(spec, queries, values, state))
    values += [o.vo for o in orders if o.outer is None]
    queries += [o.qk for o in orders if o.outer is None]
    return values, queries, orders


def _head_params(symmetry: str, max_condition: float, named: str | None) -> dict[str, Any]:
    """The per-head maps chosen (``full`` only): their name and bound, for the JSON."""
    if symmetry != "full":
        return {}
    name = "orthogonal" if max_condition <= ORTHOGONAL_HEADS else "least-squares"
    name = "activations" if named == "activations" else name
    return {"head_maps": name, "max_condition": max_condition}


def _tolerance(tolerance: float | None) -> dict[str, float]:
    return {} if tolerance is None else {"tolerance": tolerance}


NOT_VO = "random per-head maps changed B's outputs on the probe: not a V·O group"
VO_REASON = "attention mixes positions, not a head's value dims: invertible per head"


def _vo_sound(
    model: nn.Module, spec: PermutationSpec, probe: Sequence[Any], state: StateDict, group: Any
) -> bool:
    """Whether random well-conditioned per-head maps of ``group`` keep ``state``'s outputs."""
    gen = torch.Generator().manual_seed(54321)
    shape = (group.heads, group.size, group.size)
    trial = torch.eye(group.size) + 0.3 * torch.randn(shape, generator=gen) / group.size**0.5
    moved = apply_head_maps(state, group, trial, head_positions(spec, group))
    return check_equivalence(model, state, moved, probe).passed


def _qk_class_of(
    model: nn.Module, probe: Sequence[Any], state: StateDict, group: QKGroup
) -> QKClass | str:
    """The largest Q·K class whose random map keeps ``state``'s outputs, or why none does."""

    def passes(cls: QKClass) -> bool:
        trial = random_map(cls, group.head_dim, group.kv_heads, seed=54321)
        return check_equivalence(model, state, apply_qk_maps(state, group, trial), probe).passed

    return qk_class(group, rotary_dims(model, group.head_dim), passes)


def head_classes(
    model: nn.Module, spec: PermutationSpec, probe: Sequence[Any], state: StateDict
) -> dict[str, dict[str, str]]:
    """Each attention head group's class and its reason, checked on the probe as
    :func:`align_full` checks them: a V·O group is ``invertible-per-head`` when random
    per-head maps keep the outputs; a Q·K group (keyed ``GROUP.qk``) takes the largest
    class of :func:`~modeconnect.symmetry.qk.candidates` that does."""
    out = {}
    for group in head_maps(spec, state):
        sound = _vo_sound(model, spec, probe, state, group)
        out[group.group] = {"class": INVERTIBLE if sound else PERMUTATION,
                            "reason": VO_REASON if sound else NOT_VO}  # fmt: skip
    for qk in qk_groups(spec, state):
        found = _qk_class_of(model, probe, state, qk)
        out[f"{qk.group}.qk"] = (
            {"class": PERMUTATION, "reason": found}
            if isinstance(found, str)
            else {"class": found.cls, "reason": found.reason}
        )
    return out


def _ste(
    model: nn.Module, spec: PermutationSpec, fa: StateDict, aligned: dict[str, torch.Tensor],
    active: Sequence[ResidualStream], match: Any, data: Iterable[Any] | None, loss: Any,
    seed: int, own: Mapping[str, Any], progress: ProgressFn | None,
    device: torch.device | None = None,
) -> tuple[dict[str, torch.Tensor], list[GroupRecord]]:  # fmt: skip
    """Aligned B permuted again by the permutations learned on the path's loss
    (``own["permutations"]``: ``"ste"``, the straight-through estimator, or ``"sinkhorn"``,
    the Sinkhorn relaxation; ``alignment.perm`` stays weight matching's start); the
    permutation groups' records say so."""
    clock = time.perf_counter()
    batches = list(data or [])[: own.get("max_batches") or None]
    common = dict(kept=[s.group for s in active], loss=loss, seed=seed, progress=progress,
                  device=device, **_learn_options(own))  # fmt: skip
    if own.get("permutations") == "sinkhorn":
        found = learn_permutations_sinkhorn(model, spec, fa, aligned, batches, **common)
        solver = ("learned (Sinkhorn relaxation, Sinkhorn re-basin; started at weight "
                  "matching's, hardened by a linear assignment)")  # fmt: skip
        which = "every unbatched permutation group but the rotated streams"
    else:
        found = learn_permutations(model, spec, fa, aligned, batches, match, **common)
        solver = ("learned (straight-through estimator, Git Re-Basin algorithm 3; weight "
                  "matching as the projection)")  # fmt: skip
        which = "every permutation group but the rotated streams"
    aligned = apply_permutation(aligned, spec, found.perm)
    seconds = time.perf_counter() - clock
    last = found.losses[-1] if found.losses else None
    return aligned, [GroupRecord("permutations", PERMUTATION, solver, last, 1.0, seconds,
                                 f"{which}, learned on the path's loss")]  # fmt: skip


def _learn_options(own: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in own.items() if k in ("epochs", "lr") and v is not None}
    return {**out, "alpha": None if own.get("random_alpha") else 0.5}


def _weight_rounds(
    spec: PermutationSpec,
    fa: StateDict,
    fb: StateDict,
    streams: Sequence[ResidualStream],
    match: Any,
    options: Mapping[str, Any],
    heads: HeadSolver | None = None,
    orders: Sequence[QueryHeads] = (),
) -> tuple[Alignment, dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, float]]:
    """Procrustes for the streams, alternating with weight matching and the per-head maps.

    Two starts, the rounds run from each, the one nearer A kept: each stream rotated to
    fit the tensors on which nothing else acts (embedding tables, the output head,
    biases: :func:`anchored`), so the first matching sees B in A's basis; and rotated to
    fit all its tensors (0.4.0's start before exact recovery; better on some trained
    pairs). Each round then matches the permutations (each stream's own permutation left
    to its rotation), puts the heads of grouped- and multi-query layers (``orders``) in
    A's order on products no per-head map changes (:func:`~modeconnect.symmetry.order.
    reorder`: the maps blur weight matching's signal for them, and without maps its
    descent stops short of it on folded GQA weights), and rotates every stream to best
    fit A, on B with the per-head maps
    of ``heads`` fitted to it (:meth:`HeadSolver.solve`, from scratch, so the maps are
    not composed); the rounds stop when the distance ``Σ_W ‖W_A − W_B'‖²`` (per-head maps
    applied) falls by less than 1e-4 of itself, after :data:`ROUNDS` rounds at most. A
    randomly rotated, permuted and head-mapped copy of A is recovered from the first
    start (``tests/test_symmetry_recovery.py``). Returns the kept start's first
    alignment, aligned B without the per-head maps, each stream's composed rotation and
    its objective.
    """
    starts = ({s.group: anchored(spec, fa, s) for s in streams}, None) if streams else (None,)
    runs = [_rounds(spec, fa, fb, streams, match, options, heads, orders, only)
            for only in starts]  # fmt: skip
    first, aligned, rotations, objectives, _ = min(runs, key=lambda r: r[4])
    return first, aligned, rotations, objectives


def _rounds(
    spec: PermutationSpec, fa: StateDict, fb: StateDict, streams: Sequence[ResidualStream],
    match: Any, options: Mapping[str, Any], heads: HeadSolver | None,
    orders: Sequence[QueryHeads],
    only: Mapping[str, Sequence[tuple[str, int]]] | None,
) -> tuple[Alignment, dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, float],
           float]:  # fmt: skip
    """The rounds of :func:`_weight_rounds` from the start fitted to ``only``'s tensors of
    each stream (all of them if ``None``), and the final distance."""

    def mapped(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return state if heads is None else heads.solve(fa, state)[0]

    aligned = dict(fb)
    rotations = {s.group: torch.eye(s.size, dtype=torch.float64) for s in streams}
    objectives: dict[str, float] = {}
    for s in streams:
        m = weight_cross(fa, aligned, s, None if only is None else only[s.group])
        if bool(m.any()):
            q = procrustes(m, s.fixes_ones)
            aligned = rotate(aligned, s, q, spec.aliases)
            rotations[s.group] = q @ rotations[s.group]
    first: Alignment | None = None
    kept = {s.group: torch.arange(s.size) for s in streams}
    best, best_value = (aligned, dict(rotations), objectives), float("inf")
    for _ in range(ROUNDS if streams else 1):
        # matched without the per-head maps: maps fitted to mismatched heads would hide them
        found = match(spec, fa, aligned, **options)
        first = first or found
        aligned = apply_permutation(aligned, spec, {**found.perm, **kept})
        # grouped- and multi-query heads: put in A's order on map-invariant products
        aligned = reorder(spec, fa, aligned, orders) if orders else aligned
        objectives = dict(objectives)
        for s in streams:
            m = weight_cross(fa, mapped(aligned), s)
            q = procrustes(m, s.fixes_ones)
            objectives[s.group] = alignment_objective(m, q)
            aligned = rotate(aligned, s, q, spec.aliases)
            rotations[s.group] = q @ rotations[s.group]
        value = _distance(fa, mapped(aligned))
        if value >= best_value - 1e-4 * best_value:
            break
        best, best_value = (aligned, dict(rotations), objectives), value
    aligned, rotations, objectives = best
    return cast(Alignment, first), aligned, rotations, objectives, best_value


def anchored(
    spec: PermutationSpec, state: StateDict, stream: ResidualStream
) -> list[tuple[str, int]]:
    """The stream's tensor axes whose other axes no group acts on: embedding tables, the
    output head, biases. Their cross products with A's see only the stream's map."""
    moved = {(m.key, m.axis) for g in spec.groups.values() for m in g.members}
    return [(key, axis) for key, axis in stream.rotated
            if not any((key, other) in moved for other in range(state[key].ndim)
                       if other != axis)]  # fmt: skip


def _distance(a: StateDict, b: StateDict) -> float:
    return float(sum((a[k].double() - b[k].double()).pow(2).sum() for k in a
                     if a[k].is_floating_point() and a[k].shape == b[k].shape))  # fmt: skip


def _condition(q: torch.Tensor) -> float:
    return float(torch.linalg.cond(q.double()))


def _permutation_records(
    spec: PermutationSpec,
    streams: Sequence[ResidualStream],
    seconds: float,
    base: str,
    done: set[str],
) -> list[GroupRecord]:
    refused = {s.group: s.reason for s in streams if s.cls == PERMUTATION}
    rotated = {s.group for s in streams if s.cls != PERMUTATION}
    return [GroupRecord(name, PERMUTATION, f"{base} matching (linear assignment)", None, 1.0,
                        seconds, refused.get(name, "not a residual stream: no norm reads it"))
            for name in spec.groups if name not in rotated | done]  # fmt: skip


def classified(
    spec: PermutationSpec,
    model: nn.Module,
    inputs: Sequence[Any],
    state: StateDict | None = None,
) -> ClassifiedSpec:
    """``spec`` with each residual stream's class read from ``model``'s graph and each
    attention head group's class checked on ``inputs`` with the weights ``state``
    (default: the model's own; none on the meta device of a lazy directory, whose head
    groups are then left unclassified) (:func:`head_classes`, ``modeconnect spec``)."""
    spec_classes = graph_classified(spec, model, inputs)
    weights = model.state_dict() if state is None else state
    if state is None and any(t.is_meta for t in weights.values()):
        return spec_classes  # (a given state is read only where the head checks need it)
    with eval_mode(model), torch.no_grad():
        heads = head_classes(model, spec, tuple(inputs), weights)
    return replace(spec_classes, classes={**spec_classes.classes, **heads})
