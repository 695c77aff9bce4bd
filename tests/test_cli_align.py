"""`modeconnect align` and `modeconnect spec` end to end, and every user-error path.

User errors must print one line (no traceback), exit with code 2, and leave no output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from modeconnect.io.checkpoints import load_checkpoint
from modeconnect_cli.main import main

MLP_REF = "modeconnect.models:mlp"
SMALL = {"in_features": 6, "hidden": [10, 12], "out_features": 3}


def _run(*args: str):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


def _small_pair(tmp_path: Path, seed_a: int = 0, seed_b: int = 1):
    from modeconnect.models import mlp

    paths = []
    for name, seed in (("a", seed_a), ("b", seed_b)):
        torch.manual_seed(seed)
        sd = mlp(**SMALL).state_dict()
        p = tmp_path / f"{name}.pt"
        torch.save({"state_dict": sd, "model": MLP_REF, "model_kwargs": SMALL}, p)
        paths.append(p)
    x = torch.randn(40, 6)
    y = torch.randint(0, 3, (40,))
    data = tmp_path / "data.pt"
    torch.save({"x": x, "y": y}, data)
    return paths[0], paths[1], data


def _assert_user_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text
    for f in fragments:
        assert f in text, (f, text)


def test_align_writes_outputs_and_json(tmp_path):
    a, b, data = _small_pair(tmp_path)
    out, merged, js = tmp_path / "out.safetensors", tmp_path / "merged.pt", tmp_path / "r.json"
    before = {p: p.read_bytes() for p in (a, b, data)}
    result = _run("align", str(a), str(b), "--data", str(data), "--out", str(out),
                  "--merged", str(merged), "--json", str(js), "--steps", "5")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "naive" in result.output and "aligned" in result.output
    assert all(p.read_bytes() == before[p] for p in before), "inputs must never change"
    report = json.loads(js.read_text())
    for key in ("naive", "aligned"):
        assert set(report[key]["barrier"]) >= {"loss", "error"}
        assert [p["alpha"] for p in report[key]["curve"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
        assert set(report[key]["curve"][0]) == {"alpha", "loss", "accuracy"}
    assert report["alignment"]["method"] == "weight"
    assert {"objective", "iterations", "seconds"} <= set(report["alignment"])
    assert report["equivalence"]["max_abs_diff"] < 1e-4
    # outputs load back without --model and keep the architecture reference
    back = load_checkpoint(out)
    assert back.model_ref == MLP_REF and dict(back.model_kwargs) == SMALL
    m = load_checkpoint(merged)
    a_sd, b_sd = load_checkpoint(a).state_dict, back.state_dict
    for k in a_sd:
        torch.testing.assert_close(m.state_dict[k], torch.lerp(a_sd[k], b_sd[k], 0.5))


def test_align_recovers_permuted_copy_with_zero_barrier(tmp_path):
    from modeconnect.models import mlp
    from modeconnect.spec import apply_permutation, derive_spec, random_permutation

    a, _, data = _small_pair(tmp_path)
    sd = load_checkpoint(a).state_dict
    spec = derive_spec(mlp(**SMALL), (torch.randn(2, 6),))
    permuted = apply_permutation(sd, spec, random_permutation(spec, 5))
    b = tmp_path / "perm.safetensors"
    save_file(permuted, b, metadata={"modeconnect.model": MLP_REF,
                                     "modeconnect.model_kwargs": json.dumps(SMALL)})  # fmt: skip
    out, js = tmp_path / "o.pt", tmp_path / "r.json"
    result = _run(
        "align", str(a), str(b), "--data", str(data), "--out", str(out), "--json", str(js)
    )
    assert result.exit_code == 0, result.output
    aligned = load_checkpoint(out).state_dict
    for k in sd:
        assert torch.equal(aligned[k], sd[k]), k
    report = json.loads(js.read_text())
    assert report["aligned"]["barrier"]["loss"] == 0.0
    assert report["aligned"]["barrier"]["error"] == 0.0


def test_align_is_deterministic(tmp_path):
    a, b, _ = _small_pair(tmp_path)
    outs = []
    for i in range(2):
        out = tmp_path / f"o{i}.pt"
        assert _run("align", str(a), str(b), "--out", str(out), "--seed", "4").exit_code == 0
        outs.append(load_checkpoint(out).state_dict)
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])


def test_existing_output_needs_force(tmp_path):
    a, b, _ = _small_pair(tmp_path)
    out = tmp_path / "o.pt"
    out.write_bytes(b"keep")
    _assert_user_error(_run("align", str(a), str(b), "--out", str(out)), "exists", "--force")
    assert out.read_bytes() == b"keep"
    assert _run("align", str(a), str(b), "--out", str(out), "--force").exit_code == 0
    assert load_checkpoint(out).model_ref == MLP_REF


def test_output_may_not_overwrite_input(tmp_path):
    a, b, _ = _small_pair(tmp_path)
    _assert_user_error(_run("align", str(a), str(b), "--out", str(b), "--force"), "input")


@pytest.mark.parametrize(
    "case",
    ["missing", "extension", "truncated", "garbage", "pickled", "keys", "shape",
     "architecture", "nonfinite", "bad_model", "not_callable", "no_model", "bad_data"],
)  # fmt: skip
def test_user_errors(tmp_path, case):
    a, b, data = _small_pair(tmp_path)
    args = ["align", str(a), str(b)]
    expect: tuple[str, ...] = ()
    sd = load_checkpoint(b).state_dict
    if case == "missing":
        args[2] = str(tmp_path / "nope.pt")
        expect = ("nope.pt", "not found")
    elif case == "extension":
        p = tmp_path / "b.ckpt"
        p.write_bytes(b.read_bytes())
        args[2], expect = str(p), ("b.ckpt", ".safetensors")
    elif case == "truncated":
        p = tmp_path / "t.pt"
        p.write_bytes(b.read_bytes()[: b.stat().st_size // 2])
        args[2], expect = str(p), ("t.pt",)
    elif case == "garbage":
        p = tmp_path / "g.safetensors"
        p.write_bytes(os.urandom(300))
        args[2], expect = str(p), ("g.safetensors",)
    elif case == "pickled":
        p = tmp_path / "pickled.pt"
        torch.save({"state_dict": sd, "optimizer": object.__new__(_Opaque)}, p)
        args[2], expect = str(p), ("pickled.pt", "pickled")
    elif case == "keys":
        bad = {**sd, "extra.weight": torch.zeros(2)}
        del bad["1.bias"]
        p = tmp_path / "k.pt"
        torch.save({"state_dict": bad, "model": MLP_REF, "model_kwargs": SMALL}, p)
        args[2], expect = str(p), ("1.bias", "extra.weight")
    elif case == "shape":
        args += ["--model", MLP_REF, "--model-kwargs", json.dumps({**SMALL, "hidden": [10, 13]})]
        expect = ("3.weight",)
    elif case == "architecture":
        from modeconnect.models import mlp

        p = tmp_path / "other.pt"
        torch.save(mlp(6, [10, 12, 4], 3).state_dict(), p)
        args[2], expect = str(p), ("other.pt",)
    elif case == "nonfinite":
        bad = dict(sd)
        bad["3.weight"] = sd["3.weight"].clone()
        bad["3.weight"][0, 0] = float("nan")
        p = tmp_path / "nan.pt"
        torch.save({"state_dict": bad, "model": MLP_REF, "model_kwargs": SMALL}, p)
        args[2], expect = str(p), ("nan.pt", "3.weight", "non-finite")
    elif case == "bad_model":
        args += ["--model", "no_such_module_xyz:net"]
        expect = ("no_such_module_xyz",)
    elif case == "not_callable":
        args += ["--model", "modeconnect.models:__doc__"]
        expect = ("not callable",)
    elif case == "no_model":
        pa, pb = tmp_path / "pa.pt", tmp_path / "pb.pt"
        torch.save(load_checkpoint(a).state_dict, pa)
        torch.save(sd, pb)
        args[1:3], expect = [str(pa), str(pb)], ("--model",)
    elif case == "bad_data":
        p = tmp_path / "d.pt"
        torch.save({"x": torch.zeros(3, 6)}, p)
        args += ["--data", str(p)]
        expect = ("d.pt", "y")
    out = tmp_path / "never.pt"
    result = _run(*args, "--out", str(out))
    _assert_user_error(result, *expect)
    assert not out.exists()
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]


class _Opaque:
    """An arbitrary class: unpickling it would need code, so weights_only refuses it."""


def test_guard_failure_writes_nothing(tmp_path, monkeypatch):
    from dataclasses import replace

    import modeconnect.commands.align as command
    from modeconnect.spec import Fixed, Member, PermutationSpec

    a, b, _ = _small_pair(tmp_path)
    real = command.cached_spec

    def broken(model, inputs, permute_output=False) -> PermutationSpec:
        # A consistent-looking but wrong spec: the first hidden group permutes the rows
        # of layer 1 but not the columns of layer 3 that read them.
        spec = real(model, inputs, permute_output=permute_output)
        layouts = dict(spec.layouts)
        rows = layouts["3.weight"][0]
        layouts["3.weight"] = (rows, Fixed(layouts["3.weight"][1].size))
        groups = {
            name: replace(g, members=tuple(m for m in g.members if m != Member("3.weight", 1)))
            for name, g in spec.groups.items()
        }
        return PermutationSpec(groups, layouts, spec.fixed, spec.aliases)

    monkeypatch.setattr(command, "cached_spec", broken)
    out = tmp_path / "o.pt"
    result = _run("align", str(a), str(b), "--out", str(out))
    _assert_user_error(result, "does not compute the same function")
    assert not out.exists()


def test_spec_command_prints_groups_and_json(tmp_path):
    a, _, _ = _small_pair(tmp_path)
    js = tmp_path / "spec.json"
    result = _run("spec", str(a), "--json", str(js))
    assert result.exit_code == 0, result.output
    assert "2 permutation groups" in result.output
    assert "model input" in result.output and "model output" in result.output
    assert result.output.splitlines()[0] == (
        "coverage   22 units in 2 groups; 1/3 weight matrices with a fixed output axis "
        "(5.weight: model output); fixed axes: model output 2, model input 1"
    )
    groups = json.loads(js.read_text())["groups"]
    assert sorted(g["size"] for g in groups) == [10, 12]
    assert ["1.weight", 0] in groups[0]["members"]


def test_spec_command_with_model_only():
    result = _run("spec", "--model", MLP_REF, "--model-kwargs", json.dumps(SMALL))
    assert result.exit_code == 0, result.output
    assert "2 permutation groups" in result.output


def test_bad_model_kwargs_json():
    result = CliRunner().invoke(main, ["spec", "--model", MLP_REF, "--model-kwargs", "{nope"])
    assert result.exit_code == 2
    assert "not valid JSON" in result.output


@pytest.mark.slow
def test_align_as_subprocess(tmp_path, checkpoints):
    js = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "modeconnect_cli.main", "align",
           str(checkpoints / "mlp_a.pt"), str(checkpoints / "mlp_b.safetensors"),
           "--data", str(checkpoints / "digits_test.pt"), "--steps", "5",
           "--json", str(js)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(js.read_text())
    assert report["naive"]["barrier"]["loss"] > 0.5
    assert report["aligned"]["barrier"]["loss"] < 0.05


def test_user_error_as_subprocess(tmp_path):
    cmd = [sys.executable, "-m", "modeconnect_cli.main", "align", str(tmp_path / "x.pt"),
           str(tmp_path / "y.pt")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "x.pt" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "extra",
    [
        ["--method", "activation", "--statistic", "moment", "--max-batches", "1"],
        ["--method", "ot", "--ot-solver", "emd"],
        ["--method", "ot", "--ot-solver", "sinkhorn", "--reg", "0.05", "--cost", "activations"],
    ],
)
def test_align_other_methods_record_their_parameters(tmp_path, extra):
    a, b, data = _small_pair(tmp_path)
    train = tmp_path / "train.pt"
    torch.save({"x": torch.randn(64, 6), "y": torch.randint(0, 3, (64,))}, train)
    js, merged = tmp_path / "r.json", tmp_path / "m.pt"
    result = _run("align", str(a), str(b), "--data", str(data), "--train", str(train),
                  "--merged", str(merged), "--json", str(js), "--steps", "3", *extra)  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(js.read_text())
    assert report["alignment"]["method"] == extra[1]
    params = report["alignment"]["params"]
    if "--reg" in extra:
        assert params["reg"] == 0.05 and params["cost"] == "activations"
    if "--statistic" in extra:
        assert params["statistic"] == "moment" and params["max_batches"] == 1
    assert report["equivalence"]["passed"]
    assert load_checkpoint(merged).model_ref == MLP_REF


def test_unknown_method_is_a_usage_error_listing_the_registry(tmp_path):
    a, b, _ = _small_pair(tmp_path)
    result = _run("align", str(a), str(b), "--method", "magic")
    assert result.exit_code == 2 and "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]  # click's usage lines first, the error last
    assert (
        last == "Error: Invalid value for '--method': 'magic' is not one of 'weight', "
        "'activation', 'ot', 'learned'."
    )


def test_align_bn_reset_writes_recomputed_statistics(tmp_path):
    from modeconnect.bn import reset_batchnorm
    from modeconnect.models import conv_net

    kwargs = {"in_channels": 1, "channels": [4, 6], "num_classes": 3, "image_size": 8}
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        p = tmp_path / f"c{seed}.pt"
        torch.save(
            {"state_dict": conv_net(**kwargs).state_dict(), "model": "modeconnect.models:conv_net",
             "model_kwargs": kwargs}, p,
        )  # fmt: skip
        paths.append(p)
    train = tmp_path / "train.pt"
    torch.save({"x": torch.randn(48, 64), "y": torch.randint(0, 3, (48,))}, train)
    merged = tmp_path / "m.pt"
    args = ["align", str(paths[0]), str(paths[1]), "--merged", str(merged)]
    _assert_user_error(_run(*args, "--bn", "reset"), "--train")
    assert not merged.exists()
    result = _run(*args, "--bn", "reset", "--train", str(train))
    assert result.exit_code == 0, result.output
    out = load_checkpoint(merged)
    assert out.metadata["modeconnect.bn"] == "reset"
    data = torch.load(train)
    expected = reset_batchnorm(conv_net(**kwargs), out.state_dict, [(data["x"], data["y"])])
    for key in out.state_dict:
        if "running" in key:
            torch.testing.assert_close(out.state_dict[key], expected[key])
