"""Plots and a self-contained HTML report of a barrier study.

:func:`write_report` writes into one directory:

* ``curves.png``: loss and accuracy along α, naive vs aligned, test vs train;
* ``layerwise.png`` (with layer-wise results): the barrier of each layer group,
  one bar per path (``from_a``, ``from_b``, ``cumulative``), naive and aligned;
* ``report.html``: the plots (embedded as base64, and linked to the PNG files
  beside it), every number, and the command that produced them.

matplotlib is imported only here and only when plotting (``pip install
modeconnect[plot]``); figures are drawn with the Agg canvas directly, so no
pyplot state or GUI backend is touched.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from modeconnect.errors import ModeconnectError
from modeconnect.files.targets import REPORT_FILES, Outputs, Staging
from modeconnect.study import Study

__all__ = [
    "REPORT_FILES",
    "ReportFiles",
    "plot_curves",
    "plot_layerwise",
    "png",
    "render_html",
    "stage_report",
    "write_report",
]

_COLORS = {"naive": "#d62728", "aligned": "#1f77b4"}
_STYLES = {"test": "-", "train": "--"}


@dataclass(frozen=True)
class ReportFiles:
    """The files :func:`write_report` wrote: the HTML page and the plots by name."""

    html: Path
    plots: Mapping[str, Path] = field(default_factory=dict)


def write_report(
    study: Study,
    directory: str | Path,
    *,
    command: str | None = None,
    force: bool = False,
    meta: Mapping[str, Any] | None = None,
) -> ReportFiles:
    """Write the plots and ``report.html`` into ``directory`` (created if missing).

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
    """Stage the report's files in ``directory`` (see :func:`write_report`) on ``staging``."""
    staging.folder(directory)
    images = {"curves": png(plot_curves, study)}
    if any(p.layerwise is not None for p in study.pairs.values()):
        images["layerwise"] = png(plot_layerwise, study)
    plots = {
        name: staging.write_bytes(directory / f"{name}.png", data) for name, data in images.items()
    }
    page = render_html(study, images, command=command, meta=meta)
    html_path = staging.write_text(directory / "report.html", page)
    return ReportFiles(html_path, plots)


# --------------------------------------------------------------------------- plots


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ModeconnectError(
            "Plots need matplotlib; install it with `pip install modeconnect[plot]`."
        ) from exc
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def plot_curves(study: Study, path: str | Path | IO[bytes]) -> str | Path | IO[bytes]:
    """Loss (left) and accuracy (right) along α for every path and split; returns ``path``."""
    fig, (ax_loss, ax_acc) = _figure(10.0, 4.0, ncols=2)
    for name, pair in study.pairs.items():
        for split, result in pair.splits.items():
            curve = result.curve
            style = {"color": _COLORS.get(name), "linestyle": _STYLES.get(split, ":")}
            label = f"{name} ({split})"
            ax_loss.plot(curve.alphas, curve.losses, marker=".", label=label, **style)
            ax_acc.plot(curve.alphas, curve.accuracies, marker=".", label=label, **style)
    ax_loss.set(xlabel="α  (0 = A, 1 = B)", ylabel=f"loss ({study.loss})", title="Loss along α")
    ax_acc.set(xlabel="α  (0 = A, 1 = B)", ylabel="accuracy", title="Accuracy along α")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"Linear interpolation, BatchNorm/REPAIR: {study.bn}")
    fig.savefig(path, dpi=110, format="png")
    return path


def plot_layerwise(study: Study, path: str | Path | IO[bytes]) -> str | Path | IO[bytes]:
    """Grouped bars of the layer-wise loss barrier per group, one panel per path pair."""
    pairs = {n: p.layerwise for n, p in study.pairs.items() if p.layerwise is not None}
    if not pairs:
        raise ModeconnectError("The study has no layer-wise results; run it with layerwise=True.")
    fig, axes = _figure(max(5.0, 4.5 * len(pairs)), 4.0, ncols=len(pairs))
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


# --------------------------------------------------------------------------- HTML


def png(plot: Callable[[Study, Any], Any], study: Study) -> bytes:
    """The PNG bytes a plot function draws (it is given a file object instead of a path)."""
    buffer = io.BytesIO()
    plot(study, buffer)
    return buffer.getvalue()


