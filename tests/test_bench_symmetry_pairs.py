"""``benchmarks/bench_symmetry.py --pairs``: the mean and sample sd per row over seed pairs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "examples"))

bench_symmetry = pytest.importorskip("bench_symmetry")


def test_the_summary_is_the_mean_and_sample_sd_of_the_rows_every_pair_ran() -> None:
    pairs = {
        "0,1": {"naive": {"barrier": 1.0, "share_of_naive": 1.0},
                "orthogonal, weight": {"barrier": 0.2, "share_of_naive": 0.2}},
        "2,3": {"naive": {"barrier": 3.0, "share_of_naive": 1.0},
                "orthogonal, weight": {"barrier": 0.9, "share_of_naive": 0.3},
                "orthogonal, learned": {"barrier": 0.1, "share_of_naive": 0.05}},
    }  # fmt: skip
    out = bench_symmetry.summary(pairs)
    assert set(out) == {"naive", "orthogonal, weight"}  # a row missing from one pair is left out
    assert out["naive"]["barrier"] == pytest.approx(2.0)
    assert out["naive"]["barrier_sd"] == pytest.approx(2**0.5)  # sample sd (n - 1)
    assert out["orthogonal, weight"]["share_of_naive"] == pytest.approx(0.25)
    assert out["orthogonal, weight"]["share_of_naive_sd"] == pytest.approx(0.05 * 2**0.5)
    text = bench_symmetry.report_pairs({"llama_summary": out, "llama_pairs": pairs})
    assert "| orthogonal, weight | 0.550 ± 0.495 | 25 ± 7 % | 2 | 20, 30 % |" in text
    assert text.index("| naive |") < text.index("| orthogonal, weight |")


def test_the_table_is_titled_by_the_family_the_record_holds() -> None:
    pairs = {"4,5": {"naive": {"barrier": 0.5, "share_of_naive": 1.0}}}
    summary = bench_symmetry.summary(pairs)
    assert bench_symmetry.report_pairs({"vit_summary": summary, "vit_pairs": pairs}).startswith(
        "## Digits ViTs, seed pairs\n"
    )
    gpt2 = bench_symmetry.report_pairs({"gpt2_summary": summary, "gpt2_pairs": pairs})
    assert gpt2.startswith("## Tiny GPT-2s, seed pairs\n")
    assert "| naive | 0.500 ± 0.000 | 100 ± 0 % | 1 | 100 % |" in gpt2  # one pair: sd 0
    llama = bench_symmetry.report_pairs(
        {"llama_summary": summary, "llama_pairs": pairs, "vit_summary": {}}, "llama"
    )
    assert llama.startswith("## Tiny Llamas, seed pairs\n")


def test_pairs_take_one_family(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench_symmetry.main(["--family", "both", "--pairs", "0,1", "2,3"])
    assert exit_info.value.code == 2
    assert "--pairs takes one --family: llama, gpt2 or vit" in capsys.readouterr().err
