"""CCA Merge (Horoi et al. 2024): linear maps from canonical correlation analysis.

For model 0's units ``x`` and model ``j``'s units ``y`` with covariances ``S_xx``,
``S_yy`` (each regularised by ``reg`` times its mean variance) and cross-covariance
``S_xy``, let ``S_xx^{-1/2} S_xy S_yy^{-1/2} = U Σ Vᵀ``. The canonical directions are
``A_x = S_xx^{-1/2} U`` and ``A_y = S_yy^{-1/2} V``; model ``j``'s units are carried
into model 0's basis by ``T_j = S_xx^{1/2} U Vᵀ S_yy^{-1/2}`` and read back by
``T_j⁻ = S_yy^{1/2} V Uᵀ S_xx^{-1/2}``. The merge is ``M_0 = w_0 I``, ``M_j = w_j T_j``;
the unmerge ``U_0 = I``, ``U_j = T_j⁻``. The maps are not permutations: the merge is
the evaluated object, and no equivalence guard applies to it. Widths may differ (the
target is model 0's width).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import ModeconnectError
from .maps import GroupMap

__all__ = ["cca_map"]


def _power(s: Tensor, p: float) -> Tensor:
    """``s^p`` for a symmetric positive definite ``s``."""
    vals, vecs = torch.linalg.eigh(s)
    return (vecs * vals.clamp_min(1e-12 * float(vals.max().clamp_min(1e-300))) ** p) @ vecs.T


def _regularised(s: Tensor, reg: float) -> Tensor:
    scale = float(s.diagonal().mean().clamp_min(1e-12))
    return s + reg * scale * torch.eye(len(s), dtype=s.dtype)


def cca_map(
    cov: Tensor, sizes: Sequence[int], weights: Sequence[float], *, reg: float = 0.1
) -> GroupMap:
    """CCA Merge's maps of one group into model 0's basis (module docstring).

    ``cov`` ``(O, O)`` is the covariance of the concatenated units of all models.

    >>> import torch
    >>> x = torch.randn(500, 3, dtype=torch.float64)
    >>> cov = torch.cov(torch.cat([x, x @ torch.tensor([[0., 2, 0], [1, 0, 0], [0, 0, 3]],
    ...                 dtype=torch.float64)], 1).T)
    >>> m = cca_map(cov, [3, 3], [0.5, 0.5], reg=1e-9)
    >>> torch.allclose(m.merge[1] @ m.unmerge[1] * 2, torch.eye(3, dtype=torch.float64), atol=1e-6)
    True
    """
    if reg < 0:
        raise ModeconnectError(f"cca: reg={reg} must be >= 0")
    cov = cov.double()
    bounds = [0]
    for n in sizes:
        bounds.append(bounds[-1] + n)
    sxx = _regularised(cov[: bounds[1], : bounds[1]], reg)
    half, inv_half = _power(sxx, 0.5), _power(sxx, -0.5)
    merge, unmerge = (
        [weights[0] * torch.eye(sizes[0], dtype=torch.float64)],
        [torch.eye(sizes[0], dtype=torch.float64)],
    )
    for j in range(1, len(sizes)):
        lo, hi = bounds[j], bounds[j + 1]
        syy = _regularised(cov[lo:hi, lo:hi], reg)
        sxy = cov[: bounds[1], lo:hi]
        u, _, vh = torch.linalg.svd(inv_half @ sxy @ _power(syy, -0.5), full_matrices=False)
        merge.append(weights[j] * half @ u @ vh @ _power(syy, -0.5))
        unmerge.append(_power(syy, 0.5) @ vh.T @ u.T @ inv_half)
    return GroupMap(tuple(merge), tuple(unmerge))
