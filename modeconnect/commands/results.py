"""What the commands share on files: one report type, and the study commands' writes.

Each command opens its session with :func:`open_study` (every output checked before
any work, the report folder's plot files included), runs one library function, and
hands its result to :func:`write_study`, which writes the outputs together: the
checkpoints the command names, the JSON (:meth:`FileReport.to_dict`) and the report
(:mod:`modeconnect.io.report`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from modeconnect.commands.options import Options
from modeconnect.commands.session import Session, input_files, open_session
from modeconnect.io.checkpoints import json_writer
from modeconnect.io.data import Batch
from modeconnect.io.report import Section, check_report, stage_page
from modeconnect.io.targets import Fill

__all__ = ["FileReport", "count_examples", "open_study", "write_study"]


class _Result(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


R = TypeVar("R")


@dataclass(frozen=True)
class FileReport(Generic[R]):
    """What one command computed from files and wrote: the one report type of every command.

    ``files`` are the inputs, JSON-ready (``{"a": "a.pt", "b": "b.pt"}``, or
    ``{"sources": [...]}``); ``result`` is the library's result. :meth:`to_dict` writes
    the files, the model, the example counts, the command, then :meth:`body` (the
    result's ``to_dict()`` unless a command adds its own parts) and the outputs. A
    command's report subclasses this one only to add what it computed beside the result.
    """

    files: Mapping[str, Any]
    model_ref: str
    model_kwargs: Mapping[str, Any]
    result: R
    examples: Mapping[str, int] = field(default_factory=dict)
    command: str | None = None
    written: Mapping[str, Path] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)

    @property
    def a_path(self) -> Path:
        """The first checkpoint of a two-model command."""
        return Path(self.files["a"])

    @property
    def b_path(self) -> Path:
        """The second checkpoint of a two-model command."""
        return Path(self.files["b"])

    def body(self) -> dict[str, Any]:
        """The JSON of what was computed (the result's ``to_dict()``)."""
        result: _Result = self.result  # type: ignore[assignment]
        return result.to_dict()

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.files,
            "model": {"ref": self.model_ref, "kwargs": dict(self.model_kwargs)},
            "examples": dict(self.examples),
            "command": self.command,
            **self.body(),
            "outputs": {k: str(v) for k, v in self.written.items()},
        }


def open_study(
    checkpoints: Sequence[str | Path],
    options: Options,
    *,
    outputs: Sequence[tuple[str, str | Path | None, str]],
    plots: Iterable[str],
    **session: Any,
) -> Session:
    """:func:`~modeconnect.commands.session.open_session`, once the report's ``plots`` are checked.

    ``plots`` are the file stems the ``--report`` folder will hold
    (:func:`~modeconnect.io.report.check_report`).
    """
    report = next((p for _, p, kind in outputs if kind == "report" and p is not None), None)
    if report is not None:
        data = [options.inputs.data, options.inputs.train]
        inputs = input_files(checkpoints, data=data, model=options.sources.model)
        check_report(report, plots, inputs=inputs, force=options.force)
    return open_session(checkpoints, options, outputs=outputs, place=True, **session)


def count_examples(batches: Iterable[Batch]) -> int:
    return sum(len(y) for _, y in batches)


def write_study(
    session: Session,
    report: FileReport[R],
    *,
    title: str,
    sections: Callable[[R], Sequence[Section]],
    files: Mapping[str, tuple[Path, Fill]] | None = None,
) -> FileReport[R]:
    """Write ``files`` (name -> path, what writes it), ``--report`` and ``--json`` together.

    The report page (``title``, the result's ``sections``) and the JSON both list
    every output written; nothing appears unless everything is written.
    """
    plan, files = session.outputs, dict(files or {})
    written = {name: path for name, (path, _) in files.items()}
    pages: Sequence[Section] = ()
    with session.timings.phase("writes"):
        if "--report" in plan:
            folder = plan.path("--report")
            pages = sections(report.result)
            written["report"] = folder / "report.html"
            written.update(
                {f"plot_{n}": folder / f"{n}.png" for page in pages for n in page.figures}
            )
        if "--json" in plan:
            written["json"] = plan.path("--json")
        final = replace(report, written=written)
        with plan.writing() as staging:
            # outputs may lie in the report's folder, which the plan lets the staging make
            for path, fill in files.values():
                staging.write(staging.folder(path.parent) / path.name, fill)
            if "--report" in plan:
                stage_page(
                    staging, plan.path("--report"), title, pages, command=report.command,
                    meta=final.to_dict(),
                )  # fmt: skip
            if "--json" in plan:
                path = written["json"]
                staging.write(staging.folder(path.parent) / path.name, json_writer(final.to_dict()))
    return replace(final, timings=session.timings.to_dict())
