"""Permutation specs derived from the graph: every zoo model keeps its function under
random permutations of all free groups, and weight matching recovers a permuted copy."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from zoo import HF_MODELS, ZOO, randomize_

from modeconnect.guard import check_equivalence
from modeconnect.matching import match_weights
from modeconnect.spec import (
    Concat,
    Fixed,
    Leaf,
    Product,
    apply_permutation,
    axis_index,
    derive_spec,
    identity_permutation,
    invert_permutation,
    random_permutation,
)

NAMES = sorted(ZOO)


def _build(name: str):
    if name in HF_MODELS:
        pytest.importorskip("transformers")
    model, inputs = ZOO[name]()
    randomize_(model, seed=0)
    return model.eval(), inputs


@pytest.fixture(scope="module")
def specs():
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            model, inputs = _build(name)
            cache[name] = (model, inputs, derive_spec(model, inputs))
        return cache[name]

    return get


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seed", [1, 2])
def test_random_permutation_keeps_function(specs, name, seed):
    model, inputs, spec = specs(name)
    state = model.state_dict()
    permuted = apply_permutation(state, spec, random_permutation(spec, seed))
    changed = [k for k in state if not torch.equal(state[k], permuted[k])]
    assert changed, "a random permutation should move some tensor"
    eq = check_equivalence(model, state, permuted, inputs)
    assert eq.max_rel_diff < 1e-5, eq


@pytest.mark.parametrize("name", NAMES)
def test_weight_matching_recovers_permuted_copy(specs, name):
    model, _, spec = specs(name)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    permuted = apply_permutation(state, spec, random_permutation(spec, 7))
    alignment = match_weights(spec, state, permuted)
    recovered = apply_permutation(permuted, spec, alignment.perm)
    for key in state:
        torch.testing.assert_close(recovered[key], state[key], rtol=0, atol=0)


def _hidden_widths(name: str) -> list[int]:
    model, _ = ZOO[name]()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return [m.out_features for m in linears[:-1]]


def test_mlp_groups(specs):
    for name in ("mlp_seq", "mlp_class"):
        _, _, spec = specs(name)
        # hidden widths 12 and 20 (tests/zoo.py): one group per hidden layer
        assert sorted(g.size for g in spec.groups.values()) == sorted(
            m for m in _hidden_widths(name)
        ), name


def test_resnet20_streams(specs):
    _, _, spec = specs("resnet20")
    # 3 stages x 3 blocks: each block has one inner group; each stage one residual stream.
    assert len(spec.groups) == 12
    stream_sizes = sorted(g.size for g in spec.groups.values() if len(g.members) > 10)
    assert len(stream_sizes) == 3


def test_attention_heads_are_structured(specs):
    for name in ("vit", "gpt"):
        _, _, spec = specs(name)
        inner = [g for g in spec.groups.values() if g.batch_over is not None]
        assert inner, f"{name}: expected per-head inner groups"
        for g in inner:
            outer = spec.groups[g.batch_over]
            assert outer.size in (2, 3, 4, 6, 8), (name, outer)


def test_vocabulary_and_io_stay_fixed(specs):
    _, _, spec = specs("gpt")
    reasons = {f.reason for f in spec.fixed}
    assert "vocabulary axis of an embedding" in reasons
    tok = spec.layouts["tok.weight"]
    assert isinstance(tok[0], Fixed) and isinstance(tok[1], Leaf)
    assert (
        spec.aliases.get("head.weight") == "tok.weight"
        or spec.aliases.get("tok.weight") == "head.weight"
    )


def test_feature_extractor_output_fixed_unless_permitted():
    pytest.importorskip("transformers")
    model, inputs = _build("hf_bert")
    fixed = derive_spec(model, inputs)
    free = derive_spec(model, inputs, permute_output=True)
    assert any(f.reason == "model output" for f in fixed.fixed)
    assert len(free.groups) == len(fixed.groups) + 1  # the residual stream becomes free


def test_wrong_permutation_is_caught_by_guard(specs):
    model, inputs, spec = specs("mlp_seq")
    state = model.state_dict()
    perm = random_permutation(spec, 3)
    permuted = apply_permutation(state, spec, perm)
    first = next(iter(spec.groups))
    # Permute one weight's rows without the matching columns of the next layer.
    key = spec.groups[first].members[0].key
    broken = dict(permuted)
    broken[key] = permuted[key].flip(0)
    assert not check_equivalence(model, state, broken, inputs).passed


def test_spec_derivation_is_repeatable(specs):
    """Deriving resnet20's spec twice gives the same groups and members. (Its speed, under
    5 s cold, is a benchmark: ``benchmarks/bench_spec.py --budget``, not a test on a
    shared machine.)"""
    model, inputs, spec = specs("resnet20")
    assert derive_spec(model, inputs).to_dict() == spec.to_dict()


@settings(max_examples=25, deadline=None)
@given(
    widths=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_mlp_permutation_invariance_property(widths, seed):
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    prev = 4
    for w in widths:
        layers += [nn.Linear(prev, w), nn.Tanh()]
        prev = w
    model = nn.Sequential(*layers, nn.Linear(prev, 3)).eval()
    x = torch.randn(5, 4)
    spec = derive_spec(model, (x[:2],))
    state = model.state_dict()
    perm = random_permutation(spec, seed)
    permuted = apply_permutation(state, spec, perm)
    assert check_equivalence(model, state, permuted, (x,)).max_rel_diff < 1e-5
    back = apply_permutation(permuted, spec, invert_permutation(spec, perm))
    for k in state:
        assert torch.equal(back[k], state[k])


@settings(max_examples=50, deadline=None)
@given(outer=st.integers(1, 4), inner=st.integers(1, 4), seed=st.integers(0, 1000))
def test_batched_inverse_roundtrip(outer, inner, seed):
    from modeconnect.spec import PermGroup, PermutationSpec

    spec = PermutationSpec(
        groups={
            "H": PermGroup("H", outer, ()),
            "D": PermGroup("D", inner, (), batch_over="H"),
        },
        layouts={"w": (Product((Leaf("H", outer), Leaf("D", inner))),)},
    )
    w = {"w": torch.arange(outer * inner)}
    perm = random_permutation(spec, seed)
    moved = apply_permutation(w, spec, perm)
    assert sorted(moved["w"].tolist()) == list(range(outer * inner))
    back = apply_permutation(moved, spec, invert_permutation(spec, perm))
    assert torch.equal(back["w"], w["w"])


def test_axis_index_concat_and_product():
    layout = Concat((Leaf("A", 2), Product((Leaf("B", 2), Fixed(3)))))
    perm = {"A": torch.tensor([1, 0]), "B": torch.tensor([1, 0])}
    assert axis_index(layout, perm).tolist() == [1, 0, 5, 6, 7, 2, 3, 4]
    assert axis_index(layout, {}).tolist() == list(range(8))
    assert identity_permutation


def test_untraceable_model_gets_clear_error():
    from modeconnect.errors import ModeconnectError

    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ModeconnectError, match=r"cannot trace Sequential.*--input-shape"):
        derive_spec(model, (torch.randn(2, 5),))


# --------------------------------------------------------------------------- the derive_spec API


def test_hugging_face_model_is_traced_without_a_wrapper():
    """A causal LM returns a cache object unless told not to; ``model_call`` tells it."""
    pytest.importorskip("transformers")
    from zoo_hf import llama_gqa

    model, inputs = llama_gqa()
    spec = derive_spec(model, inputs)
    assert len(spec.groups) == 9
    by_name = derive_spec(model, {"input_ids": inputs[0]})
    assert by_name.groups == spec.groups and by_name.layouts == spec.layouts


def test_meta_device_model_gives_the_same_spec():
    """Billion-parameter models are analysed without materialising their weights."""
    pytest.importorskip("transformers")
    from zoo_hf import llama_gqa

    model, inputs = llama_gqa()
    with torch.device("meta"):
        meta, _ = llama_gqa()
    assert next(meta.parameters()).is_meta
    real, shapes_only = derive_spec(model, inputs), derive_spec(meta, inputs)
    assert shapes_only.groups == real.groups and shapes_only.layouts == real.layouts
    assert shapes_only.fixed == real.fixed


def test_meta_device_plain_model():
    model, inputs = ZOO["cnn_bn"]()
    meta = model.to("meta")
    assert derive_spec(meta, inputs).layouts == derive_spec(ZOO["cnn_bn"]()[0], inputs).layouts


def test_partly_fixed_axes_are_listed():
    """RoPE fixes the q/k dims inside each head: the axis is partly fixed, and says so."""
    pytest.importorskip("transformers")
    from zoo_hf import llama_gqa

    model, inputs = llama_gqa()
    spec = derive_spec(model, inputs)
    q = [f for f in spec.fixed if f.key == "model.layers.0.self_attn.q_proj.weight"]
    assert [(f.axis, f.size, f.partial) for f in q] == [(0, 8, True)]
    assert q[0].reason == "constant: model.rotary_emb.inv_freq"


@pytest.mark.slow
def test_selected_output_only_is_fixed():
    """T5's call compares logits; the encoder's hidden states are not an output to fix."""
    pytest.importorskip("transformers")
    from zoo_hf import t5_sdpa

    from modeconnect.forward import ModelCall

    model, inputs = t5_sdpa()
    spec = derive_spec(model, inputs)
    everything = ModelCall(("input_ids",), {"use_cache": False, "return_dict": True},
                           decoder_inputs=True)  # fmt: skip
    whole = derive_spec(model, inputs, call=everything)
    assert len(whole.groups) < len(spec.groups)  # the encoder stream froze


def test_graph_runner_reads_the_sites_of_a_hugging_face_model():
    """Activation sites are node names of the traced graph; the runner traces it the same
    way (input ids by name, no cache) and reads them with any weights."""
    pytest.importorskip("transformers")
    from zoo_hf import llama_gqa

    from modeconnect.spec import GraphRunner

    model, inputs = llama_gqa()
    randomize_(model, seed=0)
    spec = derive_spec(model, inputs)
    nodes = {s.node for sites in spec.sites.values() for s in sites}
    state = model.state_dict()
    perm = random_permutation(spec, 5)
    runner = GraphRunner(model)
    plain = runner.run(state, inputs, nodes)
    moved = runner.run(apply_permutation(state, spec, perm), inputs, nodes)
    assert set(plain) == nodes and set(moved) == nodes
    sites = next(s for g, s in spec.sites.items() if spec.groups[g].batch_over is None)
    site = sites[0]
    index = axis_index(site.layout, perm)
    torch.testing.assert_close(moved[site.node], plain[site.node].index_select(site.dim, index))
