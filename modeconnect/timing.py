"""Wall-clock time per phase of a command (what ``--verbose`` prints)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

__all__ = ["Timings"]


class Timings:
    """Seconds spent in each named phase, in the order the phases first ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the ``with`` block and add it to ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + max(0.0, seconds)

    def total(self) -> float:
        return sum(self.seconds.values())

    def to_dict(self) -> dict[str, float]:
        return dict(self.seconds)
