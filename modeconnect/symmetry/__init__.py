"""Symmetries beyond permutations: the residual stream's orthogonal class, folded norms,
and alignment under the full symmetry group (Theus et al. 2025, arXiv 2506.22712).

* :mod:`.residual` — :func:`residual_streams`: which permutation groups are residual
  streams, and their class (``orthogonal``, ``orthogonal-ones`` or ``permutation``
  with the reason), read from the traced graph;
* :mod:`.transform` — :func:`fold`, :func:`unfold`, :func:`rotate`,
  :func:`random_rotation`;
* :mod:`.procrustes` — orthogonal Procrustes from weights or streamed activations;
* :mod:`.heads` — invertible per-head V·O maps (least squares, condition bounded);
* :mod:`.qk` — per-head Q·K maps that commute with rotary embeddings;
* :mod:`.learned` — the rotation learned on the loss along the path;
* :mod:`.align` — :func:`align_full`, the pipeline under ``--symmetry orthogonal|full``.
"""

from __future__ import annotations

from .align import classified, head_classes
from .residual import (
    ORTHOGONAL,
    ORTHOGONAL_ONES,
    PERMUTATION,
    ClassifiedSpec,
    Norm,
    ResidualStream,
    residual_streams,
)
from .transform import fold, foldable, norm_weights, random_rotation, rotate, unfold

__all__ = [
    "ClassifiedSpec",
    "classified",
    "head_classes",
    "ORTHOGONAL",
    "ORTHOGONAL_ONES",
    "PERMUTATION",
    "Norm",
    "ResidualStream",
    "fold",
    "foldable",
    "norm_weights",
    "random_rotation",
    "residual_streams",
    "rotate",
    "unfold",
]
