"""Figures of curves, loss planes, landscapes and sharpness, as matplotlib ``Figure``\\ s.

Each function returns a figure and writes nothing: the caller saves it
(``fig.savefig(path, dpi=110)``) or embeds it. matplotlib is imported only here
and only when a figure is drawn (``pip install modeconnect[plot]``); figures use
the Agg canvas directly, so no pyplot state or GUI backend is touched.

* :func:`curve_figure`: loss and error along ``t`` for the straight line and the
  trained curve (``modeconnect curve``);
* :func:`surface_figure`: a contour plot of a :class:`~modeconnect.landscape.LossSurface`
  with the models and projected paths drawn on it (``modeconnect plane``,
  ``modeconnect landscape --dims 2``);
* :func:`slice_figure`: loss and error along a filter-normalised direction;
* :func:`sharpness_figure`: each sharpness measure per model (``modeconnect sharpness``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping
from typing import Any

from modeconnect.curvature import SharpnessStudy
from modeconnect.curve_fitting import CurveStudy
from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import Curve
from modeconnect.landscape import LossSlice, LossSurface

__all__ = [
    "curve_figure",
    "figure_png",
    "new_figure",
    "sharpness_figure",
    "slice_figure",
    "surface_figure",
]

_PATH_COLORS = {"line": "#d62728", "curve": "#1f77b4"}
_SPLIT_STYLES = {"test": "-", "train": "--"}


def new_figure(width: float, height: float, ncols: int = 1) -> tuple[Any, list[Any]]:
    """A constrained-layout ``Figure`` on an Agg canvas and its ``ncols`` axes in one row."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ModeconnectError(
            "plot: matplotlib is not installed; install it with `pip install modeconnect[plot]`"
        ) from exc
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(1, ncols, squeeze=False)[0])


def figure_png(fig: Any, *, dpi: int = 110) -> bytes:
    """The PNG bytes of ``fig`` (for a report page, or a file staged beside it)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    return buffer.getvalue()


def paths_figure(
    lines: Iterable[tuple[str, str, Curve]],
    *,
    var: str,
    loss: str,
    second: str = "error",
    colors: Mapping[str, str],
    title: str,
) -> Any:
    """Loss (left) and ``second`` (``"error"`` or ``"accuracy"``, right) along ``var``.

    ``lines`` are ``(name, split, curve)``: the colour is the name's, the line style the
    split's (test solid, train dashed).
    """
    fig, (ax_loss, ax_other) = new_figure(10.0, 4.0, ncols=2)
    values = {"error": "errors", "accuracy": "accuracies"}[second]
    for name, split, curve in lines:
        style = {"color": colors.get(name), "linestyle": _SPLIT_STYLES.get(split, ":")}
        label = f"{name} ({split})"
        ax_loss.plot(curve.alphas, curve.losses, marker=".", label=label, **style)
        ax_other.plot(curve.alphas, getattr(curve, values), marker=".", label=label, **style)
    ends = f"{var}  (0 = A, 1 = B)"
    ax_loss.set(xlabel=ends, ylabel=f"loss ({loss})", title=f"Loss along {var}")
    ax_other.set(xlabel=ends, ylabel=second, title=f"{second.capitalize()} along {var}")
    for ax in (ax_loss, ax_other):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    return fig


def curve_figure(study: CurveStudy) -> Any:
    """Loss (left) and error (right) along ``t`` for the line and the curve, every split."""
    kind = f"{study.fit.curve.name} curve"
    names = {"line": "straight line", "curve": kind}
    lines = [
        (names[name], split, result.curve)
        for name, results in (("line", study.line), ("curve", study.curve))
        for split, result in results.items()
    ]
    aligned = "aligned B" if study.alignment is not None else "B as trained"
    title = f"Straight line and {kind} from A to {aligned} (BatchNorm: {study.bn})"
    colors = {names[k]: color for k, color in _PATH_COLORS.items()}
    return paths_figure(lines, var="t", loss=study.loss, colors=colors, title=title)


def surface_figure(surface: LossSurface, *, metric: str = "loss", title: str | None = None) -> Any:
    """Filled contours of ``metric`` (``"loss"``, log-spaced levels, or ``"error"``) on the grid.

    The models (``surface.points``) are marked and labelled and the projected
    paths (``surface.paths``) drawn over the contours.
    """
    if metric not in ("loss", "error"):
        raise ModeconnectError(
            f"surface_figure: metric={metric!r} is not 'loss' or 'error'; pass one"
        )
    import numpy as np
    from matplotlib.colors import LogNorm

    values = np.array(surface.loss if metric == "loss" else surface.error, dtype=float)
    fig, (ax,) = new_figure(6.0, 5.0)
    finite = values[np.isfinite(values)]
    if metric == "loss" and finite.size and finite.min() > 0:
        levels = np.geomspace(finite.min(), finite.max() * (1 + 1e-9), 25)
        filled = ax.contourf(surface.xs, surface.ys, values, levels=levels, norm=LogNorm())
    else:
        filled = ax.contourf(surface.xs, surface.ys, values, levels=25)
    fig.colorbar(filled, ax=ax, label=metric, format="%.3g")
    for name, path in surface.paths.items():
        xs, ys = zip(*path, strict=True)
        ax.plot(xs, ys, color=_PATH_COLORS.get(name, "white"), linewidth=2, label=name)
    for name, (x, y) in surface.points.items():
        ax.scatter([x], [y], color="white", edgecolor="black", zorder=3, s=40)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 6), fontsize="small",
                    bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})  # fmt: skip
    if surface.paths:
        ax.legend(fontsize="small")
    default = "Plane through three models" if surface.kind == "plane" else "Filter-normalised"
    ax.set(xlabel="x", ylabel="y", title=title or f"{default}: {metric}")
    return fig


def slice_figure(line: LossSlice, *, title: str | None = None) -> Any:
    """Loss (left) and error (right) along one filter-normalised direction."""
    fig, (ax_loss, ax_err) = new_figure(10.0, 4.0, ncols=2)
    ax_loss.plot(line.xs, line.loss, marker=".")
    ax_err.plot(line.xs, line.error, marker=".")
    ax_loss.set(xlabel="step along d", ylabel="loss", title="Loss")
    ax_err.set(xlabel="step along d", ylabel="error", title="Error")
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
    fig.suptitle(title or f"Filter-normalised 1-D slice (seed {line.params.get('seed')})")
    return fig


def sharpness_figure(study: SharpnessStudy) -> Any:
    """One panel per measure (λ_max, trace, plain and adaptive sharpness), one bar per model."""
    measures = (
        ("top_eigenvalue", "λ_max (raw)"),
        ("trace", "tr H (raw)"),
        ("plain_sharpness", "plain worst case (raw)"),
        ("adaptive_sharpness", "adaptive (scale-invariant)"),
    )
    fig, axes = new_figure(13.0, 4.0, ncols=len(measures))
    records = {name: s.to_dict() for name, s in study.models.items()}
    for ax, (key, label) in zip(axes, measures, strict=True):
        heights = [records[name][key] for name in records]
        ax.bar(list(records), heights, color="#1f77b4")
        ax.set(title=label)
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(axis="y", alpha=0.3)
        if all(h > 0 and math.isfinite(h) for h in heights) and max(heights) > 50 * min(heights):
            ax.set_yscale("log")
    fig.suptitle("Sharpness at each model")
    return fig
