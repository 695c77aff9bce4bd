"""The command line answers ``--help`` without importing torch, for every command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from modeconnect_cli.main import main

COMMANDS = sorted(main.commands)


def test_importing_the_command_line_does_not_import_torch() -> None:
    code = (
        "import sys, modeconnect_cli.main; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_help_of_every_command_does_not_import_torch() -> None:
    code = (
        "import sys; from modeconnect_cli.main import main\n"
        f"for name in [None, *{COMMANDS!r}]:\n"
        "    try:\n"
        "        main([name, '--help'] if name else ['--help'], prog_name='modeconnect')\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, (name, exc.code)\n"
        "    assert 'torch' not in sys.modules, name\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for name in COMMANDS:
        assert f"modeconnect {name} [OPTIONS]" in proc.stdout, name


def test_the_new_commands_are_registered() -> None:
    assert {"curve", "plane", "landscape", "sharpness"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_exits_0_in_a_subprocess(command: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "modeconnect_cli.main", command, "--help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout and "--help" in proc.stdout


def test_names_written_out_for_the_command_line_match_the_library() -> None:
    from modeconnect.curvature import NORMS, SPECTRUM_METHODS
    from modeconnect.curve_fitting import CURVE_KINDS
    from modeconnect_cli import options, sharpness

    assert tuple(CURVE_KINDS) == options.CURVE_KINDS
    assert sharpness.SPECTRUM_METHODS == SPECTRUM_METHODS and sharpness.NORMS == NORMS
