"""Plain-text tables of what each command computed: the CLI's only output formatting."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from typing import Any

import click


def format_timings(seconds: Mapping[str, float]) -> str:
    """``--verbose``: where the time went, phase by phase, and the total."""
    total = sum(seconds.values())
    rows = (
        [f"{name:<18} {s:8.2f} s {s / total:6.1%}" for name, s in seconds.items()] if total else []
    )
    return "\n".join(["time", *rows, f"{'total':<18} {total:8.2f} s"])


def format_align(report: Any) -> str:
    res = report.result
    al, eq, groups = res.alignment, res.equivalence, res.spec.groups
    units = sum(g.size for g in groups.values())
    lines = [
        f"model      {report.model_ref}",
        f"spec       {len(groups)} permutation groups, {units} units, "
        f"{len(res.spec.fixed)} fixed axes",
        f"alignment  {al.method}: objective {al.objective:.6g}, {al.iterations} sweeps, "
        f"{al.seconds:.2f} s",
        f"guard      {guard_summary(eq)}",
    ]
    if report.written_equivalence is not None:
        lines.append(f"guard      written: {guard_summary(report.written_equivalence)}")
    if report.curves is not None:
        lines += ["", *barrier_table(report.curves)]
    lines += [f"wrote      {name}: {path}" for name, path in report.written.items()]
    return "\n".join(lines)


def barrier_table(curves: Any) -> list[str]:
    """Naive vs aligned barriers, and the accuracy at the point nearest the midpoint."""
    mid = min(
        range(len(curves.naive.points)), key=lambda i: abs(curves.naive.points[i].alpha - 0.5)
    )
    head = f"acc at a={curves.naive.points[mid].alpha:.2f}"
    a, b = curves.naive.points[0], curves.naive.points[-1]
    lm = a.perplexity is not None  # language models: the perplexity at the midpoint too
    ppl_head = f" {'ppl at a=' + format(curves.naive.points[mid].alpha, '.2f'):>14}" if lm else ""
    rows = [f"{'':10} {'loss barrier':>13} {'error barrier':>14} {head:>14}{ppl_head}"]
    for label, bar, curve in (
        ("naive", curves.naive_barrier, curves.naive),
        ("aligned", curves.aligned_barrier, curves.aligned),
    ):
        acc = curve.points[mid].accuracy
        ppl = f" {curve.points[mid].perplexity:14.2f}" if lm else ""
        rows.append(f"{label:10} {bar.loss:13.4f} {bar.error:14.2%} {acc:14.2%}{ppl}")
    ends = [
        f"{n}: loss {p.loss:.4f} acc {p.accuracy:.2%}" + (f" ppl {p.perplexity:.2f}" if lm else "")
        for n, p in (("A", a), ("B", b))
    ]
    rows.append(f"endpoints  {ends[0]}   {ends[1]}")
    return rows


def format_spec(spec: Any) -> str:
    """The coverage line, then every group with its members, then every fixed axis."""
    from modeconnect.fusion import width_groups

    free = set(width_groups(spec))
    lines = [format_coverage(spec), f"{len(spec.groups)} permutation groups"]
    if free:
        lines.append("  (width: the group can change width in merge --method otfusion|zip --width)")
    classes = getattr(spec, "classes", {})
    for g in spec.groups.values():
        inner = f" (one per block of {g.batch_over})" if g.batch_over else ""
        width = "  width" if g.name in free else ""
        known = classes.get(g.name)
        kind = f"  class {known['class']}: {known['reason']}" if known else ""
        lines.append(f"  {g.name}  size {g.size}{inner}{width}{kind}")
        for m in g.members:
            lines.append(f"      {m.key}  axis {m.axis}")
    qk = {name: c for name, c in classes.items() if name not in spec.groups}
    if qk:
        lines.append(f"{len(qk)} query·key maps (per head, inside the head dims)")
        lines += [f"  {name}  class {c['class']}: {c['reason']}" for name, c in qk.items()]
    if spec.fixed:
        lines.append(f"{len(spec.fixed)} fixed axes")
        for f in spec.fixed:
            part = " (part)" if getattr(f, "partial", False) else ""
            lines.append(f"  {f.key}  axis {f.axis}  size {f.size}{part}: {f.reason}")
    return "\n".join(lines)


def format_coverage(spec: Any) -> str:
    """How much of the model can be aligned: units, frozen outputs and why, fixed axes by op."""
    from modeconnect.spec import Coverage

    cov = Coverage.of(spec)
    frozen = ", ".join(f"{key}: {why}" for key, why in list(cov.frozen_outputs.items())[:3])
    more = f" and {cov.frozen - 3} more" if cov.frozen > 3 else ""
    why = f" ({frozen}{more})" if frozen else ""
    reasons = ", ".join(f"{op} {n}" for op, n in cov.reasons.items()) or "none"
    return (
        f"coverage   {cov.units} units in {cov.groups} groups; {cov.frozen}/{cov.weights} weight "
        f"matrices with a fixed output axis{why}; fixed axes: {reasons}"
    )


def command_line(ctx: click.Context) -> str:
    """The command as a shell line, rebuilt from the parsed parameters (non-default options)."""
    words = ctx.command_path.split()
    options: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if isinstance(param, click.Argument):
            words += [str(v) for v in value] if isinstance(value, tuple) else [str(value)]
        elif isinstance(param, click.Option) and value not in (None, False, (), param.default):
            flag = max(param.opts, key=len)
            options += [flag] if value is True else [flag, _render(value)]
    return shlex.join([*words, *options])


def _render(value: Any) -> str:
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def format_barrier(report: Any) -> str:
    """A short table: barriers per path and split, midpoints, intervals, layer-wise, outputs."""
    study = report.study
    examples = ", ".join(f"{k} {v}" for k, v in report.examples.items())
    lines = [f"model      {report.model_ref}", f"data       {examples} examples"]
    if study.alignment is not None:
        al, eq = study.alignment.alignment, study.alignment.equivalence
        lines.append(
            f"alignment  {al.method}: objective {al.objective:.6g}; guard: aligned B == B "
            f"(max rel diff {eq.max_rel_diff:.2e})"
        )
    lines.append(f"barriers   definition {study.definition}, loss {study.loss}, bn {study.bn}")
    lines += _barrier_rows(study)
    for name, pair in study.pairs.items():
        if pair.layerwise is not None:
            lines += _layer_rows(name, pair.layerwise)
    for name, path in report.written.items():
        if not name.startswith("plot_"):
            lines.append(f"wrote      {name}: {path}")
    return "\n".join(lines)


def _barrier_rows(study: Any) -> list[str]:
    d = study.definition
    head = (
        f"{'':8} {'split':6} {'loss barrier':>13} {'error barrier':>14} {'loss@0.5':>9} "
        f"{'acc@0.5':>8} {'acc A':>7} {'acc B':>7}"
    )
    rows = ["", head]
    for name, pair in study.pairs.items():
        for split, res in pair.splits.items():
            bar, mid = res.barriers[d], res.midpoint
            start, end = res.endpoints
            rows.append(
                f"{name:8} {split:6} {bar.loss:13.4f} {bar.error:14.2%} {mid.loss:9.4f} "
                f"{mid.accuracy:8.2%} {start.accuracy:7.2%} {end.accuracy:7.2%}"
            )
        if d in pair.bootstrap:
            ci = pair.bootstrap[d]
            rows.append(
                f"{'':8} {'test':6} {ci.confidence:.0%} interval: loss [{ci.loss.low:.4f}, "
                f"{ci.loss.high:.4f}], error [{ci.error.low:.2%}, {ci.error.high:.2%}] "
                f"({ci.samples} resamples)"
            )
    return rows  # fmt: skip


def _layer_rows(name: str, result: Any) -> list[str]:
    rows = [
        "",
        f"layer-wise {result.definition} loss barrier, {name} "
        "(test; against the full models' endpoints)",
        f"{'group':16} {'rest from A':>12} {'rest from B':>12} {'layers 1..k':>12}",
    ]
    for layer in result.layers:
        rows.append(
            f"{layer.group.name[:16]:16} {layer.from_a.barrier.loss:12.4f} "
            f"{layer.from_b.barrier.loss:12.4f} {layer.cumulative.barrier.loss:12.4f}"
        )
    return rows  # fmt: skip


def format_comparison(comparison: Any) -> str:
    """One plain-text table: method, seconds, objective, naive and aligned barriers."""
    named = any(r.symmetry is not None for r in comparison.rows)  # a column per symmetry
    sym = (lambda r: f"{r.symmetry or '':<13}") if named else (lambda r: "")
    pad = " " * 13 if named else ""
    head = f"{'method':<12}{'symmetry':<13}" if named else f"{'method':<12}"
    head += f"{'seconds':>9}{'objective':>13}{'loss barrier':>24}{'error barrier':>22}"
    lines = [head, f"{'':<34}{pad}{'naive -> aligned':>24}{'naive -> aligned':>22}"]
    for r in comparison.rows:
        loss = f"{r.naive.loss:.4f} -> {r.aligned.loss:.4f}"
        err = f"{r.naive.error:.2%} -> {r.aligned.error:.2%}"
        lines.append(
            f"{r.method:<12}{sym(r)}{r.seconds:>9.2f}{r.objective:>13.6g}{loss:>24}{err:>22}"
        )
    lines.append(f"barriers: {comparison.definition}, {comparison.steps} interpolation points")
    return "\n".join(lines)


def format_merge(report: Any) -> str:
    """The report as a few aligned lines."""
    res = report.result
    lines = [
        f"model      {report.model_ref}",
        f"merge      {len(report.sources)} models, method {res.method}, reference {res.reference}"
        + (
            f", {res.rounds} rounds{'' if res.converged else ' (not converged)'}"
            if res.rounds
            else ""
        )
        + f", {res.seconds:.2f} s",
    ]
    if res.equivalence:
        worst = max(e.max_rel_diff for e in res.equivalence)
        lines.append(f"guard      every permuted model == its original (max rel diff {worst:.2e})")
    if getattr(res, "symmetry", None):
        lines.append("symmetry   " + res.symmetry[0].get("symmetry", "full")
                     + f" (aligned to {res.reference}, which enters folded)")  # fmt: skip
    if report.inputs is not None:
        lines += ["", f"{'':>10} {'weight':>7} {'loss':>8} {'acc':>8}  source"]
        for path, w, m in zip(report.sources, res.weights, report.inputs, strict=True):
            lines.append(f"{'input':>10} {w:7.3f} {m.loss:8.4f} {m.accuracy:8.2%}  {path}")
        if report.plain is not None:
            lines.append(
                f"{'plain avg':>10} {'':7} {report.plain.loss:8.4f} {report.plain.accuracy:8.2%}"
            )
        lines.append(
            f"{'merged':>10} {'':7} {report.merged.loss:8.4f} {report.merged.accuracy:8.2%}"
        )
    for name, path in report.written.items():
        lines.append(f"wrote      {name}: {path}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- curve, plane,
# landscape, sharpness (issue 14)


def _header(report: Any) -> list[str]:
    examples = ", ".join(f"{k} {v}" for k, v in report.examples.items())
    return [f"model      {report.model_ref}", f"data       {examples} examples"]


def _written(report: Any) -> list[str]:
    return [
        f"wrote      {name}: {path}"
        for name, path in report.written.items()
        if not name.startswith("plot_")
    ]


def format_curve(report: Any) -> str:
    """Alignment, the training, and per path and split: barriers and the worst point."""
    study = report.result
    fit, p = study.fit, study.fit.params
    lines = _header(report)
    if study.alignment is not None:
        al, eq = study.alignment.alignment, study.alignment.equivalence
        lines.append(
            f"alignment  {al.method}: objective {al.objective:.6g}; guard: aligned B == B "
            f"(max rel diff {eq.max_rel_diff:.2e})"
        )
    lines += [
        f"curve      {fit.curve.name}, {fit.curve.bends} bend(s): {p['epochs']} epochs, "
        f"{p['steps']} steps, last epoch's train loss {fit.history[-1]:.4f}, {fit.seconds:.1f} s",
        f"barriers   definition {study.definition}, loss {study.loss}, bn {study.bn}",
        "",
        f"{'path':10} {'split':6} {'loss barrier':>13} {'error barrier':>14} {'max loss':>9} "
        f"{'max error':>10} {'acc@0.5':>8}",
    ]
    from modeconnect.io.report import worst  # NaN shows, unlike with max()

    for name, results in (("line", study.line), (fit.curve.name, study.curve)):
        for split, res in results.items():
            bar, curve = res.barriers[study.definition], res.curve
            loss, error = worst(curve.losses), worst(curve.errors)
            lines.append(
                f"{name:10} {split:6} {bar.loss:13.4f} {bar.error:14.2%} {loss:9.4f} "
                f"{error:10.2%} {res.midpoint.accuracy:8.2%}"
            )
    return "\n".join(lines + _written(report))


def _ranges(values: dict[str, Any], where: list[Any], place: str) -> list[str]:
    """``loss  min ... at ..., max ... at ...`` for each metric's flat values."""
    from modeconnect.io.report import extremes

    formats = {"loss": "{:.4f}", "error": "{:.2%}"}
    lines = []
    for name, flat in values.items():
        (low, at_low), (high, at_high) = extremes(flat, where)
        fmt = formats[name]
        lines.append(
            f"{name:10} min {fmt.format(low)} at {place.format(*at_low)}, "
            f"max {fmt.format(high)} at {place.format(*at_high)}"
        )
    return lines


