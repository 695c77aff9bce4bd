"""Option checks shared by the alignment methods: unknown names and bad descent settings.

Every method takes its options as keywords. :func:`strict` makes a misspelt one
(``regg=0.1``) an error that lists the accepted names, instead of a bare
``TypeError`` or, for a method that accepts ``**kwargs``, silence.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import ModeconnectError
from .assignment import check_solver

F = TypeVar("F", bound=Callable[..., Any])


def accepted_options(fn: Callable[..., Any]) -> tuple[str, ...]:
    """The keyword options of an alignment function (every parameter after ``spec, a, b``)."""
    params = inspect.signature(fn).parameters.values()
    return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY)


def strict(method: str) -> Callable[[F], F]:
    """Decorator: an unknown keyword raises :class:`ModeconnectError` naming the accepted ones.

    The signature is kept (``inspect.signature`` follows ``__wrapped__``): the test
    of the registry checks each method's declared parameters
    (:class:`~modeconnect.matching.params.MethodInfo`) against it.
    """

    def wrap(fn: F) -> F:
        accepted = accepted_options(fn)

        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            unknown = sorted(set(kwargs) - set(accepted))
            if unknown:
                names = ", ".join(repr(k) for k in unknown)
                raise ModeconnectError(
                    f"{method}: unknown option{'s' if len(unknown) > 1 else ''} {names}; "
                    f"accepted options: {', '.join(accepted)}"
                )
            return fn(*args, **kwargs)

        return checked  # type: ignore[return-value]

    return wrap


def check_descent(
    method: str, *, tol: float, rtol: float, max_iter: int, solver: str | None = None
) -> None:
    """Raise :class:`ModeconnectError` for an unknown solver, a bad tolerance or a bad limit."""
    if solver is not None:
        check_solver(solver)
    for name, value in (("tol", tol), ("rtol", rtol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ModeconnectError(
                f"{method}: {name} must be a number >= 0, got {value!r}; pass e.g. {name}=0"
            )
        if not math.isfinite(value):
            raise ModeconnectError(f"{method}: {name} must be finite, got {value!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ModeconnectError(
            f"{method}: max_iter must be an integer >= 0, got {max_iter!r}; the default is 100"
        )


__all__ = ["accepted_options", "check_descent", "strict"]
