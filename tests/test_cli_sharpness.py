"""``modeconnect sharpness``: the library's numbers, a merged point, names, the report."""

from __future__ import annotations

import json

import pytest
from study_files import (
    Bench,
    assert_outputs_spare_inputs,
    assert_refused,
    files_fixture,  # noqa: F401 (the ``files`` fixture)
    run,
    run_in_a_process,
)

import modeconnect as mc

QUICK = ("--iterations", "4", "--trace-samples", "3", "--ascent-steps", "2")


def test_sharpness_of_a_is_what_the_library_says(files: Bench) -> None:
    js = files.root / "s.json"
    code, out, err = run("sharpness", files.a, files.b, "--data", files.train, *QUICK,
                         "--top-k", "2", "--seed", "5", "--json", js)  # fmt: skip
    assert code == 0, err
    assert "A " in out and "B " in out and "eigenvalues by lanczos" in out
    data = json.loads(js.read_text())
    assert data["checkpoints"] == {"A": str(files.a), "B": str(files.b)}
    assert f" sharpness {files.a} {files.b} --data " in data["command"]
    a = mc.load(files.a)
    model = mc.resolve_model([a]).model
    want = mc.sharpness(model, a.state_dict, mc.load_data(files.train), k=2, iterations=4,
                        trace_samples=3, ascent_steps=2, seed=5).to_dict()  # fmt: skip
    got = data["models"]["A"]
    assert set(got) == set(want)
    for key in ("loss", "top_eigenvalue", "trace", "adaptive_sharpness", "plain_sharpness"):
        assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-9), key
    assert got["spectrum"]["eigenvalues"] == pytest.approx(want["spectrum"]["eigenvalues"])


def test_a_merge_and_names(files: Bench) -> None:
    js, report = files.root / "s.json", files.root / "rep"
    code, out, err = run("sharpness", files.a, files.b, files.c, "--names", "p,q,r", "--merge",
                         "naive", "--data", files.train, *QUICK, "--json", js, "--report",
                         report)  # fmt: skip
    assert code == 0, err
    data = json.loads(js.read_text())
    assert list(data["models"]) == ["p", "q", "r", "merged"]
    assert data["params"]["merge"] == "naive" and data["params"]["alpha"] == 0.5
    assert {p.name for p in report.iterdir()} == {"sharpness.png", "report.html"}
    assert "merged" in out and "Sharpness" in (report / "report.html").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["A", "--merge", "weight"], "merges the first two checkpoints, got 1"),
        (["A", "B", "--names", "x"], "needs 2 different labels"),
        (["A", "B", "--merge", "naive", "--names", "x,merged"], "none of them 'merged'"),
    ],
)
def test_bad_names_and_merges_are_refused(files: Bench, args: list[str], expect: str) -> None:
    paths = {"A": str(files.a), "B": str(files.b)}
    assert_refused(files.root, "sharpness", *(paths.get(x, x) for x in args), "--data",
                   files.train, "--json", files.root / "s.json", expect=(expect,))  # fmt: skip


@pytest.mark.parametrize("option", ["--json", "--report"])
def test_no_output_may_overwrite_an_input(files: Bench, option: str) -> None:
    assert_outputs_spare_inputs(files, option, "sharpness.png", "sharpness", files.a)


@pytest.mark.slow
def test_sharpness_in_a_subprocess(files: Bench) -> None:
    out, data = run_in_a_process(files.root / "s.json", "sharpness", files.a, "--data", files.train,
                                 *QUICK)  # fmt: skip
    assert "adaptive ρ=0.5" in out
    assert list(data["models"]) == ["A"]
