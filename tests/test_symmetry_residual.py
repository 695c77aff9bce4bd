"""The residual stream's orthogonal class: detection, folding, rotations, refusals, recovery."""

from __future__ import annotations

import copy
import warnings

import hf_models as hf
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modeconnect.forward import run
from modeconnect.spec import derive_spec
from modeconnect.symmetry import (
    ORTHOGONAL,
    ORTHOGONAL_ONES,
    PERMUTATION,
    fold,
    norm_weights,
    random_rotation,
    residual_streams,
    rotate,
    unfold,
)
from modeconnect.symmetry.align import align_full, stream_classes
from modeconnect.symmetry.procrustes import procrustes

IDS = torch.randint(0, hf.VOCAB, (3, 12), generator=torch.Generator().manual_seed(0))


def gpt2(seed: int = 0, tied: bool = False) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=hf.VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                        tie_word_embeddings=tied, bos_token_id=0, eos_token_id=0)  # fmt: skip
    return hf._randomised(GPT2LMHeadModel(config), seed)


def qwen2(seed: int = 0) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=hf.VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64)  # fmt: skip
    return hf._randomised(Qwen2ForCausalLM(config), seed)


def tied_llama(seed: int = 0) -> torch.nn.Module:
    """A tied-embedding Llama whose final norm has a constant weight (so it may rotate)."""
    model = hf.llama(seed, tie_word_embeddings=True)
    with torch.no_grad():
        model.model.norm.weight.fill_(0.7)
    return model


MODELS = {"llama": hf.llama, "qwen2": qwen2, "gpt2": gpt2, "tied-llama": tied_llama}
_CACHE: dict[str, tuple] = {}


def setup(name: str) -> tuple:
    if name not in _CACHE:
        model = MODELS[name]()
        spec = derive_spec(model, (IDS[:2],))
        (stream,) = residual_streams(model, (IDS[:2],), spec).values()
        _CACHE[name] = (model, spec, stream)
    return _CACHE[name]


def _logits(model, state) -> torch.Tensor:
    with torch.no_grad():
        return run(model, state, (IDS,)).double()


@pytest.mark.parametrize("name", list(MODELS))
def test_each_family_has_an_orthogonal_residual_stream(name):
    _, spec, stream = setup(name)
    assert stream.cls == (ORTHOGONAL_ONES if name == "gpt2" else ORTHOGONAL)
    # every norm is found, and folds into exactly its readers
    layers = 2
    assert len(stream.norms) == 2 * layers + 1
    assert sum(n.tied for n in stream.norms) == (1 if name == "tied-llama" else 0)
    readers = {k for n in stream.norms for k, _ in n.readers}
    assert any(k.endswith(("q_proj.weight", "c_attn.weight")) for k in readers)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_a_random_rotation_of_the_class_leaves_the_outputs_unchanged(name, dtype):
    model, spec, stream = setup(name)
    state = {k: v.to(dtype) for k, v in model.state_dict().items()}
    turned = rotate(fold(state, stream, spec.aliases), stream, random_rotation(stream, 1),
                    spec.aliases)  # fmt: skip
    assert all(turned[k].dtype == dtype for k in turned)
    changed = max(float((turned[k].double() - state[k].double()).abs().max()) for k in state)
    assert changed > 0.05  # the weights really moved
    wide = {k: v.float() for k, v in state.items()}
    y, z = _logits(model, wide), _logits(model, {k: v.float() for k, v in turned.items()})
    tol = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 3e-3}[dtype]
    assert float((y - z).abs().max()) <= tol * float(y.abs().max()) + tol


def test_a_rotation_outside_the_class_changes_a_layernorm_model():
    """GPT-2's LayerNorm needs maps that fix all-ones: a general rotation breaks it."""
    model, spec, stream = setup("gpt2")
    general = copy.copy(stream).refused("")  # class permutation: draws from all of O(n)
    q = random_rotation(general, 1)
    turned = rotate(fold(model.state_dict(), stream, spec.aliases), stream, q, spec.aliases)
    y, z = _logits(model, model.state_dict()), _logits(model, turned)
    assert float((y - z).abs().max()) > 1e-2 * float(y.abs().max())


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.1, 3.0))
def test_folding_then_unfolding_round_trips(seed, scale):
    model, spec, stream = setup("gpt2")
    gen = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=gen) * scale for k, v in model.state_dict().items()}
    for n in stream.norms:  # away from zero: b / g of a tiny g cancels in float32 (seed 417)
        g = state[n.weight]
        state[n.weight] = torch.where(g < 0, -1.0, 1.0) * (0.1 * scale + g.abs())
    folded = fold(state, stream, spec.aliases)
    assert all(bool((folded[n.weight] == 1).all()) for n in stream.norms)
    back = unfold(folded, stream, norm_weights(state, stream), spec.aliases)
    for k in state:
        torch.testing.assert_close(back[k], state[k], rtol=1e-5, atol=1e-6)
    y, z = _logits(model, state), _logits(model, folded)
    assert float((y - z).abs().max()) <= 1e-4 * float(y.abs().max())  # b / g: float32 cancels


