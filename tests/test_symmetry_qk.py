"""Q·K per-head maps that commute with rotary embeddings (modeconnect.symmetry.qk).

A complex scalar per frequency pair (and any invertible map on non-rotary dims) leaves a
tiny Llama's and a partial-rotary StableLM's outputs unchanged, in float32 and to
tolerance in bfloat16/float16; a transformed copy is recovered by the least squares; a
general map across rotary dims changes the outputs and is refused.
"""

from __future__ import annotations

from typing import Any

import hf_models as hf
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import modeconnect as mc
from modeconnect.symmetry.qk import (
    GENERAL,
    ROTARY,
    QKClass,
    QKGroup,
    apply_qk_maps,
    candidates,
    qk_class,
    qk_groups,
    random_map,
    rotary_dims,
    solve_qk_maps,
)

X = torch.randint(0, hf.VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))


def stablelm(seed: int = 0) -> nn.Module:
    """GPT-NeoX-style partial rotary (half the head dims) with separate q/k/v."""
    from transformers import StableLmConfig, StableLmForCausalLM

    config = StableLmConfig(vocab_size=hf.VOCAB, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                            partial_rotary_factor=0.5, max_position_embeddings=64)  # fmt: skip
    return hf._randomised(StableLmForCausalLM(config), seed)


MODELS = {"llama": hf.llama, "stablelm": stablelm}
_CACHE: dict[str, tuple[nn.Module, list[QKGroup]]] = {}


def _model(name: str) -> tuple[nn.Module, list[QKGroup]]:
    if name not in _CACHE:
        model = MODELS[name](0)
        spec = mc.derive_spec(model, (X,))
        _CACHE[name] = model, qk_groups(spec, model.state_dict())
    return _CACHE[name]


def _rotary(model: nn.Module, group: QKGroup) -> QKClass:
    (_, cls), *_ = [c for c in candidates(group.head_dim, rotary_dims(model, group.head_dim))
                    if c[0] == "halves"]  # fmt: skip
    return cls


def _logits(model: nn.Module, state: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return torch.func.functional_call(model, state, (X,)).logits.float()


def _transformed(name: str, seed: int, dtype: torch.dtype = torch.float32) -> tuple[
    nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor]
]:  # fmt: skip
    model, groups = _model(name)
    model = model.to(dtype)
    state = {k: v.to(dtype) for k, v in model.state_dict().items()}
    moved = dict(state)
    for i, g in enumerate(groups):
        moved = apply_qk_maps(moved, g, random_map(_rotary(model, g), g.head_dim, g.kv_heads,
                                                   seed=seed + i))  # fmt: skip
    return model, state, moved


