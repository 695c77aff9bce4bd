"""Per-head maps fitted to activations (``--method activation --symmetry full --head-maps
activations``).

Orthogonal V·O and Q·K maps of each head's class, applied to a model, are undone exactly
by Procrustes on the heads' activation cross-moments, on every attention layout the
weight-based solver handles: separate projections (Llama, rotary pairs), GPT-2's fused
``Conv1D`` ``c_attn`` (no rotary embeddings), GPT-NeoX's interleaved ``query_key_value``
(partial rotary), and a ViT.
"""

from __future__ import annotations

import pytest
import torch
from test_symmetry_hf_more import setup as more_setup
from test_symmetry_recovery import IDS
from test_symmetry_recovery import setup as recovery_setup

from modeconnect.symmetry.align import HeadSolver, _qk_mask
from modeconnect.symmetry.head_activations import qk_maps
from modeconnect.symmetry.heads import apply_head_maps
from modeconnect.symmetry.learned import HeadParam
from modeconnect.symmetry.qk import QKClass, apply_qk_maps


def _model(name: str) -> tuple[torch.nn.Module, object, torch.Tensor]:
    if name in ("llama", "gpt2"):
        model, spec = recovery_setup(name)
        return model, spec, IDS
    model, spec, _, x = more_setup(name)
    return model, spec, x


def _orthogonal(n: int, count: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(count, n, n, generator=gen, dtype=torch.float64))
    return q


@pytest.mark.slow  # about 1 s each, 7 s with the Llama's spec
@pytest.mark.parametrize("name", ["llama", "gpt2", "neox", "vit"])
def test_activation_procrustes_undoes_orthogonal_head_maps(name: str) -> None:
    model, spec, x = _model(name)
    a = model.state_dict()
    solver = HeadSolver.of(model, spec, (x,), a, 1.0)
    gen = torch.Generator().manual_seed(7)
    b = dict(a)
    for group, sound in solver.vo:
        assert sound
        b = apply_head_maps(b, group, _orthogonal(group.size, group.heads, gen), group.positions)
    qk = [(g, c) for g, c in solver.qk if isinstance(c, QKClass)]
    assert qk and len(qk) == len(solver.qk)
    for group, cls in qk:
        param = HeadParam("", group.kv_heads, _qk_mask(group.head_dim, cls), apply_qk_maps)
        raw = torch.randn(group.kv_heads, group.head_dim, group.head_dim, generator=gen,
                          dtype=torch.float64)  # fmt: skip
        b = apply_qk_maps(b, group, param.maps(raw))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) > 0.1
    moments = solver.moments(model, a, b, [(x, x)])
    out, records = solver.solve(a, b, moments)
    assert all("activations" in r.solver for r in records)
    for k in a:
        torch.testing.assert_close(out[k], a[k], rtol=1e-5, atol=1e-5)


def test_the_qk_procrustes_picks_each_pairs_rotation_and_the_free_blocks_polar() -> None:
    cls = QKClass("complex-per-rotary-pair", ((0, 1),), (2, 3), "")
    gen = torch.Generator().manual_seed(0)
    d = torch.randn(1, 4, 4, generator=gen, dtype=torch.float64)
    (got,) = qk_maps(d, cls)
    best = float((got * d[0]).sum())  # tr(Aᵀ D)
    for angle in torch.linspace(0, 6.28, 73):  # no other rotation of the pair does better
        c, s = float(torch.cos(angle)), float(torch.sin(angle))
        other = got.clone()
        other[:2, :2] = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
        assert float((other * d[0]).sum()) <= best + 1e-12
    u, _, vh = torch.linalg.svd(d[0, 2:, 2:])
    torch.testing.assert_close(got[2:, 2:], u @ vh)
    assert bool((got[:2, 2:] == 0).all()) and bool((got[2:, :2] == 0).all())


@pytest.mark.slow  # about 3 s
def test_activation_based_full_with_activation_fitted_heads_recovers_a_copy() -> None:
    """Permuted, rotated and (orthogonally) head-mapped grouped-query copy: activation
    matching, the stream's activation Procrustes and the heads' recover A's weights."""
    import warnings

    from test_symmetry_gqa import setup as gqa_setup
    from test_symmetry_recovery import transformed

    from modeconnect.symmetry.align import align_full

    model, spec = gqa_setup(2)
    reference, b = transformed(model, spec, seed=1, orthogonal=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        full = align_full(model, model.state_dict(), b, spec=spec, probe=(IDS,),
                          method="activation", head_maps="activations", data=[IDS])  # fmt: skip
    assert full.equivalence.passed
    heads = [g for g in full.groups if g.cls in ("invertible-per-head", "complex-per-rotary-pair")]
    assert len(heads) == 4 and all("activations" in g.solver for g in heads)
    assert full.alignment.params["head_maps"] == "activations"
    for k in reference:
        torch.testing.assert_close(full.aligned[k], reference[k], rtol=1e-5, atol=1e-5)


def test_activation_fitted_heads_need_the_activation_method() -> None:
    from modeconnect.errors import ModeconnectError
    from modeconnect.symmetry.align import align_full

    model, spec = recovery_setup("llama")
    a = model.state_dict()
    with pytest.raises(ModeconnectError, match="--method activation"):
        align_full(model, a, a, spec=spec, probe=(IDS,), head_maps="activations")
