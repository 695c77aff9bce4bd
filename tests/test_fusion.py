"""Fusion across widths (OT with unequal marginals), ZipIt!, and the universe basis."""

from __future__ import annotations

import functools
import inspect

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from modeconnect.errors import ModeconnectError
from modeconnect.fusion import FUSION_INFOS, fuse, fusion_options, resolve_widths, width_groups
from modeconnect.fusion.universe import cycle_error, pairwise_maps, universe_permutations
from modeconnect.fusion.zip import zip_clusters
from modeconnect.models import MLP, conv_net, mlp
from modeconnect.spec import apply_permutation, derive_spec, random_permutation


def _state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _data(
    n: int = 128, features: int = 6, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, features, generator=g), torch.zeros(n, dtype=torch.long))]


def _padded(sd: dict[str, torch.Tensor], wide: dict[str, torch.Tensor], hidden: list[int]) -> dict:
    """``wide``'s shapes holding ``sd`` in its first units and zeros (dead units) elsewhere."""
    out = {}
    for key, t in wide.items():
        z = torch.zeros_like(t)
        z[tuple(slice(0, s) for s in sd[key].shape)] = sd[key]
        out[key] = z
    return out


def _outputs(model, sd, x):
    model.load_state_dict(sd)
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["soft", "hard"])
@pytest.mark.parametrize("extra", [[1, 5], [4, 0]])
def test_fusing_a_zero_padded_wider_copy_recovers_the_model(transport, extra):
    hidden = [5, 7]
    small, wide = mlp(6, hidden, 3), mlp(6, [h + e for h, e in zip(hidden, extra)], 3)
    a = _state(small, 0)
    b = _padded(a, _state(wide, 1), hidden)
    data = _data()
    for order in ([small, wide], [wide, small]):
        sds = [a, b] if order[0] is small else [b, a]
        out = fuse(
            order, sds, data=data, transport=transport, widths=dict(zip(["P0", "P1"], hidden))
        )
        assert out.widths == {"P0": 5, "P1": 7}
        x = data[0][0]
        assert_close(
            _outputs(mlp(6, hidden, 3), out.state_dict, x),
            _outputs(small, a, x),
            atol=1e-5,
            rtol=1e-5,
        )


def test_every_method_fuses_permuted_copies_into_the_model():
    model = mlp(6, [8, 8], 3)
    spec = derive_spec(model, (torch.randn(2, 6),))
    a = _state(model, 0)
    b = apply_permutation(a, spec, random_permutation(spec, seed=3))
    data = _data()
    for method in ("otfusion", "zip", "universe"):
        out = fuse([model, model], [a, b], data=data, method=method)
        x = data[0][0]
        assert_close(
            _outputs(mlp(6, [8, 8], 3), out.state_dict, x),
            _outputs(model, a, x),
            atol=1e-5,
            rtol=1e-5,
        )


def _duplicated(seed: int) -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    """An MLP 6 -> 9 -> 7 -> 3 whose hidden units 0 and 4 (layer 1) and 2 and 6 (layer 2)
    are copies of each other (same incoming weights and bias)."""
    model = mlp(6, [9, 7], 3)
    sd = _state(model, seed)
    sd["1.weight"][4], sd["1.bias"][4] = sd["1.weight"][0], sd["1.bias"][0]
    sd["3.weight"][6], sd["3.bias"][6] = sd["3.weight"][2], sd["3.bias"][2]
    return sd, model


@pytest.mark.parametrize("seed", [0, 1])
def test_zip_merges_duplicated_units_of_one_model_exactly(seed):
    sd, model = _duplicated(seed)
    data = _data(256)
    out = fuse([model], [sd], data=data, method="zip", widths={"P0": 8, "P1": 6})
    x = data[0][0]
    narrow = mlp(6, [8, 6], 3)
    assert_close(_outputs(narrow, out.state_dict, x), _outputs(model, sd, x), atol=1e-5, rtol=1e-5)
    plain = fuse(
        [model], [sd], data=data, method="zip", widths={"P0": 7, "P1": 6}
    )  # one real merge
    assert not torch.allclose(
        _outputs(mlp(6, [7, 6], 3), plain.state_dict, x), _outputs(model, sd, x), atol=1e-3
    )


