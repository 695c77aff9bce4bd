"""Plots and self-contained HTML reports of every study.

A report is one folder: PNG plots and ``report.html``, a page that shows the command,
every number in tables, each plot (embedded as base64, and linked to the PNG file
beside it) and, folded, the command's JSON. A page is a list of :class:`Section`\\ s;
each command's results have their builder:

* :func:`barrier_sections` (``modeconnect barrier``): ``curves.png``, loss and accuracy
  along α, naive vs aligned, test vs train; ``layerwise.png`` (with layer-wise
  results), the barrier of each layer group, one bar per path (``from_a``, ``from_b``,
  ``cumulative``);
* :func:`curve_sections` (``modeconnect curve``): ``curve.png``, loss and error along
  ``t`` for the straight line and the trained curve;
* :func:`plane_sections` (``modeconnect plane``): ``plane_loss.png``,
  ``plane_error.png``, contours on the plane through three models;
* :func:`landscape_sections` (``modeconnect landscape``): ``landscape_1d.png`` or
  ``landscape_2d.png`` along filter-normalised directions;
* :func:`sharpness_sections` (``modeconnect sharpness``): ``sharpness.png``.

:func:`stage_page` stages any page's files; :func:`stage_report` and
:func:`write_report` the barrier report. matplotlib is imported only when plotting
(``pip install modeconnect[plot]``), through :mod:`modeconnect.figures`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from modeconnect.barrier_studies import SplitResult, Study
from modeconnect.errors import ModeconnectError
from modeconnect.io.targets import REPORT_FILES, Outputs, Staging

if TYPE_CHECKING:
    from modeconnect.alignment import AlignResult
    from modeconnect.curvature import SharpnessStudy
    from modeconnect.curve_fitting import CurveStudy
    from modeconnect.landscape import LossSlice, LossSurface

__all__ = [
    "CURVE_PLOTS",
    "LANDSCAPE_PLOTS",
    "PLANE_PLOTS",
    "REPORT_FILES",
    "SHARPNESS_PLOTS",
    "ReportFiles",
    "Section",
    "barrier_sections",
    "check_report",
    "curve_sections",
    "extremes",
    "landscape_sections",
    "plane_sections",
    "plot_curves",
    "plot_layerwise",
    "png",
    "render_html",
    "render_page",
    "sharpness_sections",
    "stage_page",
    "stage_report",
    "worst",
    "write_report",
]

T = TypeVar("T")
_COLORS = {"naive": "#d62728", "aligned": "#1f77b4"}

CURVE_PLOTS = ("curve",)
PLANE_PLOTS = ("plane_loss", "plane_error")
LANDSCAPE_PLOTS = {1: ("landscape_1d",), 2: ("landscape_2d",)}
SHARPNESS_PLOTS = ("sharpness",)
"""The plots (file stems) each command's report writes, known before any work."""


