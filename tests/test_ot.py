"""Optimal-transport alignment and fusion: recovery, plans, Sinkhorn vs EMD, warnings, fusion."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import pytest
import torch
from test_activation import assert_same_weights, batches, live_model, permuted_copy
from zoo import ZOO, randomize_

import modeconnect as mc
from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import evaluate, interpolate
from modeconnect.matching.ot import (
    WeightSource,
    fuse_ot,
    harden,
    match_ot,
    transport_plan,
    transport_plans,
)
from modeconnect.spec import apply_permutation, derive_spec, random_permutation

CKPT = Path(__file__).resolve().parents[1] / "checkpoints"


def _pair(name: str):
    """Two independently randomised models of one architecture (A seed 1, B seed 2)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, x = ZOO[name]()
    spec = derive_spec(model, x)
    a = {k: v.clone() for k, v in randomize_(model, 1).state_dict().items()}
    b = {k: v.clone() for k, v in randomize_(model, 2).state_dict().items()}
    return model, spec, a, b, x


@pytest.mark.parametrize(
    "name", ["mlp_seq", "cnn_bn", "resnet20", "grouped_conv", "groupnorm_cnn", "vit", "gpt"]
)
def test_emd_on_weights_recovers_permuted_copy(name):
    _, spec, a, b, _ = permuted_copy(name, dead_ok=True)  # weights see dead units too
    al = match_ot(spec, a, b)
    assert al.method == "ot" and al.params["solver"] == "emd"
    assert_same_weights(apply_permutation(b, spec, al.perm), a)


@pytest.mark.parametrize("name", ["mlp_seq", "cnn_bn", "gpt"])
def test_sinkhorn_recovers_permuted_copy(name):
    _, spec, a, b, _ = permuted_copy(name, dead_ok=True)
    al = match_ot(spec, a, b, solver="sinkhorn", reg=0.01)
    assert_same_weights(apply_permutation(b, spec, al.perm), a)


@pytest.mark.parametrize("name", ["cnn_bn", "resnet20", "gpt"])
def test_activation_cost_recovers_permuted_copy(name):
    model, spec, a, b, data = permuted_copy(name)
    al = match_ot(spec, a, b, model=model, data=data, cost="activations")
    assert al.params["cost"] == "activations"
    assert_same_weights(apply_permutation(b, spec, al.perm), a)


@pytest.mark.parametrize("name", ["mlp_seq", "cnn_bn"])
def test_emd_plan_on_a_permuted_copy_is_the_permutation_matrix(name):
    _, spec, a, b, _ = permuted_copy(name, dead_ok=True)
    al = match_ot(spec, a, b)
    plans = transport_plans(spec, WeightSource(spec, a, b), al.perm)
    assert set(plans) == set(spec.groups)
    for g, plan in plans.items():
        n = plan.shape[0]
        scaled = n * plan
        torch.testing.assert_close(scaled, torch.round(scaled), rtol=0, atol=1e-9)
        expected = torch.zeros(n, n, dtype=torch.float64)
        expected[torch.arange(n), al.perm[g]] = 1.0
        torch.testing.assert_close(scaled, expected, rtol=0, atol=1e-9)


def test_sinkhorn_approaches_emd_as_reg_shrinks():
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(12, 12, generator=gen, dtype=torch.float64)
    exact = transport_plan(s, solver="emd")
    gaps = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small reg needs more than 2000 iterations
        for reg in (0.3, 0.1, 0.03, 0.01, 1e-3, 3e-4):  # 3e-4 runs in the log domain
            plan = transport_plan(s, solver="sinkhorn", reg=reg, num_itermax=2000)
            torch.testing.assert_close(plan.sum(1), torch.full((12,), 1 / 12, dtype=torch.float64))
            gaps.append(float((plan - exact).abs().sum()))
    assert all(later < earlier for earlier, later in itertools.pairwise(gaps))
    assert gaps[-1] < 0.01 < 1.0 < gaps[0]
    assert torch.equal(harden(plan), harden(exact))


def test_tiny_emd_agrees_with_brute_force():
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        s = torch.randn(6, 6, generator=gen, dtype=torch.float64)
        best = max(itertools.permutations(range(6)), key=lambda p: float(s[range(6), p].sum()))
        plan = transport_plan(s, solver="emd")
        assert harden(plan).tolist() == list(best)
        assert float(plan.max()) == pytest.approx(1 / 6)


