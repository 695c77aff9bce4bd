"""The full symmetry group on two more Hugging Face families: ViT and GPT-NeoX.

* **ViT** (``ViTForImageClassification``): pre-norm LayerNorm, a convolutional patch
  embedding, a class token and learned positions, pooled by the class token's row. Its
  residual stream is ``orthogonal-ones`` (the class token, the positions and the patch
  convolution's output channels rotate with it); its heads have no rotary embeddings, so
  Q·K maps are general per head;
* **GPT-NeoX**: one fused ``query_key_value`` whose rows interleave the heads (per head:
  queries, keys, values), partial rotary (``rotary_pct``) and a parallel residual. Its
  V·O and Q·K maps act on each head's slice of the fused rows; a general map across the
  rotary dims is refused (unsound) and the rotary-commuting class is kept.

For each: random maps of every class keep the outputs; a transformed copy is recovered;
``align --symmetry full|orthogonal`` writes a directory that ``from_pretrained`` loads
and that computes B's function (the guard passed), under B's stored tensor names.
"""

from __future__ import annotations

import json
from pathlib import Path

import hf_models as hf
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from modeconnect.forward import run
from modeconnect.spec import apply_permutation, derive_spec, random_permutation
from modeconnect.symmetry import ORTHOGONAL_ONES, fold, random_rotation, residual_streams, rotate
from modeconnect.symmetry.align import align_full
from modeconnect.symmetry.heads import apply_head_maps, head_maps, head_positions
from modeconnect.symmetry.qk import (
    GENERAL,
    ROTARY,
    QKClass,
    _orthogonal_part,
    apply_qk_maps,
    candidates,
    qk_groups,
    random_map,
)
from modeconnect_cli.main import main

PIXELS = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
IDS = torch.randint(0, hf.VOCAB, (3, 12), generator=torch.Generator().manual_seed(0))


def vit(seed: int = 0) -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=32,
                       num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       num_labels=10)  # fmt: skip
    return hf._randomised(ViTForImageClassification(config), seed)


def neox(seed: int = 0, parallel: bool = True) -> nn.Module:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(vocab_size=hf.VOCAB, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, rotary_pct=0.5,
                           max_position_embeddings=64, use_parallel_residual=parallel)  # fmt: skip
    return hf._randomised(GPTNeoXForCausalLM(config), seed)


MODELS = {"vit": (vit, PIXELS), "neox": (neox, IDS),
          "neox-sequential": (lambda s=0: neox(s, parallel=False), IDS)}  # fmt: skip
_CACHE: dict[str, tuple] = {}


def setup(name: str) -> tuple:
    if name not in _CACHE:
        make, x = MODELS[name]
        model = make()
        spec = derive_spec(model, (x[:2],))
        (stream,) = residual_streams(model, (x[:2],), spec).values()
        _CACHE[name] = model, spec, stream, x
    return _CACHE[name]


