"""``sharpness`` on files: Hessian spectrum, trace and (adaptive) sharpness of checkpoints."""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from modeconnect.commands.barrier import resolve_loss
from modeconnect.commands.results import FileReport, count_examples, open_study, write_study
from modeconnect.curvature import NORMS, SPECTRUM_METHODS, SharpnessStudy, sharpness_study
from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import ExampleLossFn
from modeconnect.io.references import NO_TRUST, Trust
from modeconnect.io.report import SHARPNESS_PLOTS, sharpness_sections
from modeconnect.progress import ProgressFn
from modeconnect.timing import Timings

__all__ = ["MERGED", "sharpness_files"]

MERGED = "merged"
"""The name of the merged model in the study."""


def sharpness_files(
    paths: Sequence[str | Path],
    *,
    data: str,
    names: Sequence[str] | None = None,
    merge: str | None = None,
    alpha: float = 0.5,
    top_k: int = 1,
    spectrum: str = "lanczos",
    iterations: int | None = None,
    trace_samples: int = 50,
    rho: float = 0.5,
    plain_rho: float = 0.05,
    norm: str = "l2",
    ascent_steps: int = 10,
    seed: int = 0,
    max_batches: int | None = None,
    loss: str | ExampleLossFn | None = "ce",
    batch_size: int = 500,
    json_path: str | Path | None = None,
    report_dir: str | Path | None = None,
    model: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    trust: Trust = NO_TRUST,
    input_shape: Sequence[int] | None = None,
    input_dtype: str | torch.dtype | None = None,
    command: str | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
    timings: Timings | None = None,
) -> FileReport[SharpnessStudy]:
    """Every sharpness measure of each checkpoint, on ``data`` (``sharpness_study``).

    ``data`` is the data the loss is measured on (the training split, usually).
    ``merge`` (``"naive"`` or an alignment method) adds the model
    ``(1-alpha)·first + alpha·second`` of the first two checkpoints (aligned first,
    with BatchNorm statistics recomputed on ``data``). ``names`` label the
    checkpoints (default ``A, B, C, ...``). The rest are :func:`~modeconnect.curvature`'s
    options: ``top_k`` eigenvalues by ``spectrum`` (``lanczos``, ``power``) with
    ``iterations``, ``trace_samples`` Hutchinson probes, adaptive sharpness in the
    ``norm`` ball of radius ``rho`` (relative to ``|θ|``), plain sharpness of radius
    ``plain_rho``, ``ascent_steps``, ``seed``, and ``max_batches`` of ``data`` per pass.
    """
    merge = None if merge in (None, "none") else merge
    labels = _names(names, len(paths), merge is not None)
    _check_options(spectrum, norm, alpha)
    class_labels = loss in (None, "ce")
    session = open_study(
        paths, plots=SHARPNESS_PLOTS, force=force, model=model, model_kwargs=model_kwargs,
        trust=trust, data=data, batch_size=batch_size, input_shape=input_shape,
        input_dtype=input_dtype, class_labels=class_labels, timings=timings,
        outputs=[("--json", json_path, "json"), ("--report", report_dir, "report")],
    )  # fmt: skip
    states = dict(zip(labels, session.state_dicts, strict=True))
    with session.timings.phase("sharpness"):
        study = sharpness_study(
            session.model, states, session.data or [], merge=merge, alpha=alpha,
            progress=progress, k=top_k, method=spectrum, iterations=iterations,
            trace_samples=trace_samples, rho=rho, plain_rho=plain_rho, norm=norm,
            ascent_steps=ascent_steps, seed=seed, loss=resolve_loss(loss, session),
            max_batches=max_batches,
        )  # fmt: skip
    inputs = {"checkpoints": {name: str(p) for name, p in zip(labels, paths, strict=True)}}
    report = FileReport(
        inputs, session.model_ref, session.model_kwargs, study,
        {"data": count_examples(session.data or [])}, command,
    )  # fmt: skip
    return write_study(session, report, title="Sharpness report", sections=sharpness_sections)


def _names(names: Sequence[str] | None, count: int, merged: bool) -> list[str]:
    if merged and count < 2:
        raise ModeconnectError(
            f"sharpness: --merge merges the first two checkpoints, got {count}; "
            "pass two checkpoints or drop --merge"
        )
    if names is None:
        letters = string.ascii_uppercase
        return [letters[i] if i < len(letters) else f"M{i + 1}" for i in range(count)]
    reserved = [MERGED] if merged else []
    if len(names) != count or len(set(names)) != count or set(names) & set(reserved):
        raise ModeconnectError(
            f"sharpness: --names needs {count} different labels, one per checkpoint"
            + (f" and none of them {MERGED!r}" if merged else "")
            + f", got {list(names)}; pass e.g. {','.join(_names(None, count, False))}"
        )
    return list(names)


def _check_options(spectrum: str, norm: str, alpha: float) -> None:
    if spectrum not in SPECTRUM_METHODS:
        raise ModeconnectError(
            f"sharpness: unknown --spectrum {spectrum!r}; valid: {', '.join(SPECTRUM_METHODS)}"
        )
    if norm not in NORMS:
        raise ModeconnectError(f"sharpness: unknown --norm {norm!r}; valid: {', '.join(NORMS)}")
    if not 0.0 <= alpha <= 1.0:
        raise ModeconnectError(f"sharpness: --alpha must lie in [0, 1], got {alpha}")
