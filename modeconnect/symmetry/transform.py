"""Folding norms into their readers, and rotating a residual stream.

For a :class:`~modeconnect.symmetry.residual.ResidualStream`:

* :func:`fold`: every norm weight ``g`` goes into the layers that read the norm
  (``W -> W diag(g)`` along their input axis), the norm keeps weight 1, and a
  LayerNorm bias becomes ``b / g``: the function is unchanged and the checkpoint keeps
  its architecture and config (a norm of weight 1 is still a norm);
* :func:`unfold`: the inverse, given the weights that were folded;
* :func:`rotate`: ``x -> Q x`` on the stream: every tensor axis of the stream is
  multiplied by ``Q`` (a reader's ``W -> W Qᵀ``, a writer's ``W -> Q W``, an embedding
  table's rows, a writer's bias and a folded LayerNorm's bias). For orthogonal ``Q``
  (``Qᵀ = Q⁻¹``) all of them transform the same way along their stream axis.

Every function returns a new dict (inputs are never modified); tied aliases follow
their source; the arithmetic is float64 and each tensor goes back to its own dtype.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import ModeconnectError
from .residual import ResidualStream

StateDict = Mapping[str, torch.Tensor]


def _along(t: torch.Tensor, axis: int, fn: object) -> torch.Tensor:
    """``fn`` applied to ``t`` with ``axis`` moved first and the rest flattened."""
    moved = t.movedim(axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    out = fn(flat)  # type: ignore[operator]
    return out.reshape(moved.shape).movedim(0, axis)


def _scaled(t: torch.Tensor, axis: int, g: torch.Tensor) -> torch.Tensor:
    return _along(t.double(), axis, lambda m: m * g.double()[:, None]).to(t.dtype)


def norm_weights(state: StateDict, stream: ResidualStream) -> dict[str, torch.Tensor]:
    """The weights :func:`fold` would fold (the norms that are not tied to an embedding)."""
    return {n.weight: state[n.weight] for n in stream.norms if not n.tied}


def foldable(state: StateDict, stream: ResidualStream, what: str = "B") -> str | None:
    """Why ``state``'s norms cannot be folded (zero or non-finite entries; a norm read by a
    tied embedding whose weight is not constant), or ``None`` when they can."""
    for norm in stream.norms:
        g = state[norm.weight].double()
        if not bool(torch.isfinite(g).all()):
            return f"{what}'s norm weight {norm.weight} has non-finite entries"
        if norm.tied:
            if bool((g != g[0]).any()):
                return (
                    f"{what}'s norm weight {norm.weight} is not constant and is read by an "
                    "embedding tied to the output head: folding it would change the embedding"
                )
        elif bool((g == 0).any()):
            return f"{what}'s norm weight {norm.weight} has zero entries: it cannot be folded back"
    return None


def fold(
    state: StateDict, stream: ResidualStream, aliases: Mapping[str, str] = {}
) -> dict[str, torch.Tensor]:
    """``state`` with every (untied) norm weight folded into its readers; the same function.

    >>> import torch
    >>> from modeconnect.symmetry.residual import Norm, ResidualStream
    >>> s = ResidualStream("P0", 2, "orthogonal", "", (("w", 1),),
    ...                    (Norm("g", None, "rmsnorm", (("w", 1),)),))
    >>> out = fold({"g": torch.tensor([2.0, 3.0]), "w": torch.ones(1, 2)}, s)
    >>> out["g"].tolist(), out["w"].tolist()
    ([1.0, 1.0], [[2.0, 3.0]])
    """
    reason = foldable(state, stream)
    if reason is not None:
        raise ModeconnectError(f"cannot fold the norms of group {stream.group}: {reason}")
    weights = {n.weight: state[n.weight] for n in stream.norms if not n.tied}
    ones = {k: torch.ones_like(g) for k, g in weights.items()}
    return _moved(state, stream, weights, ones, aliases)


def unfold(
    state: StateDict,
    stream: ResidualStream,
    weights: Mapping[str, torch.Tensor],
    aliases: Mapping[str, str] = {},
) -> dict[str, torch.Tensor]:
    """The inverse of :func:`fold`: ``weights`` (:func:`norm_weights`) go back into the norms."""
    return _moved(state, stream, {k: 1.0 / g.double() for k, g in weights.items()}, weights,
                  aliases)  # fmt: skip


def _moved(
    state: StateDict,
    stream: ResidualStream,
    scale: Mapping[str, torch.Tensor],
    new: Mapping[str, torch.Tensor],
    aliases: Mapping[str, str],
) -> dict[str, torch.Tensor]:
    """Readers times ``scale`` along their input axis, norm weights set to ``new``, and
    LayerNorm biases divided by ``scale`` (each by its norm's entry)."""
    out = dict(state)
    for norm in stream.norms:
        if norm.weight not in scale:
            continue
        g = scale[norm.weight].double()
        for key, axis in norm.readers:
            out[key] = _scaled(out[key], axis, g)
        out[norm.weight] = new[norm.weight].clone()
        if norm.bias is not None:
            out[norm.bias] = (state[norm.bias].double() / g).to(state[norm.bias].dtype)
    return _with_aliases(out, aliases)


def rotate(
    state: StateDict,
    stream: ResidualStream,
    q: torch.Tensor,
    aliases: Mapping[str, str] = {},
) -> dict[str, torch.Tensor]:
    """``state`` with the stream mapped by the orthogonal ``q`` (``x -> q x``); folded first.

    Differentiable in ``q`` (the learned method rotates through it); the rotated
    tensors keep their dtype.
    """
    out = dict(state)
    for key, axis in stream.rotated:
        t = state[key]
        out[key] = _along(t.to(q.dtype), axis, lambda m: q @ m).to(t.dtype)
    return _with_aliases(out, aliases)


def _with_aliases(
    out: dict[str, torch.Tensor], aliases: Mapping[str, str]
) -> dict[str, torch.Tensor]:
    for alias, source in aliases.items():
        if alias in out and source in out:
            out[alias] = out[source]
    return out


def ones_basis(
    n: int, dtype: torch.dtype = torch.float64, device: torch.device | None = None
) -> torch.Tensor:
    """An ``(n, n-1)`` orthonormal basis of the complement of the all-ones direction."""
    u, _, _ = torch.linalg.svd(torch.eye(n, dtype=dtype) - 1.0 / n)  # on the CPU: the same basis
    return u[:, : n - 1].to(device)


def embed_ones(inner: torch.Tensor) -> torch.Tensor:
    """The ``(n, n)`` orthogonal map that fixes all-ones and acts as ``inner`` ``(n-1, n-1)``
    on its complement (in :func:`ones_basis`)."""
    n = inner.shape[0] + 1
    h = ones_basis(n, inner.dtype, inner.device)
    return torch.full((n, n), 1.0 / n, dtype=inner.dtype, device=inner.device) + h @ inner @ h.T


def random_rotation(stream: ResidualStream, seed: int = 0) -> torch.Tensor:
    """A random orthogonal map of the stream's class (fixing all-ones for a LayerNorm), float64.

    >>> from modeconnect.symmetry.residual import ResidualStream
    >>> q = random_rotation(ResidualStream("P0", 4, "orthogonal-ones", ""), seed=0)
    >>> bool(torch.allclose(q @ torch.ones(4, dtype=q.dtype), torch.ones(4, dtype=q.dtype)))
    True
    """
    gen = torch.Generator().manual_seed(seed)
    n = stream.size - 1 if stream.fixes_ones else stream.size
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))[None, :]
    return embed_ones(q) if stream.fixes_ones else q