def test_zip_on_a_conv_net_with_batchnorm_merges_duplicated_channels_exactly():
    model = conv_net(1, [4, 6], 3, image_size=8)
    sd = _state(model, 0)
    sd["2.running_var"].uniform_(0.5, 2.0)
    for key in ("1.weight", "1.bias", "2.weight", "2.bias", "2.running_mean", "2.running_var"):
        sd[key][3] = sd[key][1]
    data = _data(64, 64)
    out = fuse([model], [sd], data=data, method="zip", widths={"P0": 3})
    x = data[0][0]
    narrow = conv_net(1, [3, 6], 3, image_size=8)
    assert_close(_outputs(narrow, out.state_dict, x), _outputs(model, sd, x), atol=1e-4, rtol=1e-4)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=3), st.data())
def test_zip_clusters_cover_every_feature_with_target_clusters(sizes, data):
    total = sum(sizes)
    target = data.draw(st.integers(1, total))
    g = torch.Generator().manual_seed(total * 7 + target)
    x = torch.randn(total, 12, generator=g, dtype=torch.float64)
    corr = torch.corrcoef(x).reshape(total, total)
    alpha = data.draw(st.sampled_from([0.0, 0.5, 1.0]))
    beta = data.draw(st.sampled_from([0.0, 0.5, 1.0]))
    clusters = zip_clusters(corr, sizes, target, alpha=alpha, beta=beta)
    assert clusters.shape == (total,)
    assert sorted(set(clusters.tolist())) == list(range(target))


def test_universe_maps_are_cycle_consistent_and_recover_permuted_copies():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 50, generator=g, dtype=torch.float64)
    perms = [torch.arange(6)] + [torch.randperm(6, generator=g) for _ in range(3)]
    feats = torch.cat(
        [base[p] + 0.05 * torch.randn(6, 50, generator=g, dtype=torch.float64) for p in perms]
    )
    corr = torch.corrcoef(feats)
    universe = universe_permutations(corr, [6] * 4)
    maps = pairwise_maps(universe)
    assert cycle_error(maps, 4) == 0.0
    for j in range(
        1, 4
    ):  # unit f of model 0 is base unit f; model j holds it at perms[j].argsort()[f]
        assert torch.equal(maps[(0, j)], perms[j].argsort())
    noisy = torch.corrcoef(torch.randn(18, 20, generator=g, dtype=torch.float64))
    direct = {
        (j, k): torch.as_tensor(
            __import__("scipy.optimize").optimize.linear_sum_assignment(
                noisy[6 * j : 6 * j + 6, 6 * k : 6 * k + 6].numpy(), maximize=True
            )[1]
        )
        for j in range(3)
        for k in range(3)
        if j != k
    }
    measured = cycle_error(direct, 3)  # measured, not asserted: pairwise maps need not compose
    assert 0.0 <= measured <= 1.0
    assert cycle_error(pairwise_maps(universe_permutations(noisy, [6] * 3)), 3) == 0.0


def test_mismatched_families_and_bad_widths_raise_one_line_errors():
    a, b = mlp(6, [5, 7], 3), MLP(6, [5, 7], 3)
    with pytest.raises(ModeconnectError, match="one architecture family") as err:
        fuse([a, b], [a.state_dict(), b.state_dict()], data=_data())
    assert "\n" not in str(err.value)
    c = mlp(6, [5, 7], 4)
    with pytest.raises(ModeconnectError, match="only hidden widths may differ"):
        fuse([a, c], [a.state_dict(), c.state_dict()], data=_data())
    spec = derive_spec(a, (torch.randn(2, 6),))
    assert width_groups(spec) == ("P0", "P1")
    assert resolve_widths(spec, 4) == {"P0": 4, "P1": 4}
    with pytest.raises(ModeconnectError, match="unknown groups"):
        resolve_widths(spec, {"P9": 3})
    with pytest.raises(ModeconnectError, match="positive integer"):
        resolve_widths(spec, {"P0": 0})
    with pytest.raises(ModeconnectError, match="exceeds the 10 units"):
        fuse([a, a], [a.state_dict()] * 2, data=_data(), widths={"P0": 11})
    with pytest.raises(ModeconnectError, match="keeps the first model.s width"):
        fuse([a, a], [a.state_dict()] * 2, data=_data(), method="universe", widths=4)
    with pytest.raises(ModeconnectError, match="takes no option 'transport'"):
        fusion_options("zip", {"transport": "hard"})


