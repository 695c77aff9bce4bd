"""Tests for modeconnect.evaluate: interpolation, evaluation, curves and barriers."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from modeconnect.errors import ModeconnectError
from modeconnect.evaluate import (
    Barrier,
    Batch,
    Curve,
    CurvePoint,
    Metrics,
    barrier,
    evaluate,
    interpolate,
    interpolation_curve,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Tiny ops on a loaded 2-core machine take milliseconds each with 2 threads.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _bn_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    bn = nn.BatchNorm1d(8)
    stats = dict(bn.named_buffers())  # non-trivial running statistics, different per seed
    stats["running_mean"].normal_()
    stats["running_var"].uniform_(0.5, 2.0)
    stats["num_batches_tracked"].fill_(7 + seed)
    return nn.Sequential(nn.Linear(4, 8), bn, nn.ReLU(), nn.Linear(8, 3))


class _Tied(nn.Module):
    """``head`` reuses ``embed``'s weight; ``state_dict()`` lists it under both names."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 4, bias=False)
        self.head = nn.Linear(4, 4, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.embed(x)))


def _batches(seed: int = 0, n: int = 3, size: int = 10, classes: int = 3) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 4, generator=g), torch.randint(classes, (size,), generator=g))
        for _ in range(n)
    ]


def _reference(model: nn.Module, state_dict: dict[str, Tensor], batches: list[Batch]) -> Metrics:
    """Plain evaluation: load the weights into a copy, loop, average."""
    net = copy.deepcopy(model)
    net.load_state_dict(state_dict)
    net.eval()
    loss, hits, count = 0.0, 0, 0
    with torch.no_grad():
        for x, y in batches:
            logits = net(x)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            hits += int((logits.argmax(1) == y).sum())
            count += len(y)
    return Metrics(loss / count, hits / count)


# --------------------------------------------------------------------------- interpolate


def test_interpolate_is_exact_at_the_endpoints() -> None:
    a, b = _bn_net(0).state_dict(), _bn_net(1).state_dict()
    at0, at1 = interpolate(a, b, 0.0), interpolate(a, b, 1.0)
    for key in a:
        assert torch.equal(at0[key], a[key]), key
        expected = a[key] if key.endswith("num_batches_tracked") else b[key]
        assert torch.equal(at1[key], expected), key


def test_interpolate_midpoint_and_integer_buffers() -> None:
    a, b = _bn_net(0).state_dict(), _bn_net(1).state_dict()
    mid = interpolate(a, b, 0.25)
    torch.testing.assert_close(mid["0.weight"], 0.75 * a["0.weight"] + 0.25 * b["0.weight"])
    torch.testing.assert_close(
        mid["1.running_var"], 0.75 * a["1.running_var"] + 0.25 * b["1.running_var"]
    )
    assert mid["1.num_batches_tracked"].dtype == torch.int64
    assert torch.equal(mid["1.num_batches_tracked"], a["1.num_batches_tracked"])


def test_interpolate_keeps_dtype_and_is_exact_between_equal_tensors() -> None:
    a = {"w": torch.randn(5, 3, generator=torch.Generator().manual_seed(0)).half()}
    b = {"w": a["w"].clone()}
    for alpha in (0.1, 0.3, 0.5, 0.7, 0.9):
        out = interpolate(a, b, alpha)["w"]
        assert out.dtype == torch.float16
        assert torch.equal(out, a["w"])


def test_interpolate_rejects_mismatched_keys() -> None:
    a = _mlp(0).state_dict()
    b = dict(a)
    b["extra.weight"] = b.pop("2.bias")
    with pytest.raises(
        ModeconnectError, match=r"missing \['2.bias'\], unexpected \['extra.weight'\]"
    ):
        interpolate(a, b, 0.5)


def test_interpolate_rejects_mismatched_shapes_and_dtypes() -> None:
    a = _mlp(0).state_dict()
    b = dict(a, **{"0.weight": torch.zeros(8, 5)})
    with pytest.raises(ModeconnectError, match=r"'0.weight': A has \(8, 4\), B has \(8, 5\)"):
        interpolate(a, b, 0.5)
    c = dict(a, **{"0.bias": a["0.bias"].double()})
    with pytest.raises(ModeconnectError, match=r"dtype mismatch for '0.bias'"):
        interpolate(a, c, 0.5)


# --------------------------------------------------------------------------- evaluate


def test_evaluate_matches_plain_loop_and_leaves_model_untouched() -> None:
    model, other = _mlp(0), _mlp(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    model[2].eval()  # mixed flags must come back as they were
    batches = _batches()
    got = evaluate(model, other.state_dict(), batches)
    want = _reference(model, other.state_dict(), batches)
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-6, atol=0.0)
    assert got.accuracy == want.accuracy
    assert got.error == 1.0 - got.accuracy
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert [m.training for m in model.modules()] == [True, True, True, False]