def _out(model: nn.Module, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return run(model, state, (x,)).double()


def transformed(
    name: str, seed: int, rotation: bool = True, dtype: torch.dtype = torch.float32,
    permuted: bool = False, orthogonal: bool = False,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """The model's weights (in ``dtype``) folded, (``permuted`` at random,) rotated, and
    mapped by random V·O and Q·K maps (``orthogonal``: their orthogonal parts); every
    tensor keeps ``dtype``."""
    model, spec, stream, x = setup(name)
    state = fold({k: v.to(dtype) for k, v in model.state_dict().items()}, stream)
    if permuted:
        state = apply_permutation(state, spec, random_permutation(spec, seed=seed + 20))
    if rotation:
        state = rotate(state, stream, random_rotation(stream, seed))
    for i, group in enumerate(head_maps(spec, state)):
        gen = torch.Generator().manual_seed(seed + i)
        noise = torch.randn(group.heads, group.size, group.size, generator=gen)
        maps = torch.eye(group.size) + 0.3 * noise / group.size**0.5
        maps = _polar(maps) if orthogonal else maps
        state = apply_head_maps(state, group, maps, head_positions(spec, group))
    for i, group in enumerate(qk_groups(spec, state)):
        cls = _qk_class(name, group.head_dim)
        maps = random_map(cls, group.head_dim, group.kv_heads, seed=seed + 10 + i)
        if orthogonal:  # a unit complex number per rotary pair, orthogonal elsewhere
            maps = torch.stack([_orthogonal_part(m, cls) for m in maps])
        state = apply_qk_maps(state, group, maps)
    return state


def _polar(maps: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(maps.double())
    return u @ vh


def _qk_class(name: str, head_dim: int) -> QKClass:
    """The class each family admits (align derives it from the model)."""
    rotary = head_dim if name == "vit" else head_dim // 2
    return dict(candidates(head_dim, rotary))["general" if name == "vit" else "halves"]


def test_the_vit_stream_holds_the_class_token_positions_and_patch_channels() -> None:
    _, spec, stream, _ = setup("vit")
    assert stream.cls == ORTHOGONAL_ONES
    rotated = dict(stream.rotated)
    assert rotated["vit.embeddings.cls_token"] == 2
    assert rotated["vit.embeddings.position_embeddings"] == 2
    assert rotated["vit.embeddings.patch_embeddings.projection.weight"] == 0
    assert rotated["vit.embeddings.patch_embeddings.projection.bias"] == 0
    final = next(n for n in stream.norms if n.weight == "vit.layernorm.weight")
    assert final.readers == (("classifier.weight", 1),)  # through the class token's row
    assert len(stream.norms) == 5  # two per layer, and the final one


def test_neox_fused_rows_split_into_each_heads_queries_and_keys() -> None:
    model, spec, _, _ = setup("neox")
    groups = qk_groups(spec, model.state_dict())
    assert len(groups) == 2 and all(g.head_dim == 8 and g.kv_heads == 4 for g in groups)
    q, k = groups[0].rows(True), groups[0].rows(False)
    head = torch.arange(4)[:, None, None] * 24  # per head: 8 queries, 8 keys, 8 values
    assert torch.equal(q, head + torch.arange(8)) and torch.equal(k, head + 8 + torch.arange(8))
    values = head_maps(spec, model.state_dict())
    assert len(values) == 2
    pos = head_positions(spec, values[0])["gpt_neox.layers.0.attention.query_key_value.weight"]
    assert torch.equal(pos[:, :, 0], torch.arange(4)[:, None] * 24 + 16 + torch.arange(8))


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 1000), name=st.sampled_from(list(MODELS)))
def test_random_maps_of_every_class_keep_the_outputs(seed: int, name: str) -> None:
    model, _, _, x = setup(name)
    state = model.state_dict()
    moved = transformed(name, seed)
    assert max(float((moved[k] - state[k]).abs().max()) for k in state) > 0.05
    y, z = _out(model, state, x), _out(model, moved, x)
    assert float((y - z).abs().max()) <= 1e-4 * float(y.abs().max())


@pytest.mark.parametrize("name", ["vit", "neox"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_keep_their_outputs_to_tolerance(
    name: str, dtype: torch.dtype
) -> None:
    model, _, _, x = setup(name)
    state = {k: v.to(dtype) for k, v in model.state_dict().items()}
    moved = transformed(name, 5, dtype=dtype)
    assert all(moved[k].dtype == dtype for k in state)
    wide = {k: v.float() for k, v in state.items()}
    y, z = _out(model, wide, x), _out(model, {k: v.float() for k, v in moved.items()}, x)
    tol = {torch.bfloat16: 5e-2, torch.float16: 1e-2}[dtype]
    assert float((y - z).abs().max()) <= tol * float(y.abs().max())


def test_a_general_qk_map_across_neox_rotary_dims_changes_its_outputs() -> None:
    model, spec, _, x = setup("neox")
    state = model.state_dict()
    group = qk_groups(spec, state)[0]
    general = dict(candidates(8, 4))["general"]
    moved = apply_qk_maps(state, group, random_map(general, 8, 4, seed=3))
    y, z = _out(model, state, x), _out(model, moved, x)
    assert float((y - z).abs().max()) > 1e-3 * float(y.abs().max())


@pytest.mark.parametrize("name", list(MODELS))
def test_a_rotated_copy_is_recovered_under_the_full_symmetry(name: str) -> None:
    model, spec, stream, x = setup(name)
    a = model.state_dict()
    b = rotate(fold(a, stream), stream, random_rotation(stream, 7))
    full = align_full(model, a, b, spec=spec, probe=(x,), method="weight")
    assert full.equivalence.passed
    for k in a:
        torch.testing.assert_close(full.aligned[k], full.reference[k], rtol=1e-4, atol=5e-5)
    classes = {g.group: g for g in full.groups}
    assert classes[stream.group].cls == ORTHOGONAL_ONES
    qk = [g for g in full.groups if g.group.endswith(".qk")]
    assert [g.cls for g in qk] == [GENERAL if name == "vit" else ROTARY] * 2
    assert all(1 <= g.condition <= 1 + 1e-6 for g in qk)  # the identity, found
    if name != "vit":  # the general class was tried and refused, and the record says so
        assert all("general map across rotary dims changed B's outputs" in g.reason for g in qk)
    assert len([g for g in full.groups if g.cls == "invertible-per-head"]) == 2


@pytest.mark.slow  # about 3 s each on a quiet machine
@pytest.mark.parametrize("orthogonal", [True, False])
def test_a_permuted_rotated_and_head_mapped_neox_copy_is_recovered(orthogonal: bool) -> None:
    """Partial rotary and the fused, interleaved ``query_key_value``: every group permuted,
    the stream rotated, the heads mapped; each head-map kind gives A's folded weights
    (also measured with the sequential residual: the same, 3e-7 off at most)."""
    name = "neox"
    model, spec, stream, x = setup(name)
    a = model.state_dict()
    b = transformed(name, 4, permuted=True, orthogonal=orthogonal)
    reference = fold(a, stream)
    assert max(float((b[k] - reference[k]).abs().max()) for k in a) > 0.3
    full = align_full(model, a, b, spec=spec, probe=(x,),
                      head_maps="orthogonal" if orthogonal else "least-squares")  # fmt: skip
    assert full.equivalence.passed
    for k in a:
        torch.testing.assert_close(full.aligned[k], reference[k], rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("name", ["vit", "neox"])
def test_per_head_maps_of_a_copy_are_recovered_by_least_squares(name: str) -> None:
    from modeconnect.symmetry.heads import solve_head_maps
    from modeconnect.symmetry.qk import solve_qk_maps

    model, spec, stream, x = setup(name)
    a = fold(model.state_dict(), stream)
    b = transformed(name, 11, rotation=False)
    for group in head_maps(spec, b):
        positions = head_positions(spec, group)
        maps, conditions = solve_head_maps(a, b, group, positions)
        assert all(1 <= c <= 100 for c in conditions)
        b = apply_head_maps(b, group, maps, positions)
    for group in qk_groups(spec, b):
        maps, _ = solve_qk_maps(a, b, group, _qk_class(name, group.head_dim))
        b = apply_qk_maps(b, group, maps)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=5e-5)


# --------------------------------------------------------------------------- directories


def _loaded(path: Path, name: str) -> nn.Module:
    from transformers import AutoModelForCausalLM, ViTForImageClassification

    cls = ViTForImageClassification if name == "vit" else AutoModelForCausalLM
    return cls.from_pretrained(path).eval()


def _outputs(path: Path, name: str) -> torch.Tensor:
    with torch.no_grad():
        return _loaded(path, name)(PIXELS if name == "vit" else IDS).logits


def _stored(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return sorted(f.keys())


@pytest.mark.slow  # about 5 s each on a quiet machine
@pytest.mark.parametrize(("name", "symmetry"),
                         [("vit", "full"), ("vit", "orthogonal"), ("neox", "full"),
                          ("neox", "orthogonal")])  # fmt: skip
def test_align_writes_a_directory_that_loads_and_computes_b(
    tmp_path: Path, name: str, symmetry: str
) -> None:
    make = MODELS[name][0]
    a, b = hf.save(make(0), tmp_path / "a"), hf.save(make(1), tmp_path / "b")
    data = tmp_path / "data.pt"
    if name == "vit":
        torch.save({"x": PIXELS, "y": torch.arange(4)}, data)
    else:
        torch.save(IDS, data)
    out, report = tmp_path / "c", tmp_path / "r.json"
    result = CliRunner().invoke(
        main, ["align", str(a), str(b), "--symmetry", symmetry, "--data", str(data),
               "--steps", "3", "--out", str(out), "--json", str(report)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "aligned B == B" in result.stdout
    assert _stored(out) == _stored(b)  # ViT keeps its stored (legacy) names
    torch.testing.assert_close(_outputs(out, name), _outputs(b, name), rtol=1e-4, atol=1e-4)
    groups = json.loads(report.read_text())["symmetry"]["groups"]
    assert groups[0]["class"] == ORTHOGONAL_ONES
    qk = {GENERAL if name == "vit" else ROTARY}
    want = {"invertible-per-head", *qk} if symmetry == "full" else set()
    assert {g["class"] for g in groups[1:]} - {"permutation"} == want


@pytest.mark.slow
def test_spec_shows_the_vit_stream_class(tmp_path: Path) -> None:
    path = hf.save(vit(0), tmp_path / "v")
    result = CliRunner().invoke(main, ["spec", str(path), "--input-shape", "2,1,8,8"])
    assert result.exit_code == 0, result.output
    assert "class orthogonal-ones" in result.stdout