def test_declared_parameters_are_keywords_of_fuse():
    signature = inspect.signature(fuse).parameters
    for info in FUSION_INFOS:
        for param in info.params:
            assert param.name in signature, (info.name, param.name)
            assert signature[param.name].default == param.default, (info.name, param.name)


def test_cca_merge_of_linearly_mixed_copies_is_the_model():
    """B computes A's units through an invertible diagonal scaling of layer 1 (ReLU is
    positively homogeneous) and a permutation of layer 2: CCA's linear maps undo it."""
    model = mlp(6, [8, 8], 3)
    spec = derive_spec(model, (torch.randn(2, 6),))
    a = _state(model, 0)
    b = apply_permutation(a, spec, random_permutation(spec, seed=5))
    scale = torch.linspace(0.5, 2.0, 8)
    b["1.weight"], b["1.bias"] = b["1.weight"] * scale[:, None], b["1.bias"] * scale
    b["3.weight"] = b["3.weight"] / scale[None, :]
    data = _data(2000)
    out = fuse([model, model], [a, b], data=data, method="cca", reg=1e-9)
    x = data[0][0][:200]
    assert_close(
        _outputs(mlp(6, [8, 8], 3), out.state_dict, x), _outputs(model, a, x), atol=1e-3, rtol=1e-3
    )


def test_partial_zipping_spans_the_ensemble_and_the_full_zip():
    """Depth 0 is the average of the models' outputs; full depth is the full zip; between,
    a wider model of the same family (one head per model) that runs as a plain mlp."""
    model = mlp(6, [8, 7], 3)
    a, b = _state(model, 0), _state(model, 1)
    data = _data()
    x = data[0][0]
    ensemble = (_outputs(model, a, x) + _outputs(model, b, x)) / 2
    none = fuse([model, model], [a, b], data=data, method="zip", zip_until=0)
    assert none.widths == {"P0": 16, "P1": 14}
    assert_close(_outputs(mlp(6, [16, 14], 3), none.state_dict, x), ensemble, atol=1e-5, rtol=1e-5)
    full = fuse([model, model], [a, b], data=data, method="zip")
    deep = fuse([model, model], [a, b], data=data, method="zip", zip_until=2)
    for key in full.state_dict:
        assert torch.equal(full.state_dict[key], deep.state_dict[key])
    half = fuse([model, model], [a, b], data=data, method="zip", zip_until=0.5)
    assert half.widths == {"P0": 8, "P1": 14}
    head = half.state_dict["3.weight"]  # rows 0-6: A's layer 2, rows 7-13: B's, reading the zip
    assert head.shape == (14, 8)
    out = _outputs(mlp(6, [8, 14], 3), half.state_dict, x)
    assert not torch.allclose(out, ensemble, atol=1e-3) and not torch.allclose(
        out, _outputs(model, full.state_dict, x), atol=1e-3
    )
    with pytest.raises(ModeconnectError, match="zip_until"):
        fuse([model, model], [a, b], data=data, method="zip", zip_until=-1)


