"""Same inputs and seed, same bytes; and an interrupted run leaves no partial output."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from modeconnect.files.checkpoints import save_checkpoint
from modeconnect.files.targets import Staging
from modeconnect_cli.main import main

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT / "checkpoints"


def _align(out_dir: Path) -> dict:  # type: ignore[type-arg]
    out_dir.mkdir()
    args = [
        "align", CHECKPOINTS / "mlp_a.pt", CHECKPOINTS / "mlp_b.safetensors",
        "--data", CHECKPOINTS / "digits_test.pt", "--steps", "3", "--seed", "7",
        "--out", out_dir / "b.safetensors", "--merged", out_dir / "m.pt",
        "--json", out_dir / "r.json",
    ]  # fmt: skip
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    report = _without_timings(json.loads((out_dir / "r.json").read_text()))
    report.pop("outputs")
    return report


def _without_timings(obj: object) -> object:
    """The JSON without wall-clock measurements (keys naming seconds), which may differ."""
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if "seconds" not in k}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def test_two_runs_write_byte_identical_checkpoints(tmp_path: Path) -> None:
    first, second = _align(tmp_path / "1"), _align(tmp_path / "2")
    assert first == second
    for name in ("b.safetensors", "m.pt"):
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes(), name


@pytest.mark.parametrize("ext", [".pt", ".safetensors"])
def test_save_checkpoint_is_byte_identical_whatever_the_name_and_metadata_order(
    tmp_path: Path, ext: str
) -> None:
    sd = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3)}
    meta = {f"k{i}": str(i) for i in range(12)}
    reordered = dict(reversed(list(meta.items())))
    one = save_checkpoint(tmp_path / f"one{ext}", sd, model_ref="m:f", metadata=meta)
    two = save_checkpoint(tmp_path / f"two{ext}", sd, model_ref="m:f", metadata=reordered)
    assert one.read_bytes() == two.read_bytes()


def test_staging_removes_its_files_and_folders_when_interrupted(tmp_path: Path) -> None:
    target = tmp_path / "new" / "deeper" / "report.html"
    with pytest.raises(SystemExit), Staging() as staging:
        staging.folder(target.parent)
        staging.write_text(target, "<html>")
        staging.write_bytes(tmp_path / "other.pt", b"x")
        raise SystemExit(143)  # what SIGTERM becomes in the CLI
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.slow
def test_sigterm_leaves_either_every_output_or_none(tmp_path: Path) -> None:
    outputs = [tmp_path / "b.pt", tmp_path / "m.pt", tmp_path / "r.json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "modeconnect_cli.main", "align", str(CHECKPOINTS / "mlp_a.pt"),
         str(CHECKPOINTS / "mlp_b.pt"), "--data", str(CHECKPOINTS / "digits_test.pt"),
         "--steps", "101", "--out", str(outputs[0]), "--merged", str(outputs[1]),
         "--json", str(outputs[2])],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(4.0)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert "Traceback" not in stderr
    left = sorted(p.name for p in tmp_path.iterdir())
    if proc.returncode == 0:  # finished before the signal: everything is there
        assert left == sorted(p.name for p in outputs)
    else:
        assert proc.returncode == 128 + signal.SIGTERM
        assert left == []