def _surface_lines(surface: Any) -> list[str]:
    cells = [(x, y) for y in surface.ys for x in surface.xs]
    flat = {
        "loss": [v for row in surface.loss for v in row],
        "error": [v for row in surface.error for v in row],
    }
    return [
        f"grid       {len(surface.xs)} x {len(surface.ys)} points, x in [{surface.xs[0]:.3g}, "
        f"{surface.xs[-1]:.3g}], y in [{surface.ys[0]:.3g}, {surface.ys[-1]:.3g}]",
        *_ranges(flat, cells, "({:.3g}, {:.3g})"),
    ]


def format_plane(report: Any) -> str:
    """The three models' coordinates in the plane, the grid, where loss and error peak."""
    surface = report.result
    points = "  ".join(f"{n} ({x:.3g}, {y:.3g})" for n, (x, y) in surface.points.items())
    lines = [*_header(report), f"points     {points}", *_surface_lines(surface)]
    lines.append(f"paths      {', '.join(surface.paths)} (projected), bn {surface.params['bn']}")
    return "\n".join(lines + _written(report))


def format_landscape(report: Any) -> str:
    """The directions, the grid, and the loss and error ranges on it."""
    result, p = report.result, report.result.params
    span = f"[{p['span'][0]:g}, {p['span'][1]:g}]"
    lines = _header(report)
    if hasattr(result, "ys"):
        lines.append(
            f"surface    two filter-normalised directions (seed {p['seed']}), bn {p['bn']}"
        )
        lines += _surface_lines(result)
    else:
        lines.append(
            f"slice      one filter-normalised direction (seed {p['seed']}), {len(result.xs)} "
            f"points over {span}, bn {p['bn']}"
        )
        flat = {"loss": list(result.loss), "error": list(result.error)}
        lines += _ranges(flat, [(x,) for x in result.xs], "x={:.3g}")
    return "\n".join(lines + _written(report))


