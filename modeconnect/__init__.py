"""modeconnect: mode connectivity and model merging for PyTorch.

Align the hidden units of two networks (Git Re-Basin weight matching on a
permutation spec derived from the model's graph), verify that the aligned
network computes the same function, and measure interpolation barriers::

    import modeconnect as mc

    a, b = mc.load("a.pt"), mc.load("b.pt")
    arch = mc.resolve_model([a, b])
    result = mc.align(arch.model, a.state_dict, b.state_dict)
    data = mc.load_data("test.pt")
    curve = mc.interpolation_curve(arch.model, a.state_dict, result.aligned, data)
    print(mc.barrier(curve))

The names below are imported on first use (PEP 562), so ``import modeconnect`` and
the command line's ``--help`` do not pay for torch, SciPy or POT until they are needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from modeconnect.errors import ERRORS  # torch-free

__version__ = "0.3.0"

_EXPORTS: dict[str, tuple[str, str]] = {
    # the pipeline
    "align": ("modeconnect.alignment", "align"),
    "AlignResult": ("modeconnect.alignment", "AlignResult"),
    "align_files": ("modeconnect.commands.align", "align_files"),
    "AlignReport": ("modeconnect.commands.align", "AlignReport"),
    "barrier_files": ("modeconnect.commands.barrier", "barrier_files"),
    "compare_files": ("modeconnect.commands.compare", "compare_files"),
    "merge_files": ("modeconnect.commands.merge", "merge_files"),
    "spec_files": ("modeconnect.commands.spec", "spec_files"),
    "curve_files": ("modeconnect.commands.curve", "curve_files"),
    "plane_files": ("modeconnect.commands.landscape", "plane_files"),
    "landscape_files": ("modeconnect.commands.landscape", "landscape_files"),
    "sharpness_files": ("modeconnect.commands.sharpness", "sharpness_files"),
    # files
    "Architecture": ("modeconnect.io.references", "Architecture"),
    "Checkpoint": ("modeconnect.io.checkpoints", "Checkpoint"),
    "load": ("modeconnect.io.checkpoints", "load_checkpoint"),
    "load_checkpoint": ("modeconnect.io.checkpoints", "load_checkpoint"),
    "save_checkpoint": ("modeconnect.io.checkpoints", "save_checkpoint"),
    "resolve_model": ("modeconnect.io.checkpoints", "resolve_model"),
    "load_data": ("modeconnect.io.data", "load_data"),
    "Trust": ("modeconnect.io.references", "Trust"),
    # specs and permutations
    "PermutationSpec": ("modeconnect.spec", "PermutationSpec"),
    "derive_spec": ("modeconnect.spec", "derive_spec"),
    "apply_permutation": ("modeconnect.spec", "apply_permutation"),
    "random_permutation": ("modeconnect.spec", "random_permutation"),
    # matching
    "METHODS": ("modeconnect.matching", "METHODS"),
    "Alignment": ("modeconnect.matching", "Alignment"),
    "match_weights": ("modeconnect.matching", "match_weights"),
    # the guard and running models
    "Equivalence": ("modeconnect.guard", "Equivalence"),
    "check_equivalence": ("modeconnect.guard", "check_equivalence"),
    "ModelCall": ("modeconnect.forward", "ModelCall"),
    # evaluation
    "Barrier": ("modeconnect.evaluation", "Barrier"),
    "Curve": ("modeconnect.evaluation", "Curve"),
    "CurvePoint": ("modeconnect.evaluation", "CurvePoint"),
    "Metrics": ("modeconnect.evaluation", "Metrics"),
    "barrier": ("modeconnect.evaluation", "barrier"),
    "evaluate": ("modeconnect.evaluation", "evaluate"),
    "interpolate": ("modeconnect.evaluation", "interpolate"),
    "interpolation_curve": ("modeconnect.evaluation", "interpolation_curve"),
    "LOSSES": ("modeconnect.evaluation", "LOSSES"),
    "Scoring": ("modeconnect.evaluation", "Scoring"),
    "MaskedLMScoring": ("modeconnect.evaluation", "MaskedLMScoring"),
    "repair": ("modeconnect.bn", "repair"),
    "reset_batchnorm": ("modeconnect.bn", "reset_batchnorm"),
    "layerwise_barriers": ("modeconnect.layerwise", "layerwise_barriers"),
    "Study": ("modeconnect.barrier_studies", "Study"),
    "barrier_study": ("modeconnect.barrier_studies", "barrier_study"),
    # beyond the straight line
    "Bezier": ("modeconnect.curve_fitting", "Bezier"),
    "PolyChain": ("modeconnect.curve_fitting", "PolyChain"),
    "CurveFit": ("modeconnect.curve_fitting", "CurveFit"),
    "CurveStudy": ("modeconnect.curve_fitting", "CurveStudy"),
    "fit_curve": ("modeconnect.curve_fitting", "fit_curve"),
    "curve_study": ("modeconnect.curve_fitting", "curve_study"),
    "LossSurface": ("modeconnect.landscape", "LossSurface"),
    "LossSlice": ("modeconnect.landscape", "LossSlice"),
    "plane_basis": ("modeconnect.landscape", "plane_basis"),
    "plane_grid": ("modeconnect.landscape", "plane_grid"),
    "filter_normalized_direction": ("modeconnect.landscape", "filter_normalized_direction"),
    "slice_1d": ("modeconnect.landscape", "slice_1d"),
    "surface_2d": ("modeconnect.landscape", "surface_2d"),
    "Sharpness": ("modeconnect.curvature", "Sharpness"),
    "SharpnessStudy": ("modeconnect.curvature", "SharpnessStudy"),
    "hessian_spectrum": ("modeconnect.curvature", "hessian_spectrum"),
    "hessian_trace": ("modeconnect.curvature", "hessian_trace"),
    "adaptive_sharpness": ("modeconnect.curvature", "adaptive_sharpness"),
    "sharpness": ("modeconnect.curvature", "sharpness"),
    "sharpness_study": ("modeconnect.curvature", "sharpness_study"),
    # merging and federated averaging
    "MergeResult": ("modeconnect.merging", "MergeResult"),
    "merge": ("modeconnect.merging", "merge"),
    "fedavg": ("modeconnect.federated", "fedavg"),
    "aligned_fedavg": ("modeconnect.federated", "aligned_fedavg"),
    # errors: one base class, and the kinds a caller may catch on their own
    **{name: ("modeconnect.errors", name) for name in ERRORS},
}
__all__ = sorted(_EXPORTS)

from modeconnect import _moved  # noqa: E402  (torch-free)

_moved.install()


def __getattr__(name: str) -> Any:
    """Import a public name on first use and keep it."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'modeconnect' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what the names are, for type checkers and IDEs
    from modeconnect.alignment import AlignResult, align
    from modeconnect.barrier_studies import Study, barrier_study
    from modeconnect.bn import repair, reset_batchnorm
    from modeconnect.commands.align import AlignReport, align_files
    from modeconnect.commands.barrier import barrier_files
    from modeconnect.commands.compare import compare_files
    from modeconnect.commands.curve import curve_files
    from modeconnect.commands.landscape import landscape_files, plane_files
    from modeconnect.commands.merge import merge_files
    from modeconnect.commands.sharpness import sharpness_files
    from modeconnect.commands.spec import spec_files
    from modeconnect.curvature import (
        Sharpness,
        SharpnessStudy,
        adaptive_sharpness,
        hessian_spectrum,
        hessian_trace,
        sharpness,
        sharpness_study,
    )
    from modeconnect.curve_fitting import (
        Bezier,
        CurveFit,
        CurveStudy,
        PolyChain,
        curve_study,
        fit_curve,
    )
    from modeconnect.errors import (
        ModeconnectError,
        NotEquivalent,
        NotFinite,
        OutputConflict,
        ShapeMismatch,
        UntrustedReference,
    )
    from modeconnect.evaluation import (
        LOSSES,
        Barrier,
        Curve,
        CurvePoint,
        MaskedLMScoring,
        Metrics,
        Scoring,
        barrier,
        evaluate,
        interpolate,
        interpolation_curve,
    )
    from modeconnect.federated import aligned_fedavg, fedavg
    from modeconnect.forward import ModelCall
    from modeconnect.guard import Equivalence, check_equivalence
    from modeconnect.io.checkpoints import (
        Checkpoint,
        load_checkpoint,
        resolve_model,
        save_checkpoint,
    )
    from modeconnect.io.checkpoints import load_checkpoint as load
    from modeconnect.io.data import load_data
    from modeconnect.io.references import Architecture, Trust
    from modeconnect.landscape import (
        LossSlice,
        LossSurface,
        filter_normalized_direction,
        plane_basis,
        plane_grid,
        slice_1d,
        surface_2d,
    )
    from modeconnect.layerwise import layerwise_barriers
    from modeconnect.matching import METHODS, Alignment, match_weights
    from modeconnect.merging import MergeResult, merge
    from modeconnect.spec import PermutationSpec, apply_permutation, derive_spec, random_permutation