def test_procrustes_fixing_ones_keeps_the_ones_direction():
    m = torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    q = procrustes(m, fixes_ones=True)
    torch.testing.assert_close(q @ q.T, torch.eye(6, dtype=torch.float64))
    torch.testing.assert_close(
        q @ torch.ones(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    )


@pytest.mark.parametrize(
    ("name", "method"),
    [("llama", "weight"), ("gpt2", "weight"), ("tied-llama", "weight"),
     pytest.param("llama", "activation", marks=pytest.mark.slow),
     pytest.param("gpt2", "activation", marks=pytest.mark.slow)],
)  # fmt: skip
def test_a_rotated_copy_is_recovered_up_to_float(name, method):
    model, spec, stream = setup(name)
    a = model.state_dict()
    b = rotate(fold(a, stream, spec.aliases), stream, random_rotation(stream, 7), spec.aliases)
    with warnings.catch_warnings():  # activation matching: per-head sites it cannot place
        warnings.simplefilter("ignore", UserWarning)
        full = align_full(model, a, b, spec=spec, probe=(IDS,), method=method, data=[(IDS, IDS)])
    assert full.equivalence.passed
    for k in a:
        torch.testing.assert_close(full.aligned[k], full.reference[k], rtol=1e-4, atol=2e-5)
    record = next(g for g in full.groups if g.group == stream.group)
    assert record.cls == stream.cls and abs(record.condition - 1) < 1e-9


def test_a_zero_norm_weight_keeps_the_group_a_permutation_with_the_reason():
    model, spec, _ = setup("llama")
    b = dict(model.state_dict())
    key = "model.layers.1.input_layernorm.weight"
    b[key] = b[key].clone()
    b[key][3] = 0.0
    (stream,) = stream_classes(model, spec, (IDS,), model.state_dict(), b)
    assert stream.cls == PERMUTATION
    assert "zero entries" in stream.reason and key in stream.reason
    full = align_full(model, model.state_dict(), b, spec=spec, probe=(IDS,))
    record = next(g for g in full.groups if g.group == stream.group)
    assert record.cls == PERMUTATION and "zero entries" in record.reason
    assert torch.equal(full.aligned[key][full.alignment.perm[stream.group]], b[key])


def test_a_tied_head_behind_a_varying_norm_is_refused():
    model, spec, stream = setup("tied-llama")
    b = dict(model.state_dict())
    b["model.norm.weight"] = torch.linspace(0.5, 1.5, 32)
    (found,) = stream_classes(model, spec, (IDS,), model.state_dict(), b)
    assert found.cls == PERMUTATION and "tied to the output head" in found.reason


@pytest.mark.slow
def test_learned_rotation_lowers_the_midpoint_loss_deterministically():
    from modeconnect.evaluation.scoring import get_scoring

    model, spec, stream = setup("llama")
    a, b = model.state_dict(), hf.llama(5).state_dict()
    data = [(IDS, IDS)]
    kw = dict(spec=spec, probe=(IDS,), data=data, loss="causal_lm")
    weight = align_full(model, a, b, method="weight", **kw)
    learned = align_full(model, a, b, method="learned", epochs=15, lr=3e-2, **kw)
    again = align_full(model, a, b, method="learned", epochs=15, lr=3e-2, **kw)
    assert learned.equivalence.passed
    scoring = get_scoring("causal_lm", model)

    def midpoint(full) -> float:
        mid = {k: torch.lerp(v, full.aligned[k], 0.5) for k, v in full.reference.items()}
        inputs, target = scoring.prepare((IDS, IDS), 0)
        with torch.no_grad():
            out = run(model, mid, (inputs,))
        return float(scoring.summed(out, target) / scoring.count(target))

    assert midpoint(learned) < midpoint(weight) - 0.05
    assert all(torch.equal(learned.aligned[k], again.aligned[k]) for k in a)


def _midpoint(model, full) -> float:
    mid = {k: torch.lerp(v, full.aligned[k], 0.5) for k, v in full.reference.items()}
    return _midpoint_of(model, mid)


@pytest.mark.slow  # about 3 s
def test_two_sided_learning_lowers_the_barrier_and_both_ends_keep_their_functions():
    from modeconnect.guard import check_equivalence

    model, spec, stream = setup("llama")
    a, b = model.state_dict(), hf.llama(5).state_dict()
    kw = dict(spec=spec, probe=(IDS,), data=[(IDS, IDS)], loss="causal_lm")
    weight = align_full(model, a, b, method="weight", **kw)
    two = align_full(model, a, b, method="learned", epochs=15, lr=3e-2, sides="two", **kw)
    assert two.equivalence.passed  # aligned B (B's map relative to A's) is B's function
    assert _midpoint(model, two) < _midpoint(model, weight) - 0.05
    # A's end of the shared path: A folded and rotated toward it, A's function
    (q,) = two.rotations_a.values()
    torch.testing.assert_close(q @ q.T, torch.eye(q.shape[0], dtype=q.dtype))
    assert float((q - torch.eye(q.shape[0], dtype=q.dtype)).abs().max()) > 1e-3  # A moved
    moved = rotate(two.reference, stream, q, spec.aliases)
    assert check_equivalence(model, a, moved, (IDS,)).passed
    # the path between the two moved ends is the returned one, rotated as a whole
    both = {k: torch.lerp(moved[k].double(), rotate(two.aligned, stream, q, spec.aliases)[k]
                          .double(), 0.5).float() for k in a}  # fmt: skip
    assert abs(_midpoint(model, two) - _midpoint_of(model, both)) < 1e-4
    record = next(g for g in two.groups if g.group == stream.group)
    assert "two-sided" in record.solver
    assert two.alignment.params["sides"] == "two"


def _midpoint_of(model, state) -> float:
    from modeconnect.evaluation.scoring import get_scoring

    scoring = get_scoring("causal_lm", model)
    inputs, target = scoring.prepare((IDS, IDS), 0)
    with torch.no_grad():
        return float(scoring.summed(run(model, state, (inputs,)), target) / scoring.count(target))


# --------------------------------------------------------------------------- V·O heads


def _head_setup(name: str):
    from modeconnect.symmetry.heads import head_maps, head_positions

    model, spec, _ = setup(name)
    groups = head_maps(spec, model.state_dict())
    return model, spec, groups, [head_positions(spec, g) for g in groups]


def _random_maps(group, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(group.heads, group.size, group.size, generator=gen)
    return torch.eye(group.size) + 0.5 * noise / group.size**0.5


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_random_per_head_value_maps_leave_the_outputs_unchanged(name):
    from modeconnect.symmetry.heads import apply_head_maps

    model, spec, groups, sizes = _head_setup(name)
    assert len(groups) == 2  # one V·O group per layer; Q·K groups have no reader
    assert all(g.heads == 2 for g in groups)  # GQA: one map per key/value head
    state = model.state_dict()
    mapped = dict(state)
    for g, s in zip(groups, sizes):
        mapped = apply_head_maps(mapped, g, _random_maps(g, 1), s)
    changed = max(float((mapped[k] - state[k]).abs().max()) for k in state)
    assert changed > 0.1
    y, z = _logits(model, state), _logits(model, mapped)
    assert float((y - z).abs().max()) <= 1e-5 * float(y.abs().max())


def test_per_head_least_squares_recovers_a_mapped_copy_and_bounds_the_condition():
    from modeconnect.symmetry.heads import apply_head_maps, solve_head_maps

    model, spec, groups, sizes = _head_setup("qwen2")
    a = model.state_dict()
    b = dict(a)
    for g, s in zip(groups, sizes):
        b = apply_head_maps(b, g, _random_maps(g, 2), s)
    back = dict(b)
    for g, s in zip(groups, sizes):
        maps, conditions = solve_head_maps(a, back, g, s)
        assert all(1 <= c <= 100 for c in conditions)
        back = apply_head_maps(back, g, maps, s)
    for k in a:
        torch.testing.assert_close(back[k], a[k], rtol=1e-4, atol=1e-5)
    g, s = groups[0], sizes[0]
    _, bounded = solve_head_maps(a, b, g, s, max_condition=1.0 + 1e-9)
    assert bounded == [1.0] * g.heads  # the polar fallback: orthogonal maps


def test_an_mlp_under_the_full_symmetry_is_aligned_as_under_permutations():
    import modeconnect as mc
    from modeconnect.models import mlp

    torch.manual_seed(0)
    model = mlp(in_features=4, hidden=[8, 8], out_features=3)
    a = model.state_dict()
    b = mlp(in_features=4, hidden=[8, 8], out_features=3).state_dict()
    x = (torch.randn(16, 4),)
    plain = mc.align(model, a, b, inputs=x)
    full = mc.align(model, a, b, inputs=x, symmetry="full")
    assert plain.symmetry is None and plain.reference is None
    assert all(torch.equal(full.aligned[k], plain.aligned[k]) for k in a)
    assert {g["class"] for g in full.symmetry["groups"]} == {"permutation"}
    with pytest.raises(mc.ModeconnectError, match="symmetry: unknown 'affine'"):
        mc.align(model, a, b, inputs=x, symmetry="affine")
    with pytest.raises(mc.ModeconnectError, match="learns the rotation on data: pass --train"):
        mc.align(model, a, b, inputs=x, method="learned")
