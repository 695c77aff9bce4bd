"""``examples/merging_figures.py`` draws the merging figures from the stored runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import merging_figures  # noqa: E402

pytest.importorskip("matplotlib")


@pytest.mark.slow  # about 4 s (matplotlib)
def test_the_figures_are_drawn_from_the_stored_runs(tmp_path: Path) -> None:
    written = merging_figures.main(["--out", str(tmp_path)])
    assert [p.name for p in written] == [
        "merging_class_split.png", "merging_width_fusion.png", "merging_n_way.png",
        "merging_lm_width.png",
    ]  # fmt: skip
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_bars_are_the_stored_means_best_first_and_a_missing_run_is_skipped(
    tmp_path: Path,
) -> None:
    accuracy = {"plain": {"mean": 0.5, "std": 0.1}, "zip": {"mean": 0.8, "std": 0.02}}
    (tmp_path / "run.json").write_text(json.dumps({"numbers": {"accuracy": accuracy}}))
    found = merging_figures.numbers(tmp_path, "run.json")
    assert found is not None
    assert merging_figures.accuracy_bars(found) == [("zip", 0.8, 0.02), ("plain", 0.5, 0.1)]
    assert merging_figures.numbers(tmp_path, "absent.json") is None
    assert merging_figures.main(["--out", str(tmp_path / "out")], root=tmp_path) == []
