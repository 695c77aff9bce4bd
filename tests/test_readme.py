"""The README's quick start and library example run as written."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest
from conftest import ROOT

README = (ROOT / "README.md").read_text()


def _fences() -> list[tuple[str, str]]:
    """(language, body) of every fenced block, in order."""
    blocks, lang, body = [], None, []
    for line in README.splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, body = line[3:].strip(), []
            else:
                blocks.append((lang, "\n".join(body)))
                lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def _blocks(lang: str) -> list[str]:
    return [body for language, body in _fences() if language == lang]


def test_readme_names_the_two_setup_commands():
    bash = "\n".join(_blocks("bash"))
    assert 'pip install -c constraints.txt -e ".[test]" && python -m pytest -n 2' in bash
    assert "pip install -c constraints.txt . && modeconnect align" in bash
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -c constraints.txt -e ".[test]" && python -m pytest -n 2' in ci


def test_ci_runs_the_readme_lint_commands_over_every_python_folder():
    lint = next(b for b in _blocks("bash") if b.startswith("pip install") and "ruff" in b)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for line in lint.splitlines():
        assert line in ci, line
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and any(p.glob("*.py"))}
    for tool in ("ruff check", "ruff format --check"):
        command = next(ln for ln in lint.splitlines() if ln.startswith(tool))
        assert folders <= set(command.split()), (tool, folders)


@pytest.mark.slow
def test_quick_start_command_runs_and_shows_the_barrier_drop():
    bash = "\n".join(_blocks("bash"))
    line = next(ln for ln in bash.splitlines() if "&& modeconnect align" in ln)
    command = shlex.split(line.split("&&", 1)[1])
    assert command[0] == "modeconnect"
    proc = subprocess.run(
        [sys.executable, "-m", "modeconnect_cli.main", *command[1:]],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    naive = re.search(r"^naive\s+([\d.]+)", proc.stdout, flags=re.M)
    aligned = re.search(r"^aligned\s+([\d.]+)", proc.stdout, flags=re.M)
    assert naive and aligned, proc.stdout
    assert float(naive.group(1)) > 1.0 and float(aligned.group(1)) < 0.05
    # the output shown in the README is what the command prints (timings aside)
    shown = next(b for b in _blocks("") if "loss barrier" in b)
    for row in ("guard ", "naive ", "aligned ", "endpoints "):
        want = next(ln for ln in shown.splitlines() if ln.startswith(row))
        got = next(ln for ln in proc.stdout.splitlines() if ln.startswith(row))
        assert want.split() == got.split()


@pytest.mark.slow
def test_library_example_runs():
    code = next(b for b in _blocks("python") if "import modeconnect as mc" in b)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_layerwise_barrier_command_produces_the_plot(tmp_path):
    bash = "\n".join(_blocks("bash"))
    line = next(ln for ln in bash.splitlines() if ln.startswith("modeconnect barrier checkpoints"))
    args = shlex.split(line)[1:]
    args = [a.replace("runs/", f"{tmp_path}/runs/") for a in args]
    args = [a if a != "1000" else "50" for a in args]  # fewer resamples: same code path
    proc = subprocess.run(
        [sys.executable, "-m", "modeconnect_cli.main", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "runs" / "mlp" / "layerwise.png").stat().st_size > 1000
    shown = next(b for b in _blocks("") if "95% interval" in b)
    for row in ("naive    test", "aligned  test"):
        want = next(ln for ln in shown.splitlines() if ln.startswith(row))
        got = next(ln for ln in proc.stdout.splitlines() if ln.startswith(row))
        assert want.split() == got.split()