def test_sinkhorn_warning_names_the_parameter():
    s = torch.randn(30, 30, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with pytest.warns(UserWarning, match=r"group P7: Sinkhorn at reg=0.001 .*increase --reg"):
        transport_plan(s, solver="sinkhorn", reg=0.001, num_itermax=3, group="P7")


def test_emd_warning_names_the_parameter():
    s = torch.randn(40, 40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    # One pivot cannot reach optimality, and the partial plan lacks mass.
    with (
        pytest.warns(UserWarning, match="increase num_itermax"),
        pytest.raises(ModeconnectError, match="has mass .* instead of 1; increase num_itermax"),
    ):
        transport_plan(s, solver="emd", num_itermax=1)


@pytest.mark.parametrize("name", ["mlp_seq", "cnn_bn", "gpt"])
def test_emd_fusion_equals_interpolating_with_aligned_b(name):
    _, spec, a, b, _ = _pair(name)
    al = match_ot(spec, a, b)
    fused = fuse_ot(spec, a, b, alignment=al)
    merged = interpolate(a, apply_permutation(b, spec, al.perm), 0.5)
    for key in a:
        torch.testing.assert_close(fused[key], merged[key], rtol=1e-6, atol=1e-6, msg=key)


def test_fusion_of_a_permuted_copy_gives_a_back():
    _, spec, a, b, _ = permuted_copy("cnn_bn", dead_ok=True)
    for solver in ("emd", "sinkhorn"):
        fused = fuse_ot(spec, a, b, solver=solver, reg=0.001)
        for key in a:
            torch.testing.assert_close(fused[key], a[key], rtol=1e-4, atol=1e-5, msg=key)


def test_soft_fusion_mixes_units():
    _, spec, a, b, _ = _pair("mlp_seq")
    al = match_ot(spec, a, b)
    soft = fuse_ot(spec, a, b, alignment=al, solver="sinkhorn", reg=0.1)
    hard = fuse_ot(spec, a, b, alignment=al)
    assert any(not torch.allclose(soft[k], hard[k]) for k in a)
    # Transport keeps the total of each tensor along its group axes (n·T is doubly stochastic).
    for key in a:
        total = 0.5 * a[key].double().sum() + 0.5 * b[key].double().sum()
        # Up to Sinkhorn's marginal tolerance and float32 storage.
        torch.testing.assert_close(soft[key].double().sum(), total, rtol=1e-3, atol=1e-4)


def test_fusion_weights():
    _, spec, a, b, _ = _pair("mlp_seq")
    al = match_ot(spec, a, b)
    only_a = fuse_ot(spec, a, b, alignment=al, weights=(1, 0))
    assert_same_weights(only_a, a)
    only_b = fuse_ot(spec, a, b, alignment=al, weights=(0, 3))
    aligned = apply_permutation(b, spec, al.perm)
    for key in a:
        torch.testing.assert_close(only_b[key], aligned[key], rtol=1e-6, atol=1e-6)
    with pytest.raises(ModeconnectError, match="fusion weights"):
        fuse_ot(spec, a, b, alignment=al, weights=(0, 0))
    with pytest.raises(ModeconnectError, match="fusion weights"):
        fuse_ot(spec, a, b, alignment=al, weights=(0.5, 0.3, 0.2))


def test_soft_fusion_of_the_digits_pair_stays_accurate():
    ca, cb = mc.load(CKPT / "mlp_a.pt"), mc.load(CKPT / "mlp_b.pt")
    model = mc.resolve_model([ca, cb]).model
    a, b = ca.state_dict, cb.state_dict
    test = mc.load_data(CKPT / "digits_test.pt")
    spec = derive_spec(model, (test[0][0][:2],))
    al = match_ot(spec, a, b)
    naive = evaluate(model, interpolate(a, b, 0.5), test)
    fused = evaluate(model, fuse_ot(spec, a, b, alignment=al, solver="sinkhorn", reg=0.01), test)
    assert naive.accuracy < 0.6
    assert fused.accuracy > 0.95


def test_bad_options_name_the_flag():
    _, spec, a, b, _ = permuted_copy("mlp_seq")
    with pytest.raises(ModeconnectError, match=r"--ot-solver.*valid solvers: emd, sinkhorn"):
        match_ot(spec, a, b, solver="lp")
    with pytest.raises(ModeconnectError, match=r"--cost.*valid costs: weights, activations"):
        match_ot(spec, a, b, cost="gradients")
    for reg in (0, -1.0, float("nan")):
        with pytest.raises(ModeconnectError, match="--reg must be a positive number"):
            match_ot(spec, a, b, solver="sinkhorn", reg=reg)
    with pytest.raises(ModeconnectError, match="need the model and data"):
        match_ot(spec, a, b, cost="activations")


def test_registered_and_usable_from_align():
    model, x = live_model("cnn_bn")
    a = model.state_dict()
    spec = derive_spec(model, x)
    b = apply_permutation(a, spec, random_permutation(spec, 3))
    data = batches(x[0])
    for options in ({}, {"cost": "activations"}, {"solver": "sinkhorn", "reg": 0.05}):
        result = mc.align(model, a, b, method="ot", data=data, **options)
        assert result.equivalence.passed
        assert_same_weights(result.aligned, a)


def test_unknown_option_is_an_error_that_lists_the_accepted_ones():
    _, spec, a, b, _ = permuted_copy("mlp_seq")
    with pytest.raises(
        ModeconnectError, match=r"^ot: unknown option 'regg'; accepted options: .*reg"
    ):
        match_ot(spec, a, b, regg=0.1)
    with pytest.raises(ModeconnectError, match=r"^fuse_ot: unknown option 'regg'; .*weights"):
        fuse_ot(spec, a, b, regg=0.1)
    with pytest.raises(ModeconnectError, match=r"ot: rtol must be a number >= 0"):
        match_ot(spec, a, b, rtol=-1.0)


def test_weight_cost_is_weight_matchings_similarity():
    """One cached similarity serves both: emd on weight costs reaches weight matching's optimum."""
    from modeconnect.matching import match_weights
    from modeconnect.matching.weight import WeightSource as Shared

    assert WeightSource is Shared
    _, spec, a, b, _ = _pair("mlp_seq")
    for seed in range(3):
        ot_al, wm_al = match_ot(spec, a, b, seed=seed), match_weights(spec, a, b, seed=seed)
        assert ot_al.objective == pytest.approx(wm_al.objective, rel=1e-9)
