"""Layer-wise barriers: groups, the definition against the full endpoints, and reuse."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from modeconnect.bn import make_correction
from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import Batch, barrier, example_curve
from modeconnect.layerwise import LayerGroup, layer_groups, layerwise_barriers


def _net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def _bn_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _sd(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _batches(seed: int = 0, n: int = 3) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(20, 4, generator=g), torch.randint(3, (20,), generator=g)) for _ in range(n)
    ]


def test_default_groups_are_modules_in_order_and_skip_integer_buffers() -> None:
    groups = layer_groups(_sd(_bn_net(0)))
    assert [g.name for g in groups] == ["0", "1", "3"]
    assert groups[1].keys == ("1.weight", "1.bias", "1.running_mean", "1.running_var")


def test_prefix_groups_join_with_plus_and_check_their_prefixes() -> None:
    sd = _sd(_net(0))
    groups = layer_groups(sd, ["0+2", "4"])
    assert groups == [
        LayerGroup("0+2", ("0.weight", "0.bias", "2.weight", "2.bias")),
        LayerGroup("4", ("4.weight", "4.bias")),
    ]
    with pytest.raises(ModeconnectError, match="prefix 'fc9' matches no.*e.g. 0, 2, 4"):
        layer_groups(sd, ["fc9"])
    with pytest.raises(ModeconnectError, match="'0.weight' is in two groups, '0' and '0\\+2'"):
        layer_groups(sd, ["0", "0+2"])


def test_a_single_group_equals_the_full_barrier() -> None:
    model, a, b = _net(0), _sd(_net(0)), _sd(_net(1))
    batches = _batches()
    result = layerwise_barriers(model, a, b, batches, groups=["0+2+4"], steps=5)
    full = example_curve(model, a, b, batches, alphas=result.layers[0].from_a.curve.alphas).curve()
    (layer,) = result.layers
    for definition in ("lerp", "mean"):
        want = barrier(full, definition)
        for path in (layer.from_a, layer.from_b, layer.cumulative):
            assert path.barriers[definition] == want
    assert layer.from_a.curve == full
    assert result.evaluated == len(full.points)  # every path is the full one: evaluated once


def test_layer_barriers_are_measured_against_the_full_endpoints() -> None:
    model, a, b = _net(2), _sd(_net(2)), _sd(_net(3))
    batches = _batches(1)
    result = layerwise_barriers(model, a, b, batches, steps=5)
    start, end = result.baseline
    full = example_curve(model, a, b, batches, alphas=(0.0, 1.0)).curve()
    assert (start.loss, end.loss) == full.losses
    first = result.layers[0]
    # Hand-made path: layer "0" interpolated, the rest from A.
    hybrid = {**a, "0.weight": b["0.weight"], "0.bias": b["0.bias"]}
    path = example_curve(model, a, hybrid, batches, alphas=first.from_a.curve.alphas).curve()
    torch.testing.assert_close(path.losses, first.from_a.curve.losses, rtol=1e-6, atol=0.0)
    want = max(v - ((1 - t) * start.loss + t * end.loss) for t, v in zip(path.alphas, path.losses))
    torch.testing.assert_close(first.from_a.barriers["lerp"].loss, want, rtol=1e-9, atol=1e-12)
    want_mean = max(path.losses) - (start.loss + end.loss) / 2
    torch.testing.assert_close(first.from_a.barriers["mean"].loss, want_mean, rtol=1e-9, atol=1e-12)


def test_reuse_gives_the_same_curves_as_recomputing_every_path() -> None:
    model, a, b = _net(4), _sd(_net(4)), _sd(_net(5))
    batches = _batches(2)
    result = layerwise_barriers(model, a, b, batches, steps=5, alpha_batch=1)
    alphas = result.layers[0].from_a.curve.alphas
    moved: list[str] = []
    for layer in result.layers:
        keys = list(layer.group.keys)
        moved += keys
        starts_ends = {
            "from_a": (a, {**a, **{k: b[k] for k in keys}}),
            "from_b": ({**b, **{k: a[k] for k in keys}}, b),
            "cumulative": (a, {**a, **{k: b[k] for k in moved}}),
        }
        for variant, (x0, x1) in starts_ends.items():
            want = example_curve(model, x0, x1, batches, alphas=alphas, alpha_batch=1).curve()
            got = getattr(layer, variant).curve
            torch.testing.assert_close(got.losses, want.losses, rtol=1e-6, atol=0.0)
            assert got.accuracies == want.accuracies
    # 3 groups x 3 paths x 5 alphas = 45 points; shared ones are evaluated once.
    assert result.points == 45 and result.evaluated < 35
    last = result.layers[-1].cumulative.curve
    assert last == example_curve(model, a, b, batches, alphas=alphas, alpha_batch=1).curve()


def test_full_curve_passed_in_is_not_evaluated_again() -> None:
    model, a, b = _net(6), _sd(_net(6)), _sd(_net(7))
    batches = _batches(3)
    alphas = (0.0, 0.25, 0.5, 0.75, 1.0)
    full = example_curve(model, a, b, batches, alphas=alphas)
    with_full = layerwise_barriers(model, a, b, batches, alphas=alphas, full=full)
    without = layerwise_barriers(model, a, b, batches, alphas=alphas)
    assert with_full.evaluated == without.evaluated - len(alphas)
    with pytest.raises(ModeconnectError, match="differ from the layer-wise grid"):
        layerwise_barriers(model, a, b, batches, steps=3, full=full)


def test_layerwise_with_batchnorm_reset_and_serialisation() -> None:
    model, a, b = _bn_net(0), _sd(_bn_net(0)), _sd(_bn_net(1))
    batches, train = _batches(4), _batches(5)

    def factory(x0, x1):
        return make_correction(model, x0, x1, train, mode="reset")

    result = layerwise_barriers(
        model, a, b, batches, steps=3, correction=factory, definition="mean"
    )
    records = result.to_dict()
    assert [r["group"] for r in records] == ["0", "1", "3"]
    first = records[0]
    assert set(first) == {"group", "index", "keys", "from_a", "from_b", "cumulative"}
    assert first["from_a"]["barrier"]["definition"] == "mean"
    assert set(first["from_a"]) >= {"barrier", "lerp", "mean", "midpoint", "curve"}
    assert [p["alpha"] for p in first["cumulative"]["curve"]] == [0.0, 0.5, 1.0]


def test_layerwise_input_errors() -> None:
    model, a, b = _net(0), _sd(_net(0)), _sd(_net(1))
    with pytest.raises(ModeconnectError, match="lack 0 or 1"):
        layerwise_barriers(model, a, b, _batches(), alphas=[0.0, 0.5])
    with pytest.raises(ModeconnectError, match="'x' names \\['9.weight'\\], which are not"):
        layerwise_barriers(model, a, b, _batches(), groups=[LayerGroup("x", ("9.weight",))])
