"""Tests for modeconnect.evaluation: interpolation, evaluation, curves and barriers."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import (
    Barrier,
    Batch,
    Curve,
    CurvePoint,
    ExampleCurve,
    ExampleResults,
    Metrics,
    barrier,
    evaluate,
    interpolate,
    interpolation_curve,
)


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
    with pytest.raises(ModeconnectError, match=r"'0.weight', A has \(8, 4\), B has \(8, 5\)"):
        interpolate(a, b, 0.5)
    c = dict(a, **{"0.bias": a["0.bias"].double()})
    with pytest.raises(ModeconnectError, match=r"dtype mismatch for '0.bias'"):
        interpolate(a, c, 0.5)
    d = dict(a, **{"0.bias": [0.0] * 8})
    with pytest.raises(ModeconnectError, match=r"^state dicts A and B: B's entry '0.bias' is a l"):
        interpolate(a, d, 0.5)  # type: ignore[arg-type]


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


def _even_curve(values: list[tuple[float, float]]) -> Curve:
    """A curve of ``(loss, 10 * accuracy)`` pairs at evenly spaced alphas from 0 to 1."""
    n = len(values)
    return Curve(
        tuple(CurvePoint(i / (n - 1), loss, acc / 10) for i, (loss, acc) in enumerate(values))
    )


_values = st.floats(min_value=0.0, max_value=10.0, allow_nan=False)
_curves = st.lists(st.tuples(_values, _values), min_size=2, max_size=9).map(_even_curve)
_definitions = st.sampled_from(["lerp", "mean"])


@settings(max_examples=200, deadline=None)
@given(_curves, _definitions)
def test_barrier_is_never_negative(curve: Curve, definition: str) -> None:
    result = barrier(curve, definition)
    assert result.loss >= 0.0 and result.error >= 0.0


# --------------------------------------------------------------------------- losses


def test_get_scoring_takes_registry_names_scorings_and_callables() -> None:
    from modeconnect.evaluation import (
        LOSSES,
        ClassifierScoring,
        cross_entropy,
        get_scoring,
        loss_name,
        squared_error,
    )

    assert get_scoring(None) is LOSSES["ce"] and get_scoring("ce").loss is cross_entropy
    assert get_scoring("mse").loss is squared_error
    assert set(LOSSES) == {"ce", "mse", "causal_lm", "masked_lm"}
    assert get_scoring(LOSSES["causal_lm"]) is LOSSES["causal_lm"]
    custom = get_scoring(squared_error)
    assert isinstance(custom, ClassifierScoring) and custom.loss is squared_error
    assert loss_name("mse") == "mse" and loss_name(squared_error).endswith(":squared_error")
    assert loss_name(LOSSES["masked_lm"]) == "masked_lm"
    names = "valid names: causal_lm, ce, masked_lm, mse"
    with pytest.raises(ModeconnectError, match=f"loss: unknown loss 'nll'; {names}"):
        get_scoring("nll")
    # The core imports no code named by a string: the file layer resolves references.
    with pytest.raises(ModeconnectError, match="unknown loss.*imported by the file layer"):
        get_scoring("modeconnect.evaluation:squared_error")


def test_cross_entropy_matches_torch_per_entry() -> None:
    from modeconnect.evaluation import cross_entropy

    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(7, 5, generator=g), torch.randint(5, (7,), generator=g)
    torch.testing.assert_close(
        cross_entropy(logits, y), F.cross_entropy(logits, y, reduction="none")
    )
    seq, ys = torch.randn(3, 5, 4, generator=g), torch.randint(5, (3, 4), generator=g)
    torch.testing.assert_close(cross_entropy(seq, ys), F.cross_entropy(seq, ys, reduction="none"))


def test_squared_error_one_hot_and_regression() -> None:
    from modeconnect.evaluation import squared_error

    logits = torch.tensor([[1.0, 0.0, 2.0], [0.5, 0.5, 0.5]])
    # one-hot targets: (1-0)^2 + 0 + 4 = 5 ; 0.25 + 0.25 + 0.25 = 0.75 -> with y = [1, 0]
    torch.testing.assert_close(
        squared_error(logits, torch.tensor([1, 0])), torch.tensor([1.0 + 1.0 + 4.0, 0.75])
    )
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(squared_error(logits, target), (logits - target) ** 2)


# --------------------------------------------------------------------------- per-example


def test_evaluate_examples_matches_evaluate_and_per_example_reference() -> None:
    from modeconnect.evaluation import evaluate_examples

    model, batches = _bn_net(0), _batches()
    sd = model.state_dict()
    got = evaluate_examples(model, sd, batches)
    assert got.loss.shape == got.hits.shape == got.count.shape == (30,)
    assert got.loss.dtype == torch.float64 and torch.equal(
        got.count, torch.ones(30, dtype=torch.float64)
    )
    net = copy.deepcopy(model).eval()
    with torch.no_grad():
        want = torch.cat([F.cross_entropy(net(x), y, reduction="none") for x, y in batches])
        hits = torch.cat([net(x).argmax(1) == y for x, y in batches])
    torch.testing.assert_close(got.loss, want.double())
    assert torch.equal(got.hits, hits.double())
    plain = evaluate(model, sd, batches)
    torch.testing.assert_close(got.metrics().loss, plain.loss, rtol=1e-6, atol=0.0)
    assert got.metrics().accuracy == plain.accuracy


def test_evaluate_examples_counts_entries_and_gives_nan_accuracy_for_regression() -> None:
    from modeconnect.evaluation import evaluate_examples

    model = nn.Linear(4, 2)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 4, generator=g), torch.randn(6, 2, generator=g)
    got = evaluate_examples(model, model.state_dict(), [(x, y)], loss="mse")
    assert torch.equal(got.count, torch.full((6,), 2.0, dtype=torch.float64))
    with torch.no_grad():
        want = F.mse_loss(model(x), y).item()
    torch.testing.assert_close(got.metrics().loss, want, rtol=1e-6, atol=0.0)
    assert math.isnan(got.metrics().accuracy)


def test_evaluate_examples_rejects_summed_loss() -> None:
    from modeconnect.evaluation import evaluate_examples

    model = _mlp(0)
    with pytest.raises(ModeconnectError, match=r"loss: returned \(\) for a batch of 10 examples"):
        evaluate_examples(model, model.state_dict(), _batches(), loss=_summed_ce)
    with pytest.raises(ModeconnectError, match="batches` is empty"):
        evaluate_examples(model, model.state_dict(), [])


def _summed_ce(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="sum")


# --------------------------------------------------------------------------- example curves


@pytest.mark.parametrize("alpha_batch", [None, 1, 3, 16])
def test_example_curve_endpoints_exact_and_points_match_plain_loop(alpha_batch: int | None) -> None:
    from modeconnect.evaluation import evaluate_examples, example_curve

    model, a, b = _bn_net(0), _bn_net(0).state_dict(), _bn_net(1).state_dict()
    batches = _batches()
    curve = example_curve(model, a, b, batches, steps=9, alpha_batch=alpha_batch)
    assert curve.alphas == tuple(i / 8 for i in range(9))
    for end, sd in ((0, a), (-1, b)):
        want = evaluate_examples(model, sd, batches)
        assert torch.equal(curve.results[end].loss, want.loss)
    for alpha, result in zip(curve.alphas[1:-1], curve.results[1:-1]):
        sd = {
            k: (1 - alpha) * v + alpha * b[k] if v.is_floating_point() else v for k, v in a.items()
        }
        want = _reference(model, sd, batches)
        torch.testing.assert_close(result.metrics().loss, want.loss, rtol=1e-5, atol=0.0)


class _Branchy(nn.Module):
    """Data-dependent control flow: ``vmap`` cannot batch it, evaluation must fall back."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        z = self.fc(x)
        return z if float(z.sum()) > -1e9 else -z


