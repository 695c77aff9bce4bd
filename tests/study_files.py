"""Small checkpoints and data on disk, and ways to run the command line on them.

Shared by the tests of ``curve``, ``plane``, ``landscape`` and ``sharpness``: a few
tiny MLPs (6 -> 10 -> 12 -> 3) saved with their architecture, 40 examples of test and
train data, a runner that returns exit code, stdout and stderr, and a check that a
refused command printed one line and changed no file.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from modeconnect_cli.main import main

MLP_REF = "modeconnect.models:mlp"
SMALL: dict[str, Any] = {"in_features": 6, "hidden": [10, 12], "out_features": 3}
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Bench:
    """Three small models (``a``, ``b``, ``c``) and ``test`` / ``train`` data in ``root``."""

    root: Path
    a: Path
    b: Path
    c: Path
    test: Path
    train: Path


def bench(root: Path) -> Bench:
    from modeconnect.models import mlp

    models = []
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        torch.manual_seed(seed)
        path = root / f"{name}.pt"
        state = {"state_dict": mlp(**SMALL).state_dict(), "model": MLP_REF, "model_kwargs": SMALL}
        torch.save(state, path)
        models.append(path)
    g = torch.Generator().manual_seed(0)
    for name in ("test", "train"):
        x = torch.randn(40, 6, generator=g)
        torch.save({"x": x, "y": (x[:, 0] > 0).long() + (x[:, 1] > 0).long()}, root / f"{name}.pt")
    a, b, c = models
    return Bench(root, a, b, c, root / "test.pt", root / "train.pt")


@pytest.fixture(name="files")
def files_fixture(tmp_path: Path) -> Bench:
    """The ``files`` fixture of the command tests, a :func:`bench` in the test's folder: a
    test module imports ``files_fixture`` to use it."""
    return bench(tmp_path)


def run(*args: object) -> tuple[int, str, str]:
    """``modeconnect ARGS`` in this process: exit code, stdout, stderr."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def run_subprocess(*args: object) -> subprocess.CompletedProcess[str]:
    """``python -m modeconnect_cli.main ARGS`` in a new process, stderr off a terminal."""
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    return subprocess.run(
        [sys.executable, "-m", "modeconnect_cli.main", *map(str, args)],
        capture_output=True, text=True, env=env, timeout=300, cwd=ROOT,
    )  # fmt: skip


def run_in_a_process(json_path: Path, *args: object) -> tuple[str, dict[str, Any]]:
    """``modeconnect ARGS --json JSON_PATH`` by :func:`run_subprocess`: it must exit 0 and
    print nothing on stderr. Returns its stdout and the JSON it wrote."""
    proc = run_subprocess(*args, "--json", json_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    return proc.stdout, json.loads(json_path.read_text())


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> sha256); directories as markers."""
    return {
        str(p.relative_to(folder)): "<dir>"
        if p.is_dir()
        else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
    }


def assert_refused(folder: Path, *args: object, expect: tuple[str, ...] = ()) -> str:
    """Run ``modeconnect ARGS``: exit 2, one line on stderr naming ``expect``, no file changed."""
    before = snapshot(folder)
    code, _, stderr = run(*args)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for text in expect:
        assert text in stderr, (text, stderr)
    assert snapshot(folder) == before, "files changed"
    return lines[0]


def assert_outputs_spare_inputs(f: Bench, option: str, plot: str, *command: object) -> None:
    """``--json``, or ``--report`` whose ``plot`` would be written over ``--data``: refused."""
    if option == "--json":
        target = data = f.root / "d.json"
    else:
        (f.root / "rep").mkdir()
        target, data = f.root / "rep", f.root / "rep" / plot
    data.write_bytes(f.test.read_bytes())
    assert_refused(f.root, *command, "--data", data, option, target,
                   expect=("would overwrite the input",))  # fmt: skip
