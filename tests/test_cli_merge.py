"""``modeconnect merge``: outputs, metadata, reports, and nothing written on any error."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner
from torch.testing import assert_close

from modeconnect.io.checkpoints import load_checkpoint, save_checkpoint
from modeconnect.models import conv_net, mlp
from modeconnect.spec import apply_permutation, derive_spec, random_permutation
from modeconnect_cli.main import main

CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
DATA = str(CHECKPOINTS / "digits_test.pt")
MODEL = "modeconnect.models:mlp"
KWARGS = {"in_features": 64, "hidden": [16, 12], "out_features": 10}


@pytest.fixture(scope="module")
def cli() -> click.Group:
    return main


def _sd(seed: int, **kwargs) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in mlp(**{**KWARGS, **kwargs}).state_dict().items()}


@pytest.fixture(scope="module")
def base() -> dict[str, torch.Tensor]:
    return _sd(0)


@pytest.fixture(scope="module")
def copies(tmp_path_factory, base) -> list[Path]:
    """Three files: the base model and two permuted copies of it."""
    folder = tmp_path_factory.mktemp("copies")
    spec = derive_spec(mlp(**KWARGS), (torch.randn(2, 64),))
    sds = [base] + [apply_permutation(base, spec, random_permutation(spec, s)) for s in (1, 2)]
    return [_save(folder / f"m{j}.pt", sd) for j, sd in enumerate(sds)]


def _save(path: Path, sd, model_ref: str | None = MODEL, kwargs=None) -> Path:
    save_checkpoint(path, sd, model_ref=model_ref, model_kwargs=kwargs or KWARGS)
    return path


def _digest(paths) -> list[str]:
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]


def _run(cli, *args):
    return CliRunner().invoke(cli, ["merge", *map(str, args)])


def test_merge_of_permuted_copies_writes_the_model(cli, copies, base, tmp_path):
    out = tmp_path / "merged.pt"
    before = _digest(copies)
    res = _run(cli, *copies, "--out", out)
    assert res.exit_code == 0, res.output
    ckpt = load_checkpoint(out)
    assert_close(ckpt.state_dict, base)
    assert ckpt.model_ref == MODEL and dict(ckpt.model_kwargs) == KWARGS
    meta = ckpt.metadata
    assert json.loads(meta["modeconnect.sources"]) == [str(p) for p in copies]
    assert json.loads(meta["modeconnect.weights"]) == pytest.approx([1 / 3] * 3)
    assert meta["modeconnect.method"] == "weight"
    assert meta["modeconnect.reference"] == "mergemany"
    assert int(meta["modeconnect.iterations"]) >= 1
    assert "wrote      out:" in res.output
    assert _digest(copies) == before  # inputs untouched


def test_report_with_data_and_json(cli, copies, tmp_path):
    out, js = tmp_path / "merged.safetensors", tmp_path / "report.json"
    res = _run(cli, *copies, "--data", DATA, "--weights", "1,2,1", "--out", out, "--json", js)
    assert res.exit_code == 0, res.output
    assert res.output.count("input") == 3 and "plain avg" in res.output and "merged" in res.output
    report = json.loads(js.read_text())
    metrics = report["metrics"]
    assert len(metrics["inputs"]) == 3
    # Permuted copies compute one function: the merge computes it too.
    assert metrics["merged"]["accuracy"] == pytest.approx(metrics["inputs"][0]["accuracy"])
    assert report["merge"]["weights"] == pytest.approx([0.25, 0.5, 0.25])
    ckpt = load_checkpoint(out)  # loads back without --model
    assert ckpt.model_ref == MODEL
    assert json.loads(ckpt.metadata["modeconnect.weights"]) == pytest.approx([0.25, 0.5, 0.25])


def test_weights_one_zero_zero_give_the_first_model(cli, tmp_path):
    paths = [_save(tmp_path / f"i{j}.pt", _sd(j)) for j in range(3)]
    out = tmp_path / "m.pt"
    assert _run(cli, *paths, "--weights", "1,0,0", "--out", out).exit_code == 0
    first = load_checkpoint(paths[0]).state_dict
    assert all(torch.equal(load_checkpoint(out).state_dict[k], v) for k, v in first.items())


def test_fixed_reference_and_method_none(cli, tmp_path):
    paths = [_save(tmp_path / f"i{j}.pt", _sd(j)) for j in range(2)]
    ref = _save(tmp_path / "ref.pt", _sd(5))
    out = tmp_path / "m.pt"
    res = _run(cli, *paths, "--reference", ref, "--out", out)
    assert res.exit_code == 0, res.output
    assert load_checkpoint(out).metadata["modeconnect.reference"] == str(ref)
    res = _run(cli, *paths, "--reference", paths[1], "--out", out, "--force")
    assert res.exit_code == 0 and "reference model 1" in res.output
    res = _run(cli, *paths, "--method", "none", "--out", out, "--force")
    assert res.exit_code == 0, res.output
    plain = {k: (v + _sd(1)[k]) / 2 for k, v in _sd(0).items()}
    assert_close(load_checkpoint(out).state_dict, plain)


def test_model_option_for_files_without_a_reference(cli, tmp_path):
    paths = [_save(tmp_path / f"i{j}.pt", _sd(j), model_ref=None, kwargs={}) for j in range(2)]
    out = tmp_path / "m.pt"
    res = _run(cli, *paths, "--out", out)
    assert res.exit_code == 2 and "pass --model" in res.output
    res = _run(cli, *paths, "--model", MODEL, "--model-kwargs", json.dumps(KWARGS), "--out", out)
    assert res.exit_code == 0, res.output
    assert load_checkpoint(out).model_ref == MODEL


def _nonfinite(path: Path) -> None:
    sd = _sd(3)
    sd["1.weight"][0, 0] = float("nan")
    _save(path, sd)


def _other_width(path: Path) -> None:
    _save(path, _sd(3, hidden=[16, 8]), kwargs={**KWARGS, "hidden": [16, 8]})


@pytest.mark.parametrize(
    ("make_bad", "extra", "message"),
    [
        (_nonfinite, [], r"tensor '1\.weight' \(16, 64\) has 1 non-finite values"),
        (_other_width, ["--model", MODEL, "--model-kwargs", json.dumps(KWARGS)],
         r"bad\.pt differs from .*m0\.pt in width \(3 tensors, e\.g\. '3\.bias' is \(8,\) in B, "
         r"\(12,\) in A\); .* merge A B --method otfusion\|zip --width N"),
        (None, ["--weights", "1,2"], r"got 2 weights \[1\.0, 2\.0\] for 3 models"),
        (None, ["--weights", "1,x"], "expected comma-separated numbers"),
        (None, ["--method", "nope"],
         "'nope' is not one of 'weight', 'activation', 'ot', 'learned', 'none'"),
        (None, ["--bn", "reset"], "pass data"),
    ],
)  # fmt: skip
def test_errors_write_nothing(cli, copies, tmp_path, make_bad, extra, message):
    inputs = list(copies)
    if make_bad is not None:
        inputs[2] = tmp_path / "bad.pt"
        make_bad(inputs[2])
    before = _digest(inputs)
    out, js = tmp_path / "merged.pt", tmp_path / "r.json"
    res = _run(cli, *inputs, *extra, "--out", out, "--json", js)
    assert res.exit_code == 2, res.output
    assert res.output.count("\n") == 1 or "Usage" in res.output  # one line, or click's usage
    assert re.search(message, res.output), res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in inputs if p.parent == tmp_path
    )
    assert _digest(inputs) == before


def test_existing_output_needs_force(cli, copies, tmp_path):
    out = tmp_path / "m.pt"
    out.write_bytes(b"keep")
    res = _run(cli, *copies, "--out", out)
    assert res.exit_code == 2 and "pass --force" in res.output
    assert out.read_bytes() == b"keep"
    assert _run(cli, *copies, "--out", out, "--force").exit_code == 0
    assert load_checkpoint(out).model_ref == MODEL


def test_output_may_not_overwrite_an_input(cli, copies):
    before = _digest(copies)
    res = _run(cli, *copies, "--out", copies[1], "--force")
    assert res.exit_code == 2 and "would overwrite the input" in res.output
    assert _digest(copies) == before


def test_needs_two_checkpoints(cli, copies, tmp_path):
    res = _run(cli, copies[0], "--out", tmp_path / "m.pt")
    assert res.exit_code == 2 and "at least two checkpoints" in res.output


def test_subprocess(copies, base, tmp_path):
    code = "from modeconnect_cli.main import main\nmain()\n"
    out = tmp_path / "m.safetensors"
    args = [
        sys.executable,
        "-c",
        code,
        "merge",
        *map(str, copies),
        "--data",
        DATA,
        "--out",
        str(out),
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "merged" in proc.stdout
    assert_close(load_checkpoint(out).state_dict, base)


def test_batchnorm_reset(cli, tmp_path):
    pytest.importorskip("modeconnect.bn", reason="modeconnect.bn is not in this tree yet")
    kwargs = {"channels": [4, 6]}
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        sd = {k: v.detach().clone() for k, v in conv_net(**kwargs).state_dict().items()}
        paths.append(_save(tmp_path / f"c{seed}.pt", sd, "modeconnect.models:conv_net", kwargs))
    out = tmp_path / "m.pt"
    res = _run(cli, *paths, "--data", DATA, "--bn", "reset", "--out", out)
    assert res.exit_code == 0, res.output
    merged = load_checkpoint(out)
    assert merged.metadata["modeconnect.bn"] == "reset"
    # Fresh statistics from the data, not the inputs' initial 0 / 1.
    assert not torch.allclose(merged.state_dict["2.running_mean"], torch.zeros(4))
