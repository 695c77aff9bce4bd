"""Permutations learned on the loss along the path through a Sinkhorn relaxation.

Each learned group ``g`` gets a soft permutation ``P_g = sinkhorn(κ·R_g)``, a doubly
stochastic ``n × n`` matrix (``P_g[u, v]``: how much of B's unit ``v`` goes to unit
``u``), with ``R_g`` started at the identity (B as the closed-form alignment left it) and
``κ = log n + 4`` (about 98 % of each row's mass on its unit at the start), learned at
:data:`LOGIT_LR` times the rotations' rate. Every axis of
B that a learned group permutes is multiplied by its soft map (:class:`SoftPermuter`:
for an axis of several groups, the product of their entries between positions that
agree everywhere else), Adam lowers the loss at ``(1-α) θ_A + α P(θ_B)``, and the result
is each ``P_g`` hardened to the permutation of largest total weight (a linear
assignment). Sinkhorn re-basin (Peña et al., CVPR 2023); Git Re-Basin's straight-through
estimator (:mod:`modeconnect.symmetry.ste`) is the other learned option.

Groups batched over another (one permutation per head of the dims inside it) and the
``kept`` groups (residual streams, rotated instead) are not learned: they keep the order
B arrived with.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from ..errors import ModeconnectError
from ..evaluation.scoring import get_scoring
from ..progress import ProgressFn
from ..spec import PermutationSpec, identity_permutation
from ..spec.permutations import Layout, axis_index, coordinates, leaves
from .learned import descend, float32_on, lerped, on_device
from .ste import LearnedPermutation

StateDict = Mapping[str, torch.Tensor]

MAX_AXIS = 16384
"""The longest axis a soft map is built for (its dense ``L × L`` matrix)."""
LOGIT_LR = 10.0
"""The soft maps' learning rate in units of ``lr`` (the rotations' and heads'). On the
second Llama seed pair (``benchmarks/bench_symmetry.py``, learned heads + Sinkhorn) the
barrier read 0.047 at 1×, 0.031 at 10×, 0.036 at 30× and 0.055 at 100×; at 1× the
hardened maps gave back weight matching's order on every GPT-2 and ViT pair."""