def test_vectorised_evaluation_falls_back_when_vmap_fails() -> None:
    from modeconnect.evaluation import example_curve

    torch.manual_seed(0)
    model, other = _Branchy(), _Branchy()
    a, b = model.state_dict(), other.state_dict()
    batches = _batches()
    stacked = example_curve(model, a, b, batches, steps=6, alpha_batch=4)
    single = example_curve(model, a, b, batches, steps=6, alpha_batch=1)
    for s, t in zip(stacked.results, single.results):
        assert torch.equal(s.loss, t.loss)


def test_identical_points_are_evaluated_once_and_exactly_equal() -> None:
    from modeconnect.evaluation import example_curve

    model = _mlp(0)
    a = model.state_dict()
    b = {k: v.clone() for k, v in a.items()}
    curve = example_curve(model, a, b, batches := _batches(), steps=7, alpha_batch=4)
    assert all(torch.equal(r.loss, curve.results[0].loss) for r in curve.results)
    assert barrier(curve.curve()) == Barrier(0.0, 0.0, "lerp")
    assert len(batches) == 3


def test_example_curves_reports_progress_and_checks_splits() -> None:
    from modeconnect.evaluation import example_curves, linear_path

    model, a, b = _mlp(0), _mlp(0).state_dict(), _mlp(1).state_dict()
    calls: list[tuple[str, int, int]] = []
    curves = example_curves(
        model, linear_path(a, b), [0.0, 0.5, 1.0], {"test": _batches(), "train": _batches(1)},
        progress=lambda *args: calls.append(args), task="curve",
    )  # fmt: skip
    assert set(curves) == {"test", "train"} and calls[-1] == ("curve", 3, 3)
    with pytest.raises(ModeconnectError, match="at least one split"):
        example_curves(model, linear_path(a, b), [0.0], {})
    with pytest.raises(ModeconnectError, match="alpha_batch=0 must be a positive int"):
        example_curves(model, linear_path(a, b), [0.0, 1.0], {"t": _batches()}, alpha_batch=0)


