"""Linear assignment: cold and warm-started solves against brute force and SciPy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from modeconnect.errors import ModeconnectError
from modeconnect.matching.assignment import (
    SOLVERS,
    WarmStart,
    price_step,
    reduced_costs,
    solve_assignment,
    solve_warm,
)


def _score(s: np.ndarray, perm) -> float:
    p = np.asarray(perm)
    return float(s[np.arange(len(p)), p].sum())


def _best(s: np.ndarray) -> float:
    """The optimum by SciPy (the reference solver), on the raw matrix."""
    return _score(s, linear_sum_assignment(s, maximize=True)[1])


def _assert_optimal(s: np.ndarray, perm) -> None:
    p = np.asarray(perm)
    assert sorted(p.tolist()) == list(range(len(s)))
    scale = float(np.abs(s).max()) if s.size else 1.0
    assert _score(s, p) == pytest.approx(_best(s), abs=1e-12 * scale * len(s) + 1e-300)


def _matrices(seed: int, n: int) -> dict[str, np.ndarray]:
    """Random and adversarial similarity matrices of size ``n``."""
    rng = np.random.default_rng(seed)
    dup = rng.normal(size=(n, n))
    dup[n // 2 :] = dup[: n - n // 2]  # duplicated rows: many optimal assignments
    rng_range = rng.normal(size=(n, n)) * 10.0 ** rng.integers(-8, 9, size=(n, n))
    return {
        "normal": rng.normal(size=(n, n)),
        "ties": rng.integers(0, 3, size=(n, n)).astype(float),
        "constant": np.full((n, n), 2.5),
        "duplicated rows": dup,
        "dynamic range": rng_range,
        "negative": -np.abs(rng.normal(size=(n, n))) - 1e3,
        "low rank": np.outer(rng.normal(size=n), rng.normal(size=n)),
    }


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 6),
    seed=st.integers(0, 10_000),
    kind=st.sampled_from(["normal", "ties", "duplicated rows", "dynamic range", "negative"]),
)
def test_cold_and_warm_agree_with_brute_force(n, seed, kind):
    s = _matrices(seed, n)[kind]
    best = max(_score(s, p) for p in itertools.permutations(range(n)))
    prices = np.random.default_rng(seed + 1).normal(size=n) * 10.0
    for solver in SOLVERS:
        for perm in (
            solve_assignment(torch.from_numpy(s), solver),
            solve_warm(s, None, solver).perm,
            solve_warm(s, prices, solver).perm,
        ):
            assert sorted(perm.tolist()) == list(range(n))
            assert _score(s, perm) == pytest.approx(best, rel=1e-12, abs=1e-12 * np.abs(s).max())


@pytest.mark.parametrize("n", [1, 2, 3, 17, 128])
@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_warm_started_sequence_stays_optimal(n, solver):
    """A chain of perturbed matrices, each solved from the previous solve's prices."""
    for kind, s in _matrices(n, n).items():
        prices = None
        rng = np.random.default_rng(n)
        for step in range(4):
            out = solve_warm(s, prices, solver)
            _assert_optimal(s, out.perm)
            assert out.prices.shape == (n,) and np.isfinite(out.prices).all()
            assert out.prices.max() == 0.0
            prices = out.prices
            scale = np.abs(s).max() or 1.0
            s = s + 1e-3 * scale * rng.normal(size=s.shape) * (step % 2)  # every other: same S
        assert kind  # each kind ran


def test_warm_start_from_arbitrary_prices_is_exact():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(60, 60))
    for prices in (rng.normal(size=60) * 1e6, np.zeros(60), -np.arange(60.0), rng.normal(size=60)):
        _assert_optimal(s, solve_warm(s, prices).perm)


def test_prices_of_another_size_start_cold():
    s = np.random.default_rng(1).normal(size=(5, 5))
    _assert_optimal(s, solve_warm(s, np.zeros(7)).perm)


def test_reduced_costs_preserve_every_assignment_score():
    """``Σ R[i, p(i)] = Σu + Σv − Σ S[i, p(i)]`` for every permutation ``p``: same optimum."""
    rng = np.random.default_rng(2)
    s, v = rng.normal(size=(5, 5)), rng.normal(size=5)
    before = s.copy()
    r = reduced_costs(s, v)
    assert (r >= 0).all() and (r.min(axis=1) == 0).all()
    u = (s - v).max(axis=1)
    for p in itertools.permutations(range(5)):
        lhs = r[np.arange(5), list(p)].sum()
        assert lhs == pytest.approx(u.sum() + v.sum() - _score(s, p), abs=1e-12)
    assert np.array_equal(s, before)  # the input is not modified


def test_price_step_bids_up_preferred_columns():
    r = np.array([[0.0, 1.0], [0.0, 3.0]])
    # Row 0 holds column 1 at reduced cost 1 but column 0 costs it 0: column 0's price
    # rises by that margin, 1; column 1 stays. Normalised to a maximum of 0: [0, -1].
    prices = price_step(r, np.array([1, 0]), None)
    assert prices.tolist() == [0.0, -1.0]
    prices = price_step(r, np.array([0, 1]), np.array([0.0, -5.0]))
    assert prices.max() == 0.0 and np.isfinite(prices).all()


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_non_finite_entries_count_as_zero(solver):
    s = np.array([[np.nan, 1.0, 0.5], [np.inf, -np.inf, 2.0], [0.0, 3.0, 1.0]])
    clean = np.nan_to_num(s, nan=0.0, posinf=0.0, neginf=0.0)
    for perm in (solve_assignment(torch.from_numpy(s), solver), solve_warm(s, None, solver).perm):
        _assert_optimal(clean, perm)


def test_warm_start_keeps_prices_per_group():
    rng = np.random.default_rng(3)
    solve = WarmStart("lapjvh" if "lapjvh" in SOLVERS else "scipy")
    a, b = torch.from_numpy(rng.normal(size=(8, 8))), torch.from_numpy(rng.normal(size=(4, 4)))
    _assert_optimal(a.numpy(), solve("g1", a))
    _assert_optimal(b.numpy(), solve("g2", b))
    assert set(solve.prices) == {"g1", "g2"} and solve.prices["g2"].shape == (4,)
    _assert_optimal(a.numpy(), solve("g1", a + 0.01))


def test_unknown_solver_and_bad_shape_raise_one_line_errors():
    with pytest.raises(
        ModeconnectError, match=r"unknown assignment solver 'magic'; valid solvers: "
    ):
        solve_warm(np.eye(2), None, "magic")
    with pytest.raises(ModeconnectError, match=r"unknown assignment solver 'magic'"):
        WarmStart("magic")
    with pytest.raises(ModeconnectError, match=r"square \(n, n\) similarity, got shape \(2, 3\)"):
        solve_assignment(torch.zeros(2, 3))
