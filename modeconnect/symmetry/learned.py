"""The residual rotation learned on the loss along the linear path.

``min_Q E_batch L((1-α) θ_A + α Q·θ_B)`` over orthogonal ``Q`` (one per residual stream),
with ``α = 0.5`` (the midpoint) or drawn uniformly per step. ``Q = Q₀ · O(P)`` where
``Q₀`` is the closed-form start (weight or activation Procrustes) and ``O`` is
:func:`torch.nn.utils.parametrizations.orthogonal` of a square matrix started at the
identity; a LayerNorm stream's ``O`` acts on the complement of all-ones. Adam, ``lr``,
``epochs`` passes over the data; seeded (α's draws) and deterministic on CPU.

Under ``--symmetry full`` the per-head maps may be learned with the rotation
(:class:`HeadParam`, ``--learn-heads learned``): each head's map is ``exp(K)`` for a
skew-symmetric ``K`` supported on its class's pattern (every pair of head dims for a
V·O map; each rotary frequency pair and the non-rotary block for a Q·K map), so it
stays an orthogonal map of the class (a rotation per frequency pair under RoPE), started
at the identity (the closed-form maps already applied).
In the spirit of Theus et al. 2025 (arXiv 2506.22712), where the transformations are
learned to lower the barrier.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from ..devices import moved_batches
from ..errors import ModeconnectError
from ..evaluation.interpolation import placed
from ..evaluation.scoring import get_scoring
from ..forward import batch_inputs, run
from ..progress import ProgressFn
from .procrustes import procrustes
from .residual import ResidualStream
from .transform import embed_ones, rotate

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Learned:
    """The learned rotations (float64, re-orthogonalised), and the loss of each epoch.

    ``rotations`` map B toward A. Two-sided (``sides="two"``), ``moved_a`` holds the
    rotation of A toward the shared path and ``rotations`` are ``Q_Aᵀ Q_B``: B's map
    relative to A's, which gives the same path up to a rotation of both ends.
    """

    rotations: dict[str, torch.Tensor]
    losses: tuple[float, ...]
    moved_a: dict[str, torch.Tensor] | None = None
    head_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    """Each learned :class:`HeadParam`'s maps (float64, ``(count, n, n)``), by name."""


@dataclass(frozen=True)
class HeadParam:
    """Per-head maps to learn with the rotation: ``count`` orthogonal ``n × n`` maps, each
    ``exp(K)`` for a skew-symmetric ``K`` zero outside ``mask`` (``(n, n)``, symmetric: the
    class's pattern), applied to a state by ``apply(state, maps)``."""

    name: str
    count: int
    mask: torch.Tensor
    apply: Callable[[StateDict, torch.Tensor], Mapping[str, torch.Tensor]]

    def maps(self, raw: torch.Tensor) -> torch.Tensor:
        """``exp(K)`` for ``K`` the masked skew-symmetric part of ``raw`` (``(count, n, n)``)."""
        mask = self.mask.to(raw.device)
        return torch.linalg.matrix_exp((raw - raw.transpose(1, 2)) * mask)


def match_learned(
    spec: Any,
    a: StateDict,
    b: StateDict,
    *,
    seed: int = 0,
    epochs: int = 1,
    lr: float = 1e-3,
    random_alpha: bool = False,
    permutations: str = "fixed",
    sides: str = "one",
    heads: str = "learned",
    max_batches: int | None = None,
    model: Any = None,
    data: Any = None,
) -> Any:
    """The registry's entry for ``learned``: its parameters, declared. The method learns
    rotations, which a permutation alignment cannot hold, so it runs only through
    :func:`modeconnect.alignment.align` (``method="learned"``), which aligns under the full
    symmetry (:func:`modeconnect.symmetry.align.align_full`)."""
    raise ModeconnectError(
        "method 'learned' learns rotations of the residual stream: call "
        "modeconnect.align(model, a, b, method='learned', data=...) (or the CLI's "
        "--method learned), which also rotates the residual stream"
    )


def _orthogonal(n: int) -> nn.Module:
    layer = nn.Linear(n, n, bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(n, dtype=torch.float64))
    return nn.utils.parametrizations.orthogonal(layer)