def test_evaluate_uses_batchnorm_buffers_from_the_state_dict() -> None:
    model, other = _bn_net(0), _bn_net(1)
    model.train()
    own = {k: v.clone() for k, v in model.state_dict().items()}
    sd = other.state_dict()
    batches = _batches()
    got = evaluate(model, sd, batches)
    want = _reference(model, sd, batches)
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-6, atol=0.0)
    shifted = dict(sd, **{"1.running_mean": sd["1.running_mean"] + 3.0})
    assert evaluate(model, shifted, batches).loss != got.loss
    for key, value in model.state_dict().items():
        assert torch.equal(value, own[key]), key  # eval mode: running stats not updated
    assert model.training


def test_evaluate_with_custom_loss() -> None:
    model, batches = _mlp(0), _batches()

    def squared_error(logits: Tensor, y: Tensor) -> Tensor:
        return ((logits.softmax(1) - F.one_hot(y, 3)) ** 2).sum()

    got = evaluate(model, model.state_dict(), batches, loss_fn=squared_error)
    with torch.no_grad():
        total = sum(float(squared_error(model(x), y)) for x, y in batches)
    torch.testing.assert_close(got.loss, total / 30, rtol=1e-6, atol=0.0)
    as_module = evaluate(model, model.state_dict(), batches, nn.CrossEntropyLoss(reduction="sum"))
    assert as_module == evaluate(model, model.state_dict(), batches)


def test_evaluate_rejects_unsummed_loss_and_empty_data() -> None:
    model = _mlp(0)
    sd = model.state_dict()
    with pytest.raises(ModeconnectError, match=r'loss_fn returned \(10,\).*reduction="sum"'):
        evaluate(
            model, sd, _batches(), loss_fn=lambda z, y: F.cross_entropy(z, y, reduction="none")
        )
    with pytest.raises(ModeconnectError, match="batches` is empty"):
        evaluate(model, sd, [])


def test_evaluate_rejects_state_dict_of_another_model() -> None:
    model, sd = _mlp(0), _mlp(1).state_dict()
    del sd["2.bias"]
    sd["2.scale"] = torch.ones(3)
    with pytest.raises(ModeconnectError, match=r"missing \['2.bias'\], unexpected \['2.scale'\]"):
        evaluate(model, sd, _batches())


def test_evaluate_fills_tied_aliases() -> None:
    model = _Tied()
    sd = model.state_dict()
    assert set(sd) == {"embed.weight", "head.weight"}
    weight = torch.randn(4, 4, generator=torch.Generator().manual_seed(3))
    only_one = {"embed.weight": weight}
    got = evaluate(model, only_one, _batches())
    want = _reference(model, {"embed.weight": weight, "head.weight": weight}, _batches())
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-6, atol=0.0)


# --------------------------------------------------------------------------- curves


def test_curve_endpoints_equal_evaluate_exactly() -> None:
    model, a, b = _bn_net(0), _bn_net(0).state_dict(), _bn_net(1).state_dict()
    batches = _batches()
    curve = interpolation_curve(model, a, b, batches, steps=5)
    assert curve.alphas == (0.0, 0.25, 0.5, 0.75, 1.0)
    first, last = curve.points[0], curve.points[-1]
    assert (first.loss, first.accuracy) == (
        evaluate(model, a, batches).loss,
        evaluate(model, a, batches).accuracy,
    )
    end = evaluate(model, b, batches)
    assert (last.loss, last.accuracy) == (end.loss, end.accuracy)


def test_curve_midpoints_match_plain_loop() -> None:
    model, a, b = _mlp(0), _mlp(0).state_dict(), _mlp(1).state_dict()
    batches = _batches()
    curve = interpolation_curve(model, a, b, batches, alphas=[0.3, -0.5])
    for point in curve.points:
        sd = {k: (1 - point.alpha) * a[k] + point.alpha * b[k] for k in a}
        want = _reference(model, sd, batches)
        torch.testing.assert_close(point.loss, want.loss, rtol=1e-5, atol=0.0)
        assert point.accuracy == want.accuracy


def test_curve_default_grid_and_serialisation() -> None:
    model = _mlp(0)
    curve = interpolation_curve(model, model.state_dict(), _mlp(1).state_dict(), _batches(n=1))
    assert len(curve.points) == 25
    assert curve.alphas[0] == 0.0 and curve.alphas[-1] == 1.0 and curve.alphas[12] == 0.5
    assert curve.errors == tuple(1 - acc for acc in curve.accuracies)
    assert curve.to_dict()[0] == {
        "alpha": 0.0,
        "loss": curve.losses[0],
        "accuracy": curve.accuracies[0],
    }


