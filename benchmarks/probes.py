"""Attribute the time of a call to named buckets by wrapping the functions that do the work."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

Probe = tuple[Any, str, str]
"""``(module or class, attribute, bucket)``: calls of ``owner.attribute`` count to ``bucket``."""


@contextmanager
def probes(
    buckets: dict[str, float],
    targets: Sequence[Probe],
    clock: Callable[[], float] = time.process_time,
) -> Iterator[None]:
    """Wrap ``targets`` so their time accumulates in ``buckets`` (nested calls counted once).

    ``clock`` is CPU time by default: on a shared machine it is steadier than wall time.
    """
    saved = []
    depth = [0]

    def wrap(fn: Callable[..., Any], bucket: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if depth[0]:
                return fn(*args, **kwargs)
            depth[0] += 1
            start = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                buckets[bucket] = buckets.get(bucket, 0.0) + clock() - start
                depth[0] -= 1

        return timed

    for module, attr, bucket in targets:
        saved.append((module, attr, getattr(module, attr)))
        setattr(module, attr, wrap(getattr(module, attr), bucket))
    try:
        yield
    finally:
        for module, attr, fn in reversed(saved):
            setattr(module, attr, fn)