def render_html(
    study: Study,
    images: Mapping[str, bytes],
    *,
    command: str | None = None,
    meta: Mapping[str, Any] | None = None,
) -> str:
    """The report page: command, barrier tables, plots (inline PNG + link), layer-wise table."""
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>modeconnect barrier report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Barrier report</h1>",
    ]
    if command:
        parts.append(f"<h2>Command</h2><pre>{html.escape(command)}</pre>")
    parts.append(_settings_table(study))
    parts.append(_barrier_table(study))
    for name, image in images.items():
        data = base64.b64encode(image).decode("ascii")
        file = html.escape(f"{name}.png")
        parts.append(
            f'<h2>{html.escape(name)}</h2><figure><img alt="{file}" '
            f'src="data:image/png;base64,{data}"><figcaption><a href="{file}">{file}</a>'
            "</figcaption></figure>"
        )
    parts += [_layerwise_table(name, p.layerwise) for name, p in study.pairs.items() if p.layerwise]
    if meta is not None:
        text = html.escape(json.dumps(meta, indent=1, allow_nan=True))
        parts.append(f"<details><summary>All numbers (JSON)</summary><pre>{text}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


_CSS = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
    "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
    "img{max-width:100%}pre{background:#f6f6f6;padding:8px;overflow-x:auto}"
)


def _row(cells: list[str], header: bool = False) -> str:
    tag = "th" if header else "td"
    return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"


def _settings_table(study: Study) -> str:
    rows = [
        ("barrier definition", study.definition),
        ("loss", study.loss),
        ("BatchNorm / REPAIR", study.bn),
        ("alphas", f"{len(study.alphas)} points from 0 to 1"),
        ("seconds", f"{study.seconds:.1f}"),
    ]
    if study.alignment is not None:
        al, eq = study.alignment.alignment, study.alignment.equivalence
        rows.append(("alignment", f"{al.method}, objective {al.objective:.6g}"))
        rows.append(("guard", f"aligned B == B, max rel diff {eq.max_rel_diff:.2e}"))
    body = "".join(_row([k, v]) for k, v in rows)
    return f"<h2>Settings</h2><table>{body}</table>"


def _barrier_table(study: Study) -> str:
    columns = ["path", "split", "lerp loss", "lerp error", "mean loss", "mean error"]
    columns += ["loss at α=0.5", "acc at α=0.5", "A acc", "B acc"]
    rows = [_row(columns, header=True)]
    for name, pair in study.pairs.items():
        for split, res in pair.splits.items():
            lerp, mean, mid = res.barriers["lerp"], res.barriers["mean"], res.midpoint
            start, end = res.endpoints
            cells = [f"{lerp.loss:.4f}", f"{lerp.error:.2%}", f"{mean.loss:.4f}"]
            cells += [f"{mean.error:.2%}", f"{mid.loss:.4f}", f"{mid.accuracy:.2%}"]
            cells += [f"{start.accuracy:.2%}", f"{end.accuracy:.2%}"]
            rows.append(_row([name, split, *cells]))
    table = f"<h2>Barriers</h2><table>{''.join(rows)}</table>"
    boot = [
        _row([name, d, f"[{b.loss.low:.4f}, {b.loss.high:.4f}]",
              f"[{b.error.low:.2%}, {b.error.high:.2%}]", str(b.samples), f"{b.confidence:.0%}"])
        for name, pair in study.pairs.items()
        for d, b in pair.bootstrap.items()
    ]  # fmt: skip
    if boot:
        head = _row(
            ["path", "definition", "loss interval", "error interval", "resamples", "level"], True
        )
        table += f"<h3>Bootstrap intervals (test)</h3><table>{head}{''.join(boot)}</table>"
    return table


def _layerwise_table(name: str, result: Any) -> str:
    head = _row(["group", "keys", "rest from A", "rest from B", "layers 1..k"], header=True)
    rows = [
        _row(
            [
                layer.group.name,
                str(len(layer.group.keys)),
                *(
                    f"{getattr(layer, v).barrier.loss:.4f} / {getattr(layer, v).barrier.error:.2%}"
                    for v in ("from_a", "from_b", "cumulative")
                ),
            ]
        )  # fmt: skip
        for layer in result.layers
    ]
    note = (
        f"{result.definition} barrier (loss / error) of each path against the full models' "
        f"endpoints; {result.evaluated} of {result.points} points evaluated, the rest reused."
    )
    return (
        f"<h2>Layer-wise barriers, {html.escape(name)}</h2><p>{html.escape(note)}</p>"
        f"<table>{head}{''.join(rows)}</table>"
    )
