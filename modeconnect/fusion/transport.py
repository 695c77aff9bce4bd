"""OT fusion across widths (Singh & Jaggi 2020) with unequal marginals.

Units are compared as standardised activations ``z`` (zero mean, unit variance), so
``‖z_u - z_v‖² = 2 (1 - corr(u, v))`` and every cost comes from the joint correlation
``R`` of the concatenated units. The target's ``t`` units are a free-support
Wasserstein barycenter of the models' units: ``y_c = Σ_f W[c, f] z_f``, and

    T_j = argmin_{T 1 = a, Tᵀ 1 = b_j} ⟨T, C_j⟩,   C_j[c, f] = ‖y_c - z_f‖²

with ``a`` uniform over the ``t`` target units and ``b_j`` uniform over model ``j``'s
live units (a unit whose activation is identically zero gets no mass: the marginals
are unequal whenever the widths or the live counts differ). POT's exact ``ot.emd``
solves each plan; the barycenter is then ``y_c = Σ_j w_j Σ_f T_j[c, f] z_f / a_c``,
and the two steps alternate (``iterations``). The barycenter starts from the first
model of the target width (A's units when fusing at A's width), else from ZipIt!'s
clusters.

Soft fusion: ``M_j[c, f] = w_j T_j[c, f] / a_c`` (the transported average) and
``U_j[f, c] = T_j[c, f] / b_f`` (unit ``f``'s share of its mass sent to ``c``).
Hard fusion: each unit goes to its plan's heaviest target unit; the merge averages
the units sent to a target unit (models weighted by ``w``), the unmerge is one-hot.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import ModeconnectError
from .maps import GroupMap
from .zip import zip_clusters

__all__ = ["transport_map"]


def _plan(a: Tensor, b: Tensor, cost: Tensor) -> Tensor:
    import ot

    plan = ot.emd(a.numpy(), b.numpy(), np.ascontiguousarray(cost.numpy()), numItermax=1_000_000)
    return torch.from_numpy(np.asarray(plan, dtype=np.float64))


def _marginal(live: Tensor) -> Tensor:
    mass = live.double() if bool(live.any()) else torch.ones(len(live), dtype=torch.float64)
    return mass / mass.sum()


def _start(corr: Tensor, sizes: Sequence[int], target: int) -> Tensor:
    """Initial barycenter weights ``W`` ``(t, O)``."""
    offset = 0
    for n in sizes:
        if n == target:
            w = torch.zeros(target, sum(sizes), dtype=torch.float64)
            w[torch.arange(target), offset + torch.arange(target)] = 1.0
            return w
        offset += n
    clusters = zip_clusters(corr, sizes, target, alpha=0.5, beta=1.0)
    onehot = torch.zeros(sum(sizes), target, dtype=torch.float64)
    onehot[torch.arange(len(clusters)), clusters] = 1.0
    return (onehot / onehot.sum(0).clamp_min(1.0)).T


def transport_map(
    corr: Tensor,
    live: Tensor,
    sizes: Sequence[int],
    target: int,
    weights: Sequence[float],
    *,
    hard: bool = False,
    iterations: int = 10,
) -> GroupMap:
    """The OT fusion maps of one group (module docstring).

    ``corr`` ``(O, O)`` is the correlation of the concatenated units, ``live`` ``(O,)``
    marks units with any activation, ``weights`` the models' weights (summing to 1).

    >>> import torch
    >>> corr = torch.eye(4)
    >>> m = transport_map(corr, torch.tensor([True, True, True, False]), [2, 2], 2, [0.5, 0.5])
    >>> [round(float(x), 3) for x in m.merge[1].sum(1)]
    [0.5, 0.5]
    """
    total = sum(sizes)
    if corr.shape != (total, total) or live.shape != (total,):
        raise ModeconnectError(
            f"ot fusion: statistics {tuple(corr.shape)} do not match widths {list(sizes)}"
        )
    corr = corr.double()
    bounds = np.cumsum([0, *sizes]).tolist()
    a = torch.full((target,), 1.0 / target, dtype=torch.float64)
    marg = [_marginal(live[bounds[j] : bounds[j + 1]]) for j in range(len(sizes))]
    w = _start(corr, sizes, target)
    plans: list[Tensor] = []
    for _ in range(max(iterations, 1)):
        gram_yy = (w @ corr @ w.T).diagonal()  # ‖y_c‖²
        cross = w @ corr  # ⟨y_c, z_f⟩ (t, O)
        plans = []
        for j in range(len(sizes)):
            lo, hi = bounds[j], bounds[j + 1]
            norms = corr.diagonal()[lo:hi]
            cost = (gram_yy[:, None] + norms[None, :] - 2 * cross[:, lo:hi]).clamp_min(0)
            plans.append(_plan(a, marg[j], cost))
        new = torch.cat([weights[j] * plans[j] / a[:, None] for j in range(len(sizes))], dim=1)
        if torch.allclose(new, w, atol=1e-12, rtol=0):
            break
        w = new
    return _harden(plans, marg, weights, target) if hard else _soft(plans, marg, weights, a)


def _soft(
    plans: Sequence[Tensor], marg: Sequence[Tensor], weights: Sequence[float], a: Tensor
) -> GroupMap:
    merge = tuple(weights[j] * p / a[:, None] for j, p in enumerate(plans))
    unmerge = tuple(
        torch.where(m[:, None] > 0, p.T / m.clamp_min(1e-300)[:, None], torch.zeros(()))
        for p, m in zip(plans, marg, strict=True)
    )
    return GroupMap(merge, unmerge)


def _harden(
    plans: Sequence[Tensor], marg: Sequence[Tensor], weights: Sequence[float], target: int
) -> GroupMap:
    onehots = []
    for p in plans:
        dest = p.argmax(0)
        onehot = torch.zeros(p.shape[1], target, dtype=torch.float64)
        onehot[torch.arange(p.shape[1]), dest] = 1.0
        onehots.append(onehot)
    shares = [weights[j] * (onehots[j] * (marg[j] > 0)[:, None]).T for j in range(len(plans))]
    counts = [s.sum(1, keepdim=True) for s in shares]  # (t, 1): w_j · members of model j
    present = [(c > 0).double() * weights[j] for j, c in enumerate(counts)]
    norm = sum(present).clamp_min(1e-300)  # type: ignore[union-attr]
    merge = tuple(
        torch.where(c > 0, s / c.clamp_min(1e-300), torch.zeros(())) * (pr / norm)
        for s, c, pr in zip(shares, counts, present, strict=True)
    )
    return GroupMap(merge, tuple(onehots))
