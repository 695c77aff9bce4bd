"""Sharpness: Lanczos, power iteration and Hutchinson against exact linear algebra;
Hessian-vector products against a dense autograd Hessian; adaptive sharpness invariant
under the rescalings that leave a ReLU network's function unchanged (Dinh et al. 2017)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

from modeconnect.curvature import (
    adaptive_sharpness,
    hessian_operator,
    hessian_spectrum,
    hessian_trace,
    hutchinson,
    lanczos,
    power_iteration,
    sharpness,
    sharpness_study,
)
from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import evaluate


def _symmetric(eigenvalues: list[float], seed: int) -> torch.Tensor:
    """``Q diag(λ) Qᵀ`` with a random orthogonal ``Q``."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(
        torch.randn(len(eigenvalues), len(eigenvalues), generator=gen, dtype=torch.float64)
    )
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


# --------------------------------------------------------------------------- linear algebra


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 12), seed=st.integers(0, 1000), k=st.integers(1, 3))
def test_lanczos_finds_the_top_eigenvalues_of_a_matrix(n, seed, k):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    a = a + a.T
    exact = torch.linalg.eigvalsh(a).flip(0)[: min(k, n)]
    found = lanczos(lambda v: a @ v, n, k=k, iterations=n, seed=seed)
    torch.testing.assert_close(torch.tensor(found.eigenvalues, dtype=torch.float64), exact)
    assert found.matvecs <= n


def test_lanczos_stops_early_once_the_top_eigenvalue_has_converged():
    a = _symmetric([100.0, 1.0, *[0.5] * 198], seed=1)
    found = lanczos(lambda v: a @ v, 200, k=1, iterations=100, tol=1e-10)
    assert found.matvecs < 20
    assert found.eigenvalues[0] == pytest.approx(100.0, rel=1e-10)
    assert found.residuals[0] < 1e-8


def test_power_iteration_with_deflation_finds_the_largest_magnitudes():
    a = _symmetric([5.0, -3.0, 2.0, 1.0, 0.5], seed=2)
    found = power_iteration(lambda v: a @ v, 5, k=2, iterations=500, tol=1e-12)
    assert found.eigenvalues == pytest.approx((5.0, -3.0), abs=1e-6)


def test_hutchinson_is_exact_for_a_diagonal_matrix_and_unbiased_otherwise():
    d = torch.tensor([3.0, -1.0, 0.25, 7.0], dtype=torch.float64)
    one = hutchinson(lambda v: d * v, 4, samples=1, seed=3)
    assert one.trace == pytest.approx(float(d.sum()), abs=1e-12)
    a = _symmetric([4.0, 2.0, 1.0, 0.5, -1.0, 3.0], seed=4)
    est = hutchinson(lambda v: a @ v, 6, samples=4000, seed=5)
    assert abs(est.trace - float(a.trace())) < 4 * est.std_error
    assert 0 < est.std_error < 0.2


# --------------------------------------------------------------------------- quadratic model


