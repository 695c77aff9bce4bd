"""Curves between two models (Garipov et al. 2018): exact ends, the line as the start,
a model connected to itself, and training that lowers the curve below the line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from modeconnect.bn import reset_batchnorm
from modeconnect.curve_fitting import (
    Bezier,
    PolyChain,
    curve_path,
    curve_point,
    curve_study,
    evaluate_path,
    fit_curve,
    get_curve,
)
from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import evaluate, interpolate, linear_path
from modeconnect.models import conv_net, mlp

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"


def _digits(n: int = 400) -> tuple[list, list]:
    """A small train split and the test split of the shipped digits, in batches."""
    train = torch.load(CHECKPOINTS / "digits_train.pt", weights_only=True)
    test = torch.load(CHECKPOINTS / "digits_test.pt", weights_only=True)
    tr = [(train["x"][i : i + 100], train["y"][i : i + 100]) for i in range(0, n, 100)]
    te = [(test["x"][i : i + 250], test["y"][i : i + 250]) for i in range(0, 500, 250)]
    return tr, te


def _train(seed: int, batches: list, hidden=(32, 32), epochs: int = 30) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = mlp(64, list(hidden), 10)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(epochs):
        for x, y in batches:
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def pair():
    train, test = _digits()
    return mlp(64, [32, 32], 10), _train(1, train), _train(2, train), train, test


# --------------------------------------------------------------------------- parametrisations


@settings(max_examples=50, deadline=None)
@given(
    t=st.floats(0.0, 1.0), bends=st.integers(1, 4), kind=st.sampled_from(["bezier", "polychain"])
)
def test_coefficients_are_a_partition_of_unity_with_exact_ends(t, bends, kind):
    curve = get_curve(kind, bends)
    coef = curve.coefficients(t)
    assert len(coef) == bends + 2
    assert sum(coef) == pytest.approx(1.0, abs=1e-12)
    assert min(coef) >= 0.0
    assert curve.coefficients(0.0) == (1.0,) + (0.0,) * (bends + 1)
    assert curve.coefficients(1.0) == (0.0,) * (bends + 1) + (1.0,)


@settings(max_examples=30, deadline=None)
@given(
    t=st.floats(0.0, 1.0), bends=st.integers(1, 3), kind=st.sampled_from(["bezier", "polychain"])
)
def test_bends_on_the_line_give_the_line(t, bends, kind):
    gen = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(3, 4, generator=gen, dtype=torch.float64)}
    b = {"w": torch.randn(3, 4, generator=gen, dtype=torch.float64)}
    curve = get_curve(kind, bends)
    line = [interpolate(a, b, s) for s in curve.line_positions()]
    torch.testing.assert_close(curve_point(curve, a, line, b, t)["w"], interpolate(a, b, t)["w"])


def test_polychain_passes_through_its_bends_and_the_ends_are_the_endpoints():
    gen = torch.Generator().manual_seed(1)
    a, b, bend = ({"w": torch.randn(5, generator=gen), "n": torch.tensor(3)} for _ in range(3))
    chain = PolyChain(1)
    assert torch.equal(curve_point(chain, a, [bend], b, 0.5)["w"], bend["w"])
    for t, end in ((0.0, a), (1.0, b)):
        point = curve_point(chain, a, [bend], b, t)
        assert point["w"] is end["w"]  # the endpoint's own tensor: bit for bit
        assert point["n"] is a["n"]  # integer tensors always come from A
    bez = curve_point(Bezier(1), a, [bend], b, 0.5)["w"]
    torch.testing.assert_close(bez, 0.25 * a["w"] + 0.5 * bend["w"] + 0.25 * b["w"])


# --------------------------------------------------------------------------- training


def test_trained_curve_has_exact_ends_and_beats_the_line(pair):
    model, a, b, train, test = pair
    fit = fit_curve(model, a, b, train, epochs=8, lr=0.05, batch_size=50, seed=0)
    for t, end in ((0.0, a), (1.0, b)):
        point = fit.point(t)
        assert point.keys() == end.keys()
        assert all(torch.equal(point[k], end[k]) for k in end)
    line = evaluate_path(model, linear_path(a, b), {"train": train}, steps=11)["train"]
    curve = evaluate_path(model, fit.path(), {"train": train}, steps=11)["train"]
    assert line.barriers["lerp"].loss > 0.3, "the pair must have a barrier to remove"
    assert max(curve.curve.losses) < 0.5 * max(line.curve.losses)
    assert curve.barriers["lerp"].loss < line.barriers["lerp"].loss
    assert len(fit.history) == 8 and fit.history[-1] < fit.history[0]


def test_same_seed_same_curve_other_seed_other_curve(pair):
    model, a, b, train, _ = pair
    runs = [fit_curve(model, a, b, train, epochs=1, batch_size=64, seed=s) for s in (5, 5, 6)]
    first, again, other = (r.bends[0] for r in runs)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_dropout_curves_follow_the_seed_and_leave_the_global_generator_alone(pair):
    _, a, b, train, _ = pair
    model = nn.Sequential(*mlp(64, [32, 32], 10)[:4], nn.Dropout(0.5), *mlp(64, [32, 32], 10)[4:])
    keys = dict(zip(mlp(64, [32, 32], 10).state_dict(), model.state_dict(), strict=True))
    a, b = ({keys[k]: v for k, v in s.items()} for s in (a, b))
    state = torch.random.get_rng_state()
    runs = [fit_curve(model, a, b, train, epochs=1, batch_size=100, seed=3) for _ in range(2)]
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(runs[0].bends[0][k], runs[1].bends[0][k]) for k in a)


def test_a_curve_from_a_model_to_itself_stays_at_it():
    # A regression model that fits its data exactly sits at a minimum of the loss
    # (every gradient is 0), so the bends never leave it and every point is A.
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    a = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x = torch.randn(40, 3, dtype=torch.float64)
    with torch.no_grad():
        y = model(x)
    train = [(x[:20], y[:20]), (x[20:], y[20:])]
    fit = fit_curve(model, a, a, train, kind="polychain", bends=2, epochs=3, loss="mse",
                    batch_size=None)  # fmt: skip
    for t in (0.0, 0.1, 0.37, 0.5, 0.9, 1.0):
        point = fit.point(t)
        for k in a:
            torch.testing.assert_close(point[k], a[k], rtol=0, atol=1e-12)
    result = evaluate_path(model, fit.path(), {"train": train}, steps=5, loss="mse")["train"]
    assert result.barriers["lerp"].loss == pytest.approx(0.0, abs=1e-12)


def test_batchnorm_curves_leave_the_endpoints_untouched_and_reset_statistics():
    torch.manual_seed(0)
    kwargs = {"in_channels": 1, "channels": [4, 4], "num_classes": 10}
    model = conv_net(**kwargs)
    a = {k: v.detach().clone() for k, v in conv_net(**kwargs).state_dict().items()}
    b = {k: v.detach().clone() for k, v in conv_net(**kwargs).state_dict().items()}
    before = {k: v.clone() for k, v in {**a, **{f"b.{k}": v for k, v in b.items()}}.items()}
    train, test = _digits(200)
    fit = fit_curve(model, a, b, train, epochs=1, batch_size=50)
    after = {**a, **{f"b.{k}": v for k, v in b.items()}}
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ModeconnectError, match="pass training data"):
        evaluate_path(model, fit.path(), {"test": test}, steps=3)
    res = evaluate_path(model, fit.path(), {"test": test}, steps=3, train=train)["test"]
    start = res.curve.points[0]
    want = evaluate(model, reset_batchnorm(model, a, train), test)
    assert start.loss == pytest.approx(want.loss, rel=1e-6)  # float32 batch sums vs float64


def test_curve_study_reports_line_and_curve_with_the_barrier_keys(pair):
    model, a, b, train, test = pair
    study = curve_study(model, a, b, train=train, test=test, epochs=1, steps=5, seed=1)
    record = study.to_dict()
    for name in ("line", "curve"):
        assert set(record[name]) >= {"barrier", "lerp", "mean", "midpoint", "curve", "splits"}
        assert set(record[name]["splits"]) == {"test", "train"}
        assert [p["alpha"] for p in record[name]["curve"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert record["fit"]["kind"] == "bezier" and record["fit"]["params"]["seed"] == 1
    line_ends = study.line["test"].curve.points
    curve_ends = study.curve["test"].curve.points
    assert line_ends[0] == curve_ends[0] and line_ends[-1] == curve_ends[-1]


def test_aligned_curve_study_records_the_alignment(pair):
    model, a, b, train, test = pair
    study = curve_study(model, a, b, train=train, test=test, align="weight", epochs=1, steps=3,
                        evaluate_train=False)  # fmt: skip
    record = study.to_dict()
    assert record["alignment"]["method"] == "weight"
    assert record["equivalence"]["passed"] is True
    assert list(record["curve"]["splits"]) == ["test"]


def test_errors_name_the_bad_argument(pair):
    model, a, b, train, test = pair
    with pytest.raises(ModeconnectError, match="curve: unknown curve kind 'spline'; valid names"):
        fit_curve(model, a, b, train, kind="spline")
    with pytest.raises(ModeconnectError, match="curve: bends=0 is not a positive int"):
        fit_curve(model, a, b, train, bends=0)
    small = {k: v[:1] if v.ndim else v for k, v in b.items()}
    with pytest.raises(ModeconnectError, match="tensor '1.weight' of B is"):
        fit_curve(model, a, small, train)
    with pytest.raises(ModeconnectError, match="one-shot iterator"):
        fit_curve(model, a, b, iter(train), batch_size=None, epochs=2)
    with pytest.raises(ModeconnectError, match="evaluate_path: steps=4 is not an odd int >= 3"):
        evaluate_path(model, curve_path(Bezier(1), a, [a], b), {"test": test}, steps=4)
    with pytest.raises(ModeconnectError, match="got 2 bend state dicts"):
        curve_path(Bezier(1), a, [a, a], b)
    with pytest.raises(ModeconnectError, match="curve_study: unknown barrier definition 'max'"):
        curve_study(model, a, b, train=train, test=test, definition="max")