def test_the_groups_and_rotary_dims_are_read_from_the_model() -> None:
    llama, groups = _model("llama")
    assert [(g.kv_heads, g.per_kv, g.head_dim) for g in groups] == [(2, 2, 8)] * 2
    assert rotary_dims(llama, 8) == 8
    neox, (group,) = _model("stablelm")
    assert rotary_dims(neox, 8) == 4
    cls = _rotary(neox, group)
    assert cls.pairs == ((0, 2), (1, 3)) and cls.free == (4, 5, 6, 7)


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**16), name=st.sampled_from(sorted(MODELS)))
def test_a_random_map_that_commutes_with_rope_keeps_the_outputs(seed: int, name: str) -> None:
    model, state, moved = _transformed(name, seed)
    assert any(not torch.equal(state[k], moved[k]) for k in state)
    torch.testing.assert_close(_logits(model, moved), _logits(model, state), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_keep_their_outputs_to_tolerance(dtype: torch.dtype) -> None:
    model, state, moved = _transformed("llama", 3, dtype)
    try:
        diff = (_logits(model, moved) - _logits(model, state)).abs().max()
        scale = _logits(model, state).abs().max()
    finally:
        model.float()
    assert moved["model.layers.0.self_attn.q_proj.weight"].dtype == dtype
    assert float(diff / scale) < (0.05 if dtype == torch.bfloat16 else 0.01)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_transformed_copy_is_recovered(name: str) -> None:
    model, state, moved = _transformed(name, 7)
    _, groups = _model(name)
    back = dict(moved)
    for g in groups:
        maps, conditions = solve_qk_maps(state, back, g, _rotary(model, g), max_condition=1e6)
        assert all(1 <= c < 10 for c in conditions)
        back = apply_qk_maps(back, g, maps)
    for k in state:
        torch.testing.assert_close(back[k], state[k], rtol=1e-5, atol=1e-5)


def test_a_general_map_across_rotary_dims_is_refused_as_unsound() -> None:
    model, (group, *_) = _model("llama")
    state = model.state_dict()
    general = next(c for name, c in candidates(8, 8) if name == "general")
    moved = apply_qk_maps(state, group, random_map(general, 8, group.kv_heads, seed=1))
    diff = (_logits(model, moved) - _logits(model, state)).abs().max()
    assert float(diff) > 1e-3  # the outputs change: not a symmetry

    def passes(cls: QKClass) -> bool:
        trial = apply_qk_maps(state, group, random_map(cls, 8, group.kv_heads, seed=2))
        return mc.check_equivalence(model, state, trial, (X,)).passed

    found = qk_class(group, rotary_dims(model, 8), passes)
    assert isinstance(found, QKClass) and found.cls == ROTARY and found.cls != GENERAL
    assert "general map across rotary dims changed B's outputs (unsound)" in found.reason
    assert qk_class(group, 8, lambda cls: False).endswith("keep their permutations")


def test_ill_conditioned_maps_fall_back_to_their_orthogonal_part() -> None:
    model, state, _ = _transformed("llama", 0)
    _, groups = _model("llama")
    g = groups[0]
    cls = _rotary(model, g)
    scaled = torch.eye(8, dtype=torch.float64).repeat(g.kv_heads, 1, 1)
    scaled[:, 0, 0] = scaled[:, 4, 4] = 1e3  # one frequency pair scaled by 1000
    moved = apply_qk_maps(state, g, scaled)
    maps, conditions = solve_qk_maps(state, moved, g, cls, max_condition=100.0)
    assert conditions == [1.0] * g.kv_heads
    assert torch.allclose(
        maps @ maps.transpose(1, 2), torch.eye(8, dtype=torch.float64).expand_as(maps)
    )


def _trained_mlps() -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor], list]:
    from modeconnect.models import mlp

    torch.manual_seed(0)
    teacher = mlp(in_features=8, hidden=[16], out_features=4)
    x = torch.randn(256, 8)
    y = teacher(x).argmax(1)
    nets = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        net = mlp(in_features=8, hidden=[16, 16], out_features=4)
        opt = torch.optim.Adam(net.parameters(), 1e-2)
        for _ in range(100):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        nets.append(net)
    return nets[0], nets[0].state_dict(), nets[1].state_dict(), list(zip(x.split(64), y.split(64)))


def check_learned_permutations(permutations: str, solver: str, **options: Any) -> None:
    """``--learn-permutations permutations`` on the trained MLPs: the guard passes, the
    barrier is below 0.9 of weight matching's, two runs agree to the bit, and the JSON
    names the ``solver``."""
    model, a, b, data = _trained_mlps()

    def barrier(r: mc.AlignResult) -> float:
        curve = mc.interpolation_curve(model, r.start(a), r.aligned, data, alphas=[0, 0.5, 1])
        return mc.barrier(curve).loss

    weight = mc.align(model, a, b, data=data)
    kw = dict(method="learned", data=data, permutations=permutations, **options)
    learned, again = mc.align(model, a, b, **kw), mc.align(model, a, b, **kw)
    assert learned.equivalence.passed
    assert barrier(learned) < 0.9 * barrier(weight)
    assert all(torch.equal(learned.aligned[k], again.aligned[k]) for k in a)  # deterministic
    (record,) = [g for g in (learned.symmetry or {})["groups"] if g["group"] == "permutations"]
    assert solver in record["solver"] and record["objective"] is not None


@pytest.mark.slow  # about 3 s
def test_learned_permutations_by_the_straight_through_estimator_lower_the_barrier() -> None:
    check_learned_permutations("ste", "straight-through", epochs=3, lr=0.01)  # 0.070 vs 0.087


def test_the_learned_permutations_flag_is_declared() -> None:
    from click.testing import CliRunner

    from modeconnect_cli.main import main

    text = " ".join(CliRunner().invoke(main, ["align", "--help"]).output.split())
    assert "--learn-permutations [fixed|ste|sinkhorn]" in text
