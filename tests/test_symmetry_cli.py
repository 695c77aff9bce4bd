"""``align --symmetry full`` and ``--method learned`` on Hugging Face directories.

Two models from different seeds; aligned B must load with ``from_pretrained`` as B's
architecture and config, compute B's function, and have its norms folded (weight 1);
the merge interpolates A folded the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import hf_models as hf
import pytest
import torch
from click.testing import CliRunner
from test_symmetry_residual import gpt2, qwen2

from modeconnect_cli.main import main

IDS = torch.randint(0, hf.VOCAB, (4, 16), generator=torch.Generator().manual_seed(0))
FAMILIES = {"llama": hf.llama, "qwen2": qwen2, "gpt2": gpt2}


def _pair(root: Path, family: str) -> tuple[Path, Path, Path]:
    make = FAMILIES[family]
    torch.save(IDS, root / "ids.pt")
    return hf.save(make(0), root / "a"), hf.save(make(1), root / "b"), root / "ids.pt"


def _loaded(path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    model.config.use_cache = False
    return model


def _logits(path: Path) -> torch.Tensor:
    with torch.no_grad():
        return _loaded(path)(IDS).logits


def _norms(model: torch.nn.Module) -> list[torch.Tensor]:
    names = ("layernorm.weight", "norm.weight", "ln_1.weight", "ln_2.weight", "ln_f.weight")
    return [p for k, p in model.named_parameters() if k.endswith(names)]


@pytest.mark.slow  # about 4 s each on a quiet machine
@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_full_symmetry_round_trips_through_from_pretrained(tmp_path: Path, family: str) -> None:
    a, b, ids = _pair(tmp_path, family)
    out, merged, report = tmp_path / "c", tmp_path / "m", tmp_path / "r.json"
    result = CliRunner().invoke(
        main, ["align", str(a), str(b), "--symmetry", "full", "--data", str(ids), "--steps", "3",
               "--out", str(out), "--merged", str(merged), "--json", str(report)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "aligned B == B" in result.stdout
    aligned = _loaded(out)
    assert (
        json.loads((out / "config.json").read_text())["architectures"]
        == json.loads((b / "config.json").read_text())["architectures"]
    )
    torch.testing.assert_close(_logits(out), _logits(b), rtol=1e-4, atol=1e-4)
    assert all(bool((w == 1).all()) for w in _norms(aligned))  # folded
    assert all(bool((w == 1).all()) for w in _norms(_loaded(merged)))  # merged with A folded
    groups = json.loads(report.read_text())["symmetry"]["groups"]
    stream = groups[0]
    assert stream["class"] == ("orthogonal-ones" if family == "gpt2" else "orthogonal")
    assert abs(stream["condition_number"] - 1) < 1e-9 and stream["seconds"] >= 0
    heads = [g for g in groups if g["class"] == "invertible-per-head"]
    # GPT-2's fused c_attn (queries, keys, values concatenated) is mapped per head too
    assert len(heads) == 2  # one V·O group per layer
    assert all(1 <= g["condition_number"] <= 100 for g in heads)
    # Q·K: a complex scalar per rotary pair under RoPE; any map per head without (GPT-2)
    qk_class = "invertible-per-head-qk" if family == "gpt2" else "complex-per-rotary-pair"
    qk = [g for g in groups if g["class"] == qk_class]
    assert len(qk) == 2
    assert all(1 <= g["condition_number"] <= 100 for g in qk)
    rest = {g["class"] for g in groups[1:]} - {"invertible-per-head", qk_class}
    assert rest == {"permutation"}


@pytest.mark.slow
def test_learned_method_on_directories(tmp_path: Path) -> None:
    a, b, ids = _pair(tmp_path, "llama")
    out, report = tmp_path / "c", tmp_path / "r.json"
    result = CliRunner().invoke(
        main, ["align", str(a), str(b), "--method", "learned", "--learn-epochs", "2",
               "--learn-lr", "0.01", "--data", str(ids), "--train", str(ids), "--steps", "3",
               "--out", str(out), "--json", str(report)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    torch.testing.assert_close(_logits(out), _logits(b), rtol=1e-4, atol=1e-4)
    data = json.loads(report.read_text())
    assert data["alignment"]["method"] == "learned"
    assert "learned" in data["symmetry"]["groups"][0]["solver"]
    assert data["alignment"]["params"]["epochs"] == 2


def test_an_unknown_symmetry_is_a_one_line_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["align", "a", "b", "--symmetry", "affine"])
    assert result.exit_code == 2 and "affine" in result.output


def test_align_help_lists_the_symmetries_and_the_learned_flags() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "modeconnect_cli.main", "align", "--help"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    text = " ".join(out.split())
    assert "--symmetry [permutation|orthogonal|full]" in text
    assert "--learn-epochs" in text and "--learn-lr" in text and "[learned]" in text


@pytest.mark.slow
def test_spec_shows_each_residual_streams_class(tmp_path: Path) -> None:
    path = hf.save(gpt2(0), tmp_path / "g")
    report = tmp_path / "spec.json"
    result = CliRunner().invoke(main, ["spec", str(path), "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert "class orthogonal-ones: LayerNorm subtracts the mean" in result.stdout
    classes = json.loads(report.read_text())["classes"]
    # GPT-2's fused c_attn: a V·O group and a Q·K group (no rotary: any map) per layer
    assert sorted(c["class"] for c in classes.values()) == sorted(
        ["orthogonal-ones"] + ["invertible-per-head"] * 2 + ["invertible-per-head-qk"] * 2
    )
    assert "no rotary embeddings: any invertible map per key/value head" in result.stdout


@pytest.mark.slow
def test_spec_shows_rotary_query_key_classes_and_why_they_are_no_larger(tmp_path: Path) -> None:
    path = hf.save(hf.llama(0), tmp_path / "l")
    result = CliRunner().invoke(main, ["spec", str(path)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if ".qk  class" in line]
    assert len(lines) == 2 and all("complex-per-rotary-pair" in line for line in lines)
    assert all("a general map across rotary dims changed B's outputs (unsound)" in line
               for line in lines)  # fmt: skip
    assert result.stdout.count("class invertible-per-head: attention mixes positions") == 2


def _stored_pair(root: Path, dtype: torch.dtype) -> tuple[Path, Path]:
    return (hf.save(hf.llama(0), root / "a", dtype=dtype),
            hf.save(hf.llama(1), root / "b", dtype=dtype))  # fmt: skip


def _logits_in_float32(path: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model.config.use_cache = False
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.slow  # about 3 s
def test_b_stored_in_bfloat16_is_checked_as_written(tmp_path: Path) -> None:
    """The rotations make values bfloat16 rounds: the guard checks aligned B as written
    too, and the written directory computes B's function to bfloat16's tolerance."""
    a, b = _stored_pair(tmp_path, torch.bfloat16)
    out, report = tmp_path / "c", tmp_path / "r.json"
    result = CliRunner().invoke(main, ["align", str(a), str(b), "--symmetry", "full",
                                       "--out", str(out), "--json", str(report)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "guard      written: aligned B == B" in result.stdout
    written = json.loads(report.read_text())["equivalence_written"]
    assert written["passed"] and written["precision"] == "bfloat16 (written)"
    assert 0 < written["max_rel_diff"] <= written["tolerance"] == 8 * 2.0**-7
    mine, theirs = _logits_in_float32(out), _logits_in_float32(b)
    assert 0 < float((mine - theirs).abs().max() / theirs.abs().max()) <= 8 * 2.0**-7
    # permutations alone make no new values: nothing is rounded, nothing more to check
    result = CliRunner().invoke(main, ["align", str(a), str(b), "--out", str(tmp_path / "p"),
                                       "--json", str(report), "--force"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "equivalence_written" not in json.loads(report.read_text())


@pytest.mark.slow  # about 3 s
def test_b_stored_in_float8_is_refused_under_full_symmetry_and_permuted_exactly(
    tmp_path: Path,
) -> None:
    a, b = _stored_pair(tmp_path, torch.float8_e4m3fn)
    out = tmp_path / "c"
    result = CliRunner().invoke(main, ["align", str(a), str(b), "--symmetry", "full",
                                       "--out", str(out)])  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "B is stored in float8_e4m3fn" in result.stderr
    assert "nothing was written" in result.stderr
    assert not out.exists()
    # curve --aligned: refused before the curve is trained
    ids = tmp_path / "ids.pt"
    torch.save(IDS, ids)
    result = CliRunner().invoke(main, ["curve", str(a), str(b), "--data", str(ids), "--train",
                                       str(ids), "--align", "weight", "--symmetry", "full",
                                       "--epochs", "50", "--aligned", str(out)])  # fmt: skip
    assert result.exit_code == 2 and "B is stored in float8_e4m3fn" in result.stderr
    assert not out.exists()
    result = CliRunner().invoke(main, ["align", str(a), str(b), "--out", str(out)])
    assert result.exit_code == 0, result.output
    torch.testing.assert_close(_logits_in_float32(out), _logits_in_float32(b),
                               rtol=1e-4, atol=1e-4)  # fmt: skip
