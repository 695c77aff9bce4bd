"""``sharpness`` on files: Hessian spectrum, trace and (adaptive) sharpness of checkpoints."""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modeconnect.commands.barrier import resolve_loss
from modeconnect.commands.options import SharpnessOptions
from modeconnect.commands.results import FileReport, count_examples, open_study, write_study
from modeconnect.curvature import NORMS, SPECTRUM_METHODS, SharpnessStudy, sharpness_study
from modeconnect.errors import ModeconnectError
from modeconnect.io.report import SHARPNESS_PLOTS, sharpness_sections

__all__ = ["MERGED", "sharpness_files"]

MERGED = "merged"
"""The name of the merged model in the study."""


def sharpness_files(
    paths: Sequence[str | Path],
    options: SharpnessOptions | None = None,
    **keywords: Any,
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
    o = SharpnessOptions.build(options, keywords)
    merge = None if o.merge in (None, "none") else o.merge
    labels = _names(o.names, len(paths), merge is not None)
    _check_options(o.spectrum, o.norm, o.alpha)
    class_labels = o.loss in (None, "ce")
    session = open_study(
        paths, o, plots=SHARPNESS_PLOTS, class_labels=class_labels,
        outputs=[("--json", o.json_path, "json"), ("--report", o.report_dir, "report")],
    )  # fmt: skip
    states = dict(zip(labels, session.state_dicts, strict=True))
    with session.timings.phase("sharpness"):
        study = sharpness_study(
            session.model, states, session.data or [], merge=merge, alpha=o.alpha,
            progress=o.run.progress, k=o.top_k, method=o.spectrum, iterations=o.iterations,
            trace_samples=o.trace_samples, rho=o.rho, plain_rho=o.plain_rho, norm=o.norm,
            ascent_steps=o.ascent_steps, seed=o.seed, loss=resolve_loss(o.loss, session),
            max_batches=o.max_batches,
        )  # fmt: skip
    inputs = {"checkpoints": {name: str(p) for name, p in zip(labels, paths, strict=True)}}
    report = FileReport(
        inputs, session.model_ref, session.model_kwargs, study,
        {"data": count_examples(session.data or [])}, o.run.command,
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
