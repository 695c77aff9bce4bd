"""The five science studies run as a user runs them (``--quick``), and their numbers back
the claims of docs/science.md at the strength the docs state for the quick runs.

Each quick run is also compared with the stored quick result
(``results/science_<name>_quick.json``): every number of its printed table must agree to
10 % (or two units of its last printed digit), so a change that moves a study is seen
here even when the direction of the effect survives. The full-size numbers are checked
against ``results/science_<name>.json`` by tests/test_results.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from modeconnect.provenance import read_result

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(ROOT))

from tools import claims  # noqa: E402


def _run(name: str, tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / name
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / f"science_{name}.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "|---|" in proc.stdout  # the Markdown table
    assert list(out.glob("*.png")), "no plot written"
    record = read_result(out / f"{name}.json")
    _agrees_with_stored(name, record)
    return record


def _agrees_with_stored(name: str, record: dict[str, Any]) -> None:
    report = claims.script_module(f"examples/science_{name}.py").report
    stored = read_result(ROOT / "results" / f"science_{name}_quick.json")
    mine, theirs = claims.printed(report(record)), claims.printed(report(stored))
    assert len(mine) == len(theirs)
    for m, t in zip(mine, theirs, strict=True):
        assert m.value == pytest.approx(t.value, rel=0.1, abs=2 * max(m.unit, t.unit))


@pytest.mark.slow
def test_width_aligned_barrier_falls_with_width(tmp_path):
    rows = {r["width"]: r for r in _run("width", tmp_path)["summary"]}
    assert sorted(rows) == [16, 64, 256]
    for r in rows.values():
        assert r["aligned_test_loss"] < 0.4 * r["naive_test_loss"]
    # docs/science.md, quick claim: the aligned barrier falls at every step and by more
    # than 20x from width 16 to 256 (stored: 0.694, 0.074, 0.016 nats), while the naive
    # one stays above 1 nat.
    aligned = [rows[w]["aligned_test_loss"] for w in (16, 64, 256)]
    assert aligned[0] > aligned[1] > aligned[2]
    assert aligned[2] < aligned[0] / 20
    assert min(r["naive_test_loss"] for r in rows.values()) > 1.0


@pytest.mark.slow
def test_layerwise_single_layers_connect_and_the_cumulative_barrier_peaks_inside(tmp_path):
    settings = _run("layerwise", tmp_path)["settings"]
    assert set(settings) == {"naive", "aligned", "same init"}
    for data in settings.values():
        for r in data["layers"]:
            # "no single layer has a barrier along its own path (0.000 for every layer)"
            assert r["from_a_own"] < 0.0005 and r["from_b_own"] < 0.0005
    for label in ("naive", "aligned"):
        cumulative = [r["cumulative_full"] for r in settings[label]["layers"]]
        assert cumulative[-1] == pytest.approx(settings[label]["full_barrier"])
        assert max(cumulative[1:-1]) > cumulative[-1]
    # Averaging one layer of the unaligned pair keeps most of A's accuracy (stored quick:
    # 79-92 %, A 92 %); averaging all of them does not (31 %).
    naive = settings["naive"]
    single = [r["single_mid_accuracy"] for r in naive["layers"]]
    assert min(single) > naive["mid_accuracy"] + 0.4


@pytest.mark.slow
def test_bn_reset_and_repair_lower_the_aligned_barrier(tmp_path):
    rows = {r["norm"]: r for r in _run("bn_repair", tmp_path)["summary"]}
    assert {(n, r["correction"]) for n, r in rows.items()} == {
        ("none", "repair"), ("layer", "repair"), ("batch", "reset"),
    }  # fmt: skip
    for r in rows.values():
        assert r["endpoint_acc"] > 0.9
    # Quick claim (width 32, one pair): the BN reset removes over 75 % of the aligned
    # barrier (stored 83 %), REPAIR 25-40 % (stored 34 % plain, 30 % LayerNorm).
    assert rows["batch"]["recovered"] > 0.75
    for norm in ("none", "layer"):
        assert 0.25 < rows[norm]["recovered"] < 0.40


@pytest.mark.slow
def test_a_curve_connects_unaligned_endpoints(tmp_path):
    record = _run("curves", tmp_path)
    line, curve = record["rows"]
    assert (line["path"], curve["path"]) == ("line", "curve")
    # Quick claim (5 epochs): the test error barrier falls from 49.4 % on the line to
    # under 2 % on the Bezier curve (stored 1.58 %); the full run: 0.63 % (mean, three pairs).
    assert line["test_error_barrier"] == pytest.approx(0.494, abs=0.001)
    assert curve["test_error_barrier"] < 0.02
    assert curve["test_loss_barrier"] < 0.25 * line["test_loss_barrier"]
    assert set(record["plane"]["points"]) == {"A", "B", "bend"}


@pytest.mark.slow
def test_adaptive_sharpness_ignores_a_function_preserving_rescaling(tmp_path):
    models = _run("sharpness", tmp_path)["results"]["3x512"]["models"]
    assert set(models) == {"A", "B", "A rescaled", "merged"}
    a, scaled = models["A"], models["A rescaled"]
    assert scaled["loss"] == pytest.approx(a["loss"], rel=1e-4)
    assert scaled["adaptive_sharpness"] == pytest.approx(a["adaptive_sharpness"], rel=1e-2)
    # Quick claim (the shipped pair): the rescaling multiplies λ_max by 3 ± 0.5.
    ratio = scaled["top_eigenvalue"] / a["top_eigenvalue"]
    assert ratio == pytest.approx(3.0, abs=0.5)
    # "merged models come out sharper than their endpoints", on every measure.
    for key in ("top_eigenvalue", "trace", "plain_sharpness", "adaptive_sharpness"):
        assert models["merged"][key] > max(a[key], models["B"][key]), key
