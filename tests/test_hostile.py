"""Hostile inputs: files from strangers never run code, never get overwritten, never crash.

Every case builds its files in a fresh folder and runs one command on them. Each must:
exit with code 2, print exactly one line on stderr and no traceback, create no marker
file (the payloads try to), write no output (nor leave a temporary file), and leave
every input byte-identical, and ask no network for anything (tests/hostile_bench.py).
Most cases run in-process through click's ``CliRunner``;
a few run the installed command as a subprocess.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch
from click.testing import CliRunner
from hostile_bench import Bench, assert_refused

from modeconnect.io.checkpoints import load_checkpoint
from modeconnect_cli.main import main

# --------------------------------------------------------------------------- code in references

SHELL = "subprocess:run"


def _shell_kwargs(bench: Bench) -> dict:
    return {"args": f"touch {bench.marker}", "shell": True}


COMMANDS: dict[str, Callable[[Bench, Path, Path], list[object]]] = {
    "spec": lambda b, x, y: ["spec", x],
    "align": lambda b, x, y: ["align", x, y, "--data", b.data, "--out", b.root / "o.pt"],
    "barrier": lambda b, x, y: ["barrier", x, y, "--data", b.data, "--json", b.root / "r.json"],
    "compare": lambda b, x, y: ["compare", x, y, "--data", b.data, "--methods", "weight"],
    "merge": lambda b, x, y: ["merge", x, y, "--out", b.root / "m.pt"],
    "curve": lambda b, x, y: ["curve", x, y, "--train", b.data, "--data", b.data, "--epochs", "1"],
    "plane": lambda b, x, y: ["plane", x, y, y, "--data", b.data, "--resolution", "3"],
    "landscape": lambda b, x, y: ["landscape", x, "--data", b.data, "--resolution", "3"],
    "sharpness": lambda b, x, y: ["sharpness", x, y, "--data", b.data, "--iterations", "2"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_a_shell_command_named_by_a_checkpoint_never_runs(bench: Bench, command, fmt) -> None:
    plant = bench.pt_naming if fmt == "pt" else bench.safetensors_naming
    x = plant(f"evil_a.{fmt}", SHELL, _shell_kwargs(bench))
    y = plant(f"evil_b.{fmt}", SHELL, _shell_kwargs(bench))
    line = assert_refused(bench, bench.cli(*COMMANDS[command](bench, x, y)), "'subprocess:run'")
    assert "refused" in line and "--model subprocess:run" in line and "--trust-model-ref" in line


def test_only_one_file_naming_the_reference_is_enough_to_be_refused(bench: Bench) -> None:
    plain = bench.root / "plain.pt"
    torch.save(bench.state_dict(), plain)  # names no architecture
    x = bench.pt_naming("evil.pt", SHELL, _shell_kwargs(bench))
    assert_refused(bench, bench.cli("align", plain, x, "--data", bench.data), "refused")


def test_rmtree_named_by_a_checkpoint_deletes_nothing(bench: Bench) -> None:
    x = bench.pt_naming("evil.pt", "shutil:rmtree", {"path": str(bench.victim)})
    assert_refused(bench, bench.cli("spec", x), "'shutil:rmtree'")
    assert (bench.victim / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize("absolute", [True, False])
def test_a_python_file_named_by_a_checkpoint_is_never_imported(bench: Bench, absolute) -> None:
    module = bench.evil_module()
    ref = f"{module if absolute else module.name}:build"
    kwargs = {"in_features": 64, "hidden": [512, 512, 512], "out_features": 10}
    x = bench.pt_naming("evil.pt", ref, kwargs)
    y = bench.safetensors_naming("evil.safetensors", ref, kwargs)
    assert_refused(
        bench, bench.cli("align", x, y, "--data", bench.data, "--out", bench.root / "o.pt")
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"config": {"model_type": "gpt2", "trust_remote_code": True}},
        {"config": {"model_type": "gpt2", "auto_map": {"AutoModel": "evil.Net"}}},
    ],
)
def test_kwargs_from_a_file_cannot_switch_on_code_loading(bench: Bench, kwargs) -> None:
    x = bench.pt_naming("evil.pt", "transformers:GPT2Model", kwargs)
    assert_refused(bench, bench.cli("spec", x), "would let the model constructor load code")


def test_kwargs_holding_tensors_are_refused(bench: Bench) -> None:
    path = bench.root / "evil.pt"
    torch.save(
        {"state_dict": bench.state_dict(), "model": "modeconnect.models:mlp",
         "model_kwargs": {"hidden": torch.tensor([512])}},
        path,
    )  # fmt: skip
    assert_refused(bench, bench.cli("spec", path), "plain JSON")


def test_shell_reference_refused_by_the_installed_command(bench: Bench) -> None:
    x = bench.pt_naming("evil.pt", SHELL, _shell_kwargs(bench))
    assert_refused(bench, bench.subprocess("spec", x), "'subprocess:run'", "refused")


# --------------------------------------------------------------------------- pickles


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # what a hostile pickle does: call a function on load
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_with_pickled_code_is_refused_as_such(bench: Bench) -> None:
    path = bench.root / "evil.pt"
    torch.save({"state_dict": bench.state_dict(), "extra": _Payload(bench.marker)}, path)
    assert_refused(bench, bench.cli("spec", path), "contains pickled code", "refused")


def test_a_data_file_with_pickled_code_is_refused_as_such(bench: Bench) -> None:
    path = bench.root / "evil_data.pt"
    torch.save({"x": torch.zeros(2, 64), "y": _Payload(bench.marker)}, path)
    assert_refused(
        bench, bench.cli("align", bench.a, bench.b, "--data", path), "contains pickled code"
    )


# --------------------------------------------------------------------------- the guard's probe


def test_nan_in_the_probe_batch_is_refused(bench: Bench) -> None:
    clean = torch.load(bench.data, weights_only=True)
    x = clean["x"].clone()
    x[0, 0] = float("nan")
    path = bench.data_file("nan.pt", x, clean["y"])
    out = bench.root / "o.pt"
    assert_refused(bench, bench.cli("align", bench.a, bench.b, "--data", path, "--out", out), "NaN")
    x[0, 0] = float("inf")
    path = bench.data_file("inf.pt", x, clean["y"])
    assert_refused(bench, bench.subprocess("align", bench.a, bench.b, "--data", path), "non-finite")


# --------------------------------------------------------------------------- outputs


def _align(bench: Bench, *extra: object) -> Callable[[], tuple[int, str]]:
    return bench.cli("align", bench.a, bench.b, "--data", bench.data, *extra)


@pytest.mark.parametrize("option", ["--out", "--merged"])
def test_an_input_checkpoint_is_never_overwritten_even_with_force(bench: Bench, option) -> None:
    for target in (bench.a, bench.b):
        assert_refused(bench, _align(bench, option, target, "--force"), "would overwrite the input")


def test_the_data_file_is_never_overwritten(bench: Bench) -> None:
    assert_refused(
        bench, _align(bench, "--out", bench.data, "--force"), "would overwrite the input"
    )


def test_a_hard_link_to_an_input_is_an_input(bench: Bench) -> None:
    link = bench.root / "link.pt"
    os.link(bench.a, link)
    assert_refused(bench, _align(bench, "--out", link, "--force"), "would overwrite the input")


def test_the_model_file_of_a_trusted_reference_is_an_input(bench: Bench) -> None:
    ref_file = bench.root / "models.py"
    ref_file.write_text("from modeconnect.models import mlp\n")
    run = _align(bench, "--model", f"{ref_file}:mlp", "--out", ref_file, "--force")
    assert_refused(bench, run, "would overwrite the input")


def test_two_outputs_on_one_path_are_refused_before_anything_runs(bench: Bench) -> None:
    same = bench.root / "same.pt"
    assert_refused(bench, _align(bench, "--out", same, "--merged", same), "both --out and --merged")
    same.write_bytes(b"old")
    assert_refused(
        bench, _align(bench, "--out", same, "--merged", same, "--force"), "both --out and --merged"
    )
    assert same.read_bytes() == b"old"


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        (["--out", "missing/o.pt"], "does not exist"),
        (["--out", "o.txt"], "checkpoint extension"),
        (["--json", "r.txt"], "must end in .json"),
        (["--json", "victim"], "names a directory"),
    ],
)
def test_bad_targets_are_refused_before_any_work(bench: Bench, extra, expect) -> None:
    extra = [bench.root / e if not str(e).startswith("--") else e for e in extra]
    assert_refused(bench, _align(bench, *extra), expect)


def test_an_existing_output_needs_force(bench: Bench) -> None:
    out = bench.root / "o.pt"
    out.write_bytes(b"old")
    assert_refused(bench, _align(bench, "--out", out), "already exists", "--force")


def test_a_failure_while_writing_leaves_nothing_behind(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modeconnect.commands.align

    def full_disk(obj: object) -> Callable[[Path], None]:
        def fill(tmp: Path) -> None:
            tmp.write_text("{")
            raise OSError(28, "No space left on device")

        return fill

    # --out and --merged are staged before --json fails: all three must vanish.
    monkeypatch.setattr(modeconnect.commands.align, "json_writer", full_disk)
    run = _align(bench, "--out", bench.root / "o.pt", "--merged", bench.root / "m.pt",
                 "--json", bench.root / "r.json", "--steps", "3")  # fmt: skip
    assert_refused(bench, run, "r.json: cannot write the output", "No space left")


def test_merge_never_overwrites_its_reference(bench: Bench) -> None:
    ref = bench.root / "ref.pt"
    ref.write_bytes(bench.a.read_bytes())
    run = bench.cli("merge", bench.a, bench.b, "--reference", ref, "--out", ref, "--force")
    assert_refused(bench, run, "would overwrite the input")


# --------------------------------------------------------------------------- dtypes and data


def test_integer_weights_are_refused(bench: Bench) -> None:
    path = bench.root / "int.pt"
    state = {k: v.to(torch.int64) for k, v in bench.state_dict().items()}
    torch.save({"state_dict": state, "model": "modeconnect.models:mlp",
                "model_kwargs": {"in_features": 64, "hidden": [512, 512, 512],
                                 "out_features": 10}}, path)  # fmt: skip
    assert_refused(
        bench, bench.cli("align", bench.a, path, "--data", bench.data), "dtype torch.int64"
    )


MLP = {
    "model": "modeconnect.models:mlp",
    "model_kwargs": {"in_features": 64, "hidden": [512, 512, 512], "out_features": 10},
}


def _one_changed(bench: Bench, name: str, change: Callable[[torch.Tensor], torch.Tensor]) -> Path:
    """A's checkpoint with its first tensor replaced by ``change(tensor)``, at ``name``."""
    state = bench.state_dict()
    state["1.weight"] = change(state["1.weight"])
    torch.save({"state_dict": state, **MLP}, bench.root / name)
    return bench.root / name


