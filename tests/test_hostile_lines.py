"""Hostile inputs, second pass: one line means one line, and no traceback anywhere.

Each refusal is checked with the bench's assertion (tests/hostile_bench.py): exit code
2, exactly one stderr line, no traceback, nothing written or changed, no network.

* JSON from strangers (safetensors metadata, ``config.json``, a shard index,
  ``--model-kwargs``, keyword arguments pickled in a ``.pt``) nested 100 000 levels
  deep, or holding an integer of 5 000 digits;
* a Hugging Face causal LM evaluated with the default ``--loss`` (next-token
  cross-entropy), and a ``--loss`` that cannot fit the model's outputs;
* file names with newlines and other control characters, click's usage errors;
* a corrupt ``.pt``, whose message never repeats torch's advice to load it with
  ``weights_only=False``;
* an exception nobody foresaw (a monkeypatched internal function raising).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hf_models as hf
import pytest
import safetensors.torch
import torch
from click.testing import CliRunner
from hostile_bench import Bench, assert_refused

from modeconnect.errors import ModeconnectError
from modeconnect.io.checkpoints import load_checkpoint
from modeconnect.io.jsonfile import MAX_DEPTH, check_plain_value, parse_json, read_json_file
from modeconnect_cli.main import main

DEEP = 100_000
DEEP_JSON = "[" * DEEP + "]" * DEEP
LONG_INT = "1" * 5000


def _hostile_kwargs(kind: str) -> str:
    """A ``model_kwargs`` JSON object holding a deeply nested list or a 5000-digit integer."""
    value = DEEP_JSON if kind == "deep" else LONG_INT
    return '{"in_features": 64, "hidden": ' + value + "}"


def _safetensors_with_kwargs(bench: Bench, name: str, kwargs_text: str) -> Path:
    path = bench.root / name
    meta = {"modeconnect.model": "modeconnect.models:mlp", "modeconnect.model_kwargs": kwargs_text}
    safetensors.torch.save_file(bench.state_dict(), str(path), meta)
    return path


def _llama_dir(root: Path, name: str, seed: int = 0, **overrides: object) -> Path:
    return hf.save(hf.llama(seed, **overrides), root / name, tokenizer=True)


def _with_config_value(directory: Path, text: str) -> None:
    """Put ``"evil": TEXT`` into the directory's config.json, as raw JSON text."""
    config = (directory / "config.json").read_text()
    (directory / "config.json").write_text(config.rstrip().rstrip("}") + f', "evil": {text}}}')


# --------------------------------------------------------------------------- JSON


@pytest.mark.parametrize("kind", ["deep", "digits"])
def test_hostile_json_in_safetensors_metadata_is_one_line(bench: Bench, kind: str) -> None:
    x = _safetensors_with_kwargs(bench, "evil.safetensors", _hostile_kwargs(kind))
    expect = "levels deep" if kind == "deep" else "5000 digits"
    line = assert_refused(bench, bench.cli("spec", x), "modeconnect.model_kwargs", expect)
    assert "evil.safetensors" in line


def test_hostile_json_in_safetensors_metadata_in_a_subprocess(bench: Bench) -> None:
    x = _safetensors_with_kwargs(bench, "evil.safetensors", _hostile_kwargs("deep"))
    y = _safetensors_with_kwargs(bench, "evil2.safetensors", _hostile_kwargs("digits"))
    assert_refused(bench, bench.subprocess("spec", x), "levels deep")
    run = bench.subprocess("align", y, bench.b, "--data", bench.data)
    assert_refused(bench, run, "5000 digits")


@pytest.mark.parametrize("kind", ["deep", "digits"])
def test_hostile_json_in_config_json_is_one_line(bench: Bench, kind: str) -> None:
    directory = _llama_dir(bench.root, "llama")
    _with_config_value(directory, DEEP_JSON if kind == "deep" else LONG_INT)
    expect = "levels deep" if kind == "deep" else "5000 digits"
    line = assert_refused(bench, bench.cli("spec", directory), "config.json", expect)
    assert "re-create it with save_pretrained" in line


def test_hostile_json_in_config_json_in_a_subprocess(bench: Bench) -> None:
    a, b = _llama_dir(bench.root, "a"), _llama_dir(bench.root, "b", seed=1)
    _with_config_value(b, LONG_INT)
    _with_config_value(a, DEEP_JSON)
    assert_refused(bench, bench.subprocess("barrier", a, b, "--data", bench.data), "levels deep")


def test_hostile_json_in_a_shard_index_is_one_line(bench: Bench) -> None:
    directory = hf.save(hf.llama(0), bench.root / "sharded", sharded=True)
    index = directory / "model.safetensors.index.json"
    assert index.is_file()
    index.write_text('{"weight_map": ' + DEEP_JSON + "}")
    assert_refused(bench, bench.cli("spec", directory), "index.json", "levels deep")


