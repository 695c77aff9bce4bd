"""modeconnect: mode connectivity and model merging for PyTorch.

Align the hidden units of two networks (Git Re-Basin weight matching on a
permutation spec derived from the model's graph), verify that the aligned
network computes the same function, and measure interpolation barriers::

    import modeconnect as mc

    a, b = mc.load("a.pt"), mc.load("b.pt")
    model, _, _ = mc.resolve_model([a, b])
    result = mc.align(model, a.state_dict, b.state_dict)
    data = mc.load_data("test.pt")
    curve = mc.interpolation_curve(model, a.state_dict, result.aligned, data)
    print(mc.barrier(curve))
"""

from __future__ import annotations

from .bn import repair, reset_batchnorm
from .errors import ModeconnectError
from .evaluate import (
    Barrier,
    Curve,
    CurvePoint,
    Metrics,
    barrier,
    evaluate,
    interpolate,
    interpolation_curve,
)
from .federated import aligned_fedavg, fedavg
from .files.align import AlignReport, align_files
from .files.checkpoints import Checkpoint, load_checkpoint, resolve_model, save_checkpoint
from .files.data import load_data
from .graph import derive_spec
from .guard import Equivalence, check_equivalence
from .layerwise import layerwise_barriers
from .matching import METHODS, Alignment, match_weights
from .merge import MergeResult, merge
from .pipeline import AlignResult, align
from .spec import PermutationSpec, apply_permutation, random_permutation
from .study import Study, barrier_study

load = load_checkpoint

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "AlignReport",
    "AlignResult",
    "Alignment",
    "Barrier",
    "Checkpoint",
    "Curve",
    "CurvePoint",
    "Equivalence",
    "MergeResult",
    "Metrics",
    "ModeconnectError",
    "PermutationSpec",
    "Study",
    "align",
    "aligned_fedavg",
    "align_files",
    "apply_permutation",
    "barrier",
    "barrier_study",
    "check_equivalence",
    "derive_spec",
    "evaluate",
    "fedavg",
    "interpolate",
    "interpolation_curve",
    "layerwise_barriers",
    "load",
    "load_checkpoint",
    "load_data",
    "match_weights",
    "merge",
    "random_permutation",
    "repair",
    "reset_batchnorm",
    "resolve_model",
    "save_checkpoint",
]