@dataclass(frozen=True)
class ReportFiles:
    """The files a report wrote: the HTML page and the plots by name."""

    html: Path
    plots: Mapping[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class Section:
    """One part of a report page: a heading, HTML (tables, notes) and plots (PNG by file stem)."""

    title: str
    body: str = ""
    figures: Mapping[str, bytes] = field(default_factory=dict)


def check_report(
    directory: str | Path,
    plots: Iterable[str],
    *,
    inputs: Iterable[str | Path | None],
    force: bool = False,
) -> None:
    """Refuse, before any work, a report folder whose plot files cannot be written.

    :class:`~modeconnect.io.targets.Outputs` checks the files of
    :data:`REPORT_FILES` (the barrier report's); each other plot ``NAME.png`` is
    checked here the same way: not an input, not a directory, not existing
    without ``force``.
    """
    folder = Path(directory)
    extra = [f"{name}.png" for name in plots if f"{name}.png" not in REPORT_FILES]
    targets = [("--report", folder, "report"), *(("--report", folder / n, "plot") for n in extra)]
    Outputs.plan(targets, inputs=inputs, force=force)


def write_report(
    study: Study,
    directory: str | Path,
    *,
    command: str | None = None,
    force: bool = False,
    meta: Mapping[str, Any] | None = None,
) -> ReportFiles:
    """Write the barrier plots and ``report.html`` into ``directory`` (created if missing).

    ``command`` is shown as the command that produced the report; ``meta`` (e.g.
    the CLI's JSON report) is embedded in the page as JSON, after the tables.
    Existing report files are replaced only with ``force``; all files appear together.
    """
    path = Path(directory)
    outputs = Outputs.plan([("the report", path, "report")], inputs=(), force=force)
    with outputs.writing() as staging:
        return stage_report(staging, study, path, command=command, meta=meta)


def stage_report(
    staging: Staging,
    study: Study,
    directory: Path,
    *,
    command: str | None = None,
    meta: Mapping[str, Any] | None = None,
) -> ReportFiles:
    """Stage the barrier report's files in ``directory`` (see :func:`write_report`)."""
    return stage_page(
        staging, directory, "Barrier report", barrier_sections(study), command=command, meta=meta
    )


def stage_page(
    staging: Staging,
    directory: Path,
    title: str,
    sections: Sequence[Section],
    *,
    command: str | None = None,
    meta: Mapping[str, Any] | None = None,
) -> ReportFiles:
    """Stage every section's plots as ``NAME.png`` and the page as ``report.html``."""
    staging.folder(directory)
    plots = {
        name: staging.write_bytes(directory / f"{name}.png", data)
        for section in sections
        for name, data in section.figures.items()
    }
    page = render_page(title, sections, command=command, meta=meta)
    return ReportFiles(staging.write_text(directory / "report.html", page), plots)


# --------------------------------------------------------------------------- barrier plots


def plot_curves(study: Study, path: str | Path | IO[bytes]) -> str | Path | IO[bytes]:
    """Loss (left) and accuracy (right) along α for every path and split; returns ``path``."""
    from modeconnect.figures import paths_figure

    lines = [
        (n, split, r.curve) for n, pair in study.pairs.items() for split, r in pair.splits.items()
    ]
    fig = paths_figure(
        lines, var="α", loss=study.loss, second="accuracy", colors=_COLORS,
        title=f"Linear interpolation, BatchNorm/REPAIR: {study.bn}",
    )  # fmt: skip
    fig.savefig(path, dpi=110, format="png")
    return path


def plot_layerwise(study: Study, path: str | Path | IO[bytes]) -> str | Path | IO[bytes]:
    """Grouped bars of the layer-wise loss barrier per group, one panel per path pair."""
    from modeconnect.figures import new_figure

    pairs = {n: p.layerwise for n, p in study.pairs.items() if p.layerwise is not None}
    if not pairs:
        raise ModeconnectError(
            "plot_layerwise: the study has no layer-wise results; run it with layerwise=True"
        )
    fig, axes = new_figure(max(5.0, 4.5 * len(pairs)), 4.0, ncols=len(pairs))
    variants = (("from_a", "rest from A"), ("from_b", "rest from B"), ("cumulative", "layers 1..k"))
    width = 0.8 / len(variants)
    for ax, (name, result) in zip(axes, pairs.items(), strict=True):
        names = [layer.group.name for layer in result.layers]
        xs = range(len(names))
        for j, (variant, label) in enumerate(variants):
            heights = [getattr(layer, variant).barrier.loss for layer in result.layers]
            ax.bar([x + (j - 1) * width for x in xs], heights, width, label=label)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(list(xs), names, rotation=45 if len(names) > 6 else 0, ha="right")
        ax.set(
            xlabel="layer group",
            ylabel=f"{result.definition} loss barrier",
            title=f"Layer-wise barriers, {name}",
        )
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=110, format="png")
    return path


def png(plot: Callable[[Study, Any], Any], study: Study) -> bytes:
    """The PNG bytes a plot function draws (it is given a file object instead of a path)."""
    buffer = io.BytesIO()
    plot(study, buffer)
    return buffer.getvalue()


# --------------------------------------------------------------------------- pages