@pytest.mark.parametrize("kind", ["deep", "digits"])
def test_hostile_model_kwargs_option_is_a_one_line_usage_error(bench: Bench, kind: str) -> None:
    run = bench.cli(
        "spec", bench.a, "--model", "modeconnect.models:mlp", "--model-kwargs",
        _hostile_kwargs(kind),
    )  # fmt: skip
    line = assert_refused(bench, run, "Invalid value for '--model-kwargs'")
    assert ("levels deep" if kind == "deep" else "5000 digits") in line
    assert len(line) < 500  # the value is quoted shortened, not whole


def test_hostile_model_kwargs_option_in_a_subprocess(bench: Bench) -> None:
    deep = "[" * 50_000 + "]" * 50_000  # one argument of a command line holds at most 128 kB
    run = bench.subprocess(
        "align", bench.a, bench.b, "--model", "modeconnect.models:mlp", "--model-kwargs",
        '{"hidden": ' + deep + "}",
    )  # fmt: skip
    assert_refused(bench, run, "Invalid value for '--model-kwargs'", "levels deep")


def _self_containing() -> list:
    loop: list = []
    loop.append(loop)
    return loop


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def _shared(levels: int) -> list:
    """Ten copies of ten copies of ... a list: 10**levels values when printed, a few bytes."""
    value: list = [0]
    for _ in range(levels):
        value = [value] * 10
    return value


@pytest.mark.parametrize(
    "make, expect",
    [
        (lambda: _nested(3000), "levels deep"),
        (_self_containing, "holds itself"),
        # weights_only refuses pickle's LONG4 (5000 digits is a corrupt file); LONG1 passes
        (lambda: [10**70], "more than 64 digits"),
        (lambda: _shared(8), "more than 1000000 values"),
    ],
    ids=["deep", "self", "digits", "shared"],
)
def test_hostile_kwargs_pickled_in_a_pt_are_one_line(bench: Bench, make, expect) -> None:
    path = bench.root / "evil.pt"
    kwargs = {"in_features": 64, "hidden": make()}
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # torch.save recurses; a hostile author writes the bytes
    try:
        torch.save({"state_dict": bench.state_dict(), "model": "modeconnect.models:mlp",
                    "model_kwargs": kwargs}, path)  # fmt: skip
    finally:
        sys.setrecursionlimit(limit)
    assert_refused(bench, bench.cli("spec", path), "'model_kwargs'", expect)


def test_the_json_bounds_accept_what_they_promise() -> None:
    nested = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert parse_json(nested, "x", "fix") is not None
    assert parse_json('{"a": "' + "[" * 1000 + '", "n": ' + "9" * 64 + "}", "x", "fix")["n"]
    check_plain_value(json.loads(nested), "x", "fix")
    with pytest.raises(ModeconnectError, match="levels deep"):
        parse_json("[" + nested + "]", "x", "fix")
    with pytest.raises(ModeconnectError, match="not valid JSON"):
        parse_json('{"a": [1, 2}', "x", "fix")


def test_a_json_file_is_never_read_past_its_limit(tmp_path: Path) -> None:
    big = tmp_path / "config.json"
    big.write_text('{"a": "' + "x" * 1000 + '"}')
    assert read_json_file(big, "fix", limit=2000) == {"a": "x" * 1000}
    with pytest.raises(ModeconnectError, match="config.json: is more than 100 bytes.*; fix$"):
        read_json_file(big, "fix", limit=100)


# --------------------------------------------------------------------------- language models


def _text(bench: Bench) -> Path:
    path = bench.root / "text.txt"
    path.write_text(hf.TEXT)
    return path


