"""Progress bars on a terminal, silence everywhere else.

The core never prints: long-running functions take an optional callback
``progress(task, done, total)`` (:data:`ProgressFn`) and call it as work
completes. The CLI passes a :class:`ProgressBar`, which draws one ``rich`` bar
per task on stderr when stderr is a terminal, and does nothing when it is not
(pipes, CI logs, tests) or when ``quiet=True``::

    with ProgressBar(quiet=args.quiet) as bar:
        study = barrier_study(model, a, b, test=data, progress=bar)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import TracebackType
from typing import IO, Any

__all__ = ["ProgressBar", "ProgressFn", "prefixed"]

ProgressFn = Callable[[str, int, int], None]
"""``progress(task, done, total)``: ``done`` of ``total`` units of ``task`` are complete."""


class ProgressBar:
    """A :data:`ProgressFn` that draws one bar per task name; a context manager.

    Enabled only when ``stream`` (default ``sys.stderr``) is a TTY and ``quiet``
    is false; ``rich`` is imported only then. Bars vanish when the block ends
    (``transient``), so the result printed afterwards stands alone.
    """

    def __init__(self, *, quiet: bool = False, stream: IO[str] | None = None) -> None:
        stream = stream if stream is not None else sys.stderr
        self.enabled = not quiet and _is_tty(stream)
        self._stream = stream
        self._display: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._display = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(file=self._stream),
                transient=True,
            )
            self._display.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._display is not None:
            self._display.stop()
            self._display = None
            self._tasks.clear()

    def __call__(self, task: str, done: int, total: int) -> None:
        if self._display is None:
            return
        if task not in self._tasks:
            self._tasks[task] = self._display.add_task(task, total=total)
        self._display.update(self._tasks[task], completed=done, total=total)


def prefixed(progress: ProgressFn | None, prefix: str) -> ProgressFn | None:
    """``progress`` with ``prefix`` put before every task name (``None`` stays ``None``)."""
    if progress is None:
        return None
    inner = progress

    def report(task: str, done: int, total: int) -> None:
        inner(f"{prefix}{task}", done, total)

    return report


def _is_tty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or file-like objects without isatty
        return False