def learn_rotations(
    model: nn.Module,
    a: StateDict,
    b: StateDict,
    streams: Sequence[ResidualStream],
    data: Iterable[Any],
    *,
    loss: Any = None,
    epochs: int = 1,
    lr: float = 1e-3,
    alpha: float | None = 0.5,
    seed: int = 0,
    aliases: Mapping[str, str] = {},
    progress: ProgressFn | None = None,
    sides: str = "one",
    heads: Sequence[HeadParam] = (),
    device: torch.device | None = None,
) -> Learned:
    """Rotations ``Q`` (one per stream) that lower the loss of ``(1-α) a + α Q·b`` on ``data``.

    ``a`` and ``b`` are folded (:func:`~modeconnect.symmetry.fold`); ``alpha=None`` draws
    α uniformly from [0, 1] at each step (a generator seeded with ``seed``); ``loss`` is a
    :func:`~modeconnect.evaluation.scoring.get_scoring` choice (``"causal_lm"``).
    ``sides="two"`` moves both models toward one shared path (arXiv 2606.23607's
    two-sided variant): ``(1-α) Q_A·a + α Q_B·b``, both rotations learned together.
    ``heads`` are B's per-head maps learned with the rotations (:class:`HeadParam`).
    The passes run on ``device`` (the CPU by default); the results are on the CPU.
    """
    if sides not in ("one", "two"):
        raise ModeconnectError(f"sides must be 'one' or 'two', not {sides!r}")
    where = device or torch.device("cpu")
    batches = on_device(list(data), where)
    scoring = get_scoring(loss, model)
    gen = torch.Generator().manual_seed(seed)

    def rotations_of() -> dict[str, nn.Module]:
        return {s.group: _orthogonal(s.size - 1 if s.fixes_ones else s.size).to(where)
                for s in streams}  # fmt: skip

    layers = rotations_of()
    layers_a = rotations_of() if sides == "two" else {}
    raw = {h.name: torch.zeros(h.count, *h.mask.shape, dtype=torch.float64, device=where,
                               requires_grad=True) for h in heads}  # fmt: skip
    params = [p for m in (*layers.values(), *layers_a.values()) for p in m.parameters()]
    opt = torch.optim.Adam([*params, *raw.values()], lr=lr)
    a32, b32 = float32_on(model, a, where), float32_on(model, b, where)

    def point(t: float) -> dict[str, torch.Tensor]:
        start = _rotated(a32, streams, layers_a, aliases) if layers_a else a32
        moved: StateDict = b32
        for h in heads:
            moved = h.apply(moved, h.maps(raw[h.name]))
        return _path_point(start, moved, streams, layers, t, aliases)

    losses = descend(model, batches, scoring, opt, point, epochs=epochs, alpha=alpha, gen=gen,
                     progress=progress, task="learned rotation")  # fmt: skip
    with torch.no_grad():
        qb = {s.group: procrustes(_rotation(s, layers[s.group]).cpu(), s.fixes_ones)
              for s in streams}  # fmt: skip
        maps = {h.name: h.maps(raw[h.name]).cpu() for h in heads}
        if not layers_a:
            return Learned(qb, losses, head_maps=maps)
        qa = {s.group: procrustes(_rotation(s, layers_a[s.group]).cpu(), s.fixes_ones)
              for s in streams}  # fmt: skip
        relative = {s.group: procrustes(qa[s.group].T @ qb[s.group], s.fixes_ones)
                    for s in streams}  # fmt: skip
    return Learned(relative, losses, qa, maps)


def descend(
    model: nn.Module,
    batches: Sequence[Any],
    scoring: Any,
    opt: torch.optim.Optimizer,
    point: Callable[[float], Mapping[str, torch.Tensor]],
    *,
    epochs: int,
    alpha: float | None,
    gen: torch.Generator,
    progress: ProgressFn | None,
    task: str,
) -> tuple[float, ...]:
    """``epochs`` passes of ``opt`` on the loss at ``point(α)`` (α fixed, or drawn from
    ``gen`` per step when ``None``); each epoch's mean loss."""
    losses: list[float] = []
    total = epochs * len(batches)
    for epoch in range(epochs):
        summed = 0.0
        for i, batch in enumerate(batches):
            inputs, target = scoring.prepare(batch, i)
            t = float(torch.rand((), generator=gen)) if alpha is None else alpha
            state = point(t)
            value = scoring.summed(run(model, state, batch_inputs((inputs, target))), target)
            value = value / scoring.count(target)
            opt.zero_grad()
            value.backward()
            opt.step()
            summed += float(value.detach())
            if progress is not None:
                progress(task, epoch * len(batches) + i + 1, total)
        losses.append(summed / max(len(batches), 1))
    return tuple(losses)


def float32_on(model: nn.Module, state: StateDict, device: torch.device) -> dict[str, torch.Tensor]:
    """``state``'s floating tensors in float32 on ``device``; off the CPU also the buffers
    the model computes itself (rotary frequencies), so that it runs there."""
    if device.type == "cpu":
        return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return placed(model, state, device=device, dtype=torch.float32)


def on_device(batches: list[Any], device: torch.device) -> list[Any]:
    """``(x, y)`` batches on ``device`` (as they are on the CPU)."""
    return batches if device.type == "cpu" else moved_batches(batches, device, None)


def _rotation(stream: ResidualStream, layer: nn.Module) -> torch.Tensor:
    q = cast(torch.Tensor, layer.weight)
    return embed_ones(q) if stream.fixes_ones else q


def _path_point(
    a: StateDict,
    b: StateDict,
    streams: Sequence[ResidualStream],
    layers: Mapping[str, nn.Module],
    alpha: float,
    aliases: Mapping[str, str],
) -> dict[str, torch.Tensor]:
    """``(1-α) a + α Q·b`` with gradients to the rotations (other tensors are constants)."""
    return lerped(a, _rotated(b, streams, layers, aliases), alpha)


def lerped(a: StateDict, b: StateDict, alpha: float) -> dict[str, torch.Tensor]:
    """``(1-α) a + α b`` on ``a``'s floating tensors, ``a``'s others as they are: the point
    the learners' loss is taken at. Unlike :func:`~modeconnect.evaluation.interpolate` it
    always goes through ``torch.lerp`` (no endpoint shortcuts, no checks), so gradients
    reach ``b`` at every α."""
    return {k: torch.lerp(v, b[k], alpha) if v.is_floating_point() else v for k, v in a.items()}


def _rotated(
    state: StateDict,
    streams: Sequence[ResidualStream],
    layers: Mapping[str, nn.Module],
    aliases: Mapping[str, str],
) -> Mapping[str, torch.Tensor]:
    """``state`` with each stream rotated by its (parametrised) layer."""
    for s in streams:
        state = rotate(state, s, _rotation(s, layers[s.group]).float(), aliases)
    return state
