"""Permutations learned on the loss along the path: the straight-through estimator.

Git Re-Basin (Ainsworth et al. 2023), algorithm 3: a proxy ``θ̃`` (started at A) is
projected onto B's permutation orbit by weight matching, ``π = argmax_π ⟨θ̃, π(θ_B)⟩``;
the forward pass uses ``π(θ_B)`` at ``(1-α) θ_A + α π(θ_B)`` while the gradient flows
to ``θ̃`` as if ``π(θ_B)`` were ``θ̃`` (``θ̃ + stop_grad(π(θ_B) − θ̃)``). Adam on ``θ̃``;
the result is the projection of the last ``θ̃``. Groups in ``kept`` (residual streams,
rotated instead) keep their identity.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..evaluation.scoring import get_scoring
from ..progress import ProgressFn
from ..spec import PermutationSpec, apply_permutation
from .learned import descend, float32_on, lerped, on_device

StateDict = Mapping[str, torch.Tensor]
Permutation = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LearnedPermutation:
    """The learned permutation (the last proxy's projection) and each epoch's mean loss."""

    perm: Permutation
    losses: tuple[float, ...]


def learn_permutations(
    model: nn.Module,
    spec: PermutationSpec,
    a: StateDict,
    b: StateDict,
    data: Iterable[Any],
    match: Callable[..., Any],
    *,
    kept: Iterable[str] = (),
    loss: Any = None,
    epochs: int = 1,
    lr: float = 1e-3,
    alpha: float | None = 0.5,
    seed: int = 0,
    progress: ProgressFn | None = None,
    device: torch.device | None = None,
) -> LearnedPermutation:
    """The permutation of ``b`` that the straight-through estimator finds (module docstring).

    ``match(spec, target, b)`` is the projection (weight matching); ``alpha=None`` draws α
    uniformly per step (seeded); ``loss`` as :func:`learn_rotations`'s. The passes run on
    ``device`` (the CPU by default); the projection on the CPU.
    """
    where = device or torch.device("cpu")
    batches = on_device(list(data), where)
    scoring = get_scoring(loss, model)
    gen = torch.Generator().manual_seed(seed)
    cpu = torch.device("cpu")
    a_cpu, b_cpu = float32_on(model, a, cpu), float32_on(model, b, cpu)
    a32, b32 = float32_on(model, a, where), float32_on(model, b, where)
    keys = [k for k in spec.layouts if k in a32 and a32[k].is_floating_point()]
    proxy = {k: a32[k].clone().requires_grad_(True) for k in keys}
    opt = torch.optim.Adam(list(proxy.values()), lr=lr)
    fixed = {g: torch.arange(spec.groups[g].size) for g in kept}

    def project() -> Permutation:
        target = {**a_cpu, **{k: p.detach().cpu() for k, p in proxy.items()}}
        return {**match(spec, target, b_cpu, seed=seed).perm, **fixed}

    def point(t: float) -> dict[str, torch.Tensor]:
        moved = apply_permutation(b32, spec, project())
        through = {k: proxy[k] + (moved[k] - proxy[k]).detach() for k in keys}
        return lerped(a32, {**moved, **through}, t)

    losses = descend(model, batches, scoring, opt, point, epochs=epochs, alpha=alpha, gen=gen,
                     progress=progress, task="learned permutation")  # fmt: skip
    return LearnedPermutation(project(), losses)
