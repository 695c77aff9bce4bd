"""A randomly transformed copy is recovered up to float under ``--symmetry full``.

B is A with its norms folded, every group randomly permuted, the residual stream
randomly rotated (fixing all-ones under GPT-2's LayerNorm), and each attention head's
V·O and Q·K dims mapped by random maps of their classes (orthogonal, or invertible for
the least-squares solver; GPT-2's fused ``c_attn`` included, its Q·K maps general: no
rotary embeddings). Weight-based ``full`` must give A's folded weights back, in
the library and through ``modeconnect align`` on Hugging Face directories.

Multi-head Llamas here; grouped- and multi-query attention in ``test_symmetry_gqa``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import hf_models as hf
import pytest
import torch
from click.testing import CliRunner
from test_symmetry_residual import gpt2

from modeconnect.guard import check_equivalence
from modeconnect.spec import PermutationSpec, apply_permutation, derive_spec, random_permutation
from modeconnect.symmetry import fold, random_rotation, residual_streams, rotate
from modeconnect.symmetry.align import align_full, attention_groups
from modeconnect.symmetry.heads import apply_head_maps
from modeconnect.symmetry.qk import apply_qk_maps, candidates, random_map, rotary_dims

IDS = torch.randint(0, hf.VOCAB, (3, 12), generator=torch.Generator().manual_seed(0))
StateDict = dict[str, torch.Tensor]


def mha_llama(seed: int = 0) -> torch.nn.Module:
    return hf.llama(seed, num_key_value_heads=4)


_SETUP: dict[str, tuple[torch.nn.Module, PermutationSpec]] = {}


def setup(family: str) -> tuple[torch.nn.Module, PermutationSpec]:
    """The family's model and its spec, derived once per session."""
    if family not in _SETUP:
        model = mha_llama() if family == "llama" else gpt2()
        _SETUP[family] = model, derive_spec(model, (IDS[:2],))
    return _SETUP[family]


