"""``modeconnect barrier`` end to end: outputs, the JSON contract shared with align, errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from modeconnect_cli.main import main

MLP_REF = "modeconnect.models:mlp"
SMALL = {"in_features": 6, "hidden": [10, 12], "out_features": 3}


def _run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _small_pair(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    from modeconnect.models import mlp

    paths = []
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        p = tmp_path / f"{name}.pt"
        torch.save(
            {"state_dict": mlp(**SMALL).state_dict(), "model": MLP_REF, "model_kwargs": SMALL}, p
        )
        paths.append(p)
    g = torch.Generator().manual_seed(0)
    for name in ("test", "train"):
        torch.save(
            {"x": torch.randn(40, 6, generator=g), "y": torch.randint(0, 3, (40,), generator=g)},
            tmp_path / f"{name}.pt",
        )
    return paths[0], paths[1], tmp_path / "test.pt", tmp_path / "train.pt"


def _assert_user_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    for fragment in fragments:
        assert fragment in text, (fragment, text)


def test_barrier_writes_json_and_report(tmp_path: Path) -> None:
    a, b, test, train = _small_pair(tmp_path)
    js, report = tmp_path / "r.json", tmp_path / "report"
    result = _run(
        "barrier", str(a), str(b), "--data", str(test), "--train", str(train), "--steps", "5",
        "--layerwise", "--bootstrap", "20", "--json", str(js), "--report", str(report),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = result.output
    assert "naive    test" in out and "aligned  train" in out and "95% interval" in out
    assert "layer-wise lerp loss barrier, aligned" in out
    assert f"wrote      json: {js}" in out and f"wrote      report: {report / 'report.html'}" in out
    data = json.loads(js.read_text())
    assert data["naive"]["barrier"]["definition"] == "lerp" and data["bn"] == "none"
    assert data["examples"] == {"test": 40, "train": 40}
    assert "--steps 5" in data["command"] and "--layerwise" in data["command"]
    assert data["outputs"]["report"] == str(report / "report.html")
    assert {"curves.png", "layerwise.png", "report.html"} <= {p.name for p in report.iterdir()}
    assert "layerwise.png" in (report / "report.html").read_text(encoding="utf-8")


def test_barrier_json_has_the_keys_and_numbers_of_align_json(tmp_path: Path) -> None:
    a, b, test, _ = _small_pair(tmp_path)
    aj, bj = tmp_path / "align.json", tmp_path / "barrier.json"
    assert _run("align", str(a), str(b), "--data", str(test), "--json", str(aj)).exit_code == 0
    assert _run("barrier", str(a), str(b), "--data", str(test), "--json", str(bj)).exit_code == 0
    aligned, barrier = json.loads(aj.read_text()), json.loads(bj.read_text())
    for pair in ("naive", "aligned"):
        assert barrier[pair]["barrier"]["definition"] == aligned[pair]["barrier"]["definition"]
        for key in ("loss", "error"):
            want, got = aligned[pair]["barrier"][key], barrier[pair]["barrier"][key]
            assert got == pytest.approx(want, rel=1e-5, abs=1e-7), (pair, key)
        assert len(barrier[pair]["curve"]) == len(aligned[pair]["curve"]) == 25
        for p, q in zip(aligned[pair]["curve"], barrier[pair]["curve"], strict=True):
            assert set(p) == set(q) and q["loss"] == pytest.approx(p["loss"], rel=1e-5)


def test_barrier_naive_only_with_mean_definition(tmp_path: Path) -> None:
    a, b, test, _ = _small_pair(tmp_path)
    result = _run("barrier", str(a), str(b), "--data", str(test), "--align", "none",
                  "--definition", "mean", "--steps", "3", "--loss", "mse")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "aligned" not in result.output and "definition mean, loss mse" in result.output


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--bn", "reset"], ["measures statistics on training data", "--train"]),
        (["--bn", "reset", "--train", "TRAIN"], ["no BatchNorm layer", "bn='repair'"]),
        (["--layerwise", "--layer-groups", "9"], ["prefix '9' matches no"]),
        (["--loss", "hinge"], ["unknown loss 'hinge'"]),
    ],
)
def test_barrier_user_errors(tmp_path: Path, extra: list[str], fragments: list[str]) -> None:
    a, b, test, train = _small_pair(tmp_path)
    args = [str(train) if x == "TRAIN" else x for x in extra]
    _assert_user_error(_run("barrier", str(a), str(b), "--data", str(test), *args), *fragments)


def test_an_unknown_method_is_a_usage_error_whose_last_line_lists_the_choices(
    tmp_path: Path,
) -> None:
    a, b, test, _ = _small_pair(tmp_path)
    result = _run("barrier", str(a), str(b), "--data", str(test), "--align", "magic")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == (
        "Error: Invalid value for '--align': 'magic' is not one of 'weight', 'activation', "
        "'ot', 'learned', 'none'."
    )


def test_barrier_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    a, b, test, _ = _small_pair(tmp_path)
    js = tmp_path / "r.json"
    js.write_text("{}")
    _assert_user_error(
        _run("barrier", str(a), str(b), "--data", str(test), "--json", str(js)), "exists", "--force"
    )
    assert js.read_text() == "{}"
    report = tmp_path / "rep"
    report.mkdir()
    (report / "report.html").write_text("old")
    _assert_user_error(
        _run("barrier", str(a), str(b), "--data", str(test), "--report", str(report)),
        "report.html: already exists (--report)",
    )
    ok = _run("barrier", str(a), str(b), "--data", str(test), "--steps", "3", "--json", str(js),
              "--report", str(report), "--force")  # fmt: skip
    assert ok.exit_code == 0 and json.loads(js.read_text())["naive"]


@pytest.mark.slow
def test_barrier_in_a_subprocess_is_quiet_off_a_terminal(tmp_path: Path) -> None:
    a, b, test, train = _small_pair(tmp_path)
    js = tmp_path / "r.json"
    code = (
        "import sys; from modeconnect_cli.main import main; "
        "main(sys.argv[1:], prog_name='modeconnect')"
    )
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    proc = subprocess.run(
        [sys.executable, "-c", code, "barrier", str(a), str(b), "--data", str(test),
         "--train", str(train), "--steps", "3", "--json", str(js)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no progress bars when stderr is not a terminal
    assert "naive    test" in proc.stdout
    assert json.loads(js.read_text())["command"].startswith("modeconnect barrier ")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_only_on_a_terminal_and_not_when_quiet() -> None:
    from modeconnect.progress import ProgressBar, prefixed

    pipe = io.StringIO()
    with ProgressBar(stream=pipe) as bar:
        bar("curve", 1, 2)
    assert not bar.enabled and pipe.getvalue() == ""
    with ProgressBar(stream=_Terminal(), quiet=True) as bar:
        bar("curve", 1, 2)
    assert not bar.enabled
    term = _Terminal()
    with ProgressBar(stream=term) as bar:
        report = prefixed(bar, "naive ")
        assert report is not None
        report("curve", 1, 2)
        report("curve", 2, 2)
    assert bar.enabled and "naive curve" in term.getvalue()
    assert prefixed(None, "x") is None