def test_interpolation_curve_vectorised_matches_unvectorised() -> None:
    model, a, b = _mlp(0), _mlp(0).state_dict(), _mlp(1).state_dict()
    batches = _batches()
    one = interpolation_curve(model, a, b, batches, steps=7, alpha_batch=1)
    many = interpolation_curve(model, a, b, batches, steps=7, alpha_batch=5)
    torch.testing.assert_close(many.losses, one.losses, rtol=1e-6, atol=0.0)
    assert many.points[0] == one.points[0] and many.points[-1] == one.points[-1]


def test_midpoint() -> None:
    from modeconnect.evaluation import midpoint

    assert midpoint(_fixed_curve()) == CurvePoint(0.5, 1.1, 0.50)
    with pytest.raises(ModeconnectError, match="no point at alpha=0.5.*odd number of steps"):
        midpoint(Curve((CurvePoint(0.0, 1.0, 0.5), CurvePoint(1.0, 1.0, 0.5))))


# --------------------------------------------------------------------------- barriers (more)


def test_barrier_against_a_baseline_matches_hand_computation() -> None:
    curve = _fixed_curve()  # losses 0.2 0.9 1.1 0.8 0.6, errors 0.1 0.4 0.5 0.3 0.2
    base = (Metrics(loss=0.0, accuracy=1.0), Metrics(loss=1.0, accuracy=0.5))
    # lerp baseline: loss line α -> gaps 0.2, 0.65, 0.6, 0.05, -0.4
    #                error line 0.5α -> gaps 0.1, 0.275, 0.25, -0.075, -0.3
    got = barrier(curve, "lerp", baseline=base)
    torch.testing.assert_close(got.loss, 0.65)
    torch.testing.assert_close(got.error, 0.275)
    # mean baseline: max V - (0 + 1)/2 = 0.6 ; errors 0.5 - 0.25 = 0.25
    got = barrier(curve, "mean", baseline=base)
    torch.testing.assert_close(got.loss, 0.6)
    torch.testing.assert_close(got.error, 0.25)