@pytest.mark.parametrize("transport", ["soft", "hard"])
def test_a_conv_net_with_batchnorm_fuses_with_its_zero_padded_wider_copy(transport):
    """Channels reach the head through a Flatten (channels x positions): the maps act on the
    channel factor of the head's input axis."""
    small, wide = conv_net(1, [4, 6], 3, image_size=8), conv_net(1, [7, 6], 3, image_size=8)
    a = _state(small, 0)
    a["2.running_var"].uniform_(0.5, 2.0)
    a["2.bias"] = a["2.bias"].abs() + 3.0  # every channel active: dead ones carry no mass
    b = _padded(a, _state(wide, 1), [4, 6])
    data = _data(64, 64)
    out = fuse([wide, small], [b, a], data=data, transport=transport, widths={"P0": 4})
    x = data[0][0]
    assert_close(_outputs(small, out.state_dict, x), _outputs(small, a, x), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_llama_with_a_zero_padded_wider_intermediate_size_fuses_back():
    """Hugging Face configs that differ in ``intermediate_size``: only the MLP groups change
    width; the residual stream, heads and head dims are fused at their width (identity
    maps for the per-head groups, with the model weight entering each tensor once)."""
    transformers = pytest.importorskip("transformers")

    def llama(inter: int) -> torch.nn.Module:
        config = transformers.LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=inter, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        )  # fmt: skip
        return transformers.LlamaForCausalLM(config).eval()

    small, wide = llama(24), llama(30)
    torch.manual_seed(0)
    a = {
        k: v.normal_(0, 0.3) if not k.endswith("norm.weight") else v
        for k, v in small.state_dict().items()
    }
    b = _padded(a, wide.state_dict(), [])
    x = torch.randint(0, 64, (8, 12))
    spec_groups = width_groups(derive_spec(small, (x[:2],)))
    out = fuse([wide, small], [b, a], data=[(x, x)], widths={"P4": 24, "P8": 24})
    assert set(spec_groups) == {"P0", "P1", "P4", "P5", "P8"} and out.widths["P4"] == 24
    fused = llama(24)
    fused.load_state_dict(out.state_dict)
    with torch.no_grad():
        assert_close(fused(x).logits, small(x).logits, atol=1e-4, rtol=1e-4)


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=3))
def test_state_widths_reads_any_widths_and_the_model_is_rebuilt_at_them(hidden):
    from modeconnect.fusion import resized_model, state_widths

    spec = derive_spec(mlp(4, [5] * len(hidden), 3), (torch.randn(2, 4),))
    other = mlp(4, hidden, 3)
    assert state_widths(spec, width_groups(spec), other.state_dict()) == {
        f"P{i}": h for i, h in enumerate(hidden)
    }
    base = mlp(4, [5] * len(hidden), 3)
    rebuilt = resized_model(base, other.state_dict(), (torch.randn(2, 4),))
    x = torch.randn(7, 4)
    assert torch.equal(rebuilt(x), other(x))
    assert all(tuple(v.shape) == (5,) for k, v in base.state_dict().items() if k == "1.bias")


class _FixedView(torch.nn.Module):
    """Reads its hidden layer through a hard-coded width: cannot be rebuilt wider."""

    def __init__(self, width: int = 5) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, width), torch.nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x).relu().reshape(-1, 5))


def test_resized_model_that_cannot_be_rebuilt_says_so_in_one_line():
    from modeconnect.fusion import resized_model

    wide = {k: torch.zeros(v.shape[0] + 2 if k.startswith("a") else v.shape[0],
                           *([v.shape[1] + 2] if k == "b.weight" else list(v.shape[1:])))
            for k, v in _FixedView().state_dict().items()}  # fmt: skip
    with pytest.raises(ModeconnectError) as err:
        resized_model(_FixedView(), wide, (torch.randn(2, 4),))
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("_FixedView could not be rebuilt at the arrays' widths (")
    assert str(err.value).endswith(
        "pass model_for=, a function that builds the model for a state dict"
    )