def format_sharpness(report: Any) -> str:
    """One row per model: loss, top eigenvalues, trace, plain and adaptive sharpness."""
    study = report.result
    first = next(iter(study.models.values()))
    lines = [
        *_header(report),
        f"measures   eigenvalues by {first.spectrum.method}, trace from {first.trace.samples} "
        f"probes, {first.plain.norm} balls, {first.plain.steps} ascent steps",
        "",
        f"{'model':10} {'loss':>10} {'top eigenvalues':>24} {'trace ± s.e.':>20} "
        f"{'plain ρ=' + format(first.plain.rho, 'g'):>13} "
        f"{'adaptive ρ=' + format(first.adaptive.rho, 'g'):>15}",
    ]
    for name, s in study.models.items():
        eig = ", ".join(f"{v:.4g}" for v in s.spectrum.eigenvalues)
        trace = f"{s.trace.trace:.4g} ± {s.trace.std_error:.2g}"
        lines.append(
            f"{name[:10]:10} {s.loss:10.4g} {eig:>24} {trace:>20} {s.plain.sharpness:13.4g} "
            f"{s.adaptive.sharpness:15.4g}"
        )
    return "\n".join(lines + _written(report))


def guard_summary(eq: Any) -> str:
    """What the guard checked, in one line: the values against the tolerance of the
    precision it ran in, and the predictions."""
    same = round(eq.agreement * eq.rows)
    return (
        f"aligned B == B (max abs diff {eq.max_abs_diff:.2e}, rel {eq.max_rel_diff:.2e} <= "
        f"{eq.tolerance:.2e} in {eq.precision}; same prediction on {same} of {eq.rows})"
    )
