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


def _lapjvh(similarity: np.ndarray) -> np.ndarray:
    import lap

    # Jonker-Volgenant minimises, so negate. lapjvh (lapx) was the fastest of
    # lapx's solvers on real similarity matrices (benchmarks/bench_weight_matching.py).
    _, rows, cols = lap.lapjvh(-similarity)
    out = np.empty(len(rows), dtype=np.int64)
    out[np.asarray(rows)] = np.asarray(cols)
    return out


def _available() -> dict[str, Solver]:
    solvers: dict[str, Solver] = {"scipy": _scipy}
    try:
        import lap  # noqa: F401

        solvers["lapjvh"] = _lapjvh
    except ImportError:  # lapx is a dependency, but the reference solver always works
        pass
    return solvers


SOLVERS = _available()
DEFAULT_SOLVER = "lapjvh" if "lapjvh" in SOLVERS else "scipy"


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