class _OnePlusNorm(torch.nn.Module):
    """Gemma's RMSNorm: ``x / rms(x) · (1 + weight)``, not proportional to its weight."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + self.weight)


def _normed(width: int, norm: str = "rms", eps: float = 1e-6) -> torch.nn.Module:
    layer = {
        "rms": lambda: torch.nn.RMSNorm(width, eps=eps),
        "layer": lambda: torch.nn.LayerNorm(width, eps=eps),
        "gemma": lambda: _OnePlusNorm(width),
    }[norm]()
    return torch.nn.Sequential(torch.nn.Linear(6, width), layer, torch.nn.Linear(width, 3))


def _padded_norm_copy(a: dict, width: int, wide: int) -> dict:
    """``a``'s net padded with dead units to ``wide``, its norm scale divided by
    ``sqrt(wide / width)``: it computes ``a``'s function (the norm's mean over the dead
    units is ``width / wide`` of the live units')."""
    b = _padded(a, _normed(wide).state_dict(), [])
    b["1.weight"] = b["1.weight"] * (width / wide) ** 0.5
    return b


@pytest.mark.parametrize("transport", ["soft", "hard"])
def test_a_norm_over_a_zero_padded_width_is_corrected_so_the_copy_fuses_back(transport):
    """RMSNorm averages over every unit, dead ones too: the padded copy (scale divided by
    sqrt(9/6), eps by 9/6) computes the model, and fuses with it back into the model; the
    copy's scale is multiplied by sqrt(9/6), the model's left alone."""
    small, wide = _normed(6, eps=1e-6), _normed(9, eps=1e-6 * 6 / 9)
    a = _state(small, 0)
    b = _padded_norm_copy(a, 6, 9)
    x = _data(256)[0][0]
    assert_close(_outputs(wide, b, x), _outputs(small, a, x), atol=1e-5, rtol=1e-5)
    out = fuse([wide, small], [b, a], data=[(x, x)], transport=transport, widths=6)
    assert out.norm_scales[0] == {"1.weight": pytest.approx(1.5**0.5)} and out.norm_scales[1] == {}
    assert out.to_dict()["norm_scales"][0]["1.weight"] == pytest.approx(1.5**0.5)
    assert_close(_outputs(_normed(6), out.state_dict, x), _outputs(small, a, x), atol=1e-5,
                 rtol=1e-5)  # fmt: skip
    same = fuse([small, small], [a, a], data=[(x, x)])  # every unit live: no correction
    assert same.norm_scales == ({}, {}) and "norm_scales" not in same.to_dict()


def test_a_norm_that_is_not_proportional_to_its_scale_refuses_a_dead_width_change():
    from modeconnect.fusion.norms import normalising_weights

    x = _data(64)[0][0]
    kinds = {}
    for norm in ("rms", "layer", "gemma"):
        net = _normed(6, norm)
        spec = derive_spec(net, (x[:2],))
        kinds[norm] = normalising_weights(net, spec, _state(net, 0), "P0")
    assert kinds == {"rms": {"1.weight": "linear"}, "layer": {"1.weight": "linear"},
                     "gemma": {"1.weight": "other"}}  # fmt: skip
    small, wide = _normed(6, "gemma"), _normed(9, "gemma")
    a = _state(small, 0)
    b = _padded(a, wide.state_dict(), [])
    with pytest.raises(ModeconnectError, match=r"'1.weight' normalises over group P0.*dead") as e:
        fuse([small, wide], [a, b], data=[(x, x)], labels=["a.pt", "b.pt"])
    assert str(e.value).startswith("b.pt: ") and "\n" not in str(e.value)


def _llama(transformers, hidden: int, heads: int, kv: int, inter: int, eps: float):
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=2,
        num_attention_heads=heads, num_key_value_heads=kv, head_dim=8, rms_norm_eps=eps,
        max_position_embeddings=32,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


