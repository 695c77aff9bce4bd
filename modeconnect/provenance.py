"""Where a published number came from: one JSON file per table or figure under ``results/``.

Every benchmark, science and federated script writes its numbers with
:func:`write_result`, which stores them beside the command that produced them, the git
commit, the versions of the packages that computed them, the machine, the seeds and the
date. Docs tables are checked against these files (``tests/test_results.py``), so a stale
number is a failing test rather than a silent drift.

>>> entry = provenance(seeds=[0, 1], command=["python", "examples/x.py"])
>>> sorted(entry)
['command', 'commit', 'date', 'machine', 'seeds', 'versions']
>>> entry["seeds"], entry["command"]
([0, 1], 'python examples/x.py')
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["PACKAGES", "provenance", "read_result", "seed_pair", "spread", "write_result"]

# The packages whose version can change a number modeconnect publishes.
PACKAGES = ("modeconnect", "torch", "numpy", "scipy", "POT", "transformers", "flwr", "ray")


def provenance(
    *, seeds: Iterable[int] = (), command: Sequence[str] | str | None = None
) -> dict[str, Any]:
    """The record that makes a result reproducible: command, commit, versions, machine, seeds, date.

    ``command`` defaults to this process's own command line (``sys.argv``), written as a
    shell would take it. A command that starts with a script (``benchmarks/x.py ...``, as
    ``sys.argv`` holds it) is recorded as ``python`` runs it, so it can be pasted back:

    >>> provenance(command=["benchmarks/x.py", "--out", "a b"])["command"]
    "python benchmarks/x.py --out 'a b'"
    >>> provenance(command="examples/y.py --quick")["command"]
    'python examples/y.py --quick'
    """
    argv = list(sys.argv) if command is None else command
    line = argv if isinstance(argv, str) else shlex.join(str(a) for a in argv)
    return {
        "command": _interpreted(line),
        "commit": _commit(),
        "versions": _versions(),
        "machine": _machine(),
        "seeds": [int(s) for s in seeds],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_result(
    path: str | os.PathLike[str],
    numbers: Mapping[str, Any],
    *,
    seeds: Iterable[int] = (),
    command: Sequence[str] | str | None = None,
) -> Path:
    """Write ``{"numbers": ..., "provenance": ...}`` to ``path`` (JSON, keys sorted); return it.

    The file is written whole through a temporary sibling and renamed, so a reader never
    sees half of it.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    body = {"numbers": numbers, "provenance": provenance(seeds=seeds, command=command)}
    text = json.dumps(body, indent=2, sort_keys=True, allow_nan=False) + "\n"
    temporary = target.with_name(f".{target.name}.partial")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(target)
    return target


def spread(values: Iterable[float]) -> dict[str, Any]:
    """A row over seed pairs: mean, sample standard deviation (0 for one pair), every value.

    >>> spread([1.0, 2.0, 3.0])
    {'mean': 2.0, 'sd': 1.0, 'pairs': [1.0, 2.0, 3.0]}
    """
    values = [float(v) for v in values]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "pairs": values}


def seed_pair(text: str) -> tuple[int, int]:
    """``"A,B"`` as two seeds (an ``argparse`` type for a script's ``--pairs``).

    >>> seed_pair("3,4")
    (3, 4)
    """
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: each pair is two seeds, A,B")
    return int(parts[0]), int(parts[1])


def read_result(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``numbers`` of a stored result (its provenance is under ``"provenance"`` in the file)."""
    body = json.loads(Path(path).read_text(encoding="utf-8"))
    numbers = body.get("numbers") if isinstance(body, dict) else None
    if not isinstance(numbers, dict):
        raise ValueError(f"{path}: not a stored result (expected a 'numbers' object)")
    return numbers


def _interpreted(line: str) -> str:
    """``line`` as the interpreter runs it: ``python`` first where it starts with a script."""
    try:
        first = shlex.split(line)[:1]
    except ValueError:  # unbalanced quotes: keep the line as given
        return line
    return f"python {line}" if first and first[0].endswith(".py") else line


OUTPUTS = ("results", "*.png", "*.md")  # what a run writes or documents, not code


def _commit() -> str | None:
    """The commit the run started from, ``+dirty`` if the tree was not clean then or moved
    since (a commit, checkout or edit while the run computed)."""
    now = _git_commit()
    if now != _AT_START and _AT_START is not None and not _AT_START.endswith("+dirty"):
        return f"{_AT_START}+dirty"
    return _AT_START


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        # Stored results, plots and prose do not change a number: a run of ``reproduce``
        # that has already rewritten some of them still records a clean commit.
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(root),
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                *(f":(exclude){p}" for p in OUTPUTS),
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return f"{commit}+dirty" if dirty.stdout.strip() else commit


def _versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    found["python"] = platform.python_version()
    return found


def _machine() -> dict[str, Any]:
    machine: dict[str, Any] = {
        "system": platform.system(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
    }
    try:
        import torch

        machine["threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            machine["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# A script imports this module before it computes, so this is the tree its numbers came from.
_AT_START = _git_commit()
