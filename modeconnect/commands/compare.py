"""``compare`` on files: every alignment method on one pair of checkpoints, in one table."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from modeconnect.commands.barrier import resolve_loss
from modeconnect.commands.options import CompareOptions
from modeconnect.commands.results import FileReport
from modeconnect.commands.session import open_session
from modeconnect.compare import Comparison, compare_methods
from modeconnect.distributed import cluster_from
from modeconnect.io.checkpoints import json_writer

__all__ = ["CompareReport", "compare_files"]


class CompareReport(FileReport[Comparison]):
    """What ``modeconnect compare`` computed and wrote: the :class:`FileReport` of a
    :class:`~modeconnect.compare.Comparison`."""

    @property
    def comparison(self) -> Comparison:
        return self.result

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "model": self.model_ref}  # its 0.2.0 shape: the reference


def compare_files(
    a_path: str | Path,
    b_path: str | Path,
    options: CompareOptions | None = None,
    **keywords: Any,
) -> CompareReport:
    """Load two checkpoints and the data, run :func:`~modeconnect.compare.compare_methods`,
    and write the table as JSON if asked."""
    o = CompareOptions.build(options, keywords)
    cluster = cluster_from(o.ray, o.workers)
    session = open_session(
        [a_path, b_path], o, outputs=[("--json", o.json_path, "json")], place=True,
    )  # fmt: skip
    (a, b), clock = session.state_dicts, session.timings
    with clock.phase("methods"):
        comparison = compare_methods(
            session.model, a, b, session.data or [], methods=o.methods,
            steps=o.steps, seed=o.seed, train=session.train, options=o.method_options,
            inputs=session.probe, permute_output=o.permute_output,
            loss=resolve_loss(None, session), cluster=cluster, symmetries=o.symmetries,
        )  # fmt: skip
    report = CompareReport(
        {"a": str(a_path), "b": str(b_path)}, session.model_ref, session.model_kwargs,
        comparison, command=o.run.command,
    )  # fmt: skip
    if "--json" in session.outputs:
        written = {"json": session.outputs.path("--json")}
        report = replace(report, written=written)
        with clock.phase("writes"), session.outputs.writing() as staging:
            staging.write(written["json"], json_writer(report.to_dict()))
    return replace(report, timings=clock.to_dict())
