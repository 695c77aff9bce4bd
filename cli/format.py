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
        f"guard      aligned B == B (max abs diff {eq.max_abs_diff:.2e}, "
        f"rel {eq.max_rel_diff:.2e})",
    ]
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
    rows = [f"{'':10} {'loss barrier':>13} {'error barrier':>14} {head:>14}"]
    for label, bar, curve in (
        ("naive", curves.naive_barrier, curves.naive),
        ("aligned", curves.aligned_barrier, curves.aligned),
    ):
        acc = curve.points[mid].accuracy
        rows.append(f"{label:10} {bar.loss:13.4f} {bar.error:14.2%} {acc:14.2%}")
    rows.append(
        f"endpoints  A: loss {a.loss:.4f} acc {a.accuracy:.2%}   "
        f"B: loss {b.loss:.4f} acc {b.accuracy:.2%}"
    )
    return rows


def format_spec(spec: Any) -> str:
    lines = [f"{len(spec.groups)} permutation groups"]
    for g in spec.groups.values():
        inner = f" (one per block of {g.batch_over})" if g.batch_over else ""
        lines.append(f"  {g.name}  size {g.size}{inner}")
        for m in g.members:
            lines.append(f"      {m.key}  axis {m.axis}")
    if spec.fixed:
        lines.append(f"{len(spec.fixed)} fixed axes")
        for f in spec.fixed:
            lines.append(f"  {f.key}  axis {f.axis}  size {f.size}: {f.reason}")
    return "\n".join(lines)


def command_line(ctx: click.Context) -> str:
    """The command as a shell line, rebuilt from the parsed parameters (non-default options)."""
    words = ctx.command_path.split()
    options: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if isinstance(param, click.Argument):
            words.append(str(value))
        elif isinstance(param, click.Option) and value not in (None, False, param.default):
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
    head = f"{'method':<12}{'seconds':>9}{'objective':>13}{'loss barrier':>24}{'error barrier':>22}"
    lines = [head, f"{'':<34}{'naive -> aligned':>24}{'naive -> aligned':>22}"]
    for r in comparison.rows:
        loss = f"{r.naive.loss:.4f} -> {r.aligned.loss:.4f}"
        err = f"{r.naive.error:.2%} -> {r.aligned.error:.2%}"
        lines.append(f"{r.method:<12}{r.seconds:>9.2f}{r.objective:>13.6g}{loss:>24}{err:>22}")
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