def _orthogonal(maps: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(maps.double())
    return u @ vh


def transformed(
    model: torch.nn.Module, spec: PermutationSpec, seed: int, orthogonal: bool = True
) -> tuple[StateDict, StateDict]:
    """A folded (the reference) and B: A permuted, rotated and mapped per head at random."""
    a = model.state_dict()
    (stream,) = residual_streams(model, (IDS[:2],), spec).values()
    folded = fold(a, stream, spec.aliases)
    b = apply_permutation(folded, spec, random_permutation(spec, seed=seed))
    b = rotate(b, stream, random_rotation(stream, seed + 1), spec.aliases)
    gen = torch.Generator().manual_seed(seed + 2)
    values, queries, _ = attention_groups(spec, b)  # multi-query layers' maps included
    for g in values:
        noise = torch.randn(g.heads, g.size, g.size, generator=gen, dtype=torch.float64)
        maps = torch.eye(g.size, dtype=torch.float64) + 0.5 * noise / g.size**0.5
        b = apply_head_maps(b, g, _orthogonal(maps) if orthogonal else maps, dict(g.positions))
    rotary = getattr(model.config, "model_type", "") != "gpt2"
    for i, g in enumerate(queries):
        classes = dict(candidates(g.head_dim, rotary_dims(model, g.head_dim)))
        cls = classes["halves" if rotary else "general"]
        maps = random_map(cls, g.head_dim, g.kv_heads, seed=seed + 3 + i)
        if orthogonal and not rotary:
            maps = _orthogonal(maps)
        elif orthogonal:  # a unit complex number per frequency pair
            pairs = torch.tensor(cls.pairs)
            scale = maps[:, pairs[:, 0], pairs[:, 0]].hypot(maps[:, pairs[:, 1], pairs[:, 0]])
            maps[:, pairs[:, 0]] /= scale[..., None]
            maps[:, pairs[:, 1]] /= scale[..., None]
        b = apply_qk_maps(b, g, maps)
    assert check_equivalence(model, a, b, (IDS,)).passed  # B is A's function
    return folded, b


def _off(x: StateDict, y: StateDict) -> float:
    return max(float((x[k].double() - y[k].double()).abs().max()) for k in x)


@pytest.mark.parametrize(
    ("family", "orthogonal", "max_condition"),
    [("llama", True, 1.0), ("llama", False, 100.0), ("gpt2", True, 1.0), ("gpt2", False, 100.0)],
)
def test_a_transformed_copy_is_recovered_up_to_float(
    family: str, orthogonal: bool, max_condition: float
) -> None:
    model, spec = setup(family)
    reference, b = transformed(model, spec, seed=3, orthogonal=orthogonal)
    assert _off(reference, b) > 0.3  # B really moved
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        full = align_full(model, model.state_dict(), b, spec=spec, probe=(IDS,),
                          max_condition=max_condition)  # fmt: skip
    assert full.equivalence.passed
    assert _off(full.reference, reference) == 0.0
    assert _off(full.aligned, reference) < 1e-5
    classes = [g.cls for g in full.groups]
    assert ("orthogonal" if family == "llama" else "orthogonal-ones") in classes
    assert classes.count("invertible-per-head") == 2  # V·O, one group per layer
    qk = "complex-per-rotary-pair" if family == "llama" else "invertible-per-head-qk"
    assert classes.count(qk) == 2


@pytest.mark.slow  # about 3 s
def test_orthogonal_head_maps_cannot_undo_invertible_ones() -> None:
    """The default (orthogonal) per-head maps leave an invertible head map's scale: only
    the least-squares maps (``max_condition`` > 1) recover it (the test above)."""
    model, spec = setup("llama")
    reference, b = transformed(model, spec, seed=3, orthogonal=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        full = align_full(model, model.state_dict(), b, spec=spec, probe=(IDS,))
    assert full.equivalence.passed
    assert _off(full.aligned, reference) > 1e-2


def aligned_directory(
    tmp_path: Path, a_dir: Path, b_dir: Path, reference: StateDict, head_maps: str
) -> dict:
    """``align A B --symmetry full --head-maps HEAD_MAPS`` into ``tmp_path / "c"``: its
    tensors must be ``reference``'s to 1e-5; returns the JSON's ``symmetry`` section."""
    from safetensors.torch import load_file

    from modeconnect_cli.main import main

    torch.save(IDS, tmp_path / "ids.pt")
    out = tmp_path / "c"
    result = CliRunner().invoke(
        main, ["align", str(a_dir), str(b_dir), "--symmetry", "full", "--head-maps",
               head_maps, "--data", str(tmp_path / "ids.pt"), "--steps", "3",
               "--out", str(out), "--json", str(tmp_path / "r.json")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    aligned = load_file(out / "model.safetensors")
    assert _off({k: aligned[k] for k in reference if k in aligned}, reference) < 1e-5
    return json.loads((tmp_path / "r.json").read_text())["symmetry"]


@pytest.mark.slow  # about 5 s
def test_align_full_on_directories_recovers_the_transformed_copy(tmp_path: Path) -> None:
    from modeconnect_cli.main import main

    model, spec = setup("llama")
    reference, b = transformed(model, spec, seed=5, orthogonal=False)
    other = mha_llama(1)
    other.load_state_dict(b)
    a_dir, b_dir = hf.save(model, tmp_path / "a"), hf.save(other, tmp_path / "b")
    symmetry = aligned_directory(tmp_path, a_dir, b_dir, reference, "least-squares")
    assert (symmetry["head_maps"], symmetry["max_condition"]) == ("least-squares", 100.0)
    heads = [g for g in symmetry["groups"] if g["class"] == "invertible-per-head"]
    assert len(heads) == 2 and all(g["condition_number"] > 1 for g in heads)
    assert all("least squares" in g["solver"] for g in heads)
    # without --symmetry full the flag is refused in one line, before any output
    refused = CliRunner().invoke(
        main, ["align", str(a_dir), str(b_dir), "--head-maps", "least-squares",
               "--out", str(tmp_path / "d")],
    )  # fmt: skip
    assert refused.exit_code == 2
    assert "--head-maps least-squares: maps attention heads under --symmetry full only" in (
        refused.output
    )
    assert not (tmp_path / "d").exists()


def test_head_maps_are_named_and_need_the_full_symmetry() -> None:
    import modeconnect as mc
    from modeconnect.commands.barrier import symmetry_option

    assert symmetry_option("full", "weight", head_maps="least-squares") == {
        "symmetry": "full", "head_maps": "least-squares"}  # fmt: skip
    assert symmetry_option("full", "weight") == {"symmetry": "full"}  # the default stays out
    with pytest.raises(mc.ModeconnectError, match="--head-maps least-squares: maps attention"):
        symmetry_option("orthogonal", "weight", head_maps="least-squares")
    with pytest.raises(mc.ModeconnectError, match="--head-maps: unknown 'affine'"):
        symmetry_option("full", "weight", head_maps="affine")
    model, spec = setup("llama")
    a = model.state_dict()
    with pytest.raises(mc.ModeconnectError, match="head_maps: unknown 'affine'"):
        mc.align(model, a, a, inputs=(IDS,), spec=spec, symmetry="full", head_maps="affine")
    result = mc.align(model, a, a, inputs=(IDS,), spec=spec, symmetry="full",
                      head_maps="least-squares")  # fmt: skip
    assert result.symmetry is not None
    assert (result.symmetry["head_maps"], result.symmetry["max_condition"]) == (
        "least-squares", 100.0)  # fmt: skip