def test_barrier_is_nan_when_a_value_is_nan() -> None:
    rows = [(0.0, 0.1, math.nan), (0.5, 0.5, math.nan), (1.0, 0.1, math.nan)]
    got = barrier(Curve(tuple(CurvePoint(*row) for row in rows)))
    torch.testing.assert_close(got.loss, 0.4)
    assert math.isnan(got.error)


@settings(max_examples=100, deadline=None)
@given(_curves, _definitions)
def test_barrier_values_equals_barrier(curve: Curve, definition: str) -> None:
    from modeconnect.evaluation import barrier_values

    want = barrier(curve, definition)
    table = torch.tensor([curve.losses, curve.errors], dtype=torch.float64)
    got = barrier_values(curve.alphas, table, definition)
    assert got.tolist() == [want.loss, want.error]


# --------------------------------------------------------------------------- bootstrap


def _example_curve_with_barrier() -> ExampleCurve:
    """200 examples, 5 alphas: noisy per-example losses with a bump of 0.5 at α = 0.5."""
    g = torch.Generator().manual_seed(0)
    alphas = (0.0, 0.25, 0.5, 0.75, 1.0)
    bump = torch.tensor([0.0, 0.25, 0.5, 0.25, 0.0], dtype=torch.float64)
    loss = torch.rand(5, 200, generator=g, dtype=torch.float64) + bump[:, None]
    hits = (torch.rand(5, 200, generator=g) > 0.1 + bump[:, None]).double()
    count = torch.ones(200, dtype=torch.float64)
    results = tuple(ExampleResults(loss[s], hits[s], count) for s in range(5))
    return ExampleCurve(alphas, results)


def test_bootstrap_matches_a_plain_resampling_loop() -> None:
    from modeconnect.evaluation import bootstrap_barrier

    curve = _example_curve_with_barrier()
    got = bootstrap_barrier(curve, "lerp", samples=50, confidence=0.9, seed=3)
    loss, hits, count = curve.matrices()
    gen = torch.Generator().manual_seed(3)
    draws = torch.randint(len(count), (50, len(count)), generator=gen)
    heights = []
    for idx in draws:
        points = [
            CurvePoint(t, float(loss[s, idx].sum() / count[idx].sum()),
                       float(hits[s, idx].sum() / count[idx].sum()))
            for s, t in enumerate(curve.alphas)
        ]  # fmt: skip
        heights.append(barrier(Curve(tuple(points)), "lerp").loss)
    want = torch.quantile(
        torch.tensor(heights, dtype=torch.float64), torch.tensor([0.05, 0.95]).double()
    )
    torch.testing.assert_close(torch.tensor([got.loss.low, got.loss.high]).double(), want)
    assert got.samples == 50 and got.confidence == 0.9 and got.to_dict()["method"] == "percentile"


def test_bootstrap_interval_contains_the_point_estimate() -> None:
    from modeconnect.evaluation import bootstrap_barrier

    curve = _example_curve_with_barrier()
    point = barrier(curve.curve(), "mean")
    got = bootstrap_barrier(curve, "mean", samples=200)
    assert point.loss > 0.3 and point.error > 0.3
    assert got.loss.low <= point.loss <= got.loss.high
    assert got.error.low <= point.error <= got.error.high
    assert got == bootstrap_barrier(curve, "mean", samples=200)  # seeded
    with pytest.raises(ModeconnectError, match="samples=0 must be a positive int"):
        bootstrap_barrier(curve, samples=0)
    with pytest.raises(ModeconnectError, match="confidence=1.5"):
        bootstrap_barrier(curve, confidence=1.5)
