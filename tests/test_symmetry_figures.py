"""``benchmarks/symmetry_figures.py`` draws the transformer figures from the stored runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import symmetry_figures  # noqa: E402

pytest.importorskip("matplotlib")


@pytest.mark.slow  # about 4 s (matplotlib)
def test_the_figures_are_drawn_from_the_stored_runs(tmp_path: Path) -> None:
    written = symmetry_figures.main(["--out", str(tmp_path)])
    assert [p.name for p in written] == ["transformers_barriers.png", "transformers_vit_curves.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_a_later_run_replaces_a_row_and_a_missing_run_is_skipped(tmp_path: Path) -> None:
    for name, barrier in (("one.json", 1.0), ("two.json", 2.0)):
        rows = {"naive": {"barrier": 3.0}, "full, weight": {"barrier": barrier}}
        (tmp_path / name).write_text(json.dumps({"numbers": {"llama": rows}}))
    found = symmetry_figures.rows(tmp_path, ("one.json", "absent.json", "two.json"), "llama")
    assert found["full, weight"]["barrier"] == 2.0 and found["naive"]["barrier"] == 3.0
