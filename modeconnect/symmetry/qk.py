"""Maps inside attention heads' query·key products that commute with rotary embeddings.

A head's scores are ``q·k`` with ``q = R_i W_q x_i`` and ``k = R_j W_k x_j`` (``R``: the
rotary rotation of a position, one 2×2 rotation per frequency pair). ``W_q -> Aᵀ W_q``
and ``W_k -> A⁻¹ W_k`` (per head; biases alike) leave every score unchanged when ``A``
commutes with every ``R``: a **complex scalar** ``a + ib`` (a rotation-scaling block) on
each rotary frequency pair, and, on the head dims rotary embeddings leave alone
(GPT-NeoX's ``rotary_pct``, ``partial_rotary_factor``), **any invertible map**. Without
rotary embeddings every dim is of the second kind. Grouped-query attention ties ``A``
across the query heads sharing a key/value head. Queries and keys are separate
projections, or slices of one fused projection: whose heads interleave (GPT-NeoX's
``query_key_value``: :attr:`QKGroup.fused`), or whose queries, keys and values are
concatenated blocks (GPT-2's ``c_attn``, a ``Conv1D`` whose rows are axis 1:
:attr:`QKGroup.axes`).

Which of these the model admits is derived from it (:func:`qk_class`): the pairing (HF's
halves ``(i, i + r/2)`` or interleaved ``(2i, 2i + 1)``) and the rotary dims (read from
the config, default all) are accepted only if a random map of that kind leaves B's
outputs unchanged on the probe, and only after a general map across all head dims was
refused for changing them (the reason recorded).

The weight-based solver is least squares, linear in ``A`` once the key side is
multiplied through: ``min ‖Aᵀ Q_B − Q_A‖² + ‖A K_A − K_B‖²``. On a frequency pair it has a
closed form (the Gram matrix of ``(a, b)`` is a multiple of the identity); on the
non-rotary dims it is a Sylvester equation (as the V·O maps'). A map whose condition
number exceeds ``max_condition`` is replaced by its orthogonal part (``c / |c|`` per
pair, the polar factor elsewhere; condition 1).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ..spec import Concat, Fixed, Leaf, PermutationSpec, Product
from .heads import _sylvester

StateDict = Mapping[str, torch.Tensor]
ROTARY = "complex-per-rotary-pair"
"""The Q·K class with rotary embeddings: a complex scalar per frequency pair (general on
non-rotary dims)."""
GENERAL = "invertible-per-head-qk"
"""The Q·K class without rotary embeddings: any invertible map per key/value head."""


@dataclass(frozen=True)
class QKGroup:
    """The query and key rows of one attention layer, per key/value head.

    ``q`` and ``k`` are ``(key, axis)`` of the weights and biases; rows are ``(kv_heads,
    per_kv, head_dim)`` for queries and ``(kv_heads, head_dim)`` for keys.
    """

    group: str
    q: tuple[str, ...]
    k: tuple[str, ...]
    kv_heads: int
    per_kv: int
    head_dim: int
    fused: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, compare=False)
    """For one fused q/k/v projection (``q`` and ``k`` name the same tensors): the rows of
    the queries ``(kv_heads, 1, head_dim)`` and of the keys, in the fused rows."""
    axes: Mapping[str, int] = field(default_factory=dict, compare=False)
    """Each tensor's axis of the rows where it is not 0 (GPT-2's ``Conv1D``: ``(in, out)``)."""

    def rows(self, query: bool) -> torch.Tensor:
        """The query (or key) rows, ``(kv_heads, per_kv or 1, head_dim)``, along axis 0."""
        if self.fused is not None:
            return self.fused[0 if query else 1]
        per = self.per_kv if query else 1
        return torch.arange(self.kv_heads * per * self.head_dim).reshape(
            self.kv_heads, per, self.head_dim
        )


@dataclass(frozen=True)
class QKClass:
    """What a Q·K group admits: ``pairs`` (index pairs of rotary dims), ``free`` (the other
    dims, any invertible map), and the class name; or ``None`` pairs and free for a refusal."""

    cls: str
    pairs: tuple[tuple[int, int], ...]
    free: tuple[int, ...]
    reason: str


def qk_groups(spec: PermutationSpec, state: StateDict) -> list[QKGroup]:
    """Each head group whose writers are exactly a query and a key projection whose head
    dims are fixed (the spec's shapes; anything else is left out)."""
    found = []
    for name, g in spec.groups.items():
        if g.batch_over is not None:
            continue
        rows: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
        for m in g.members:
            layout = spec.layouts[m.key][m.axis]
            writer = state[m.key].ndim == 1 or m.axis in spec.weight_outputs.get(m.key, ())
            if not (writer and m.axis == 0 and isinstance(layout, Product)):
                continue
            f = layout.factors
            dims = f[-1]
            head = (
                isinstance(dims, Fixed)
                or (isinstance(dims, Concat) and isinstance(dims.parts[0], Fixed))
                or (isinstance(dims, Leaf) and dims.over == name and _unread(spec, state, dims))
            )  # all fixed, or rotary dims fixed and the others permuted (partial rotary), or
            # no rotary embeddings: permuted head dims that only queries and keys write
            shaped = head and isinstance(f[0], Leaf) and f[0].group == name
            if shaped and all(isinstance(x, Leaf) for x in f[1:-1]) and len(f) <= 3:
                sizes = tuple(x.size for x in f)
                rows.setdefault(m.key.rsplit(".", 1)[0], []).append((m.key, sizes))
        if len(rows) != 2:
            found += _fused(spec, state, name) or _concatenated(spec, state, name)
            continue
        (qm, q), (km, k) = sorted(rows.items(), key=lambda kv: -len(kv[1][0][1]))
        qs, ks = q[0][1], k[0][1]
        per_kv = qs[1] if len(qs) == 3 else 1
        if len(ks) != 2 or qs[0] != ks[0] or qs[-1] != ks[-1]:
            continue
        if {s for _, s in q} != {qs} or {s for _, s in k} != {ks}:
            continue
        found.append(QKGroup(name, tuple(x for x, _ in q), tuple(x for x, _ in k), qs[0],
                             per_kv, qs[-1]))  # fmt: skip
    return found


def _fused(spec: PermutationSpec, state: StateDict, name: str) -> list[QKGroup]:
    """The Q·K group of a fused q/k/v projection whose heads interleave (GPT-NeoX's
    ``query_key_value``: per head, the query dims, the key dims, the value dims). Each head's
    rows are a concatenation; the parts that no layer reads (not the value's) must split
    into two halves of the same shape: the queries, then the keys."""
    members = [m for m in spec.groups[name].members if m.axis == 0]
    layouts = {spec.layouts[m.key][0] for m in members}
    if len(layouts) != 1 or len({m.key.rsplit(".", 1)[0] for m in members}) != 1:
        return []
    (layout,) = layouts
    if not (isinstance(layout, Product) and len(layout.factors) == 2):
        return []
    heads, dims = layout.factors
    if not (isinstance(heads, Leaf) and heads.group == name and isinstance(dims, Concat)):
        return []
    spans, start = [], 0
    for part in dims.parts:
        read = isinstance(part, Leaf) and not (part.over == name and _unread(spec, state, part))
        if not read:
            spans.append((part, start))
        elif not isinstance(part, Leaf) or part.over != name:
            return []
        start += part.size
    half = len(spans) // 2
    if not half or len(spans) % 2 or [p for p, _ in spans[:half]] != [p for p, _ in spans[half:]]:
        return []
    index = torch.arange(layout.size).reshape(heads.size, dims.size)
    q = torch.cat([index[:, s : s + p.size] for p, s in spans[:half]], dim=1)
    k = torch.cat([index[:, s : s + p.size] for p, s in spans[half:]], dim=1)
    keys = tuple(m.key for m in members)
    return [QKGroup(name, keys, keys, heads.size, 1, q.shape[1], (q[:, None], k[:, None]))]


def _concatenated(spec: PermutationSpec, state: StateDict, name: str) -> list[QKGroup]:
    """The Q·K group of a fused projection whose queries, keys and values are concatenated
    blocks of ``heads × head_dim`` each (GPT-2's ``c_attn``, a ``Conv1D`` whose rows are its
    weight's axis 1): of the parts whose head dims no layer reads, the first two, of one
    shape, are the queries and the keys."""
    writers = [m for m in spec.groups[name].members if _writes(spec, state, m.key, m.axis)]
    layouts = {spec.layouts[m.key][m.axis] for m in writers}
    if len(layouts) != 1 or len({m.key.rsplit(".", 1)[0] for m in writers}) != 1:
        return []
    (layout,) = layouts
    if not isinstance(layout, Concat):
        return []
    spans, start = [], 0
    for part in layout.parts:
        if not isinstance(part, Product) or len(part.factors) != 2:
            return []
        heads, dims = part.factors
        if not (isinstance(heads, Leaf) and heads.group == name
                and isinstance(dims, Leaf) and dims.over == name):  # fmt: skip
            return []
        if _unread(spec, state, dims):
            spans.append((start, heads.size, dims.size))
        start += part.size
    if len(spans) != 2 or spans[0][1:] != spans[1][1:]:
        return []
    (q0, count, n), (k0, _, _) = spans
    rows = torch.arange(count * n).reshape(count, 1, n)
    keys = tuple(m.key for m in writers)
    axes = {m.key: m.axis for m in writers if m.axis}
    return [QKGroup(name, keys, keys, count, 1, n, (rows + q0, rows + k0), axes)]


def _writes(spec: PermutationSpec, state: StateDict, key: str, axis: int) -> bool:
    """Whether ``axis`` of ``key`` is a layer's output (a weight's rows, or a bias)."""
    return state[key].ndim == 1 or axis in spec.weight_outputs.get(key, ())


def _unread(spec: PermutationSpec, state: StateDict, dims: Leaf) -> bool:
    """Whether every member of ``dims``'s group is a writer (a query's or key's rows): no
    layer reads those dims (a value's do: the output projection)."""
    return all(_writes(spec, state, m.key, m.axis) for m in spec.groups[dims.group].members)


def rotary_dims(model: nn.Module, head_dim: int) -> int:
    """Rotary dims per head, from a Hugging Face config (``partial_rotary_factor``,
    ``rotary_pct``, ``rotary_dim``); all head dims by default."""
    config = getattr(model, "config", None)
    if config is None:
        return head_dim
    if isinstance(getattr(config, "rotary_dim", None), int):
        return int(config.rotary_dim)
    rope = getattr(config, "rope_parameters", None)
    places = [config, *([rope] if isinstance(rope, Mapping) else [])]
    for where in places:
        for name in ("partial_rotary_factor", "rotary_pct"):
            value = where.get(name) if isinstance(where, Mapping) else getattr(where, name, None)
            if isinstance(value, int | float) and 0 < value <= 1:
                return int(head_dim * value)
    return head_dim


def candidates(head_dim: int, rotary: int) -> list[tuple[str, QKClass]]:
    """The classes tried, largest first: general, then rotary with halves, then interleaved."""
    free = tuple(range(rotary, head_dim))
    half = rotary // 2
    return [
        ("general", QKClass(GENERAL, (), tuple(range(head_dim)), "no rotary embeddings: "
                            "any invertible map per key/value head")),
        ("halves", QKClass(ROTARY, tuple((i, i + half) for i in range(half)), free,
                           "rotary embeddings (pairs i, i + r/2): a complex scalar per "
                           "frequency pair, any invertible map on non-rotary dims")),
        ("interleaved", QKClass(ROTARY, tuple((2 * i, 2 * i + 1) for i in range(half)), free,
                                "rotary embeddings (pairs 2i, 2i + 1): a complex scalar per "
                                "frequency pair, any invertible map on non-rotary dims")),
    ]  # fmt: skip


def random_map(cls: QKClass, n: int, heads: int, seed: int = 0) -> torch.Tensor:
    """``(heads, n, n)`` random well-conditioned maps of class ``cls``."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.eye(n, dtype=torch.float64).repeat(heads, 1, 1)
    for h in range(heads):
        for i, j in cls.pairs:
            a, b = (0.3 * torch.randn(2, generator=gen, dtype=torch.float64)).tolist()
            out[h, i, i], out[h, i, j], out[h, j, i], out[h, j, j] = 1 + a, -b, b, 1 + a
        f = list(cls.free)
        if f:
            noise = 0.3 * torch.randn(len(f), len(f), generator=gen, dtype=torch.float64)
            out[h][torch.tensor(f)[:, None], torch.tensor(f)] += noise / len(f) ** 0.5
    return out


def apply_qk_maps(state: StateDict, group: QKGroup, maps: torch.Tensor) -> dict[str, torch.Tensor]:
    """``state`` with queries ``-> Aᵀ ·`` and keys ``-> A⁻¹ ·`` per key/value head."""
    out = dict(state)
    a = maps.double()
    sides = ((group.q, a.transpose(1, 2), True), (group.k, torch.linalg.inv(a), False))
    for keys, m, query in sides:
        index = group.rows(query)
        for key in keys:
            index = index.to(out[key].device)
            t, axis = out[key], group.axes.get(key, 0)
            moved = t.double().movedim(axis, 0)
            flat = moved.reshape(moved.shape[0], -1).clone()
            flat[index] = torch.einsum("gij,gqjr->gqir", m, flat[index])
            out[key] = flat.reshape(moved.shape).movedim(0, axis).to(t.dtype)
    return out


def _rows(t: torch.Tensor, group: QKGroup, query: bool, axis: int = 0) -> torch.Tensor:
    """``(kv_heads, per_kv or 1, head_dim, rest)`` in float64."""
    moved = t.double().movedim(axis, 0)
    return moved.reshape(moved.shape[0], -1)[group.rows(query)]


def solve_qk_maps(
    a: StateDict, b: StateDict, group: QKGroup, cls: QKClass, max_condition: float = 100.0
) -> tuple[torch.Tensor, list[float]]:
    """Per key/value head least-squares maps of class ``cls`` (module docstring) and each
    one's condition number."""
    n, g = group.head_dim, group.kv_heads

    def stacked(state: StateDict, keys: tuple[str, ...], query: bool) -> torch.Tensor:
        # (kv, head_dim, everything else): every query head of the group side by side
        parts = [_rows(state[k], group, query, group.axes.get(k, 0)).movedim(1, 2)
                 .reshape(g, n, -1) for k in keys]  # fmt: skip
        return torch.cat(parts, dim=2)

    qa, qb = stacked(a, group.q, True), stacked(b, group.q, True)
    ka, kb = stacked(a, group.k, False), stacked(b, group.k, False)
    maps, conditions = [], []
    for h in range(g):
        m = torch.eye(n, dtype=torch.float64)
        for i, j in cls.pairs:  # closed form: the Gram matrix of (a, b) is N·I
            pr, pi, qr, qi = qa[h, i], qa[h, j], qb[h, i], qb[h, j]
            kr, ki, sr, si = ka[h, i], ka[h, j], kb[h, i], kb[h, j]
            norm = float((qr.square() + qi.square()).sum() + (kr.square() + ki.square()).sum())
            norm = max(norm, 1e-300)
            re = float((qr * pr + qi * pi).sum() + (kr * sr + ki * si).sum()) / norm
            im = float((qi * pr - qr * pi).sum() + (kr * si - ki * sr).sum()) / norm
            m[i, i], m[i, j], m[j, i], m[j, j] = re, -im, im, re
        f = torch.tensor(cls.free, dtype=torch.long)
        if len(f):  # X = Mᵀ: X Q_B Q_Bᵀ + K_A K_Aᵀ X = Q_A Q_Bᵀ + K_A K_Bᵀ
            qa_f, qb_f, ka_f, kb_f = qa[h][f], qb[h][f], ka[h][f], kb[h][f]
            x = _sylvester(ka_f @ ka_f.T, qb_f @ qb_f.T, qa_f @ qb_f.T + ka_f @ kb_f.T)
            m[f[:, None], f] = x.T
        cond = float(torch.linalg.cond(m)) if bool(torch.isfinite(m).all()) else float("inf")
        if not cond <= max_condition:
            m, cond = _orthogonal_part(m, cls), 1.0
        maps.append(m)
        conditions.append(cond)
    return torch.stack(maps), conditions


def _orthogonal_part(m: torch.Tensor, cls: QKClass) -> torch.Tensor:
    """``c / |c|`` on each pair (the identity where ``c = 0``), the polar factor elsewhere."""
    out = torch.eye(m.shape[0], dtype=torch.float64)
    for i, j in cls.pairs:
        re, im = float(m[i, i]), float(m[j, i])
        r = (re * re + im * im) ** 0.5
        if r > 0:
            out[i, i], out[i, j], out[j, i], out[j, j] = re / r, -im / r, im / r, re / r
    f = torch.tensor(cls.free, dtype=torch.long)
    if len(f):
        u, _, vh = torch.linalg.svd(m[f[:, None], f])
        out[f[:, None], f] = u @ vh
    return out


def qk_class(group: QKGroup, rotary: int, passes: Callable[[QKClass], bool]) -> QKClass | str:
    """The largest class of :func:`candidates` whose random map ``passes`` (keeps B's
    outputs), or the reason none does."""
    refused: list[str] = []
    for name, cls in candidates(group.head_dim, rotary):
        if cls.cls == ROTARY and (rotary < 2 or rotary % 2):
            continue
        if passes(cls):
            if refused:
                cls = QKClass(cls.cls, cls.pairs, cls.free,
                              f"{cls.reason}; {'; '.join(refused)}")  # fmt: skip
            return cls
        refused.append(
            "a general map across rotary dims changed B's outputs (unsound)"
            if name == "general"
            else f"{name} rotary pairs changed B's outputs"
        )
    return "; ".join(refused) + ": the Q·K dims keep their permutations"
