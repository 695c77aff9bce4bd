"""Faster evaluation of BatchNorm conv nets (issue 22, the ConvBN layer-wise study).

Three changes, each checked against the plain computation it replaces:

* evaluation passes run ``nn.Conv2d`` weights channels-last (same values to float
  rounding; never for models whose forwards could depend on the layout, never during
  a BatchNorm reset, never under ``vmap``);
* a BatchNorm reset stops each forward after the last child holding a BatchNorm
  (bitwise the statistics of the whole forward);
* a layer-wise ``from_b`` path runs B's unchanged prefix once, not once per point.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import modeconnect as mc
import modeconnect.bn as bn_module
from modeconnect.bn import last_norm_child, reset_batchnorm
from modeconnect.forward import channels_last, eval_mode, over_batches
from modeconnect.models import conv_net


def _conv(seed: int, channels: list[int], size: int = 6) -> nn.Sequential:
    torch.manual_seed(seed)
    return conv_net(in_channels=2, channels=channels, num_classes=3, image_size=size)


def _perturbed(model: nn.Module, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            v = v + 0.3 * torch.randn(v.shape, generator=g)
            v = v.abs() + 0.5 if "running_var" in k else v
        out[k] = v
    return out


def _batches(seed: int, n: int, shape: tuple[int, ...], parts: int = 2) -> list:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, *shape, generator=g), torch.randint(0, 3, (n,), generator=g)
    return list(zip(x.chunk(parts), y.chunk(parts), strict=True))


def _conv_weight_layouts(model: nn.Module) -> list[bool]:
    """Record, per call of each Conv2d with more than one input channel, whether its
    weight was channels-last (strides say so unambiguously only then)."""
    seen: list[bool] = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.in_channels > 1:
            m.register_forward_pre_hook(lambda mod, args: seen.append(mod.weight.stride()[1] == 1))
    return seen


# --------------------------------------------------------------------------- channels-last


@pytest.mark.slow
@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**16), c1=st.integers(2, 5), c2=st.integers(2, 5))
def test_channels_last_evaluation_equals_the_plain_layout(seed: int, c1: int, c2: int) -> None:
    model = _conv(seed, [c1, c2])
    state = _perturbed(model, seed + 1)
    data = _batches(seed, 12, (2, 6, 6))
    seen = _conv_weight_layouts(model)
    with eval_mode(model), torch.no_grad():
        fast = over_batches(model, state, data, lambda out, b: out)
        ran = list(seen)
        plain = [torch.func.functional_call(model, state, (x,)) for x, _ in data]
    assert ran == [True] * 2 * len(data)  # both convs ran channels-last
    for f, p in zip(fast, plain, strict=True):
        torch.testing.assert_close(f, p, rtol=1e-5, atol=1e-5)


class _ViewHead(nn.Module):
    """A custom module that views its input: it would fail on a channels-last activation."""

    def forward(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], -1)


def test_channels_last_only_where_the_layout_cannot_matter() -> None:
    torch.manual_seed(0)
    custom = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Conv2d(3, 4, 3), _ViewHead(), nn.Linear(16, 3))
    seen = _conv_weight_layouts(custom)
    data = _batches(0, 4, (2, 6, 6))
    with torch.no_grad():
        (out,) = over_batches(custom, dict(custom.state_dict()), data[:1], lambda o, b: o)
    assert out.shape == (2, 3) and seen == [False, False]  # the layout was kept: view works
    model = _conv(0, [3, 4]).eval()
    params = dict(model.state_dict())
    assert channels_last(model, params)["5.weight"].stride()[1] == 1
    model[6].train()  # a BatchNorm computing batch statistics: the plain layout
    assert channels_last(model, params)["5.weight"].stride()[1] != 1
    model[6].eval()
    stacked = {k: torch.stack([v, v]) for k, v in params.items()}
    inside = torch.func.vmap(lambda p: channels_last(model, p)["5.weight"].sum())
    torch.testing.assert_close(inside(stacked), stacked["5.weight"].sum((1, 2, 3, 4)))


# --------------------------------------------------------------------------- BatchNorm reset


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**16), c1=st.integers(1, 4), c2=st.integers(1, 4))
def test_reset_stopping_after_the_last_batchnorm_is_bitwise_the_whole_pass(
    seed: int, c1: int, c2: int
) -> None:
    model = _conv(seed, [c1, c2])
    state = _perturbed(model, seed + 1)
    train = _batches(seed, 20, (2, 6, 6), parts=3)  # unequal batches: 7, 7, 6
    head = model[-1]
    calls = []
    head.register_forward_pre_hook(lambda m, a: calls.append(1))
    stopped = reset_batchnorm(model, state, train)
    assert calls == []  # the Linear head after the last BatchNorm never ran
    original = bn_module.last_norm_child
    try:
        bn_module.last_norm_child = lambda m: None
        whole = reset_batchnorm(model, state, train)
    finally:
        bn_module.last_norm_child = original
    assert len(calls) == 3
    assert stopped.keys() == whole.keys()
    assert all(torch.equal(stopped[k], whole[k]) for k in whole)


def test_last_norm_child_only_where_no_batchnorm_can_run_after_it() -> None:
    norm = nn.BatchNorm1d(4)
    twice = nn.Sequential(nn.Linear(3, 4), norm, nn.ReLU(), nn.Linear(4, 4), norm, nn.Linear(4, 2))
    assert last_norm_child(twice) is None  # its hook would fire at the first place too
    later = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.BatchNorm1d(4)), nn.ReLU())
    assert last_norm_child(later) is later[1]
    assert last_norm_child(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))) is None  # last
    assert last_norm_child(nn.Sequential(nn.Linear(3, 4), nn.ReLU())) is None
    assert last_norm_child(nn.ModuleList([nn.BatchNorm1d(4), nn.ReLU()])) is None
    data = [(torch.randn(8, 3), torch.zeros(8).long())]
    state = _perturbed(twice, 1)
    fresh = reset_batchnorm(twice, state, data)  # both uses of the shared norm counted
    assert int(fresh["1.num_batches_tracked"]) == 2


# --------------------------------------------------------------------------- layer-wise prefix


@pytest.mark.parametrize("reset", [False, True])
def test_from_b_paths_run_the_unchanged_prefix_once(reset: bool) -> None:
    model = _conv(3, [3, 4])
    a, b = _perturbed(model, 1), _perturbed(model, 2)
    test = _batches(0, 8, (2, 6, 6), parts=1)
    train = _batches(1, 8, (2, 6, 6), parts=1)

    def factory(x0: dict, x1: dict) -> bn_module.BatchNormReset:
        return bn_module.BatchNormReset(model, train)

    calls = []
    model[1].register_forward_pre_hook(lambda m, a: calls.append(1))  # the first conv
    common = {
        "groups": ["9"],
        "steps": 9,
        "alpha_batch": 1,
        "correction": factory if reset else None,
    }
    cached = mc.layerwise_barriers(model, a, b, test, **common)
    # The full path: 9 points (x2 with a reset pass each); from_a and from_b: the prefix
    # once each (size probe, its outputs, and with a reset its statistics and its
    # training outputs), not once per point.
    per_point, per_prefix = (2, 4) if reset else (1, 2)
    assert len(calls) == 9 * per_point + 2 * per_prefix
    whole = mc.layerwise_barriers(model, a, b, test, cache_prefix=False, **common)
    (got,), (want,) = cached.layers, whole.layers
    for variant in ("from_a", "from_b"):
        g, w = getattr(got, variant).curve, getattr(want, variant).curve
        torch.testing.assert_close(g.losses, w.losses, rtol=1e-5, atol=1e-6)