def _fuses_back(family: str, layers: int, widths: dict[str, int]) -> None:
    """:func:`hf_models.padded_pair`'s wider copy computes the narrow model; fused with it
    at the narrow widths by OT fusion, in either order, it gives the narrow model back."""
    from hf_models import padded_pair

    small, wide = padded_pair(family, layers=layers)
    a, b = small.state_dict(), wide.state_dict()
    x = torch.randint(0, 64, (8, 12))
    with torch.no_grad():
        want = small(x).logits
        assert_close(wide(x).logits, want, atol=1e-5, rtol=1e-5)
    assert width_groups(derive_spec(small, (x[:2],))) == tuple(widths)  # residual, heads, MLPs
    for models, sds in (([small, wide], [a, b]), ([wide, small], [b, a])):
        out = fuse(models, sds, data=[(x, x)], widths=widths)
        assert {g: out.widths[g] for g in widths} == widths
        with torch.no_grad():
            assert_close(_outputs(small, out.state_dict, x).logits, want, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_llama_zero_padded_in_hidden_size_heads_and_mlp_fuses_back():
    """A Llama (hidden 32, 4 query / 2 key-value heads of 8, MLP 24) and a wider copy
    (hidden 48, 6 / 3 heads, MLP 40) holding it with zeros elsewhere: its extra key/value
    head's value rows are zero (a dead head, with its two query heads: GQA ties them),
    its norm scales are divided by sqrt(48/32) and its eps by 48/32, so it computes the
    model. Fused at the model's widths, in either order, it gives the model back."""
    pytest.importorskip("transformers")
    _fuses_back("llama", 2, {"P0": 32, "P1": 2, "P4": 24, "P5": 2, "P8": 24})


@pytest.mark.slow
def test_gpt2_zero_padded_in_hidden_size_heads_and_mlp_fuses_back():
    """GPT-2's LayerNorm subtracts the mean over the hidden units: zeros appended to the
    residual stream move it, so a zero-padded wider GPT-2 is another function (here
    logits off by more than 0.1). The exact statement: a GPT-2 whose residual writers are
    centred (its residual stream has mean zero; centring them changes no function that
    reads the stream through LayerNorm) has a zero-padded wider copy (hidden 48, 6 heads,
    MLP 40; scales times sqrt(32/48), eps times 32/48) that computes it, and fusing the
    two at its widths gives it back, in either order."""
    from hf_models import padded_pair

    pytest.importorskip("transformers")
    small, wide = padded_pair("gpt2", centred=False)
    x = torch.randint(0, 64, (4, 12))
    with torch.no_grad():
        assert (wide(x).logits - small(x).logits).abs().max() > 0.1
    _fuses_back("gpt2", 1, {"P0": 32, "P1": 4, "P4": 24})


@pytest.mark.slow
def test_llamas_whose_heads_differ_in_shape_are_refused_in_one_line():
    transformers = pytest.importorskip("transformers")
    small = _llama(transformers, 32, 4, 2, 24, 1e-5)
    x = torch.randint(0, 64, (4, 8))
    other_dim = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=32,
    ))  # fmt: skip
    other_ratio = _llama(transformers, 64, 8, 2, 24, 1e-5)
    multi_head = _llama(transformers, 32, 4, 4, 24, 1e-5)  # no query heads per key/value head
    cases = [(other_dim, r"fixed factor of size 16 .*one head_dim"),
             (other_ratio, r"\(64, 64\) where a's is \(32, 32\).*ratio"),
             (multi_head, r"no counterpart.*grouped differently.*head ratio")]  # fmt: skip
    for other, message in cases:
        with pytest.raises(ModeconnectError, match=message) as err:
            fuse([small, other], [small.state_dict(), other.state_dict()], data=[(x, x)],
                 labels=["a", "b"])  # fmt: skip
        assert "\n" not in str(err.value) and str(err.value).startswith("b: ")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["otfusion", "zip"])
