"""ZipIt! (Stoica et al., ICLR 2024): merge features within and across models.

Given the correlation ``C`` of the concatenated units of N models (``O = Σ_j n_j``
features) and a target width ``t``, repeat ``O - t`` times: merge the pair of
current features ``(u, v)`` with the highest correlation. The merged feature's
correlation with any other is the minimum of the two (a merge must suit every
member), multiplied by ``alpha`` (``alpha = 0``: a merged feature merges no
more). Merges of two features of one model draw on that model's budget,
``beta · (O - t) / N`` merges (``beta = 0``: only merges across models, as in
permutation matching; ``beta = 1``: no limit in practice). When the budget leaves
no pair, the budget is lifted (with one model every merge is within it: that is
compression by feature merging).

The clusters give the merge matrix ``M[c, f] = 1/|c|`` for ``f`` in cluster
``c`` (the average of the merged features) and the unmerge matrix
``U[f, c] = 1`` (each feature reads its cluster's value back), split by model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import ModeconnectError
from .maps import GroupMap

__all__ = ["zip_clusters", "zip_map"]


def zip_clusters(
    corr: Tensor, sizes: Sequence[int], target: int, *, alpha: float = 0.5, beta: float = 1.0
) -> Tensor:
    """The cluster ``(O,)`` (``0 .. target-1``) of every feature after ZipIt!'s greedy merges.

    ``corr`` ``(O, O)`` is symmetric; ``sizes`` the models' widths (``Σ sizes = O``).

    >>> import torch
    >>> corr = torch.tensor([[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]])
    >>> zip_clusters(corr, [3], 2).tolist()
    [0, 0, 1]
    """
    total = sum(sizes)
    if corr.shape != (total, total):
        raise ModeconnectError(
            f"zip: correlation {tuple(corr.shape)} does not match widths {list(sizes)}"
        )
    if not 1 <= target <= total:
        raise ModeconnectError(
            f"zip: target width {target} must lie in 1..{total} (the units of all models)"
        )
    sims = corr.double().clone()
    sims.fill_diagonal_(float("-inf"))
    link = sims.clone()  # minimum linkage without alpha or budgets: the fallback
    origin = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(list(sizes)))
    cluster = torch.arange(total)
    active = torch.ones(total, dtype=torch.bool)
    budget = [int((total - target) // len(sizes) * beta + 1e-9)] * len(sizes)
    exhausted = torch.zeros(total, total, dtype=torch.bool)
    for _ in range(total - target):
        u, v = _best(sims.masked_fill(exhausted, float("-inf")))
        if u < 0:  # alpha and the budgets leave no pair: lift them
            u, v = _best(link)
        cluster[cluster == v] = u
        active[v] = False
        for mat, factor in ((sims, alpha), (link, 1.0)):
            row = torch.minimum(mat[u], mat[v])
            row = row * factor if factor > 0 else torch.full_like(row, float("-inf"))
            mat[u], mat[:, u] = row, row
            mat[v], mat[:, v] = float("-inf"), float("-inf")
            mat[u, u] = float("-inf")
        if origin[u] == origin[v] and len(sizes) > 1:
            m = int(origin[u])
            budget[m] -= 1
            if budget[m] <= 0:
                same = origin == m
                exhausted |= same[:, None] & same[None, :]
    roots = torch.unique(cluster[active])
    return torch.searchsorted(roots, cluster)


def _best(sims: Tensor) -> tuple[int, int]:
    """The pair ``(u < v)`` of highest similarity, or ``(-1, -1)`` if every entry is ``-inf``."""
    best = int(sims.argmax())
    if sims.view(-1)[best] == float("-inf"):
        return -1, -1
    u, v = divmod(best, sims.shape[1])
    return min(u, v), max(u, v)


def cluster_map(clusters: Tensor, sizes: Sequence[int], target: int) -> GroupMap:
    """Merge (cluster average) and unmerge (one-hot) matrices of ``clusters``, split by model."""
    onehot = torch.zeros(len(clusters), target, dtype=torch.float64)
    onehot[torch.arange(len(clusters)), clusters] = 1.0
    counts = onehot.sum(0).clamp_min(1.0)
    merge = (onehot / counts).T  # (t, O)
    parts = list(sizes)
    return GroupMap(tuple(merge.split(parts, dim=1)), tuple(onehot.split(parts, dim=0)))


def zip_map(
    corr: Tensor, sizes: Sequence[int], target: int, *, alpha: float = 0.5, beta: float = 1.0
) -> GroupMap:
    """ZipIt!'s merge and unmerge matrices for one group (module docstring)."""
    return cluster_map(zip_clusters(corr, sizes, target, alpha=alpha, beta=beta), sizes, target)
