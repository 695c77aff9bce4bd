"""The README's command-line numbers, stored: ``compare`` and ``barrier --layerwise`` on the
shipped digits pair, run as a user runs them, each JSON kept under ``results/`` with its
provenance (``python -m tools.readme_runs``; ``tools.reproduce`` runs it).

:func:`report` prints the README's ``compare`` table from the stored numbers (without the
seconds column, a benchmark), so :mod:`tools.claims` can check the README against it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from modeconnect.provenance import write_result

ROOT = Path(__file__).resolve().parents[1]
PAIR = ("checkpoints/mlp_a.pt", "checkpoints/mlp_b.pt")
DATA = ("--data", "checkpoints/digits_test.pt", "--train", "checkpoints/digits_train.pt")
# (tools.reproduce reads the .json names below to see which results it rewrites)
RUNS = {
    "results/readme_compare.json": ("compare", *PAIR, *DATA),
    "results/readme_layerwise.json": ("barrier", *PAIR, *DATA, "--layerwise", "--quiet"),
}
LABELS = {"weight": "weight", "activation": "activation", "ot": "ot (emd, weight cost)"}


def run(result: str, args: tuple[str, ...]) -> None:
    """``modeconnect --threads 1 ARGS --json TMP``, stored at ``result`` with provenance."""
    command = ["modeconnect", "--threads", "1", *args]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        argv = [sys.executable, "-m", "modeconnect_cli.main", *command[1:], "--json", str(report)]
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
        numbers = json.loads(report.read_text(encoding="utf-8"))
    write_result(ROOT / result, numbers, seeds=[0], command=command)
    print(f"wrote {result}")


def report(numbers: dict[str, Any]) -> str:
    """The README's ``compare`` table (seconds left out: they are a benchmark)."""
    lines = ["| method | objective | loss barrier naive → aligned | "
             "error barrier naive → aligned |", "|---|---|---|---|"]  # fmt: skip
    for row in numbers["rows"]:
        naive, aligned = row["naive"], row["aligned"]
        lines.append(
            f"| {LABELS.get(row['method'], row['method'])} | {row['objective']:.6g} | "
            f"{naive['loss']:.4f} → {aligned['loss']:.4f} | "
            f"{naive['error']:.2%} → {aligned['error']:.2%} |"
        )
    return "\n".join(lines)


def single_layer_range(numbers: dict[str, Any], pair: str) -> list[float]:
    """Smallest and largest barrier of one layer moved alone (from A, or from B)."""
    layers = [layer for layer in numbers["layerwise"] if layer["pair"] == pair]
    values = [layer[v]["barrier"]["loss"] for layer in layers for v in ("from_a", "from_b")]
    return [min(values), max(values)]


def main() -> None:
    for result, args in RUNS.items():
        run(result, args)


if __name__ == "__main__":
    main()