def test_barrier_on_a_causal_lm_with_the_default_loss_scores_next_tokens(bench: Bench) -> None:
    # 128 positions and 64 tokens of vocabulary: cross-entropy over axis 1 of (N, T, V)
    # indexes out of range here (the IndexError this replaces)
    a = _llama_dir(bench.root, "a", max_position_embeddings=128)
    b = hf.save(hf.permuted_copy(hf.llama(0, max_position_embeddings=128)), bench.root / "b",
                tokenizer=True)  # fmt: skip
    result = CliRunner().invoke(
        main, ["barrier", str(a), str(b), "--data", str(_text(bench)), "--steps", "3", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert "loss causal_lm" in result.stdout
    assert bench.hub.requests == [] and bench.sockets.attempts == []


@pytest.mark.parametrize(
    "command",
    [
        ["curve", "--train", "{text}", "--epochs", "1", "--steps", "3"],
        ["plane", "{c}", "--resolution", "2"],  # C: a third, independent model
        ["compare", "--methods", "weight", "--steps", "3"],
    ],
    ids=["curve", "plane", "compare"],
)
def test_every_evaluation_scores_a_causal_lm_by_default(bench: Bench, command) -> None:
    """The same default as barrier's in every command that evaluates two or more models."""
    a = _llama_dir(bench.root, "a", max_position_embeddings=128)
    b = _llama_dir(bench.root, "b", seed=1, max_position_embeddings=128)
    c = _llama_dir(bench.root, "c", seed=2, max_position_embeddings=128)
    text = _text(bench)
    name, *rest = command
    args = [name, a, b, *(str(x).format(text=text, c=c) for x in rest), "--data", text]
    result = CliRunner().invoke(main, [str(x) for x in args])
    assert result.exit_code == 0, result.output
    assert bench.hub.requests == [] and bench.sockets.attempts == []


@pytest.mark.parametrize(
    "command",
    [["landscape", "--resolution", "2"], ["sharpness", "--iterations", "2", "--top-k", "1"]],
    ids=["landscape", "sharpness"],
)
def test_one_model_evaluations_score_a_causal_lm_by_default(bench: Bench, command) -> None:
    a = _llama_dir(bench.root, "a", max_position_embeddings=128)
    text = _text(bench)
    name, *rest = command
    result = CliRunner().invoke(main, [str(x) for x in [name, a, *rest, "--data", text]])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("loss", ["mse", "masked_lm", "torch:matmul"])
def test_a_loss_that_cannot_score_a_causal_lm_is_one_line(bench: Bench, loss: str) -> None:
    a = _llama_dir(bench.root, "a")
    text = _text(bench)
    run = bench.cli("barrier", a, a, "--data", text, "--loss", loss, "--align", "none")
    assert_refused(bench, run, f"--loss {loss}", "causal language model", "--loss causal_lm")


def test_a_loss_that_cannot_take_a_classifiers_outputs_is_one_line(bench: Bench) -> None:
    run = bench.cli("barrier", bench.a, bench.b, "--data", bench.data, "--loss", "torch:matmul",
                    "--align", "none", "--steps", "2")  # fmt: skip
    line = assert_refused(bench, run, "--loss torch:matmul: raised RuntimeError")
    assert "per-example losses" in line


# --------------------------------------------------------------------------- one line


@pytest.mark.parametrize("name", ["a\nb.pt", "a\rb.pt", "x\x1b[2J\u2028y.pt", "tab\there.pt"])
def test_a_file_name_with_control_characters_stays_on_one_line(bench: Bench, name: str) -> None:
    path = bench.root / name
    path.write_bytes(b"not a checkpoint at all")
    line = assert_refused(bench, bench.cli("spec", path), "corrupt")
    assert line.isprintable()
    assert repr(name)[1:-1] in line  # escaped as repr escapes it
    with pytest.raises(ModeconnectError) as caught:
        load_checkpoint(path)
    assert str(caught.value).isprintable()


def test_a_file_name_with_a_newline_in_a_subprocess(bench: Bench) -> None:
    path = bench.root / "a\nb.pt"
    path.write_bytes(b"junk")
    line = assert_refused(bench, bench.subprocess("align", path, bench.b), "a\\nb.pt")
    assert line.startswith("Error: ")


def test_library_messages_carry_no_control_characters() -> None:
    exc = ModeconnectError("bad\nfile\x00name\u202e.pt: " + "x" * 10_000 + " end; do this")
    text = str(exc)
    assert text.isprintable() and "\\n" in text and "\\x00" in text and "\\u202e" in text
    assert len(text) < 2100 and text.endswith("end; do this")


@pytest.mark.parametrize(
    "args, expect",
    [
        (["align", "A", "B", "--seed", str(2**64)], "Invalid value for '--seed'"),
        (["align", "A"], "Missing argument 'B'"),
        (["align", "A", "B", "--no-such-option"], "No such option"),
        (["align", "A", "B", "--method", "magic"], "Invalid value for '--method'"),
        (["no-such-command"], "No such command"),
        (["--threads", "0", "spec", "A"], "Invalid value for '--threads'"),
    ],
)
def test_usage_errors_are_one_line(bench: Bench, args: list[str], expect: str) -> None:
    line = assert_refused(bench, bench.cli(*args), expect)
    assert line.startswith(f"Error: {expect}") and "Usage:" not in line


def test_usage_errors_are_one_line_in_a_subprocess(bench: Bench) -> None:
    line = assert_refused(bench, bench.subprocess("align", "A", "B", "--seed", "-1"), "--seed")
    assert (
        line
        == "Error: Invalid value for '--seed': -1 is not in the range 0<=x<=9223372036854775807."
    )


def test_a_typed_value_with_control_characters_stays_on_one_line(bench: Bench) -> None:
    run = bench.cli("align", "A", "B", "--method", "we\nig\x1bht")
    line = assert_refused(bench, run, "Invalid value for '--method'")
    assert line.isprintable()


def test_help_and_version_are_unchanged() -> None:
    for args in (["--help"], ["align", "--help"], ["--version"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0 and result.stderr == ""
    assert "Usage:" in CliRunner().invoke(main, ["barrier", "--help"]).stdout


# --------------------------------------------------------------------------- corrupt files


@pytest.mark.parametrize("content", [b"\x80\x02\x95garbage", bytes(range(256)) * 4])
def test_a_corrupt_pt_never_advises_weights_only_false(bench: Bench, content: bytes) -> None:
    path = bench.root / "corrupt.pt"
    path.write_bytes(content)
    line = assert_refused(bench, bench.cli("spec", path), "corrupt or truncated")
    assert "weights_only" not in line and "Re-running" not in line
    assert "re-create or re-download it" in line


def test_a_truncated_pt_says_what_is_wrong_in_whole_sentences(bench: Bench) -> None:
    path = bench.root / "truncated.pt"
    path.write_bytes(bench.a.read_bytes()[:2000])
    line = assert_refused(bench, bench.cli("spec", path), "corrupt or truncated")
    reason = line.split("(", 1)[1].rsplit(")", 1)[0]
    assert reason.endswith((".", "?", "!")) or ":" in reason


# --------------------------------------------------------------------------- the last resort


def _break(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    import modeconnect.commands.session

    def broken(*args: object, **kwargs: object) -> None:
        raise exc

    monkeypatch.setattr(modeconnect.commands.session, "load_models", broken)


def test_an_unforeseen_error_is_one_line(bench: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    _break(monkeypatch, IndexError("index 70 is out of bounds\nfor dimension 1"))
    run = bench.cli("barrier", bench.a, bench.b, "--data", bench.data)
    expect = ("IndexError: index 70 is out of bounds for dimension 1", "unexpected")
    line = assert_refused(bench, run, *expect, "MODECONNECT_DEBUG=1")
    assert line.startswith("Error: ")


def test_an_unforeseen_error_outside_a_command_body_is_one_line(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modeconnect.io.jsonfile

    def broken(*args: object) -> None:
        raise KeyError("surprise")

    monkeypatch.setattr(modeconnect.io.jsonfile, "parse_json", broken)  # an option callback
    run = bench.cli("spec", bench.a, "--model-kwargs", "{}")
    assert_refused(bench, run, "unexpected", "KeyError: 'surprise'")


def test_an_unforeseen_error_while_writing_leaves_nothing(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modeconnect.commands.barrier

    def broken(obj: object):
        def fill(tmp: Path) -> None:
            tmp.write_text("{")
            raise ZeroDivisionError("division by zero")

        return fill

    monkeypatch.setattr(modeconnect.commands.barrier, "json_writer", broken)
    run = bench.cli("barrier", bench.a, bench.b, "--data", bench.data, "--steps", "2",
                    "--json", bench.root / "r.json", "--report", bench.root / "report")  # fmt: skip
    assert_refused(bench, run, "ZeroDivisionError")


def test_the_debug_variable_shows_the_traceback(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    _break(monkeypatch, IndexError("boom"))
    monkeypatch.setenv("MODECONNECT_DEBUG", "1")
    result = CliRunner().invoke(main, ["spec", str(bench.a)])
    assert isinstance(result.exception, IndexError)


def test_interrupts_and_exits_keep_their_behaviour(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    _break(monkeypatch, KeyboardInterrupt())
    result = CliRunner().invoke(main, ["spec", str(bench.a)])
    assert (
        result.exit_code == 1 and "Aborted" in result.stderr and "unexpected" not in result.stderr
    )
    _break(monkeypatch, SystemExit(143))
    result = CliRunner().invoke(main, ["spec", str(bench.a)])
    assert result.exit_code == 143 and result.stderr == ""


WARNED = """
import sys, warnings
import modeconnect.commands.align as command
real = command.align
def warned(*args, **kwargs):
    warnings.warn("group P0: hostile\\nsecond line; increase --reg", UserWarning)
    return real(*args, **kwargs)
command.align = warned
from modeconnect_cli.main import main
main(sys.argv[1:])
"""
"""A command whose alignment warns (the message holding a newline), in its own process:
pytest records warnings instead of showing them."""


def test_a_warning_during_a_command_is_one_escaped_line(bench: Bench) -> None:
    """A warning shows as ``warning: MESSAGE`` alone (no file, line number or source line),
    a newline in it escaped."""
    import subprocess

    proc = subprocess.run([sys.executable, "-c", WARNED, "align", str(bench.a), str(bench.b)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "warning: group P0: hostile\\nsecond line; increase --reg\n"
