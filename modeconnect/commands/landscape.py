"""``plane`` and ``landscape`` on files: loss and error on grids around checkpoints.

* :func:`plane_files`: the plane through three checkpoints (two endpoints and a third
  model, or a one-bend curve's bend), with the line and the curve drawn on it;
* :func:`landscape_files`: filter-normalised slices (1-D) and surfaces (2-D) around one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from modeconnect.commands.barrier import resolve_loss
from modeconnect.commands.results import FileReport, count_examples, open_study, write_study
from modeconnect.commands.session import Session
from modeconnect.curve_fitting import curve_path, get_curve
from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import ExampleLossFn, PathFn, linear_path
from modeconnect.io.checkpoints import Checkpoint
from modeconnect.io.references import NO_TRUST, Trust
from modeconnect.io.report import (
    LANDSCAPE_PLOTS,
    PLANE_PLOTS,
    landscape_sections,
    plane_sections,
)
from modeconnect.landscape import LossSlice, LossSurface, plane_grid, slice_1d, surface_2d
from modeconnect.progress import ProgressFn
from modeconnect.timing import Timings

__all__ = ["landscape_files", "plane_files"]


def plane_files(
    a_path: str | Path,
    b_path: str | Path,
    c_path: str | Path,
    *,
    data: str,
    train: str | None = None,
    resolution: int = 21,
    margin: float = 0.2,
    curve: str | None = None,
    names: Sequence[str] | None = None,
    bn: str = "auto",
    max_bn_batches: int | None = None,
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
) -> FileReport[LossSurface]:
    """Loss and error on the plane through A, B and C (:func:`~modeconnect.plane_grid`).

    The grid (``resolution`` points a side, ``margin`` beyond the three models) is
    evaluated on ``data``; BatchNorm statistics (``bn="auto"``) are recomputed at
    every point on ``train``. The line from A to B is projected onto the plane;
    with ``curve`` (``"bezier"``, ``"polychain"``) C is the bend of that one-bend
    curve from A to B (``modeconnect curve --bend``; after ``--align``, B is the aligned
    B that ``--aligned`` wrote), and the curve is drawn too.
    ``names`` label A, B, C (default ``A, B, C``, or ``A, B, bend``).
    """
    labels = _names(names, ("A", "B", "bend" if curve else "C"))
    if curve is not None:
        get_curve(curve, 1)
    session = _open(
        [a_path, b_path, c_path], plots=PLANE_PLOTS, data=data, train=train, loss=loss,
        batch_size=batch_size, json_path=json_path, report_dir=report_dir, model=model,
        model_kwargs=model_kwargs, trust=trust, input_shape=input_shape,
        input_dtype=input_dtype, force=force, timings=timings,
    )  # fmt: skip
    ca, cb, cc = session.checkpoints
    paths: dict[str, PathFn] = {"line": linear_path(ca.state_dict, cb.state_dict)}
    if curve is not None:
        _check_bend(cc, cb, curve)
        paths["curve"] = curve_path(
            get_curve(curve, 1), ca.state_dict, [cc.state_dict], cb.state_dict
        )
    with session.timings.phase("grid"):
        surface = plane_grid(
            session.model, ca.state_dict, cb.state_dict, cc.state_dict, session.data or [],
            resolution=resolution, margin=margin, names=labels, paths=paths,
            train=session.train, bn=bn, loss=resolve_loss(loss, session),
            max_bn_batches=max_bn_batches, progress=progress,
        )  # fmt: skip
    inputs = {"a": str(a_path), "b": str(b_path), "c": str(c_path)}
    report = _report(session, inputs, surface, command)
    return write_study(session, report, title="Plane report", sections=plane_sections)


def landscape_files(
    checkpoint: str | Path,
    *,
    data: str,
    train: str | None = None,
    dims: int = 2,
    seed: int = 0,
    span: tuple[float, float] = (-1.0, 1.0),
    resolution: int | None = None,
    bn: str = "none",
    max_bn_batches: int | None = None,
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
) -> FileReport[LossSlice | LossSurface]:
    """Loss and error along filter-normalised directions around one checkpoint (Li et al. 2018).

    ``dims=1``: :func:`~modeconnect.slice_1d` at ``resolution`` points (default 51)
    over ``span``; ``dims=2``: :func:`~modeconnect.surface_2d` on a ``resolution``
    × ``resolution`` grid (default 21) over ``span × span``. The directions are
    drawn from ``seed``: one seed, one landscape. ``bn="reset"`` recomputes
    BatchNorm statistics on ``train`` at every point (default: the model's own).
    """
    if dims not in LANDSCAPE_PLOTS:
        raise ModeconnectError(f"landscape: --dims {dims!r} is not 1 or 2; pass one of them")
    session = _open(
        [checkpoint], plots=LANDSCAPE_PLOTS[dims], data=data, train=train, loss=loss,
        batch_size=batch_size, json_path=json_path, report_dir=report_dir, model=model,
        model_kwargs=model_kwargs, trust=trust, input_shape=input_shape,
        input_dtype=input_dtype, force=force, timings=timings,
    )  # fmt: skip
    (ckpt,) = session.checkpoints
    common: dict[str, Any] = {
        "seed": seed, "span": span, "train": session.train, "bn": bn,
        "loss": resolve_loss(loss, session),
        "max_bn_batches": max_bn_batches, "progress": progress,
    }  # fmt: skip
    result: LossSlice | LossSurface
    with session.timings.phase("grid"):
        if dims == 1:
            steps = resolution or 51
            result = slice_1d(session.model, ckpt.state_dict, session.data or [], steps=steps,
                              **common)  # fmt: skip
        else:
            result = surface_2d(session.model, ckpt.state_dict, session.data or [],
                                resolution=resolution or 21, **common)  # fmt: skip
    report = _report(session, {"checkpoint": str(checkpoint), "dims": dims}, result, command)
    return write_study(session, report, title="Landscape report", sections=landscape_sections)


def _open(
    checkpoints: Sequence[str | Path],
    *,
    plots: Sequence[str],
    loss: str | ExampleLossFn | None,
    json_path: str | Path | None,
    report_dir: str | Path | None,
    **options: Any,
) -> Session:
    labels = loss in (None, "ce")
    return open_study(
        checkpoints, plots=plots, class_labels=labels, train_labels=labels,
        outputs=[("--json", json_path, "json"), ("--report", report_dir, "report")], **options,
    )  # fmt: skip


def _report(
    session: Session, inputs: Mapping[str, Any], result: Any, command: str | None
) -> FileReport[Any]:
    examples = {"data": count_examples(session.data or [])}
    if session.train is not None:
        examples["train"] = count_examples(session.train)
    return FileReport(
        inputs, session.model_ref, session.model_kwargs, result, examples, command
    )  # fmt: skip


def _names(names: Sequence[str] | None, default: tuple[str, str, str]) -> tuple[str, str, str]:
    if names is None:
        return default
    if len(names) != 3 or len(set(names)) != 3:
        raise ModeconnectError(
            f"plane: --names needs three different labels, one per model, got {list(names)}; "
            "pass e.g. A,B,C"
        )
    return (names[0], names[1], names[2])


def _check_bend(bend: Checkpoint, b: Checkpoint, curve: str) -> None:
    """A bend written by ``modeconnect curve`` says what curve it belongs to: it must agree.

    A curve fitted after alignment ends at aligned B, so B must be an aligned checkpoint.
    """
    meta = bend.metadata
    kind, position = meta.get("modeconnect.curve"), meta.get("modeconnect.bend")
    if kind not in (None, curve) or position not in (None, "1/1"):
        raise ModeconnectError(
            f"{bend.path}: is bend {position} of a {kind} curve, not the bend of a one-bend "
            f"{curve} curve; pass --curve {kind} for a one-bend curve's bend, or no --curve"
        )
    method = meta.get("modeconnect.method", "none")
    if method != "none" and b.metadata.get("modeconnect.role") != "b aligned to a":
        raise ModeconnectError(
            f"{bend.path}: bends a curve from A to B aligned by {method}, but {b.path} is not an "
            "aligned checkpoint; pass as B the aligned B (modeconnect curve --aligned FILE)"
        )
