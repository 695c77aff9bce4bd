"""Weight matching: brute force agreement, determinism, restarts, solvers."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from modeconnect.errors import ModeconnectError
from modeconnect.graph import derive_spec
from modeconnect.matching import get_method, match_weights, solve_assignment
from modeconnect.matching.assignment import SOLVERS
from modeconnect.spec import apply_permutation


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_assignment_agrees_with_brute_force(n, seed):
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(n, n, generator=gen, dtype=torch.float64)
    best = max(sum(s[i, p[i]] for i in range(n)) for p in itertools.permutations(range(n)))
    for solver in SOLVERS:
        p = solve_assignment(s, solver)
        assert sorted(p.tolist()) == list(range(n))
        assert float(s[torch.arange(n), p].sum()) == pytest.approx(float(best), abs=1e-9)


def test_unknown_solver_lists_valid_ones():
    with pytest.raises(ModeconnectError, match="valid solvers: .*scipy"):
        solve_assignment(torch.eye(2), "hungarian-magic")


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ModeconnectError, match="unknown alignment method 'magic'.*weight"):
        get_method("magic")


def _mlp_pair(seed_a: int = 0, seed_b: int = 1):
    def make(seed):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
        )

    a, b = make(seed_a), make(seed_b)
    spec = derive_spec(a, (torch.randn(2, 8),))
    return spec, a.state_dict(), b.state_dict()


def test_same_seed_same_result_bit_for_bit():
    spec, a, b = _mlp_pair()
    one = match_weights(spec, a, b, seed=3)
    two = match_weights(spec, a, b, seed=3)
    assert one.objective == two.objective
    assert all(torch.equal(one.perm[g], two.perm[g]) for g in one.perm)


def test_restarts_keep_best_objective():
    spec, a, b = _mlp_pair()
    singles = [match_weights(spec, a, b, seed=s).objective for s in range(4)]
    best = match_weights(spec, a, b, seed=0, restarts=4)
    assert best.objective == max(singles)
    assert best.params["restarts"] == 4


def test_matching_never_lowers_objective():
    from modeconnect.matching.weight import objective
    from modeconnect.spec import identity_permutation

    spec, a, b = _mlp_pair()
    start = objective(spec, a, b, identity_permutation(spec))
    result = match_weights(spec, a, b)
    assert result.objective >= start
    aligned = apply_permutation(b, spec, result.perm)
    direct = sum(float((a[k].double() * aligned[k].double()).sum()) for k in a)
    assert result.objective == pytest.approx(direct, rel=1e-9)


def test_solvers_reach_same_objective():
    spec, a, b = _mlp_pair(2, 5)
    values = {s: match_weights(spec, a, b, solver=s).objective for s in SOLVERS}
    first = next(iter(values.values()))
    assert all(v == pytest.approx(first, rel=1e-9) for v in values.values()), values
