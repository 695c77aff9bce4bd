"""Permutations learned through a Sinkhorn relaxation (``--learn-permutations sinkhorn``)."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_symmetry_qk import _trained_mlps, check_learned_permutations
from zoo import HF_MODELS, ZOO

import modeconnect as mc
from modeconnect.spec import apply_permutation, derive_spec, random_permutation
from modeconnect.symmetry.sinkhorn import SoftPermuter, harden, sinkhorn


@pytest.mark.parametrize("name", ["mlp_seq", "resnet20", "grouped_conv", "vit", "gpt", "hf_gpt2"])
def test_one_hot_soft_maps_permute_exactly_as_indexing_does(name: str) -> None:
    """With ``P_g`` one-hot rows of a random permutation, the soft maps give what
    :func:`apply_permutation` gives, to the bit: concatenated, product (heads × dims),
    grouped and batched layouts included (batched groups stay as they are in both)."""
    if name in HF_MODELS:
        pytest.importorskip("transformers")
    model, inputs = ZOO[name]()
    spec = derive_spec(model, inputs)
    state = {k: v.detach().double() for k, v in model.state_dict().items()}
    groups = [g for g, group in spec.groups.items() if group.batch_over is None]
    perm = {g: p for g, p in random_permutation(spec, seed=3).items() if g in groups}
    one_hot = torch.nn.functional.one_hot
    maps = {g: one_hot(p, spec.groups[g].size).double() for g, p in perm.items()}
    want = apply_permutation(state, spec, perm)
    got = SoftPermuter(spec, groups).apply(state, maps)
    assert any(not torch.equal(want[k], state[k]) for k in state)  # it did permute
    assert all(torch.equal(want[k], got[k]) for k in state)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 6), st.integers(0, 2**16), st.floats(0.1, 5.0))
def test_sinkhorn_gives_a_doubly_stochastic_matrix(n: int, seed: int, scale: float) -> None:
    """Columns sum to 1 after every iteration (the last normalisation is a column's); rows
    approach 1, never moving away with more iterations (slowly where one entry dominates:
    a 2 × 2 example is 0.8 % off after 20 iterations, 0.0005 % after 200)."""
    logits = scale * torch.randn(n, n, generator=torch.Generator().manual_seed(seed)).double()
    ones = torch.ones(n, dtype=torch.float64)
    off = []
    for iterations in (20, 200, 2000):
        p = sinkhorn(logits, iterations=iterations)
        assert bool((p >= 0).all())
        assert torch.allclose(p.sum(0), ones, atol=1e-9)
        off.append(float((p.sum(1) - 1).abs().max()))
    assert off[0] + 1e-12 >= off[1] and off[1] + 1e-12 >= off[2]
    assert off[2] <= 1e-3


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(0, 2**16))
def test_hardening_agrees_with_brute_force(n: int, seed: int) -> None:
    p = torch.rand(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def total(perm: list[int]) -> float:
        return sum(float(p[u, perm[u]]) for u in range(n))

    best = max(total(list(q)) for q in itertools.permutations(range(n)))
    found = harden(p).tolist()
    assert sorted(found) == list(range(n))
    assert total(found) == pytest.approx(best, abs=1e-12)


@pytest.mark.slow  # about 4 s
def test_sinkhorn_permutations_lower_the_barrier_and_are_deterministic() -> None:
    check_learned_permutations("sinkhorn", "Sinkhorn", epochs=10, lr=0.01)  # 0.064 vs 0.087


def test_a_permuted_copy_stays_recovered() -> None:
    """B = π(A): weight matching recovers A, and the learned soft maps (started there, at
    the loss's minimum) harden back to the identity, so aligned B is A again."""
    model, a, _, data = _trained_mlps()
    spec = derive_spec(model, (data[0][0][:2],))
    b = apply_permutation(a, spec, random_permutation(spec, seed=5))
    r = mc.align(model, a, b, method="learned", data=data, permutations="sinkhorn", epochs=2,
                 lr=0.01)  # fmt: skip
    assert all(torch.allclose(r.aligned[k], a[k]) for k in a)


def test_the_sinkhorn_option_is_declared() -> None:
    from click.testing import CliRunner

    from modeconnect_cli.main import main

    text = " ".join(CliRunner().invoke(main, ["align", "--help"]).output.split())
    assert "--learn-permutations [fixed|ste|sinkhorn]" in text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_soft_maps_on_cuda_agree_with_the_cpu() -> None:
    model, inputs = ZOO["vit"]()
    spec = derive_spec(model, inputs)
    state = {k: v.detach().double() for k, v in model.state_dict().items()}
    groups = [g for g, group in spec.groups.items() if group.batch_over is None]
    gen = torch.Generator().manual_seed(0)
    maps = {g: sinkhorn(torch.randn(spec.groups[g].size, spec.groups[g].size, generator=gen))
            for g in groups}  # fmt: skip
    permuter = SoftPermuter(spec, groups)
    cpu = permuter.apply(state, {g: m.double() for g, m in maps.items()})
    cuda = permuter.apply({k: v.cuda() for k, v in state.items()},
                          {g: m.double().cuda() for g, m in maps.items()})  # fmt: skip
    assert all(torch.allclose(cpu[k], cuda[k].cpu()) for k in state)
