"""Orthogonal Procrustes for a residual stream: from weights, or from activations.

``Q* = argmax_{Q orthogonal} tr(Qᵀ M) = U Vᵀ`` for ``M = U S Vᵀ`` (Schönemann 1966).
With a LayerNorm the maps must fix the all-ones direction: ``Q = 11ᵀ/n + H R Hᵀ`` with
``H`` an orthonormal basis of its complement, and ``R`` the Procrustes solution of
``Hᵀ M H``.

* weights: ``M = Σ_W A_W B_Wᵀ`` over the stream's tensors, each with its stream axis
  first and the rest flattened: the orthogonal analogue of weight matching's
  similarity ``Σ_W ⟨W_A, π(W_B)⟩``;
* activations: ``M = Σ_t x̂_A(t) x̂_B(t)ᵀ`` over the stream at every norm's input, each
  token normalised as the norm does before its (folded) weight: ``x / rms(x)`` for an
  RMSNorm, ``(x − mean x) / std(x)`` for a LayerNorm, streamed over the data in float64.
  The readers see the normalised stream, and every token then counts alike: on the raw
  stream a few tokens of large norm (and the dims they load) dominate the moment
  (measured: ``docs/science/transformers.md``, "Re-measured after exact recovery").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..forward import batch_inputs, run
from ..progress import ProgressFn
from .residual import ResidualStream
from .transform import embed_ones, ones_basis

StateDict = Mapping[str, torch.Tensor]


def procrustes(m: torch.Tensor, fixes_ones: bool = False) -> torch.Tensor:
    """The orthogonal ``Q`` maximising ``tr(Qᵀ m)`` (fixing all-ones if asked), float64.

    >>> import torch
    >>> q = procrustes(torch.tensor([[0.0, 2.0], [3.0, 0.0]]))
    >>> q.tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    """
    m = m.double()
    if fixes_ones:
        h = ones_basis(m.shape[0])
        return embed_ones(procrustes(h.T @ m @ h))
    u, _, vh = torch.linalg.svd(m)
    return u @ vh


def alignment_objective(m: torch.Tensor, q: torch.Tensor) -> float:
    """``tr(Qᵀ M)``: what :func:`procrustes` maximises."""
    return float((q.double() * m.double()).sum())


def weight_cross(
    a: StateDict,
    b: StateDict,
    stream: ResidualStream,
    only: Sequence[tuple[str, int]] | None = None,
) -> torch.Tensor:
    """``Σ_W A_W B_Wᵀ`` over the stream's tensors (stream axis first; ``only`` these
    ``(key, axis)`` if given), float64 ``(n, n)``."""
    m = torch.zeros(stream.size, stream.size, dtype=torch.float64)
    for key, axis in stream.rotated if only is None else only:
        ta = a[key].double().movedim(axis, 0).reshape(stream.size, -1)
        tb = b[key].double().movedim(axis, 0).reshape(stream.size, -1)
        m += ta @ tb.T
    return m


def activation_cross(
    model: nn.Module,
    a: StateDict,
    b: StateDict,
    stream: ResidualStream,
    data: Iterable[Any],
    *,
    max_batches: int | None = None,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """``Σ_t x̂_A(t) x̂_B(t)ᵀ`` of the normalised stream at every norm's input (module
    docstring), over ``data``, float64."""
    m = torch.zeros(stream.size, stream.size, dtype=torch.float64)
    batches = list(data) if max_batches is None else [b for _, b in zip(range(max_batches), data)]
    for i, batch in enumerate(batches):
        inputs = batch_inputs(batch)
        xa, xb = _stream(model, a, stream, inputs), _stream(model, b, stream, inputs)
        for u, v in zip(xa, xb):
            m += u.T @ v
        if progress is not None:
            progress("residual activations", i + 1, len(batches))
    return m


def normalised(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Each row of ``x`` as a norm of ``kind`` normalises it (``"layernorm"``: centred and
    divided by its standard deviation; else divided by its root mean square).

    >>> import torch
    >>> normalised(torch.tensor([[2.0, -2.0], [0.0, 0.0]]), "rmsnorm").tolist()
    [[1.0, -1.0], [0.0, 0.0]]
    >>> normalised(torch.tensor([[1.0, 5.0]]), "layernorm").tolist()
    [[-1.0, 1.0]]
    """
    if kind == "layernorm":
        x = x - x.mean(1, keepdim=True)
    scale = x.pow(2).mean(1, keepdim=True).sqrt()
    return x / scale.clamp_min(torch.finfo(x.dtype).tiny)


def _stream(
    model: nn.Module, state: StateDict, stream: ResidualStream, inputs: Any
) -> list[torch.Tensor]:
    """The normalised stream at each norm's input (:func:`normalised`), ``(tokens, n)``
    float64, in the norms' order."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for norm in stream.norms:
        module = model.get_submodule(norm.weight.rpartition(".")[0])

        def hook(_m: nn.Module, args: Any, name: str = norm.weight, kind: str = norm.kind) -> None:
            seen[name] = normalised(args[0].detach().double().reshape(-1, stream.size), kind)

        handles.append(module.register_forward_pre_hook(hook))
    run_hooked(model, state, inputs, handles)
    return [seen[n.weight] for n in stream.norms if n.weight in seen]


def run_hooked(model: nn.Module, state: StateDict, inputs: Any, handles: Sequence[Any]) -> None:
    """``model`` on ``inputs`` under ``state`` without gradients, its hooks (``handles``,
    registered by the caller) removed afterwards, whatever happens."""
    try:
        with torch.no_grad():
            run(model, state, inputs)
    finally:
        for h in handles:
            h.remove()
