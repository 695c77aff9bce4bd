"""Permutation specs: which tensor axes share a neuron permutation, derived from the graph.

The package reads like the analysis:

* :mod:`.permutations` — :class:`PermutationSpec`, axis layouts, applying, inverting and
  drawing permutations;
* :mod:`.trace` — the model's graph, exported as the model is called
  (:class:`~modeconnect.forward.ModelCall`);
* :mod:`.unionfind` — axis variables; :mod:`.rules` (with :mod:`.rules_layers`,
  :mod:`.rules_attention`, :mod:`.rules_shape`, :mod:`.shuffle`) — what each op does
  to them;
* :mod:`.derive` and :mod:`.resolve` — :func:`derive_spec`;
* :mod:`.runner` — :class:`GraphRunner`, the traced graph run with any weights;
* :mod:`.inputs` — :func:`example_inputs`, probe inputs inferred from the model;
* :mod:`.coverage` — :class:`Coverage`, what a spec permutes and leaves fixed;
* :mod:`.key` — :func:`spec_key`, for caching specs as data
  (:meth:`PermutationSpec.to_dict`, :meth:`PermutationSpec.from_dict`).
"""

from __future__ import annotations

from .coverage import Coverage
from .derive import derive_spec
from .inputs import example_inputs
from .key import spec_key
from .permutations import (
    ActivationSite,
    Concat,
    Fixed,
    FixedAxis,
    Layout,
    Leaf,
    Member,
    PermGroup,
    Permutation,
    PermutationSpec,
    Product,
    Shuffle,
    apply_permutation,
    axis_index,
    coordinates,
    exposure,
    identity_permutation,
    invert_permutation,
    leaves,
    permute_tensor,
    random_permutation,
)
from .runner import GraphRunner
from .trace import trace

__all__ = [
    "ActivationSite",
    "Concat",
    "Coverage",
    "Fixed",
    "FixedAxis",
    "GraphRunner",
    "Layout",
    "Leaf",
    "Member",
    "PermGroup",
    "Permutation",
    "PermutationSpec",
    "Product",
    "Shuffle",
    "apply_permutation",
    "axis_index",
    "coordinates",
    "derive_spec",
    "example_inputs",
    "exposure",
    "identity_permutation",
    "invert_permutation",
    "leaves",
    "permute_tensor",
    "random_permutation",
    "spec_key",
    "trace",
]
