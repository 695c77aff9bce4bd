"""Linear assignment: the inner step of every hard matching method."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..errors import ModeconnectError

Solver = Callable[[np.ndarray], np.ndarray]


def _scipy(similarity: np.ndarray) -> np.ndarray:
    _, cols = linear_sum_assignment(similarity, maximize=True)
    return cols


def _lapjv(similarity: np.ndarray) -> np.ndarray:
    import lap

    # Jonker-Volgenant minimises; shifting by the max keeps costs non-negative.
    _, cols, _ = lap.lapjv(similarity.max() - similarity, extend_cost=False, return_cost=True)
    return np.asarray(cols)


def _available() -> dict[str, Solver]:
    solvers: dict[str, Solver] = {"scipy": _scipy}
    try:
        import lap  # noqa: F401

        solvers["lapjv"] = _lapjv
    except ImportError:  # lapx is a dependency, but the reference solver always works
        pass
    return solvers


SOLVERS = _available()
DEFAULT_SOLVER = "lapjv" if "lapjv" in SOLVERS else "scipy"


def solve_assignment(similarity: torch.Tensor, solver: str = DEFAULT_SOLVER) -> torch.Tensor:
    """The permutation ``p`` maximising ``Σ_i similarity[i, p[i]]``.

    ``similarity`` is ``(n, n)``; the result is a ``LongTensor`` of length ``n``.
    Solved in float64 so that ties and tiny gains are not lost to rounding.
    """
    if solver not in SOLVERS:
        raise ModeconnectError(
            f"unknown assignment solver {solver!r}; valid solvers: {', '.join(sorted(SOLVERS))}"
        )
    s = similarity.detach().to(torch.float64).cpu().numpy()
    if not np.isfinite(s).all():
        s = np.nan_to_num(s, nan=0.0, posinf=0.0, neginf=0.0)
    return torch.from_numpy(np.asarray(SOLVERS[solver](s), dtype=np.int64))