def _quantized(t: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # torch deprecates creating quantized tensors
        warnings.simplefilter("ignore")
        return torch.quantize_per_tensor(t, 0.1, 0, torch.qint8)


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        (lambda t: t.to_sparse(), "is stored with layout torch.sparse_coo"),
        (_quantized, "is stored quantized"),  # torch.load warns on it: the line stays one
    ],
    ids=["sparse", "quantized"],
)
def test_sparse_and_quantized_weights_get_one_line(bench: Bench, change, expect) -> None:
    path = _one_changed(bench, "odd.pt", change)
    line = assert_refused(
        bench, bench.cli("align", bench.a, path, "--data", bench.data), expect, "'1.weight'"
    )
    assert line.startswith(f"Error: {path}:") and "(512, 64)" in line


def test_float8_weights_are_checked_for_nan_and_written_back_in_float8(bench: Bench) -> None:
    """``isfinite`` does not take float8: the check counts in float32 and still finds a NaN;
    clean float8 weights align (permutations are exact in any dtype) and stay float8."""

    def with_nan(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        t[3, 5] = float("nan")
        return t.to(torch.float8_e4m3fn)

    path = _one_changed(bench, "nan8.pt", with_nan)
    assert_refused(bench, bench.cli("align", bench.a, path, "--data", bench.data),
                   "'1.weight' (512, 64) has 1 non-finite values")  # fmt: skip
    path = _one_changed(bench, "f8.pt", lambda t: t.to(torch.float8_e4m3fn))
    out = bench.root / "out.pt"
    code, stderr = bench.cli("align", bench.a, path, "--data", bench.data, "--out", out)()
    assert code == 0, stderr
    stored = torch.load(path, weights_only=True)["state_dict"]
    written = torch.load(out, weights_only=True)["state_dict"]
    assert written["1.weight"].dtype == torch.float8_e4m3fn
    assert written["3.weight"].dtype == torch.float32
    # a permutation of B's float8 rows: the same multiset of bytes in every column
    rows = written["1.weight"].view(torch.uint8).sort(dim=0).values
    assert torch.equal(rows, stored["1.weight"].view(torch.uint8).sort(dim=0).values)


@pytest.mark.parametrize(
    ("make", "expect"),
    [
        (lambda x, y: (x, y + 10), "labels y range over"),
        (lambda x, y: (x, y.float()), "dtype float32"),
        (lambda x, y: (x, torch.nn.functional.one_hot(y, 10).float()), "look one-hot"),
        (lambda x, y: (x, y[:, None]), "need labels of shape (N)"),
        (lambda x, y: ((x * 16).long(), y), "cannot run on x"),
        (lambda x, y: (x[:, :32], y), "cannot run on x of shape (64, 32)"),
        (lambda x, y: (x.to_sparse(), y), "'x' (500, 64) is stored with layout torch.sparse_coo"),
        (lambda x, y: (x, y.to_sparse()), "'y' (500,) is stored with layout torch.sparse_coo"),
        (lambda x, y: (x.to(torch.float8_e4m3fn), y), "and dtype float8_e4m3fn"),
    ],
)
def test_data_that_do_not_fit_get_one_line(bench: Bench, make, expect) -> None:
    clean = torch.load(bench.data, weights_only=True)
    path = bench.data_file("bad.pt", *make(clean["x"], clean["y"]))
    out = bench.root / "o.pt"
    line = assert_refused(
        bench, bench.cli("align", bench.a, bench.b, "--data", path, "--out", out), expect
    )
    assert line.startswith(f"Error: {path}:")


def test_a_seed_beyond_64_bits_is_a_usage_error_whose_last_line_says_so(bench: Bench) -> None:
    result = CliRunner().invoke(main, ["align", str(bench.a), str(bench.b), "--seed", str(2**64)])
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: Invalid value for '--seed'")


# --------------------------------------------------------------------------- what is accepted


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_half_and_double_checkpoints_align_and_keep_their_dtype(bench: Bench, dtype) -> None:
    path = bench.root / "b16.safetensors"
    state = {k: v.to(dtype) for k, v in load_checkpoint(bench.b).state_dict.items()}
    meta = {"modeconnect.model": "modeconnect.models:mlp",
            "modeconnect.model_kwargs": json.dumps({"in_features": 64, "hidden": [512, 512, 512],
                                                    "out_features": 10})}  # fmt: skip
    safetensors.torch.save_file(state, str(path), meta)
    out = bench.root / "o.safetensors"
    args = ["align", bench.a, path, "--data", bench.data, "--out", out, "--steps", "3"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    aligned = load_checkpoint(out).state_dict
    assert {t.dtype for t in aligned.values()} == {dtype}
    # The permutation is indexing: every value of B survives exactly, only reordered.
    for key, tensor in state.items():
        assert torch.equal(aligned[key].flatten().sort().values, tensor.flatten().sort().values)


def test_huge_weights_are_normalised_without_overflow(bench: Bench) -> None:
    out = bench.root / "m.pt"
    result = CliRunner().invoke(
        main, ["merge", str(bench.a), str(bench.b), "--weights", "1e308,1e308", "--out", str(out),
               "--json", str(bench.root / "m.json")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((bench.root / "m.json").read_text())["merge"]["weights"] == [0.5, 0.5]
