"""The docs' figure scripts draw from the stored runs, never from a rerun:
``benchmarks/symmetry_figures.py`` (transformers) and ``examples/merging_figures.py``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "examples"))

import merging_figures  # noqa: E402
import symmetry_figures  # noqa: E402

pytest.importorskip("matplotlib")

DRAWN = [
    (symmetry_figures, ["transformers_barriers.png", "transformers_vit_curves.png"]),
    (merging_figures, ["merging_class_split.png", "merging_width_fusion.png",
                       "merging_n_way.png", "merging_lm_width.png"]),
]  # fmt: skip


@pytest.mark.slow  # about 4 s each (matplotlib)
@pytest.mark.parametrize(("script", "names"), DRAWN, ids=lambda x: getattr(x, "__name__", ""))
def test_the_figures_are_drawn_from_the_stored_runs(
    script: ModuleType, names: list[str], tmp_path: Path
) -> None:
    written = script.main(["--out", str(tmp_path)])
    assert [p.name for p in written] == names
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_a_later_run_replaces_a_row_and_a_missing_run_is_skipped(tmp_path: Path) -> None:
    for name, barrier in (("one.json", 1.0), ("two.json", 2.0)):
        rows = {"naive": {"barrier": 3.0}, "full, weight": {"barrier": barrier}}
        (tmp_path / name).write_text(json.dumps({"numbers": {"llama": rows}}))
    found = symmetry_figures.rows(tmp_path, ("one.json", "absent.json", "two.json"), "llama")
    assert found["full, weight"]["barrier"] == 2.0 and found["naive"]["barrier"] == 3.0


def test_merging_bars_are_the_stored_means_best_first(tmp_path: Path) -> None:
    accuracy = {"plain": {"mean": 0.5, "std": 0.1}, "zip": {"mean": 0.8, "std": 0.02}}
    (tmp_path / "run.json").write_text(json.dumps({"numbers": {"accuracy": accuracy}}))
    found = merging_figures.numbers(tmp_path, "run.json")
    assert found is not None
    assert merging_figures.accuracy_bars(found) == [("zip", 0.8, 0.02), ("plain", 0.5, 0.1)]
    assert merging_figures.numbers(tmp_path, "absent.json") is None
    assert merging_figures.main(["--out", str(tmp_path / "out")], root=tmp_path) == []


def test_lm_bars_are_the_stored_means_best_first_with_each_triple() -> None:
    runs = [{"row": "A", "perplexity": p} for p in (80.0, 90.0)] + [
        {"row": "fused", "perplexity": p} for p in (150.0, 170.0)
    ]
    rows = {"fused": {"perplexity": 160.0, "perplexity_std": 14.1},
            "A": {"perplexity": 85.0, "perplexity_std": 7.1}}  # fmt: skip
    assert merging_figures.lm_bars({"rows": rows, "runs": runs}) == [
        ("A", 85.0, 7.1, [80.0, 90.0]),
        ("fused", 160.0, 14.1, [150.0, 170.0]),
    ]
