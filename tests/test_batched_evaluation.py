"""Batched evaluation (issue 22): k parameter points per pass equal the per-point loop.

Properties over random small models, k, BatchNorm reset and low-precision dtypes; the
test that sends a model ``vmap`` runs differently back to the per-point path; the rule
that chooses k; ``--points-per-pass`` on the command line.
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from study_files import (
    Bench,
    files_fixture,  # noqa: F401 (the ``files`` fixture)
    run,
)
from torch import Tensor, nn

import modeconnect as mc
from modeconnect.bn import BatchNormReset, reset_batchnorm, reset_batchnorm_many
from modeconnect.evaluation import (
    auto_alpha_batch,
    corrected_path,
    example_curves,
    linear_path,
    points_per_pass,
)
from modeconnect.evaluation.engine import _AGREES, Pass, vmap_agrees
from modeconnect.evaluation.scoring import get_scoring
from modeconnect.models import conv_net, mlp

DTYPE_TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}


def _model(seed: int, widths: list[int], norm: bool) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(w_in, w_out)]
        if norm and w_out != widths[-1]:
            layers += [nn.BatchNorm1d(w_out)]
        layers += [nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _bn_model(seed: int, conv: bool, widths: list[int]) -> tuple[nn.Module, tuple[int, ...]]:
    """A small sequential model with BatchNorm and the shape of one input."""
    torch.manual_seed(seed)
    if conv:
        return conv_net(in_channels=1, channels=[3, 4], num_classes=3, image_size=4), (1, 4, 4)
    return _model(seed, widths, norm=True), (widths[0],)


def _state(model: nn.Module, seed: int, dtype: torch.dtype) -> dict[str, Tensor]:
    torch.manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            v = (v + 0.3 * torch.randn_like(v)).to(dtype)
            if "running_var" in k:
                v = v.abs() + 0.5
        out[k] = v
    return out


def _data(seed: int, n: int, features: int, classes: int, dtype: torch.dtype) -> list:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g).to(dtype)
    y = torch.randint(0, classes, (n,), generator=g)
    return [(x[:n // 2], y[:n // 2]), (x[n // 2:], y[n // 2:])]  # fmt: skip


def _assert_rows_close(got: mc.ExampleCurve, want: mc.ExampleCurve, tol: float) -> None:
    for g, w in zip(got.results, want.results, strict=True):
        torch.testing.assert_close(g.loss, w.loss, rtol=tol, atol=tol)
        torch.testing.assert_close(g.count, w.count)


@pytest.mark.slow
@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    hidden=st.lists(st.integers(2, 12), min_size=1, max_size=3),
    k=st.integers(2, 7),
    steps=st.integers(3, 9),
    norm=st.booleans(),
    reset=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
)
def test_k_points_per_pass_equal_the_per_point_loop(
    seed: int, hidden: list[int], k: int, steps: int, norm: bool, reset: bool, dtype: torch.dtype
) -> None:
    widths = [5, *hidden, 3]
    model = _model(seed, widths, norm).to(dtype)
    a, b = _state(model, seed + 1, dtype), _state(model, seed + 2, dtype)
    test, train = _data(seed, 24, 5, 3, dtype), _data(seed + 3, 16, 5, 3, dtype)
    alphas = [i / (steps - 1) for i in range(steps)]
    path = linear_path(a, b)
    if norm and reset:
        path = corrected_path(path, BatchNormReset(model, train))
    splits = {"test": test, "train": train}
    many = example_curves(model, path, alphas, splits, alpha_batch=k)
    one = example_curves(model, path, alphas, splits, alpha_batch=1)
    for name in splits:
        _assert_rows_close(many[name], one[name], DTYPE_TOL[dtype])
        # endpoints run alone: exactly the single evaluation
        for i in (0, steps - 1):
            torch.testing.assert_close(many[name].results[i].loss, one[name].results[i].loss,
                                       rtol=0, atol=0)  # fmt: skip


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    states=st.integers(2, 5),
    batches=st.integers(1, 3),
    max_batches=st.sampled_from([None, 1, 2]),
    conv=st.booleans(),
)
def test_batchnorm_reset_of_many_states_equals_one_at_a_time(
    seed: int, states: int, batches: int, max_batches: int | None, conv: bool
) -> None:
    model, shape = _bn_model(seed, conv, [4, 6, 3])
    sds = [_state(model, seed + i, torch.float32) for i in range(states)]
    x = torch.randn(8 * batches, *shape)
    y = torch.randint(0, 3, (8 * batches,))
    data = list(zip(x.split(8), y.split(8), strict=True))
    fresh = reset_batchnorm_many(model, sds, data, max_batches=max_batches)
    for sd, got in zip(sds, fresh, strict=True):
        want = reset_batchnorm(model, sd, data, max_batches=max_batches)
        assert set(got) == set(want)
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(fresh[0][k], sds[0][k]) for k in sds[0] if "running" in k)


def test_landscape_with_reset_is_the_same_k_at_a_time_and_one_at_a_time() -> None:
    model = _model(3, [4, 8, 3], norm=True)
    state = _state(model, 4, torch.float32)
    test, train = _data(5, 20, 4, 3, torch.float32), _data(6, 20, 4, 3, torch.float32)
    common = {"resolution": 4, "train": train, "bn": "reset", "seed": 2}
    many = mc.surface_2d(model, state, test, points_per_pass=5, **common)
    one = mc.surface_2d(model, state, test, points_per_pass=1, **common)
    torch.testing.assert_close(torch.tensor(many.loss), torch.tensor(one.loss), rtol=1e-5,
                               atol=1e-6)  # fmt: skip
    assert many.accuracy == one.accuracy


class _Sneaky(nn.Module):
    """Runs differently under ``vmap``: a forward that looks at how its weight is held."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        batched = torch._C._functorch.is_batchedtensor(self.fc.weight)
        return self.fc(x) * (2.0 if batched else 1.0)


