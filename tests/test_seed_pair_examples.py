"""The README demos over several seed pairs: the stored mean ± sd and per-pair values are
the pairs' own numbers, and the README tables print them (``--pairs``)."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools import claims  # noqa: E402

BN = claims.script_module("examples/bn_reset_digits.py")
MNIST = claims.script_module("examples/mnist_scale_digits.py")
PATHS = [("none", "naive"), ("none", "aligned"), ("reset", "naive"), ("reset", "aligned")]
unit = st.floats(0.0, 1.0, allow_nan=False)


def _bn_pair(values: list[float], ends: tuple[float, float]) -> dict:
    rows = [
        {
            "bn": bn,
            "path": path,
            "loss_barrier": 2 * v,
            "error_barrier": v / 2,
            "mid_accuracy": 1 - v / 2,
        }
        for (bn, path), v in zip(PATHS, values, strict=True)
    ]
    return {"rows": rows, "endpoint_accuracy": list(ends)}  # fmt: skip


@settings(deadline=None, max_examples=30)
@given(st.lists(st.tuples(st.lists(unit, min_size=4, max_size=4), st.tuples(unit, unit)),
                min_size=1, max_size=4))  # fmt: skip
def test_bn_summary_is_each_rows_mean_sd_and_values(pairs) -> None:
    stored = {f"{2 * i + 1},{2 * i + 2}": _bn_pair(v, e) for i, (v, e) in enumerate(pairs)}
    out = BN.summary(stored)
    for j, row in enumerate(out["rows"]):
        assert (row["bn"], row["path"]) == PATHS[j]
        for key in BN.KEYS:
            values = [p["rows"][j][key] for p in stored.values()]
            assert row[key]["pairs"] == values
            assert row[key]["mean"] == pytest.approx(statistics.fmean(values))
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            assert row[key]["sd"] == pytest.approx(sd, abs=1e-12)
    ends = [a for _, e in pairs for a in e]
    assert out["endpoint_accuracy"]["pairs"] == ends
    assert out["endpoint_accuracy"]["mean"] == pytest.approx(statistics.fmean(ends))


def test_bn_report_prints_mean_sd_and_every_pair() -> None:
    stored = {"1,2": _bn_pair([0.5, 0.1, 0.3, 0.02], (0.99, 0.98)),
              "3,4": _bn_pair([0.3, 0.2, 0.1, 0.04], (0.97, 0.98))}  # fmt: skip
    (table,) = claims.tables(BN.report({"summary": BN.summary(stored)}))
    assert table.header[2:] == ["loss barrier", "error barrier", "acc at α = 0.5",
                                "loss barrier by pair"]  # fmt: skip
    first = table.rows[0]  # none, naive: loss 1.0 and 0.6
    assert first[:2] == ["none", "naive"]
    assert [p.value for p in claims.printed(first[2])] == [0.8, pytest.approx(0.2828, abs=1e-4)]
    assert [p.value for p in claims.printed(first[5])] == [1.0, 0.6]
    assert [p.value for p in claims.printed(table.rows[3][4])] == [98.5, 0.7]


def test_bn_pairs_that_are_not_two_seeds_are_refused(monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["bn_reset_digits.py", "--pairs", "1,2", "3"])
    with pytest.raises(SystemExit) as exit_:
        BN.main()
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith("each pair is two seeds, A,B")


def _report(naive: float, aligned: float, mid: float) -> dict:
    """A stored ``AlignReport`` of three α: the middle one at 0.5 (accuracy ``mid``)."""

    def path(loss: float) -> dict:
        curve = [{"alpha": a, "accuracy": acc, "loss": 0.0}
                 for a, acc in ((0.0, 0.9), (0.5, mid), (1.0, 0.9))]  # fmt: skip
        return {"barrier": {"loss": loss, "error": 0.0}, "curve": curve}

    return {"naive": path(naive), "aligned": path(aligned)}


def test_mnist_summary_reads_the_midpoint_of_every_pair() -> None:
    reports = {"1,2": _report(1.2, 0.004, 0.6), "3,4": _report(1.0, 0.006, 0.5),
               "5,6": _report(1.1, 0.008, 0.7)}  # fmt: skip
    out = MNIST.summary(reports)
    assert out["naive_loss_barrier"]["pairs"] == [1.2, 1.0, 1.1]
    assert out["naive_loss_barrier"]["mean"] == pytest.approx(1.1)
    assert out["aligned_loss_barrier"]["sd"] == pytest.approx(0.002)
    assert out["aligned_mid_accuracy"]["pairs"] == [0.6, 0.5, 0.7]
    assert MNIST.summary({"1,2": reports["1,2"]})["naive_mid_accuracy"]["sd"] == 0.0