def test_curve_rejects_bad_grids_and_one_shot_iterators() -> None:
    model, sd = _mlp(0), _mlp(0).state_dict()
    with pytest.raises(ModeconnectError, match="steps=1 must be an int >= 2"):
        interpolation_curve(model, sd, sd, _batches(), steps=1)
    with pytest.raises(ModeconnectError, match="must be finite"):
        interpolation_curve(model, sd, sd, _batches(), alphas=[0.0, float("nan")])
    with pytest.raises(ModeconnectError, match="one-shot iterator"):
        interpolation_curve(model, sd, sd, iter(_batches()), steps=3)


# --------------------------------------------------------------------------- barriers


@pytest.mark.parametrize("definition", ["lerp", "mean"])
def test_self_barrier_is_exactly_zero(definition: str) -> None:
    model = _bn_net(0)
    a = model.state_dict()
    b = {k: v.clone() for k, v in a.items()}
    curve = interpolation_curve(model, a, b, _batches(), steps=7)
    assert len(set(curve.losses)) == 1
    assert barrier(curve, definition) == Barrier(loss=0.0, error=0.0, definition=definition)


def _fixed_curve() -> Curve:
    rows = [
        (0.0, 0.2, 0.90),
        (0.25, 0.9, 0.60),
        (0.5, 1.1, 0.50),
        (0.75, 0.8, 0.70),
        (1.0, 0.6, 0.80),
    ]
    return Curve(tuple(CurvePoint(*row) for row in rows))


def test_barrier_definitions_match_hand_computation() -> None:
    curve = _fixed_curve()
    # lerp: loss line 0.2 + 0.4α -> gaps 0, 0.6, 0.7, 0.3, 0
    #       error line 0.1 + 0.1α -> gaps 0, 0.275, 0.35, 0.125, 0
    lerp = barrier(curve, "lerp")
    assert lerp.definition == "lerp"
    torch.testing.assert_close(lerp.loss, 0.7)
    torch.testing.assert_close(lerp.error, 0.35)
    # mean: max V - (V0 + V1)/2 -> loss 1.1 - 0.4, error 0.5 - 0.15
    mean = barrier(curve, "mean")
    torch.testing.assert_close(mean.loss, 0.7)
    torch.testing.assert_close(mean.error, 0.35)
    assert mean.to_dict() == {"loss": mean.loss, "error": mean.error, "definition": "mean"}


def test_barrier_definitions_differ_on_uneven_endpoints() -> None:
    rows = [(0.0, 0.0, 1.0), (0.5, 1.0, 0.5), (0.9, 1.9, 0.0), (1.0, 2.0, 0.0)]
    curve = Curve(tuple(CurvePoint(*row) for row in rows))
    torch.testing.assert_close(barrier(curve, "lerp").loss, 0.1)  # 1.9 - 1.8 at α = 0.9
    torch.testing.assert_close(barrier(curve, "mean").loss, 1.0)  # 2.0 - 1.0
    # errors 0, 0.5, 1.0, 1.0
    torch.testing.assert_close(barrier(curve, "lerp").error, 0.1)  # 1.0 - 0.9 at α = 0.9
    torch.testing.assert_close(barrier(curve, "mean").error, 0.5)  # 1.0 - 0.5


def test_barrier_ignores_points_outside_the_segment() -> None:
    rows = [(-0.5, 9.0, 0.0), (0.0, 1.0, 1.0), (0.5, 1.0, 1.0), (1.0, 1.0, 1.0), (1.5, 9.0, 0.0)]
    assert barrier(Curve(tuple(CurvePoint(*row) for row in rows))).loss == 0.0


def test_barrier_errors() -> None:
    with pytest.raises(ModeconnectError, match="valid names: lerp, mean"):
        barrier(_fixed_curve(), "max")
    partial = Curve((CurvePoint(0.0, 1.0, 0.5), CurvePoint(0.5, 2.0, 0.5)))
    with pytest.raises(ModeconnectError, match="no point at alpha=1"):
        barrier(partial)


_values = st.floats(min_value=0.0, max_value=10.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(_values, _values), min_size=2, max_size=9), st.sampled_from(["lerp", "mean"])
)
def test_barrier_is_never_negative(values: list[tuple[float, float]], definition: str) -> None:
    n = len(values)
    curve = Curve(
        tuple(CurvePoint(i / (n - 1), loss, acc / 10) for i, (loss, acc) in enumerate(values))
    )
    result = barrier(curve, definition)
    assert result.loss >= 0.0 and result.error >= 0.0
