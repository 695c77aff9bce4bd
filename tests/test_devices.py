"""``--device`` on every command that evaluates: the study commands place the model, the
checkpoints and the data on the device (``Session.on``); align and merge place what they
evaluate point by point.

Without a CUDA device (this project's CI), ``--device cuda`` must be one line and exit
code 2, with no output left behind. With one, each command's JSON must equal the CPU's
to float tolerance.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from modeconnect_cli.main import main

C = Path(__file__).resolve().parents[1] / "checkpoints"
A, B, THIRD = (str(C / f"mlp128_{i}.pt") for i in (1, 2, 3))
TEST, TRAIN = str(C / "digits_test.pt"), str(C / "digits_train.pt")

COMMANDS = {
    "barrier": ["barrier", A, B, "--data", TEST, "--steps", "3", "--align", "weight"],
    "compare": ["compare", A, B, "--data", TEST, "--steps", "3", "--methods", "weight"],
    "curve": ["curve", A, B, "--data", TEST, "--train", TRAIN, "--steps", "3", "--epochs", "1"],
    "landscape": ["landscape", A, "--data", TEST, "--resolution", "3"],
    "plane": ["plane", A, B, THIRD, "--data", TEST, "--resolution", "3"],
    "sharpness": [
        "sharpness",
        A,
        B,
        "--data",
        TEST,
        "--merge",
        "none",
        "--iterations",
        "5",
        "--trace-samples",
        "2",
        "--ascent-steps",
        "2",
        "--max-batches",
        "1",
    ],
    "align": ["align", A, B, "--data", TEST, "--steps", "3"],
}
"""Each command on the shipped width-128 digits models, small enough for a test."""

NOT_COMPARED = {"command", "seconds", "timings", "outputs", "written"}
"""JSON keys that name the run, not what it computed."""


def _run(name: str, device: str, tmp_path: Path) -> tuple[Any, Path]:
    out = tmp_path / f"{name}-{device}.json"
    result = CliRunner().invoke(main, [*COMMANDS[name], "--device", device, "--json", str(out)])
    return result, out


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_missing_device_is_one_line_and_writes_nothing(name: str, tmp_path: Path) -> None:
    result, out = _run(name, "cuda", tmp_path)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--device cuda" in lines[0] and "--device cpu" in lines[0]
    assert not out.exists()


def test_every_evaluating_command_takes_device() -> None:
    for name in [*COMMANDS, "merge"]:
        help_text = CliRunner().invoke(main, [name, "--help"]).output
        assert "--device [" in help_text, name


def _close(cpu: Any, gpu: Any, where: str = "") -> None:
    """The same JSON up to float tolerance, keys that describe the run left out."""
    if isinstance(cpu, dict):
        assert cpu.keys() == gpu.keys(), where
        for key in cpu.keys() - NOT_COMPARED:
            _close(cpu[key], gpu[key], f"{where}.{key}")
    elif isinstance(cpu, list):
        assert len(cpu) == len(gpu), where
        for i, (x, y) in enumerate(zip(cpu, gpu, strict=True)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(cpu, float) and isinstance(gpu, float):
        assert math.isclose(cpu, gpu, rel_tol=1e-3, abs_tol=1e-4) or cpu == gpu, (where, cpu, gpu)
    else:
        assert cpu == gpu, (where, cpu, gpu)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_command_on_cuda_computes_what_it_does_on_the_cpu(name: str, tmp_path: Path) -> None:
    (cpu, cpu_out), (gpu, gpu_out) = _run(name, "cpu", tmp_path), _run(name, "cuda", tmp_path)
    assert cpu.exit_code == 0 and gpu.exit_code == 0, (cpu.output, gpu.output)
    _close(json.loads(cpu_out.read_text()), json.loads(gpu_out.read_text()))
