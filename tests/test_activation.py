"""Activation matching: recovery of permuted copies, streamed statistics, dead units, errors."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
import torch
from zoo import ZOO, randomize_

from modeconnect.errors import ModeconnectError
from modeconnect.matching.activation import (
    activation_statistics,
    match_activations,
    observations,
)
from modeconnect.spec import (
    GraphRunner,
    apply_permutation,
    derive_spec,
    invert_permutation,
    random_permutation,
)

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


def batches(x: torch.Tensor, n: int = 4, size: int = 16, seed: int = 0) -> list:
    """``n`` random ``(x, y)`` batches, inputs shaped like ``x`` (token ids if integer)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (size, *x.shape[1:])
    y = torch.zeros(size, dtype=torch.long)
    if x.dtype.is_floating_point:
        return [(torch.randn(shape, generator=gen), y) for _ in range(n)]
    return [(torch.randint(0, int(x.max()) + 1, shape, generator=gen), y) for _ in range(n)]


def live_model(name: str, seed: int = 1):
    """A zoo model randomised with small biases, so no ReLU unit is dead on random inputs.

    Activation matching cannot tell dead units apart (they correlate 0 with
    everything), so exact recovery needs every unit alive; the tests check it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, x = ZOO[name]()
    randomize_(model, seed)
    with torch.no_grad():
        for key, t in [*model.named_parameters(), *model.named_buffers()]:
            if key.endswith(("bias", "running_mean")):
                t.mul_(0.1)
    return model, x


def permuted_copy(name: str, seed: int = 1, dead_ok: bool = False):
    """``(model, spec, a, b, data)`` with ``b`` a randomly permuted copy of ``a``."""
    model, x = live_model(name, seed) if not dead_ok else _random_model(name, seed)
    spec = derive_spec(model, x)
    a = {k: v.detach().clone() for k, v in model.state_dict().items()}
    b = apply_permutation(a, spec, random_permutation(spec, seed + 10))
    return model, spec, a, b, batches(x[0])


def _random_model(name: str, seed: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, x = ZOO[name]()
    return randomize_(model, seed), x


def assert_same_weights(got: dict, want: dict) -> None:
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)


RECOVER = [
    "mlp_seq",
    "cnn_bn",
    "resnet20",
    "densenet_block",
    "grouped_conv",
    "groupnorm_cnn",
    "layernorm_mlp",
    "vit",
    "gpt",
    pytest.param(
        "hf_gpt2", marks=pytest.mark.skipif(not HAS_TRANSFORMERS, reason="needs transformers")
    ),
]


@pytest.mark.parametrize("name", RECOVER)
def test_recovers_permuted_copy(name):
    model, spec, a, b, data = permuted_copy(name)
    stats = activation_statistics(spec, a, b, model=model, data=data)
    assert all(bool(m.live_a().all()) for m in stats.moments), "premise: no dead unit"
    assert stats.unobserved == ()
    al = match_activations(spec, a, b, model=model, data=data)
    assert al.method == "activation"
    assert_same_weights(apply_permutation(b, spec, al.perm), a)
    # Every matched unit correlates perfectly with itself.
    units = sum(o.m for o in stats.observations)
    assert al.objective == pytest.approx(units, rel=1e-9)


@pytest.mark.parametrize("name", ["mlp_seq", "cnn_bn", "gpt"])
def test_moment_statistic_recovers(name):
    model, spec, a, b, data = permuted_copy(name)
    al = match_activations(spec, a, b, model=model, data=data, statistic="moment")
    assert al.params["statistic"] == "moment"
    assert_same_weights(apply_permutation(b, spec, al.perm), a)


def test_batched_perm_is_the_inverse_of_the_heads_permutation():
    model, x = live_model("gpt")
    spec = derive_spec(model, x)
    a = model.state_dict()
    truth = random_permutation(spec, 5)
    b = apply_permutation(a, spec, truth)
    al = match_activations(spec, a, b, model=model, data=batches(x[0]))
    inverse = invert_permutation(spec, truth)
    for group in spec.groups:
        assert torch.equal(al.perm[group], inverse[group]), group


def test_heads_axis_found_on_queries_and_keys():
    # q and k are read as (batch, head, token, head dim): the head-dim group's site
    # does not show the heads, so the head axis is located by moving B's heads.
    model, spec, a, b, data = permuted_copy("gpt")
    stats = activation_statistics(spec, a, b, model=model, data=data)
    located = [o for o in stats.observations if o.dims == (1, 3)]
    assert len(located) == 6  # q, k, v of two blocks
    for o in located:
        outer, inner = (f.group for f in o.layout.factors)  # type: ignore[union-attr]
        assert spec.groups[inner].batch_over == outer
    # Without the located axes those sites are dropped, never pooled over heads.
    assert len(observations(spec)) == len(stats.observations) - len(located)


def test_streamed_statistics_match_direct_computation():
    model, spec, a, b, data = permuted_copy("mlp_seq")
    stats = activation_statistics(spec, a, b, model=model, data=data)
    runner = GraphRunner(model)
    x = torch.cat([batch[0] for batch in data])
    for obs, mom in zip(stats.observations, stats.moments, strict=True):
        xa = obs.units(runner.run(a, (x,), [obs.node])[obs.node]).numpy()
        xb = obs.units(runner.run(b, (x,), [obs.node])[obs.node]).numpy()
        m = obs.m
        direct = np.corrcoef(xa.T, xb.T)[:m, m:]
        np.testing.assert_allclose(mom.correlation().numpy(), direct, atol=1e-10)
        np.testing.assert_allclose(mom.moment().numpy(), xa.T @ xb / len(xa), atol=1e-10)
        assert mom.count == len(x)


def test_max_batches_bounds_the_data():
    model, spec, a, b, data = permuted_copy("mlp_seq")
    al = match_activations(spec, a, b, model=model, data=data, max_batches=2)
    assert al.params["batches"] == 2
    stats = activation_statistics(spec, a, b, model=model, data=data, max_batches=2)
    assert stats.moments[0].count == 32


def test_dead_units_give_zero_correlation_not_nan():
    model, spec, a, b, data = permuted_copy("mlp_seq")
    first = next(k for k in a if k.endswith("weight"))
    bias = first.replace("weight", "bias")
    a = dict(a)
    a[first], a[bias] = a[first].clone(), a[bias].clone()
    a[first][:3] = 0.0
    a[bias][:2] = -1.0  # ReLU(-1) = 0: dead
    a[bias][2] = 0.7  # ReLU(0.7): constant, also dead
    b = apply_permutation(a, spec, random_permutation(spec, 4))
    stats = activation_statistics(spec, a, b, model=model, data=data)
    corr = stats.moments[0].correlation()
    assert torch.isfinite(corr).all()
    assert (corr[:3] == 0).all()
    assert not stats.moments[0].live_a()[:3].any()
    al = match_activations(spec, a, b, model=model, data=data)
    aligned = apply_permutation(b, spec, al.perm)
    torch.testing.assert_close(aligned[first][3:], a[first][3:], rtol=0, atol=0)
    for p in al.perm.values():  # still permutations
        assert torch.equal(p.sort().values, torch.arange(p.numel()))


def test_many_dead_units_still_reach_the_optimum():
    # Default randomisation kills 40 units of this VGG on random inputs.
    model, spec, a, b, data = permuted_copy("vgg11_bn", dead_ok=True)
    stats = activation_statistics(spec, a, b, model=model, data=data)
    dead = sum(int((~m.live_a()).sum()) for m in stats.moments)
    assert dead > 10
    assert all(torch.isfinite(m.correlation()).all() for m in stats.moments)
    al = match_activations(spec, a, b, model=model, data=data)
    live = sum(int(m.live_a().sum()) for m in stats.moments)
    assert al.objective == pytest.approx(live, rel=1e-9)


def test_needs_model_and_data():
    model, spec, a, b, _ = permuted_copy("mlp_seq")
    with pytest.raises(ModeconnectError, match="need the model and data"):
        match_activations(spec, a, b, model=model)
    with pytest.raises(ModeconnectError, match="yielded no batch"):
        match_activations(spec, a, b, model=model, data=[])


def test_bad_options():
    model, spec, a, b, data = permuted_copy("mlp_seq")
    with pytest.raises(ModeconnectError, match="valid statistics: correlation, moment"):
        match_activations(spec, a, b, model=model, data=data, statistic="cosine")
    with pytest.raises(ModeconnectError, match="max_batches must be a positive integer"):
        match_activations(spec, a, b, model=model, data=data, max_batches=0)


def test_unknown_option_is_an_error_that_lists_the_accepted_ones():
    model, spec, a, b, data = permuted_copy("mlp_seq")
    with pytest.raises(
        ModeconnectError,
        match=r"^activation: unknown option 'restarts'; accepted options: model, data, seed, "
        r"statistic, max_batches, solver, max_iter, tol, rtol$",
    ):
        match_activations(spec, a, b, model=model, data=data, restarts=3)


def test_profile_counts_the_solves_and_skips():
    model, spec, a, b, data = permuted_copy("cnn_bn")
    al = match_activations(spec, a, b, model=model, data=data)
    outer = sum(g.batch_over is None for g in spec.groups.values())
    assert al.profile["solves"] + al.profile["skipped"] == outer * al.iterations
    assert al.profile["solves"] >= outer and al.profile["assignment_seconds"] >= 0
