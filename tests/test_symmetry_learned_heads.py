"""Per-head maps learned with the residual rotation (``--learn-heads learned``).

Each map is ``exp(K)`` for a skew-symmetric ``K`` on its class's pattern: orthogonal, a
rotation on every rotary frequency pair, so a random one keeps a partial-rotary model's
outputs; learned on a small trained Llama pair it lowers the barrier below the
learned rotation with the closed-form heads, the guard passes, and it is deterministic.
"""

from __future__ import annotations

import hf_models as hf
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import modeconnect as mc
from modeconnect.errors import ModeconnectError
from modeconnect.symmetry.align import _qk_mask
from modeconnect.symmetry.learned import HeadParam
from modeconnect.symmetry.qk import apply_qk_maps, candidates, qk_groups

X = torch.randint(0, hf.VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))


def _stablelm() -> nn.Module:
    from transformers import StableLmConfig, StableLmForCausalLM

    config = StableLmConfig(vocab_size=hf.VOCAB, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                            partial_rotary_factor=0.5, max_position_embeddings=64)  # fmt: skip
    return hf._randomised(StableLmForCausalLM(config), 0)


_MODEL = _stablelm().eval()
(_GROUP,) = qk_groups(mc.derive_spec(_MODEL, (X,)), _MODEL.state_dict())
((_, _CLASS),) = [c for c in candidates(_GROUP.head_dim, _GROUP.head_dim // 2) if c[0] == "halves"]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.floats(0.1, 3.0))
def test_a_learned_qk_map_is_a_rotation_per_pair_and_keeps_the_outputs(seed: int, scale: float):
    gen = torch.Generator().manual_seed(seed)
    n = _GROUP.head_dim
    param = HeadParam("qk", _GROUP.kv_heads, _qk_mask(n, _CLASS), lambda s, m: s)
    raw = scale * torch.randn(_GROUP.kv_heads, n, n, generator=gen, dtype=torch.float64)
    maps = param.maps(raw)
    eye = torch.eye(n, dtype=torch.float64).expand_as(maps)
    assert torch.allclose(maps @ maps.transpose(1, 2), eye, atol=1e-12)
    outside = (_qk_mask(n, _CLASS) + torch.eye(n, dtype=torch.float64)) == 0
    assert bool((maps[:, outside] == 0).all())
    for i, j in _CLASS.pairs:  # [[c, -s], [s, c]]: a complex scalar of modulus 1
        assert torch.allclose(maps[:, i, i], maps[:, j, j], atol=1e-12)
        assert torch.allclose(maps[:, i, j], -maps[:, j, i], atol=1e-12)
    state = _MODEL.state_dict()
    moved = apply_qk_maps(state, _GROUP, maps)
    assert any(not torch.equal(moved[k], state[k]) for k in state)
    with torch.no_grad():
        want = _MODEL(X).logits
        got = torch.func.functional_call(_MODEL, moved, (X,)).logits
    assert torch.allclose(got, want, atol=1e-4)


def _trained_pair() -> tuple[nn.Module, dict, dict, list]:
    ids = torch.randint(0, hf.VOCAB, (64, 16), generator=torch.Generator().manual_seed(1))
    nets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = hf.llama(seed)
        opt = torch.optim.Adam(net.parameters(), 1e-2)
        for step in range(30):
            x = ids[8 * (step % 8) : 8 * (step % 8) + 8]
            opt.zero_grad()
            net(input_ids=x, labels=x).loss.backward()
            opt.step()
        nets.append(net.eval())
    data = [(ids[i : i + 8], ids[i : i + 8]) for i in range(0, 64, 8)]
    return nets[0], nets[0].state_dict(), nets[1].state_dict(), data


@pytest.mark.slow  # about 4 s
def test_learned_heads_lower_the_barrier_below_fixed_heads() -> None:
    model, a, b, data = _trained_pair()

    def barrier(r: mc.AlignResult) -> float:
        curve = mc.interpolation_curve(model, r.start(a), r.aligned, data, alphas=[0, 0.5, 1],
                                       loss="causal_lm")  # fmt: skip
        return mc.barrier(curve).loss

    kw = dict(method="learned", symmetry="full", data=data, loss="causal_lm", epochs=2, lr=0.03)
    fixed = mc.align(model, a, b, heads="fixed", **kw)
    learned, again = (mc.align(model, a, b, **kw) for _ in range(2))  # learned: the default
    assert learned.equivalence.passed
    assert barrier(learned) < 0.97 * barrier(fixed)  # measured: 0.233 against 0.248
    assert all(torch.equal(learned.aligned[k], again.aligned[k]) for k in a)  # deterministic
    records = {g["group"]: g for g in (learned.symmetry or {})["groups"]}
    heads = [g for g in records.values() if g["class"] not in ("permutation", "orthogonal")]
    assert heads and all("learned with the rotation" in g["solver"] for g in heads)


def test_learned_heads_go_with_the_learned_method_and_need_the_full_symmetry() -> None:
    model = hf.llama(0)
    a = model.state_dict()
    data = [(X, X)]
    with pytest.raises(ModeconnectError, match="--learn-heads"):
        mc.align(model, a, a, data=data, loss="causal_lm", symmetry="full", heads="learned")
    kw = dict(method="learned", symmetry="orthogonal", data=data, loss="causal_lm", lr=0.03)
    plain, learned = (mc.align(model, a, a, heads=h, **kw) for h in ("fixed", "learned"))
    assert all(torch.equal(plain.aligned[k], learned.aligned[k]) for k in a)  # no heads there
    default = mc.align(model, a, a, method="learned", data=data, loss="causal_lm", lr=0.03)
    assert default.alignment.params["symmetry"] == "full"  # learned implies full


def test_the_learned_heads_flag_is_declared() -> None:
    from click.testing import CliRunner

    from modeconnect_cli.main import main

    text = " ".join(CliRunner().invoke(main, ["align", "--help"]).output.split())
    assert "--learn-heads [fixed|learned]" in text


def _learned(device: torch.device | None) -> tuple[mc.AlignResult, float]:
    model, a, b, data = _trained_pair()
    r = mc.align(model, a, b, method="learned", symmetry="full", data=data, loss="causal_lm",
                 epochs=1, lr=0.03, heads="learned", permutations="ste", device=device)  # fmt: skip
    curve = mc.interpolation_curve(model, r.start(a), r.aligned, data, alphas=[0, 0.5, 1],
                                   loss="causal_lm")  # fmt: skip
    return r, mc.barrier(curve).loss


@pytest.mark.slow  # about 4 s
def test_the_learned_alignment_on_the_cpu_device_is_the_default_one() -> None:
    (default, _), (cpu, _) = _learned(None), _learned(torch.device("cpu"))
    assert all(torch.equal(default.aligned[k], cpu.aligned[k]) for k in default.aligned)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_learned_alignment_runs_on_cuda_and_agrees_with_the_cpu() -> None:
    """Rotations, head maps and the straight-through estimator's passes on the GPU: the
    aligned B is B's function (the guard) and its barrier is the CPU run's to float
    tolerance (the order of float sums differs, so the descent may drift a little)."""
    (_, on_cpu), (gpu, on_gpu) = _learned(None), _learned(torch.device("cuda"))
    assert gpu.equivalence.passed
    assert all(t.device.type == "cpu" for t in gpu.aligned.values())
    assert abs(on_gpu - on_cpu) < 0.02


def test_heads_are_learned_where_the_residual_stream_is_refused() -> None:
    """A tied output head read through a non-constant final norm refuses the stream's
    rotation; the per-head maps are still learned (the guard passes)."""
    model = hf.llama(0, tie_word_embeddings=True)
    a = model.state_dict()
    b = hf.llama(1, tie_word_embeddings=True).state_dict()
    assert not bool((a["model.norm.weight"] == a["model.norm.weight"][0]).all())
    data = [(X, X)]
    r = mc.align(model, a, b, method="learned", data=data, loss="causal_lm", lr=0.03)
    groups = (r.symmetry or {})["groups"]
    assert not [g for g in groups if g["class"] in ("orthogonal", "orthogonal-ones")]
    learned = [g for g in groups if "learned with the rotation" in g["solver"]]
    assert len(learned) == 4 and r.equivalence.passed  # two layers' V·O and Q·K maps
