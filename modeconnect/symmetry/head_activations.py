"""Orthogonal per-head maps from activations: the activation-based solver of ``full``.

Each attention head's V·O map acts on the value projection's outputs and its Q·K map on
the query and key projections' outputs, so the maps can be fitted where the weight-based
solver (:mod:`~modeconnect.symmetry.heads`, :mod:`~modeconnect.symmetry.qk`) fits them
to weights: on those outputs, streamed over the data with A and (aligned) B reading the
same inputs. For orthogonal maps (the default bound, 1) the fit is Procrustes on a
cross-moment per head:

* **V·O**: ``M_h = argmax tr(Mᵀ Σ_t v_A,h v_B,hᵀ)`` (``W_v,h -> M_h W_v,h`` then sends
  B's values toward A's): the polar factor of the moment;
* **Q·K**: ``A = argmax tr(Aᵀ Σ_t (q_B qᵀ_A + k_B k_Aᵀ))`` over the class (queries ``->
  Aᵀ q``, keys ``-> A⁻¹ k = Aᵀ k``), the query heads of a key/value head summed: on a
  rotary frequency pair ``(i, j)`` the rotation ``(c, s) ∝ (D_ii + D_jj, D_ji − D_ij)``,
  on the non-rotary dims the polar factor. The projections' outputs are taken before
  rotary embeddings, which the class commutes with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..forward import batch_inputs
from ..progress import ProgressFn
from .heads import HeadGroup
from .order import _module
from .procrustes import procrustes, run_hooked
from .qk import QKClass, QKGroup, _orthogonal_part

StateDict = Mapping[str, torch.Tensor]


def _outputs(model: nn.Module, state: StateDict, modules: Sequence[str], inputs: Any) -> dict:
    """Each named module's output on ``inputs`` under ``state``: ``(tokens, features)``."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name in modules:

        def hook(m: nn.Module, args: Any, out: torch.Tensor, name: str = name) -> None:
            seen[name] = out.detach().double().reshape(-1, out.shape[-1])

        handles.append(model.get_submodule(name).register_forward_hook(hook))
    run_hooked(model, state, inputs, handles)
    return seen


def _weight(keys: Iterable[str], state: StateDict) -> str:
    """The first of ``keys`` with two axes: a projection's weight, not its bias."""
    return next(k for k in keys if state[k].ndim == 2)


def head_moments(
    model: nn.Module,
    a: StateDict,
    b: StateDict,
    vo: Sequence[HeadGroup],
    qk: Sequence[QKGroup],
    data: Iterable[Any],
    *,
    max_batches: int | None = None,
    progress: ProgressFn | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per group, the cross-moments of the module docstring, float64: ``Σ v_A v_Bᵀ``
    ``(heads, n, n)`` for each V·O group, ``Σ q_B q_Aᵀ + k_B k_Aᵀ`` ``(kv_heads, n, n)``
    for each Q·K group."""
    vo_keys = [_weight((k for k, _, writer in g.members if writer), a) for g in vo]
    qk_keys = [(_weight(g.q, a), _weight(g.k, a)) for g in qk]
    modules = sorted({_module(k) for k in [*vo_keys, *(k for pair in qk_keys for k in pair)]})
    c_vo = [torch.zeros(g.heads, g.size, g.size, dtype=torch.float64) for g in vo]
    c_qk = [torch.zeros(g.kv_heads, g.head_dim, g.head_dim, dtype=torch.float64) for g in qk]
    batches = list(data) if max_batches is None else [x for _, x in zip(range(max_batches), data)]
    for i, batch in enumerate(batches):
        inputs = batch_inputs(batch)
        ya, yb = (_outputs(model, s, modules, inputs) for s in (a, b))
        for g, key, c in zip(vo, vo_keys, c_vo):
            places = g.positions[key]  # (heads, n, rest) along the outputs
            za, zb = ya[_module(key)][:, places], yb[_module(key)][:, places]
            c += torch.einsum("thir,thjr->hij", za, zb)
        for q, (qkey, kkey), c in zip(qk, qk_keys, c_qk):
            for key, query in ((qkey, True), (kkey, False)):
                rows = q.rows(query)  # (kv_heads, per, head_dim) along the outputs
                za, zb = ya[_module(key)][:, rows], yb[_module(key)][:, rows]
                c += torch.einsum("tgpi,tgpj->gij", zb, za)
        if progress is not None:
            progress("head activations", i + 1, len(batches))
    return c_vo, c_qk


def vo_maps(moment: torch.Tensor) -> torch.Tensor:
    """Each head's orthogonal map maximising ``tr(Mᵀ C_h)``: the polar factor of ``C_h``."""
    return torch.stack([procrustes(c) for c in moment])


def qk_maps(moment: torch.Tensor, cls: QKClass) -> torch.Tensor:
    """Each key/value head's orthogonal map of class ``cls`` maximising ``tr(Aᵀ D_g)``.

    >>> import torch
    >>> from modeconnect.symmetry.qk import QKClass
    >>> cls = QKClass("complex-per-rotary-pair", ((0, 1),), (), "")
    >>> turn = torch.tensor([[[0.0, -1.0], [1.0, 0.0]]], dtype=torch.float64)
    >>> torch.allclose(qk_maps(3 * turn, cls), turn)
    True
    """
    out = []
    for d in moment:
        m = d.clone()
        for i, j in cls.pairs:  # the complex scalar whose rotation maximises the pair's trace
            m[i, i], m[j, i] = d[i, i] + d[j, j], d[j, i] - d[i, j]
        out.append(_orthogonal_part(m, cls))
    return torch.stack(out)
