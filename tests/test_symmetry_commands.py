"""``--symmetry`` on ``merge``, ``barrier``, ``curve`` and ``compare`` (Hugging Face Llamas).

Under a larger symmetry the path starts from A folded (A's function): the merge at
weights (1, 0) computes A's function, written B computes B's, every output loads with
``from_pretrained``; the default (``permutation``) writes what a run without the flag
writes, byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_symmetry_cli import _loaded, _logits, _norms, _pair

from modeconnect_cli.main import main


def _run(*args: str) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return _pair(tmp_path_factory.mktemp("llamas"), "llama")


@pytest.mark.slow  # about 4 s
def test_merge_under_full_symmetry_at_weight_zero_is_folded_a(
    pair: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    a, b, ids = pair
    out, report = tmp_path / "m", tmp_path / "m.json"
    text = _run("merge", a, b, "--symmetry", "full", "--weights", "1,0", "--out", out,
                "--json", report, "--data", ids)  # fmt: skip
    merged = _loaded(out)
    assert all(bool((w == 1).all()) for w in _norms(merged))  # A folded, not A
    torch.testing.assert_close(_logits(out), _logits(a), rtol=1e-4, atol=1e-4)
    data = json.loads(report.read_text())["merge"]
    assert data["reference"] == "model 0" and len(data["equivalence"]) == 2
    assert "symmetry   full (aligned to model 0, which enters folded)" in text
    assert all(e["passed"] for e in data["equivalence"])
    (record,) = data["symmetry"]
    assert record["model"] == 1 and record["symmetry"] == "full"
    assert {g["class"] for g in record["groups"]} >= {"orthogonal", "invertible-per-head"}
    # equal weights: a checkpoint of the same architecture, unlike either input
    _run("merge", a, b, "--symmetry", "full", "--out", tmp_path / "half")
    half = _logits(tmp_path / "half")
    assert not torch.allclose(half, _logits(a), atol=1e-3)


@pytest.mark.slow  # about 3 s
def test_the_default_merge_is_unchanged_byte_for_byte(
    pair: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    a, b, _ = pair
    _run("merge", a, b, "--out", tmp_path / "x")
    _run("merge", a, b, "--symmetry", "permutation", "--out", tmp_path / "y")
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "x" / name).read_bytes() == (tmp_path / "y" / name).read_bytes()


@pytest.mark.slow  # about 6 s
def test_barrier_and_curve_start_from_folded_a(
    pair: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    a, b, ids = pair
    report = tmp_path / "b.json"
    _run("barrier", a, b, "--align", "weight", "--symmetry", "full", "--data", ids,
         "--steps", "3", "--json", report)  # fmt: skip
    data = json.loads(report.read_text())
    assert data["symmetry"]["symmetry"] == "full" and data["equivalence"]["passed"]
    naive = data["naive"]["curve"]
    aligned = data["aligned"]["curve"]
    # both ends keep their function: A folded computes A's loss, aligned B computes B's
    for i in (0, -1):
        assert aligned[i]["loss"] == pytest.approx(naive[i]["loss"], rel=1e-5)
    aligned_b, bend, curve_json = tmp_path / "c", tmp_path / "bend", tmp_path / "c.json"
    _run("curve", a, b, "--align", "weight", "--symmetry", "full", "--data", ids,
         "--train", ids, "--epochs", "1", "--steps", "3", "--aligned", aligned_b,
         "--bend", bend, "--json", curve_json)  # fmt: skip
    torch.testing.assert_close(_logits(aligned_b), _logits(b), rtol=1e-4, atol=1e-4)
    assert all(bool((w == 1).all()) for w in _norms(_loaded(aligned_b)))
    assert _logits(bend).isfinite().all()  # a checkpoint of the same architecture
    assert json.loads(curve_json.read_text())["symmetry"]["symmetry"] == "full"


@pytest.mark.slow  # about 4 s
def test_compare_gives_a_row_per_method_and_symmetry(
    pair: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    plain, both = tmp_path / "p.json", tmp_path / "s.json"
    a, b, ids = pair
    text = _run("compare", a, b, "--methods", "weight", "--data", ids, "--steps", "3",
                "--json", plain)  # fmt: skip
    assert "symmetry" not in text
    table = _run("compare", a, b, "--methods", "weight", "--symmetry", "permutation,full",
                 "--data", ids, "--steps", "3", "--json", both)  # fmt: skip
    assert "symmetry" in table.splitlines()[1]
    (before,) = json.loads(plain.read_text())["rows"]
    perm, full = json.loads(both.read_text())["rows"]
    assert "symmetry" not in before
    assert (perm["symmetry"], full["symmetry"]) == ("permutation", "full")
    assert perm["aligned"] == before["aligned"] and perm["objective"] == before["objective"]
    assert full["naive"] == before["naive"] and full["objective"] != before["objective"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["barrier", "A", "B", "--symmetry", "full", "--align", "none"], "pass --align"),
        (["merge", "A", "B", "--symmetry", "full", "--method", "none"], "pass --method"),
        (["compare", "A", "B", "--symmetry", "permutation,affine"], "affine"),
    ],
)
def test_a_larger_symmetry_without_an_alignment_is_a_one_line_error(
    pair: tuple[Path, Path, Path], tmp_path: Path, args: list[str], words: str
) -> None:
    a, b, ids = pair
    args = [str(a) if x == "A" else str(b) if x == "B" else x for x in args]
    out = ["--out", str(tmp_path / "o")] if args[0] == "merge" else []
    result = CliRunner().invoke(main, [*args, "--data", str(ids), *out])
    assert result.exit_code == 2 and words in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()


def test_merge_of_mlps_under_full_symmetry_is_the_permutation_merge() -> None:
    import modeconnect as mc
    from modeconnect.models import mlp

    torch.manual_seed(0)
    model = mlp(in_features=4, hidden=[8, 8], out_features=3)
    x = torch.randn(16, 4)
    sds = [mlp(in_features=4, hidden=[8, 8], out_features=3).state_dict() for _ in range(3)]
    plain = mc.merge(model, sds, inputs=(x,), reference=1)
    full = mc.merge(model, sds, inputs=(x,), reference=1, symmetry="full")
    for k, v in plain.state_dict.items():
        torch.testing.assert_close(full.state_dict[k], v)
    assert full.reference == "model 1" and len(full.equivalence) == 3
    assert [r["model"] for r in full.symmetry or ()] == [0, 2]
    assert plain.symmetry is None and "symmetry" not in plain.to_dict()
    with pytest.raises(mc.ModeconnectError, match="needs an alignment method"):
        mc.merge(model, sds, method="none", symmetry="full")