class Quadratic(nn.Module):
    """``f(x) = w`` for every input; with :func:`quadratic_loss` the loss is ``½(w−c)ᵀH(w−c)``."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(n, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w.expand(len(x), -1)


def quadratic_loss(h: torch.Tensor, c: torch.Tensor):
    def loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r = z - c
        return 0.5 * ((r @ h) * r).sum(dim=1)

    return loss


def _quadratic(h: torch.Tensor, at: torch.Tensor):
    n = h.shape[0]
    c = torch.linspace(-1, 1, n, dtype=torch.float64)
    batches = [(torch.zeros(3, 1), torch.zeros(3)), (torch.zeros(2, 1), torch.zeros(2))]
    return Quadratic(n), {"w": at}, batches, quadratic_loss(h, c), c


def test_spectrum_and_trace_of_a_quadratic_with_a_known_hessian():
    h = _symmetric([6.0, 2.5, 1.0, 0.3, 0.1, -0.2], seed=6)
    model, state, batches, loss, _ = _quadratic(h, torch.ones(6, dtype=torch.float64))
    for method in ("lanczos", "power"):
        spec = hessian_spectrum(model, state, batches, k=1, method=method, loss=loss, tol=1e-12,
                                iterations=200)  # fmt: skip
        assert spec.eigenvalues[0] == pytest.approx(6.0, abs=1e-4)
    top3 = hessian_spectrum(model, state, batches, k=3, loss=loss)
    assert top3.eigenvalues == pytest.approx((6.0, 2.5, 1.0), abs=1e-4)
    diag = torch.diag(torch.tensor([6.0, 2.5, 1.0, 0.3, 0.1, -0.2], dtype=torch.float64))
    model, state, batches, loss, _ = _quadratic(diag, torch.ones(6, dtype=torch.float64))
    tr = hessian_trace(model, state, batches, samples=3, loss=loss)
    assert tr.trace == pytest.approx(9.7, abs=1e-4)
    assert tr.std_error == pytest.approx(0.0, abs=1e-12)


def test_plain_sharpness_of_a_quadratic_at_its_minimum_is_half_lambda_rho_squared():
    # At the minimum the gradient vanishes: the ascent starts in a random direction
    # and, like power iteration, turns towards the top eigenvector.
    h = _symmetric([4.0, 1.0, 0.5, 0.25], seed=7)
    model, _, batches, loss, c = _quadratic(h, torch.zeros(4, dtype=torch.float64))
    rho = 0.1
    got = adaptive_sharpness(
        model, {"w": c.clone()}, batches, rho=rho, adaptive=False, steps=200, loss=loss
    )
    assert got.loss == pytest.approx(0.0, abs=1e-15)
    assert got.sharpness == pytest.approx(0.5 * 4.0 * rho**2, rel=1e-3)
    assert got.sharpness <= 0.5 * 4.0 * rho**2 * (1 + 1e-9)  # never above the true maximum


# --------------------------------------------------------------------------- tiny MLP


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).double()


def _data(seed: int = 0, n: int = 24) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=gen)
    return [(x[:10], y[:10]), (x[10:], y[10:])]


def _dense_hessian(model: nn.Module, state: dict, batches) -> torch.Tensor:
    keys = [k for k, _ in model.named_parameters()]
    sizes = [state[k].numel() for k in keys]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])

    def loss(flat: torch.Tensor) -> torch.Tensor:
        parts = {k: p.view_as(state[k]) for k, p in zip(keys, flat.split(sizes), strict=True)}
        return nn.functional.cross_entropy(functional_call(model, parts, (x,)), y)

    flat = torch.cat([state[k].flatten() for k in keys])
    return torch.autograd.functional.hessian(loss, flat)


def test_hessian_vector_products_match_the_dense_hessian_of_a_tiny_mlp():
    model, batches = _mlp(), _data()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    dense = _dense_hessian(model, state, batches)
    op = hessian_operator(model, state, batches)
    assert op.dimension == dense.shape[0] == 4 * 5 + 5 + 5 * 3 + 3
    v = torch.randn(op.dimension, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(op(v), dense @ v)
    exact = torch.linalg.eigvalsh(dense).flip(0)
    spec = hessian_spectrum(model, state, batches, k=3, iterations=op.dimension, tol=1e-12)
    torch.testing.assert_close(torch.tensor(spec.eigenvalues, dtype=torch.float64), exact[:3])
    power = hessian_spectrum(model, state, batches, method="power", iterations=2000, tol=1e-13)
    assert power.eigenvalues[0] == pytest.approx(float(exact[0]), rel=1e-4)
    tr = hessian_trace(model, state, batches, samples=400, seed=2)
    assert abs(tr.trace - float(dense.trace())) < 4 * tr.std_error
    assert state.keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():  # the module's own tensors are untouched
        assert torch.equal(v, state[k]) and not state[k].requires_grad


def test_a_subset_of_keys_gives_the_matching_block_of_the_hessian():
    model, batches = _mlp(), _data()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    dense = _dense_hessian(model, state, batches)
    op = hessian_operator(model, state, batches, keys=["2.weight", "2.bias"])
    start = 4 * 5 + 5
    block = dense[start:, start:]
    v = torch.randn(op.dimension, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(op(v), block @ v)


# --------------------------------------------------------------------------- scale invariance


def _rescaled(state: dict, c: torch.Tensor) -> dict:
    """Hidden unit ``i`` of a ReLU layer scaled by ``c_i > 0`` in, ``1/c_i`` out: same function."""
    out = dict(state)
    out["0.weight"] = state["0.weight"] * c[:, None]
    out["0.bias"] = state["0.bias"] * c
    out["2.weight"] = state["2.weight"] / c[None, :]
    return out


def test_adaptive_sharpness_is_invariant_to_a_function_preserving_rescaling():
    model, batches = _mlp(3), _data(3, n=40)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    c = torch.tensor([4.0, 0.25, 2.0, 8.0, 0.5], dtype=torch.float64)
    scaled = _rescaled(state, c)
    same = evaluate(model, state, batches), evaluate(model, scaled, batches)
    assert same[0].loss == pytest.approx(same[1].loss, rel=1e-12)
    for norm in ("l2", "linf"):
        before = adaptive_sharpness(model, state, batches, rho=0.3, norm=norm)
        after = adaptive_sharpness(model, scaled, batches, rho=0.3, norm=norm)
        assert before.sharpness > 1e-4
        assert after.sharpness == pytest.approx(before.sharpness, rel=1e-8)
    top = hessian_spectrum(model, state, batches).eigenvalues[0]
    top_scaled = hessian_spectrum(model, scaled, batches).eigenvalues[0]
    assert not math.isclose(top, top_scaled, rel_tol=0.1)  # the raw measure is not invariant
    plain = adaptive_sharpness(model, state, batches, rho=0.3, adaptive=False)
    plain_scaled = adaptive_sharpness(model, scaled, batches, rho=0.3, adaptive=False)
    assert not math.isclose(plain.sharpness, plain_scaled.sharpness, rel_tol=0.1)


# --------------------------------------------------------------------------- results and errors


def test_sharpness_study_reports_every_model_and_the_merge():
    model, batches = _mlp(), _data()
    a = {k: v.detach().clone() for k, v in model.state_dict().items()}
    b = {k: v.detach().clone() for k, v in _mlp(1).state_dict().items()}
    study = sharpness_study(model, {"A": a, "B": b}, batches, merge="naive", trace_samples=4)
    assert list(study.models) == ["A", "B", "merged"]
    record = study.to_dict()
    assert set(record["models"]["merged"]) >= {
        "loss", "top_eigenvalue", "trace", "adaptive_sharpness", "plain_sharpness",
    }  # fmt: skip
    one = sharpness(model, a, batches, trace_samples=4)
    assert one.to_dict() == record["models"]["A"]  # deterministic for a seed
    mid = {k: (a[k] + b[k]) / 2 for k in a}
    assert study.models["merged"].loss == pytest.approx(evaluate(model, mid, batches).loss)


def test_errors_name_the_bad_argument():
    model, batches = _mlp(), _data()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        ModeconnectError, match="hessian_spectrum: unknown method 'qr'; valid names"
    ):
        hessian_spectrum(model, state, batches, method="qr")
    with pytest.raises(ModeconnectError, match="adaptive_sharpness: unknown norm 'l1'"):
        adaptive_sharpness(model, state, batches, norm="l1")
    with pytest.raises(
        ModeconnectError, match="adaptive_sharpness: rho=-1.0 is not a positive number"
    ):
        adaptive_sharpness(model, state, batches, rho=-1.0)
    with pytest.raises(ModeconnectError, match="one-shot iterator"):
        hessian_operator(model, state, iter(batches))
    with pytest.raises(ModeconnectError, match=r"missing \['2.bias'\]"):
        hessian_operator(model, {k: v for k, v in state.items() if k != "2.bias"}, batches)
    with pytest.raises(ModeconnectError, match="merges the first two models"):
        sharpness_study(model, {"A": state}, batches, merge="naive")