def sinkhorn(logits: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """The doubly stochastic matrix of ``logits`` by ``iterations`` row and column
    normalisations in log space (the last one a column's, so columns sum to 1 exactly
    and rows to within the iteration's residue).

    >>> p = sinkhorn(torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    >>> [round(x, 3) for x in p.sum(0).tolist()], [round(x, 3) for x in p.sum(1).tolist()]
    ([1.0, 1.0], [1.0, 1.0])
    """
    z = logits
    for _ in range(iterations):
        z = z - torch.logsumexp(z, dim=1, keepdim=True)
        z = z - torch.logsumexp(z, dim=0, keepdim=True)
    return z.exp()


def harden(p: torch.Tensor) -> torch.Tensor:
    """The permutation ``perm`` maximising ``Σ_u p[u, perm[u]]`` (a linear assignment).

    >>> harden(torch.tensor([[0.1, 0.9], [0.8, 0.2]])).tolist()
    [1, 0]
    """
    rows, cols = linear_sum_assignment(p.detach().double().cpu().numpy(), maximize=True)
    perm = torch.empty(p.shape[0], dtype=torch.long)
    perm[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.long)
    return perm


class SoftPermuter:
    """Applies soft permutations of ``groups`` to a state, as :func:`apply_permutation`
    applies hard ones: with one-hot ``P_g[u, perm[u]] = 1`` the two agree exactly.

    For an axis, position ``i`` takes ``Σ_j M[i, j] · t[j]`` with ``M[i, j]`` the product
    over the groups there of ``P_g[c_g(i), c_g(j)]``, between positions whose other
    coordinates agree (the same position once every learned group's coordinate is set
    to 0), else 0.
    """

    def __init__(self, spec: PermutationSpec, groups: Sequence[str]) -> None:
        self.spec, self.groups = spec, tuple(groups)
        self._axes: dict[Layout, tuple[torch.Tensor, list[tuple[str, torch.Tensor]]]] = {}
        zeros = {g: torch.zeros(spec.groups[g].size, dtype=torch.long) for g in self.groups}
        for layouts in spec.layouts.values():
            for layout in layouts:
                found = [g for g in dict.fromkeys(leaf.group for leaf in leaves(layout))
                         if g in self.groups]  # fmt: skip
                if not found or layout in self._axes:
                    continue
                if layout.size > MAX_AXIS:
                    raise ModeconnectError(
                        f"learned permutations (sinkhorn): an axis of {layout.size} positions "
                        f"is over {MAX_AXIS} (its soft map is dense); use "
                        "--learn-permutations ste"
                    )
                same = axis_index(layout, {g: zeros[g] for g in found})
                mask = same[:, None] == same[None, :]
                coords = [(g, coordinates(layout, g)) for g in found]
                self._axes[layout] = (mask, coords)

    def matrix(self, layout: Layout, maps: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The soft map ``M`` of one axis (``(L, L)``) under ``maps`` (group -> ``P_g``)."""
        mask, coords = self._axes[layout]
        first = next(iter(maps.values()))  # the maps' device and dtype (the CPU's indices moved)
        m = mask.to(first.device, first.dtype)
        for group, c in coords:
            p, c = maps[group], c.to(first.device)
            present = c >= 0
            if bool(present.all()):
                m = m * p[c[:, None], c[None, :]]
            else:  # positions outside the group's part: a factor of 1 between them
                safe = c.clamp_min(0)
                both = present[:, None] & present[None, :]
                m = m * torch.where(both, p[safe[:, None], safe[None, :]], torch.ones_like(m))
        return m

    def apply(self, state: StateDict, maps: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state`` with every axis of the learned groups mapped softly by ``maps`` (each
        axis layout's map built once per call, however many tensors share it)."""
        out: dict[str, torch.Tensor] = {}
        built: dict[Layout, torch.Tensor] = {}
        for key, tensor in state.items():
            layouts = self.spec.layouts.get(self.spec.aliases.get(key, key))
            if layouts is None or not tensor.is_floating_point():
                out[key] = tensor
                continue
            for axis, layout in enumerate(layouts):
                if layout in self._axes:
                    if layout not in built:
                        built[layout] = self.matrix(layout, maps)
                    m = built[layout].to(tensor.dtype)
                    moved = tensor.movedim(axis, 0)
                    shape = moved.shape
                    moved = (m @ moved.reshape(shape[0], -1)).reshape(shape)
                    tensor = moved.movedim(0, axis)
            out[key] = tensor
        return out


def learn_permutations_sinkhorn(
    model: nn.Module,
    spec: PermutationSpec,
    a: StateDict,
    b: StateDict,
    data: Iterable[Any],
    *,
    kept: Iterable[str] = (),
    loss: Any = None,
    epochs: int = 1,
    lr: float = 1e-3,
    alpha: float | None = 0.5,
    seed: int = 0,
    progress: ProgressFn | None = None,
    device: torch.device | None = None,
    iterations: int = 20,
) -> LearnedPermutation:
    """The permutation of ``b`` (every unbatched group not in ``kept``) learned through
    the Sinkhorn relaxation (module docstring), started at the identity.

    ``alpha=None`` draws α uniformly per step (seeded); ``loss`` as
    :func:`~modeconnect.symmetry.learned.learn_rotations`'s. The passes run on ``device``
    (the CPU by default); the hardening on the CPU. Adam's step is :data:`LOGIT_LR` ×
    ``lr``. Each epoch's mean loss is the soft path's.
    """
    where = device or torch.device("cpu")
    batches = on_device(list(data), where)
    scoring = get_scoring(loss, model)
    gen = torch.Generator().manual_seed(seed)
    a32, b32 = float32_on(model, a, where), float32_on(model, b, where)
    skip = set(kept)
    learned = [g for g, group in spec.groups.items()
               if g not in skip and group.batch_over is None and group.size > 1]  # fmt: skip
    permuter = SoftPermuter(spec, learned)
    raw = {g: torch.eye(spec.groups[g].size, device=where, requires_grad=True) for g in learned}
    scale = {g: math.log(spec.groups[g].size) + 4.0 for g in learned}

    def maps() -> dict[str, torch.Tensor]:
        return {g: sinkhorn(scale[g] * r, iterations) for g, r in raw.items()}

    def point(t: float) -> dict[str, torch.Tensor]:
        return lerped(a32, permuter.apply(b32, maps()) if raw else b32, t)

    losses: tuple[float, ...] = ()
    if raw:
        opt = torch.optim.Adam(list(raw.values()), lr=LOGIT_LR * lr)
        task = "learned permutation (sinkhorn)"
        losses = descend(model, batches, scoring, opt, point, epochs=epochs, alpha=alpha,
                         gen=gen, progress=progress, task=task)  # fmt: skip
    with torch.no_grad():
        final = maps()
    learned_perm = {g: harden(final[g]) for g in learned}
    return LearnedPermutation({**identity_permutation(spec), **learned_perm}, losses)