class _Scalar(nn.Module):
    """``vmap`` cannot run it: the forward reads a weight as a Python number."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x) * float(self.fc.bias.sum().item() != 0.0)


@pytest.mark.parametrize("cls", [_Sneaky, _Scalar])
def test_models_vmap_runs_wrongly_or_not_at_all_fall_back_to_the_per_point_loop(
    cls: type[nn.Module],
) -> None:
    torch.manual_seed(0)
    model = cls()
    a = {k: v.clone() for k, v in model.state_dict().items()}
    b = {k: v + torch.randn_like(v) for k, v in a.items()}
    data = _data(1, 16, 4, 3, torch.float32)
    path = linear_path(a, b)
    runner = Pass.of(model, get_scoring(None, model), per_example=True)
    assert not vmap_agrees(runner, [path(0.25), path(0.5)], data)
    assert _AGREES[model] is False
    many = example_curves(model, path, [0.0, 0.25, 0.5, 0.75, 1.0], {"d": data}, alpha_batch=4)
    one = example_curves(model, path, [0.0, 0.25, 0.5, 0.75, 1.0], {"d": data}, alpha_batch=1)
    for g, w in zip(many["d"].results, one["d"].results, strict=True):
        assert torch.equal(g.loss, w.loss)


def test_points_per_pass_is_a_rule_of_the_model_and_the_data() -> None:
    small = mlp(in_features=8, hidden=[16], out_features=3)
    batch = [(torch.randn(32, 8), torch.randint(0, 3, (32,)))]
    assert points_per_pass(small, batch) == auto_alpha_batch(small) > 1
    big = mlp(in_features=64, hidden=[512, 512], out_features=10)  # ~300k weights x 500 rows
    assert points_per_pass(big, [(torch.randn(500, 64), torch.zeros(500).long())]) == 1
    conv = conv_net(in_channels=1, channels=[2], num_classes=3, image_size=4)
    assert points_per_pass(conv, [(torch.randn(4, 1, 4, 4), torch.zeros(4).long())]) == 1
    assert points_per_pass(small, []) == 1


def test_cli_points_per_pass_gives_the_same_barriers(files: Bench) -> None:
    got = {}
    for k in ("1", "4"):
        js = files.root / f"b{k}.json"
        code, _, err = run("barrier", files.a, files.b, "--data", files.test, "--align", "none",
                           "--steps", "7", "--points-per-pass", k, "--json", js)  # fmt: skip
        assert code == 0, err
        got[k] = json.loads(js.read_text())
    one, four = (g["naive"]["curve"] for g in (got["1"], got["4"]))
    assert [p["alpha"] for p in one] == [p["alpha"] for p in four]
    for p, q in zip(one, four, strict=True):
        assert q["loss"] == pytest.approx(p["loss"], rel=1e-5, abs=1e-7)
    code, _, err = run("barrier", files.a, files.b, "--data", files.test, "--points-per-pass", "0")
    assert code == 2 and "--points-per-pass" in err


@pytest.mark.slow
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), reset=st.booleans(), conv=st.booleans())
def test_layerwise_from_the_cached_prefix_equals_the_whole_model(
    seed: int, reset: bool, conv: bool
) -> None:
    model, shape = _bn_model(seed, conv, [4, 6, 5, 3])
    a, b = _state(model, seed + 1, torch.float32), _state(model, seed + 2, torch.float32)
    x, y = torch.randn(24, *shape), torch.randint(0, 3, (24,))
    test = list(zip(x[:16].split(8), y[:16].split(8), strict=True))
    train = list(zip(x[8:].split(8), y[8:].split(8), strict=True))

    def factory(x0: dict, x1: dict) -> BatchNormReset:
        return BatchNormReset(model, train, 1)

    correction = factory if reset else None
    common = {"steps": 5, "correction": correction, "alpha_batch": 1}
    cached = mc.layerwise_barriers(model, a, b, test, cache_prefix=True, **common)
    whole = mc.layerwise_barriers(model, a, b, test, cache_prefix=False, **common)
    assert cached.evaluated == whole.evaluated
    for got, want in zip(cached.layers, whole.layers, strict=True):
        for variant in ("from_a", "from_b", "cumulative"):
            g, w = getattr(got, variant).curve, getattr(want, variant).curve
            torch.testing.assert_close(g.losses, w.losses, rtol=1e-5, atol=1e-6)
            assert g.accuracies == w.accuracies


def test_only_sequential_models_and_later_children_are_cut() -> None:
    model = _model(0, [4, 6, 5, 3], norm=False)  # children 0 Linear, 1 ReLU, 2 Linear, ...
    cut = mc.layerwise.split_prefix(model, {"2.weight"}, None)
    assert (
        cut is not None and cut.names == {"0", "1"} and list(cut.suffix._modules) == ["2", "3", "4"]
    )
    assert mc.layerwise.split_prefix(model, {"0.weight", "2.weight"}, None) is None
    assert mc.layerwise.split_prefix(nn.ModuleList(model), {"2.weight"}, None) is None
    assert mc.layerwise.split_prefix(model, {"2.weight"}, lambda s, t: s) is None