def test_gpt2_with_its_heads_and_units_permuted_fuses_back(method):
    """A GPT-2 and a copy whose residual units, MLP units and whole heads are permuted: the
    heads (matched by the norm of their outputs, token by token) and the units come
    back, so the fusion is the model. GPT-2's heads and value dimensions share their axes
    (``c_attn``, ``c_proj``); they are told apart as heads and per-head groups."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_head=4, n_layer=2,
                                     n_positions=32, n_inner=48)  # fmt: skip
    model = transformers.GPT2LMHeadModel(config).eval()
    a = _state(model, 0)
    a = {k: 0.3 * v for k, v in a.items()}
    x = torch.randint(0, 64, (16, 12))
    spec = derive_spec(model, (x[:2],))
    perm = random_permutation(spec, seed=3)
    for g in spec.groups.values():
        if g.batch_over is not None:  # heads move whole: their own axes stay in order
            perm[g.name] = torch.arange(g.size).repeat(spec.groups[g.batch_over].size, 1)
    b = apply_permutation(a, spec, perm)
    assert not torch.equal(b["transformer.h.0.attn.c_proj.weight"],
                           a["transformer.h.0.attn.c_proj.weight"])  # fmt: skip
    out = fuse([model, model], [a, b], data=[(x, x)], method=method)
    with torch.no_grad():
        assert_close(_outputs(model, out.state_dict, x).logits, _outputs(model, a, x).logits,
                     atol=1e-4, rtol=1e-4)  # fmt: skip


@pytest.mark.slow
def test_one_width_leaves_head_counts_unless_they_are_named():
    transformers = pytest.importorskip("transformers")
    model = _llama(transformers, 32, 4, 2, 24, 1e-5)
    spec = derive_spec(model, (torch.randint(0, 64, (2, 8)),))
    assert resolve_widths(spec, 16) == {**spec.group_sizes(), "P0": 16, "P4": 16, "P8": 16}
    assert resolve_widths(spec, {"P1": 3})["P1"] == 3
    with pytest.raises(ModeconnectError, match=r"cannot change width \['P2'\]"):
        resolve_widths(spec, {"P2": 3})  # query heads per key/value head keep their number


@functools.cache
def _family_spec(family: str):
    """A narrow model of :func:`hf_models.padded_pair`'s family, its spec, its config's
    width slots (found once)."""
    from hf_models import padded_pair

    from modeconnect.fusion.resize import config_slots

    model = padded_pair(family, layers=1)[0]
    spec = derive_spec(model, (torch.randint(0, 64, (2, 8)),))
    found = config_slots(model, spec)
    assert found is not None
    return model, spec, *found[:2]


@pytest.mark.slow
@settings(max_examples=8, deadline=None)
@given(family=st.sampled_from(["llama", "gpt2"]), kv=st.integers(1, 5),
       hidden=st.integers(1, 4), inter=st.integers(1, 70))  # fmt: skip
def test_state_widths_read_head_counts_and_the_config_takes_them_back(family, kv, hidden, inter):
    """Any Llama (head dimension 8, 2 query heads per key/value head) or GPT-2 (head
    dimension 8) built at other widths: ``state_widths`` reads its hidden size, head
    counts and MLP width from its tensors alone (tied ``lm_head`` included), and the
    config keywords written for those widths (``fused_kwargs``) are the ones it was built
    with."""
    from modeconnect.fusion import state_widths
    from modeconnect.fusion.slots import fused_kwargs

    model, spec, kwargs, slots = _family_spec(family)
    # GPT-2: heads × head dimension; Llama: a multiple of its query heads (transformers')
    hidden = 8 * kv if family == "gpt2" else 2 * kv * hidden
    names = {"llama": {"hidden_size": hidden, "num_attention_heads": 2 * kv,
                       "num_key_value_heads": kv, "intermediate_size": inter},
             "gpt2": {"n_embd": hidden, "n_head": kv, "n_inner": inter}}[family]  # fmt: skip
    config = type(model.config).from_dict({**kwargs["config"], **names})
    with torch.device("meta"):
        other = type(model)(config).state_dict()
    widths = state_widths(spec, width_groups(spec), other)
    assert {g: widths[g] for g in ("P0", "P1", "P4")} == {"P0": hidden, "P1": kv, "P4": inter}
    written = fused_kwargs(kwargs, slots, widths, spec.group_sizes())["config"]
    assert {k: written[k] for k in names} == names
