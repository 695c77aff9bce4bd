"""Linear assignment: the inner step of every hard matching method.

Every hard method ends in

    p* = argmax_p  Σ_i S[i, p(i)]            S: (n, n), p a permutation of 0..n-1

solved here as the equivalent minimum-cost problem on the *reduced costs*

    R[i, j] = u_i + v_j − S[i, j] ≥ 0,       u_i = max_j (S[i, j] − v_j)

for column prices ``v`` (the variables of the dual linear program: Kuhn 1955;
Jonker & Volgenant 1987). Under ``R`` every assignment costs ``Σ u + Σ v`` minus its
score under ``S``, so the optimum is the same for any prices: they change how fast
the solver gets there, never where. Prices close to the optimal duals leave the
optimal edges at reduced cost near zero, and the Jonker-Volgenant initialisation
(column reduction, augmenting row reduction) then assigns most rows at once.

**Warm starts.** In coordinate descent a group's similarity changes a little from
one solve to the next, so the prices that end one solve start the next
(:func:`solve_warm`, :class:`WarmStart`). After a solve with assignment ``x`` the
prices take one Bellman-Ford relaxation step towards the optimal duals of the
matrix just solved,

    v'_j = v_j + max(0, max_i (R[i, x(i)] − R[i, j])),

which raises the price of each column that some row prefers to its own by that
row's margin (the bid of an auction step, Bertsekas 1988). A cold solve uses
``v = 0`` (a plain row reduction, which by itself makes ``lapjvh`` about 3x faster
on the similarity of two independently trained nets).

Measured on the similarity matrices that weight matching solves on two independently
trained 3x512 MLPs, one thread (``benchmarks/bench_weight_matching.py``; ms per solve,
digits / MNIST-scale pair): SciPy's ``linear_sum_assignment`` 10.9 / 12.0 on the raw
matrix; lapx ``lapjvh`` 12.6 / 8.7 raw, 3.8 / 4.2 row-reduced, 2.8 / 3.1 warm-started
(reduced costs and price step included); SciPy warm-started 8.4 / 8.9; lapx ``lapjv``
61 / 60. At 3x4096: SciPy 1334, ``lapjvh`` 1151 raw, 390 row-reduced, 323 warm.
On a permuted copy (nearly diagonal matrices) every solver is fast and raw ``lapjvh``
is best (0.9 ms against SciPy's 2.4). Hence the default ``lapjvh``, always on reduced
costs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..errors import ModeconnectError

Solver = Callable[[np.ndarray], np.ndarray]
"""``solver(cost) -> cols``: a minimum-cost assignment of the ``(n, n)`` float64 ``cost``,
``cols[i]`` the column of row ``i`` (int64)."""


def _scipy(cost: np.ndarray) -> np.ndarray:
    return np.asarray(linear_sum_assignment(cost)[1], dtype=np.int64)


def _lapjvh(cost: np.ndarray) -> np.ndarray:
    import lap

    _, rows, cols = lap.lapjvh(cost)
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


@dataclass(frozen=True)
class Assignment:
    """An optimal assignment and the column prices that warm-start the next solve.

    ``perm`` ``(n,)`` int64: row ``i`` goes to column ``perm[i]``. ``prices`` ``(n,)``
    float64, normalised to a maximum of 0.
    """

    perm: torch.Tensor
    prices: np.ndarray


def check_solver(solver: str) -> None:
    """Raise :class:`ModeconnectError` unless ``solver`` is one of :data:`SOLVERS`."""
    if solver not in SOLVERS:
        raise ModeconnectError(
            f"unknown assignment solver {solver!r}; valid solvers: {', '.join(sorted(SOLVERS))}"
        )


def reduced_costs(
    similarity: np.ndarray, prices: np.ndarray | None = None, out: np.ndarray | None = None
) -> np.ndarray:
    """``R = u + v − S`` with ``u_i = max_j (S[i, j] − v_j)``: ``(n, n)``, ≥ 0, a zero in every row.

    Written to ``out`` (float64, the shape of ``similarity``) or a new array;
    ``similarity`` is not modified. ``prices`` ``v`` default to 0. NumPy, not torch:
    these passes are single-threaded whatever torch's thread count (two torch threads
    on a busy 2-core machine made them ~10x slower).
    """
    r = np.empty_like(similarity) if out is None else out
    if prices is None:
        np.copyto(r, similarity)
    else:
        np.subtract(similarity, prices[None, :], out=r)
    np.subtract(r.max(axis=1, keepdims=True), r, out=r)
    return r


def price_step(reduced: np.ndarray, perm: np.ndarray, prices: np.ndarray | None) -> np.ndarray:
    """Prices after one Bellman-Ford step on ``reduced`` at the optimal assignment ``perm``.

    ``v'_j = v_j + max(0, max_i (R[i, perm(i)] − R[i, j]))``, shifted to a maximum of 0
    (a common shift of all prices changes no reduced cost). Only rows with
    ``R[i, perm(i)] > 0`` can bid (``R ≥ 0``); after a warm start they are a third of
    the rows or fewer. Any prices keep the next solve exact: these only steer it.
    """
    own = reduced[np.arange(len(perm)), perm]
    bidders = np.flatnonzero(own > 0)
    bid = np.zeros(len(perm))
    if len(bidders):
        bid = np.maximum((own[bidders, None] - reduced[bidders]).max(axis=0), 0.0)
    new = bid if prices is None else prices + bid
    return new - new.max()


def _square(similarity: torch.Tensor | np.ndarray) -> np.ndarray:
    """``similarity`` as a float64 array, non-finite entries replaced by 0."""
    if isinstance(similarity, torch.Tensor):
        similarity = similarity.detach().to(device="cpu", dtype=torch.float64).numpy()
    s = np.asarray(similarity, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ModeconnectError(
            f"linear assignment needs a square (n, n) similarity, got shape {tuple(s.shape)}"
        )
    if not np.isfinite(s.sum()) and not np.isfinite(s).all():  # one pass when all is well
        s = np.nan_to_num(s, nan=0.0, posinf=0.0, neginf=0.0)
    return s


def solve_warm(
    similarity: torch.Tensor | np.ndarray,
    prices: np.ndarray | None = None,
    solver: str = DEFAULT_SOLVER,
    buffer: np.ndarray | None = None,
) -> Assignment:
    """``argmax_p Σ_i S[i, p(i)]``, started from column ``prices`` (``None``: a cold start).

    Exact for any prices (see the module docstring); returns the assignment and the
    prices for the next solve of a similar matrix. ``similarity`` ``(n, n)``, solved
    in float64; non-finite entries count as 0. ``buffer`` (float64 ``(n, n)``, reused
    between solves: no fresh pages for a large matrix) receives the reduced costs.
    """
    check_solver(solver)
    s = _square(similarity)
    if prices is not None and prices.shape != (s.shape[0],):
        prices = None  # prices of another problem: start cold
    if buffer is not None and buffer.shape != s.shape:
        buffer = None
    r = reduced_costs(s, prices, buffer)
    perm = SOLVERS[solver](r)
    return Assignment(torch.from_numpy(perm), price_step(r, perm, prices))


def solve_assignment(
    similarity: torch.Tensor | np.ndarray, solver: str = DEFAULT_SOLVER
) -> torch.Tensor:
    """The permutation ``p`` maximising ``Σ_i similarity[i, p[i]]`` (a cold solve).

    ``similarity`` is ``(n, n)``; the result is a ``LongTensor`` of length ``n``.
    Solved in float64 so that ties and tiny gains are not lost to rounding.

    Examples
    --------
    >>> import torch
    >>> from modeconnect.matching import solve_assignment
    >>> similarity = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.2, 0.1], [0.0, 0.3, 0.7]])
    >>> solve_assignment(similarity).tolist()
    [1, 0, 2]
    >>> solve_assignment(similarity, solver="scipy").tolist()
    [1, 0, 2]
    """
    check_solver(solver)
    return torch.from_numpy(SOLVERS[solver](reduced_costs(_square(similarity))))


class WarmStart:
    """``solve(group, S) -> p`` that carries each group's prices to its next solve.

    The state of one descent: create one per run (a fresh one per restart keeps
    restarts independent of each other).
    """

    def __init__(self, solver: str = DEFAULT_SOLVER) -> None:
        check_solver(solver)
        self.solver = solver
        self.prices: dict[str, np.ndarray] = {}
        self.buffers: dict[int, np.ndarray] = {}  # reduced costs, one array per size

    def __call__(self, group: str, similarity: torch.Tensor) -> torch.Tensor:
        n = similarity.shape[0]
        if n not in self.buffers:
            self.buffers[n] = np.empty((n, n))
        out = solve_warm(similarity, self.prices.get(group), self.solver, self.buffers[n])
        self.prices[group] = out.prices
        return out.perm


__all__ = [
    "DEFAULT_SOLVER",
    "SOLVERS",
    "Assignment",
    "WarmStart",
    "check_solver",
    "price_step",
    "reduced_costs",
    "solve_assignment",
    "solve_warm",
]