def render_page(
    title: str,
    sections: Sequence[Section],
    *,
    command: str | None = None,
    meta: Mapping[str, Any] | None = None,
) -> str:
    """The page: title, command, each section (heading, tables, plots), the JSON folded."""
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>modeconnect: {html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if command:
        parts.append(f"<h2>Command</h2><pre>{html.escape(command)}</pre>")
    parts += [_render_section(section) for section in sections]
    if meta is not None:
        text = html.escape(json.dumps(meta, indent=1, allow_nan=True))
        parts.append(f"<details><summary>All numbers (JSON)</summary><pre>{text}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _render_section(section: Section) -> str:
    parts = [f"<h2>{html.escape(section.title)}</h2>", section.body]
    for name, image in section.figures.items():
        data = base64.b64encode(image).decode("ascii")
        file = html.escape(f"{name}.png")
        parts.append(
            f'<figure><img alt="{file}" src="data:image/png;base64,{data}"><figcaption>'
            f'<a href="{file}">{file}</a></figcaption></figure>'
        )
    return "".join(parts)


def render_html(
    study: Study,
    images: Mapping[str, bytes],
    *,
    command: str | None = None,
    meta: Mapping[str, Any] | None = None,
) -> str:
    """The barrier report page with the plots given (PNG bytes by name)."""
    sections = barrier_sections(study, images)
    return render_page("Barrier report", sections, command=command, meta=meta)


_CSS = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
    "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
    "img{max-width:100%}pre{background:#f6f6f6;padding:8px;overflow-x:auto}"
)


def _row(cells: Sequence[str], header: bool = False) -> str:
    tag = "th" if header else "td"
    return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"


def _table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    return f"<table>{_row(head, header=True)}{''.join(_row(r) for r in rows)}</table>"


def _settings(rows: Iterable[tuple[str, str]]) -> str:
    return "<table>" + "".join(_row([k, v]) for k, v in rows) + "</table>"


def _note(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def _alignment_rows(alignment: AlignResult | None) -> list[tuple[str, str]]:
    if alignment is None:
        return []
    al, eq = alignment.alignment, alignment.equivalence
    return [
        ("alignment", f"{al.method}, objective {al.objective:.6g}"),
        ("guard", f"aligned B == B, max rel diff {eq.max_rel_diff:.2e}"),
    ]


def _paths_table(paths: Mapping[str, Mapping[str, SplitResult]], var: str) -> str:
    """Both barriers, the worst and the middle point, per path and split."""
    head = ["path", "split", "lerp loss", "lerp error", "mean loss", "mean error", "max loss"]
    head += ["max error", f"loss at {var}=0.5", f"acc at {var}=0.5", "A acc", "B acc"]
    rows = []
    for name, splits in paths.items():
        for split, res in splits.items():
            lerp, mean, mid = res.barriers["lerp"], res.barriers["mean"], res.midpoint
            start, end = res.endpoints
            worst_loss, worst_error = worst(res.curve.losses), worst(res.curve.errors)
            rows.append([
                name, split, f"{lerp.loss:.4f}", f"{lerp.error:.2%}", f"{mean.loss:.4f}",
                f"{mean.error:.2%}", f"{worst_loss:.4f}", f"{worst_error:.2%}", f"{mid.loss:.4f}",
                f"{mid.accuracy:.2%}", f"{start.accuracy:.2%}", f"{end.accuracy:.2%}",
            ])  # fmt: skip
    return _table(head, rows)


def _figure_section(
    title: str, figures: Mapping[str, Callable[[], Any]], body: str = ""
) -> Section:
    """A section whose plots are drawn now (each callable returns a matplotlib figure)."""
    from modeconnect.figures import figure_png

    return Section(title, body, {name: figure_png(draw()) for name, draw in figures.items()})


# --------------------------------------------------------------------------- barrier


def barrier_sections(study: Study, images: Mapping[str, bytes] | None = None) -> list[Section]:
    """Settings, barriers (and bootstrap intervals), the plots, the layer-wise tables.

    ``images`` (PNG bytes by name) default to ``curves`` and, with layer-wise
    results, ``layerwise``, drawn now.
    """
    if images is None:
        images = {"curves": png(plot_curves, study)}
        if any(p.layerwise is not None for p in study.pairs.values()):
            images["layerwise"] = png(plot_layerwise, study)
    settings = [
        ("barrier definition", study.definition),
        ("loss", study.loss),
        ("BatchNorm / REPAIR", study.bn),
        ("alphas", f"{len(study.alphas)} points from 0 to 1"),
        ("seconds", f"{study.seconds:.1f}"),
        *_alignment_rows(study.alignment),
    ]
    barriers = _paths_table({n: p.splits for n, p in study.pairs.items()}, "α")
    sections = [
        Section("Settings", _settings(settings)),
        Section("Barriers", barriers + _boot(study)),
    ]
    sections += [Section(name, figures={name: image}) for name, image in images.items()]
    sections += [
        _layerwise_section(name, p.layerwise) for name, p in study.pairs.items() if p.layerwise
    ]
    return sections


def _boot(study: Study) -> str:
    boot = [
        [name, d, f"[{b.loss.low:.4f}, {b.loss.high:.4f}]",
         f"[{b.error.low:.2%}, {b.error.high:.2%}]", str(b.samples), f"{b.confidence:.0%}"]
        for name, pair in study.pairs.items()
        for d, b in pair.bootstrap.items()
    ]  # fmt: skip
    if not boot:
        return ""
    head = ["path", "definition", "loss interval", "error interval", "resamples", "level"]
    return f"<h3>Bootstrap intervals (test)</h3>{_table(head, boot)}"


def _layerwise_section(name: str, result: Any) -> Section:
    head = ["group", "keys", "rest from A", "rest from B", "layers 1..k"]
    rows = [
        [layer.group.name, str(len(layer.group.keys)),
         *(f"{getattr(layer, v).barrier.loss:.4f} / {getattr(layer, v).barrier.error:.2%}"
           for v in ("from_a", "from_b", "cumulative"))]
        for layer in result.layers
    ]  # fmt: skip
    note = (
        f"{result.definition} barrier (loss / error) of each path against the full models' "
        f"endpoints; {result.evaluated} of {result.points} points evaluated, the rest reused."
    )
    return Section(f"Layer-wise barriers, {name}", _note(note) + _table(head, rows))


# --------------------------------------------------------------------------- curve


def curve_sections(study: CurveStudy) -> list[Section]:
    """Settings and training, barriers of the line and the curve, ``curve.png``."""
    from modeconnect.figures import curve_figure

    fit, p = study.fit, study.fit.params
    settings = [
        ("curve", f"{fit.curve.name}, {fit.curve.bends} bend(s), endpoints fixed"),
        ("training", f"{p['epochs']} epochs, {p['steps']} SGD steps of batch {p['batch_size']}, "
                     f"lr {p['lr']:g} ({p['schedule']}), momentum {p['momentum']:g}, "
                     f"weight decay {p['weight_decay']:g}, seed {p['seed']}, {fit.seconds:.1f} s"),
        ("barrier definition", study.definition),
        ("loss", study.loss),
        ("BatchNorm", study.bn),
        ("t", f"{len(study.alphas)} points from 0 to 1"),
        ("seconds", f"{study.seconds:.1f}"),
        *_alignment_rows(study.alignment),
    ]  # fmt: skip
    history = _table(
        ["epoch", "mean training loss"],
        ([str(i + 1), f"{loss:.4f}"] for i, loss in enumerate(fit.history)),
    )
    paths = _paths_table({"line": study.line, fit.curve.name: study.curve}, "t")
    return [
        Section("Settings", _settings(settings)),
        _figure_section("Line and curve", {"curve": partial(curve_figure, study)}, paths),
        Section("Training", f"<details><summary>Loss per epoch</summary>{history}</details>"),
    ]


# --------------------------------------------------------------------------- landscapes


def plane_sections(surface: LossSurface) -> list[Section]:
    """The models' coordinates, the grid's range, ``plane_loss.png`` and ``plane_error.png``."""
    from modeconnect.figures import surface_figure

    names = ", ".join(surface.points)
    draw = {
        f"plane_{m}": partial(
            surface_figure, surface, metric=m, title=f"{m.capitalize()}, plane through {names}"
        )
        for m in ("loss", "error")
    }
    points = _table(
        ["model", "x", "y"], ([n, f"{x:.4g}", f"{y:.4g}"] for n, (x, y) in surface.points.items())
    )
    note = _note(
        "Orthonormal basis of the plane (Gram-Schmidt): origin at the first model, x along the "
        "second, y towards the third."
    )
    return [_figure_section(f"Plane through {names}", draw, note + points + _grid_table(surface))]


def landscape_sections(result: LossSlice | LossSurface) -> list[Section]:
    """A filter-normalised slice (``landscape_1d.png``) or surface (``landscape_2d.png``)."""
    from modeconnect.figures import slice_figure, surface_figure
    from modeconnect.landscape import LossSurface

    params = _settings((k, str(v)) for k, v in result.params.items())
    note = _note(
        "Directions drawn from a Gaussian and rescaled filter by filter to the model's filter "
        "norms (Li et al. 2018); biases and normalisation parameters do not move."
    )
    if isinstance(result, LossSurface):
        draw = {"landscape_2d": partial(surface_figure, result)}
        return [_figure_section("Loss surface", draw, note + params + _grid_table(result))]
    rows = [["loss", *_range(result.loss, result.xs, "{:.4f}")]]
    rows.append(["error", *_range(result.error, result.xs, "{:.2%}")])
    table = _table(["", "at 0", "min", "at x", "max", "at x"], rows)
    draw = {"landscape_1d": partial(slice_figure, result)}
    return [_figure_section("Loss along one direction", draw, note + params + table)]


def _grid_table(surface: LossSurface) -> str:
    """The grid's extent and the range of loss and error on it (with where)."""
    cells = [(x, y) for y in surface.ys for x in surface.xs]
    rows = []
    for name, grid, fmt in (("loss", surface.loss, "{:.4f}"), ("error", surface.error, "{:.2%}")):
        (low, at_low), (high, at_high) = extremes([v for row in grid for v in row], cells)
        rows.append([name, fmt.format(low), "({:.3g}, {:.3g})".format(*at_low),
                     fmt.format(high), "({:.3g}, {:.3g})".format(*at_high)])  # fmt: skip
    extent = (
        f"{len(surface.xs)} × {len(surface.ys)} points, x in [{surface.xs[0]:.3g}, "
        f"{surface.xs[-1]:.3g}], y in [{surface.ys[0]:.3g}, {surface.ys[-1]:.3g}]"
    )
    return _note(extent) + _table(["", "min", "at (x, y)", "max", "at (x, y)"], rows)


def _range(values: Sequence[float], xs: Sequence[float], fmt: str) -> list[str]:
    """Value at x = 0 (if on the grid), the minimum and the maximum with where."""
    at_zero = next((fmt.format(v) for v, x in zip(values, xs) if x == 0.0), "")
    (low, at_low), (high, at_high) = extremes(values, xs)
    return [at_zero, fmt.format(low), f"{at_low:.3g}", fmt.format(high), f"{at_high:.3g}"]


def worst(values: Sequence[float]) -> float:
    """The largest value; NaN if any is NaN (Python's ``max`` would drop it)."""
    return math.nan if any(math.isnan(v) for v in values) else max(values)


def extremes(
    values: Sequence[float], where: Sequence[T]
) -> tuple[tuple[float, T], tuple[float, T]]:
    """``(min, where)`` and ``(max, where)`` over the values that are not NaN (all NaN: NaN)."""
    known = [i for i, v in enumerate(values) if not math.isnan(v)]
    if not known:
        return (math.nan, where[0]), (math.nan, where[0])
    low = min(known, key=lambda i: values[i])
    high = max(known, key=lambda i: values[i])
    return (values[low], where[low]), (values[high], where[high])


# --------------------------------------------------------------------------- sharpness


def sharpness_sections(study: SharpnessStudy) -> list[Section]:
    """Every measure per model, and ``sharpness.png``."""
    from modeconnect.figures import sharpness_figure

    head = ["model", "loss", "top eigenvalues", "trace ± s.e.", "plain sharpness"]
    head.append("adaptive sharpness")
    rows = [
        [name, f"{s.loss:.5g}", ", ".join(f"{v:.4g}" for v in s.spectrum.eigenvalues),
         f"{s.trace.trace:.4g} ± {s.trace.std_error:.2g}", f"{s.plain.sharpness:.4g}",
         f"{s.adaptive.sharpness:.4g}"]
        for name, s in study.models.items()
    ]  # fmt: skip
    first = next(iter(study.models.values()))
    note = _note(
        f"Eigenvalues by {first.spectrum.method}, trace by Hutchinson ({first.trace.samples} "
        f"probes); plain sharpness: worst loss increase in an {first.plain.norm} ball of radius "
        f"{first.plain.rho:g}; adaptive (scale-invariant): in the ball ‖ε/|θ|‖ ≤ "
        f"{first.adaptive.rho:g} ({first.adaptive.steps} ascent steps)."
    )
    params = _settings((k, str(v)) for k, v in study.params.items())
    draw = {"sharpness": partial(sharpness_figure, study)}
    return [_figure_section("Sharpness", draw, note + _table(head, rows) + params)]
