"""``plane`` and ``landscape`` on files: loss and error on grids around checkpoints.

* :func:`plane_files`: the plane through three checkpoints (two endpoints and a third
  model, or a one-bend curve's bend), with the line and the curve drawn on it;
* :func:`landscape_files`: filter-normalised slices (1-D) and surfaces (2-D) around one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modeconnect.bn import bn_batches
from modeconnect.commands.barrier import resolve_loss
from modeconnect.commands.options import LandscapeOptions, PlaneOptions
from modeconnect.commands.results import FileReport, count_examples, open_study, write_study
from modeconnect.commands.session import Session
from modeconnect.curve_fitting import curve_path, get_curve
from modeconnect.distributed import cluster_from
from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import PathFn, linear_path
from modeconnect.io.checkpoints import Checkpoint
from modeconnect.io.report import (
    LANDSCAPE_PLOTS,
    PLANE_PLOTS,
    landscape_sections,
    plane_sections,
)
from modeconnect.landscape import LossSlice, LossSurface, plane_grid, slice_1d, surface_2d

__all__ = ["landscape_files", "plane_files"]


def plane_files(
    a_path: str | Path,
    b_path: str | Path,
    c_path: str | Path,
    options: PlaneOptions | None = None,
    **keywords: Any,
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
    o = PlaneOptions.build(options, keywords)
    cluster = cluster_from(o.ray, o.workers)
    labels = _names(o.names, ("A", "B", "bend" if o.curve else "C"))
    if o.curve is not None:
        get_curve(o.curve, 1)
    session = _open([a_path, b_path, c_path], o, PLANE_PLOTS)
    a, b, c = session.state_dicts
    paths: dict[str, PathFn] = {"line": linear_path(a, b)}
    if o.curve is not None:
        _check_bend(session.checkpoints[2], session.checkpoints[1], o.curve)
        paths["curve"] = curve_path(get_curve(o.curve, 1), a, [c], b)
    with session.timings.phase("grid"):
        surface = plane_grid(
            session.model, a, b, c, session.data or [],
            resolution=o.resolution, margin=o.margin, names=labels, paths=paths,
            train=session.train, bn=o.bn, loss=resolve_loss(o.loss, session),
            max_bn_batches=bn_batches(o.max_bn_batches, o.inputs.batch_size),
            progress=o.run.progress, cluster=cluster,
            points_per_pass=o.run.points_per_pass,
        )  # fmt: skip
    inputs = {"a": str(a_path), "b": str(b_path), "c": str(c_path)}
    report = _report(session, inputs, surface, o.run.command)
    return write_study(session, report, title="Plane report", sections=plane_sections)


def landscape_files(
    checkpoint: str | Path,
    options: LandscapeOptions | None = None,
    **keywords: Any,
) -> FileReport[LossSlice | LossSurface]:
    """Loss and error along filter-normalised directions around one checkpoint (Li et al. 2018).

    ``dims=1``: :func:`~modeconnect.slice_1d` at ``resolution`` points (default 51)
    over ``span``; ``dims=2``: :func:`~modeconnect.surface_2d` on a ``resolution``
    × ``resolution`` grid (default 21) over ``span × span``. The directions are
    drawn from ``seed``: one seed, one landscape. ``bn="reset"`` recomputes
    BatchNorm statistics on ``train`` at every point (default: the model's own).
    """
    o = LandscapeOptions.build(options, keywords)
    cluster = cluster_from(o.ray, o.workers)
    if o.dims not in LANDSCAPE_PLOTS:
        raise ModeconnectError(f"landscape: --dims {o.dims!r} is not 1 or 2; pass one of them")
    session = _open([checkpoint], o, LANDSCAPE_PLOTS[o.dims])
    (state,) = session.state_dicts
    common: dict[str, Any] = {
        "seed": o.seed, "span": o.span, "train": session.train, "bn": o.bn,
        "loss": resolve_loss(o.loss, session),
        "max_bn_batches": bn_batches(o.max_bn_batches, o.inputs.batch_size),
        "progress": o.run.progress, "cluster": cluster,
        "points_per_pass": o.run.points_per_pass,
    }  # fmt: skip
    result: LossSlice | LossSurface
    with session.timings.phase("grid"):
        if o.dims == 1:
            steps = o.resolution or 51
            result = slice_1d(session.model, state, session.data or [], steps=steps,
                              **common)  # fmt: skip
        else:
            result = surface_2d(session.model, state, session.data or [],
                                resolution=o.resolution or 21, **common)  # fmt: skip
    report = _report(
        session, {"checkpoint": str(checkpoint), "dims": o.dims}, result, o.run.command
    )
    return write_study(session, report, title="Landscape report", sections=landscape_sections)


def _open(
    checkpoints: Sequence[str | Path],
    o: PlaneOptions | LandscapeOptions,
    plots: Sequence[str],
) -> Session:
    labels = o.loss in (None, "ce")
    return open_study(
        checkpoints, o, plots=plots, class_labels=labels, train_labels=labels,
        outputs=[("--json", o.json_path, "json"), ("--report", o.report_dir, "report")],
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
