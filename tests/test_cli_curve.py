"""``modeconnect curve``: outputs only when asked, the bend as a checkpoint, barrier's JSON keys."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from study_files import (
    Bench,
    assert_refused,
    files_fixture,  # noqa: F401 (the ``files`` fixture)
    run,
    run_in_a_process,
    snapshot,
)

import modeconnect as mc

QUICK = ("--epochs", "2", "--batch-size", "16", "--steps", "5")


def _curve(f: Bench, *extra: object) -> tuple[int, str, str]:
    return run("curve", f.a, f.b, "--train", f.train, "--data", f.test, *QUICK, *extra)


def test_curve_writes_nothing_unless_asked(files: Bench) -> None:
    before = snapshot(files.root)
    code, out, err = _curve(files)
    assert code == 0, err
    assert snapshot(files.root) == before
    assert "bezier, 1 bend(s): 2 epochs, 6 steps" in out
    assert "line       test" in out and "bezier     train" in out and "wrote" not in out


def test_curve_writes_bend_json_and_report(files: Bench) -> None:
    bend, js, report = files.root / "bend.pt", files.root / "c.json", files.root / "rep"
    code, out, err = _curve(files, "--bend", bend, "--json", js, "--report", report)
    assert code == 0, err
    assert f"wrote      bend: {bend}" in out and f"wrote      json: {js}" in out
    assert {p.name for p in report.iterdir()} == {"curve.png", "report.html"}
    page = (report / "report.html").read_text(encoding="utf-8")
    assert 'href="curve.png"' in page and "Line and curve" in page and "--epochs 2" in page
    data = json.loads(js.read_text())
    assert data["outputs"] == {
        "bend": str(bend),
        "report": str(report / "report.html"),
        "plot_curve": str(report / "curve.png"),
        "json": str(js),
    }
    assert data["examples"] == {"test": 40, "train": 40} and data["fit"]["kind"] == "bezier"
    meta = mc.load(bend).metadata
    assert meta["modeconnect.role"] == "curve bend" and meta["modeconnect.curve"] == "bezier"


def test_outputs_may_lie_in_the_report_folder_it_creates(files: Bench) -> None:
    report = files.root / "runs" / "curve"
    bend, js = report / "bend.pt", report / "curve.json"
    code, _, err = _curve(files, "--report", report, "--bend", bend, "--json", js)
    assert code == 0, err
    assert {p.name for p in report.iterdir()} == {"bend.pt", "curve.json", "curve.png",
                                                  "report.html"}  # fmt: skip


def test_the_bend_loads_back_as_curve_study_trains_it(files: Bench) -> None:
    bend = files.root / "bend.pt"
    assert _curve(files, "--seed", "3", "--bend", bend)[0] == 0
    a, b = mc.load(files.a), mc.load(files.b)
    model = mc.resolve_model([a, b]).model
    study = mc.curve_study(
        model, a.state_dict, b.state_dict, train=mc.load_data(files.train, batch_size=16),
        test=mc.load_data(files.test, batch_size=16), epochs=2, batch_size=16, steps=5, seed=3,
    )  # fmt: skip
    written = mc.load(bend)
    assert written.model_ref == "modeconnect.models:mlp"  # loads back as a model
    assert set(written.state_dict) == set(study.fit.bends[0])
    for key, value in study.fit.bends[0].items():
        torch.testing.assert_close(written.state_dict[key], value, rtol=0, atol=0)


def test_curve_json_has_the_keys_and_line_of_barrier_json(files: Bench) -> None:
    cj, bj = files.root / "curve.json", files.root / "barrier.json"
    assert _curve(files, "--json", cj)[0] == 0
    code, _, err = run("barrier", files.a, files.b, "--data", files.test, "--train", files.train,
                       "--align", "none", "--steps", "5", "--json", bj)  # fmt: skip
    assert code == 0, err
    curve, barrier = json.loads(cj.read_text()), json.loads(bj.read_text())
    naive = barrier["naive"]
    for path in ("line", "curve"):
        assert set(curve[path]) == set(naive) - {"bootstrap"}, path
        assert set(curve[path]["splits"]) == set(naive["splits"]) == {"test", "train"}
        for split in ("test", "train"):
            assert set(curve[path]["splits"][split]) == set(naive["splits"][split])
    shared = {"a", "b", "model", "examples", "command", "definition", "bn", "loss", "alphas"}
    assert shared | {"splits", "seconds", "outputs"} <= set(curve) & set(barrier)
    assert curve["alphas"] == barrier["alphas"]
    for key in ("loss", "error", "definition"):
        assert curve["line"]["barrier"][key] == pytest.approx(naive["barrier"][key], abs=1e-6)
        assert curve["line"]["mean"][key] == pytest.approx(naive["mean"][key], abs=1e-6)
    for p, q in zip(curve["line"]["curve"], naive["curve"], strict=True):
        assert set(p) == set(q) and p["loss"] == pytest.approx(q["loss"], rel=1e-6)


def test_curve_after_alignment_writes_aligned_b(files: Bench) -> None:
    aligned, js = files.root / "b_aligned.safetensors", files.root / "c.json"
    code, out, err = _curve(files, "--align", "weight", "--aligned", aligned, "--json", js)
    assert code == 0, err
    assert "alignment  weight: objective" in out and f"wrote      aligned: {aligned}" in out
    data = json.loads(js.read_text())
    assert data["alignment"]["method"] == "weight" and data["equivalence"]["passed"]
    b_aligned = mc.load(aligned)
    assert b_aligned.metadata["modeconnect.role"] == "b aligned to a"


def test_a_polychain_with_two_bends_writes_one_file_per_bend(files: Bench) -> None:
    one, two = files.root / "one.pt", files.root / "two.pt"
    code, out, err = _curve(files, "--curve", "polychain", "--bends", "2", "--bend", one,
                            "--bend", two)  # fmt: skip
    assert code == 0, err
    assert "polychain, 2 bend(s)" in out
    assert mc.load(one).metadata["modeconnect.bend"] == "1/2"
    assert mc.load(two).metadata["modeconnect.bend"] == "2/2"


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        (["--steps", "4"], "--steps 4 is not an odd number"),
        (["--bends", "2", "--bend", "x.pt"], "1 --bend files for a curve with 2 bends"),
        (["--aligned", "x.pt"], "no alignment was asked for"),
        (["--bend", "x.json"], "needs a checkpoint extension"),
        (["--bn", "reset"], "no BatchNorm layer"),
    ],
)
def test_curve_refuses_bad_options_before_training(files: Bench, extra, expect) -> None:
    args = [str(files.root / a) if a.startswith("x.") else a for a in extra]
    assert_refused(files.root, "curve", files.a, files.b, "--train", files.train, "--data",
                   files.test, *args, expect=(expect,))  # fmt: skip


@pytest.mark.parametrize("option", ["--bend", "--aligned", "--json", "--report"])
def test_no_output_may_overwrite_an_input(files: Bench, option: str) -> None:
    align = ["--align", "weight"] if option == "--aligned" else []
    target = {"--bend": files.a, "--aligned": files.b, "--json": files.root / "t.json"}
    if option == "--json":
        shutil.copy(files.test, target["--json"])
        data = target["--json"]
    elif option == "--report":
        (files.root / "rep").mkdir()
        data = files.root / "rep" / "curve.png"  # the report would write its plot over it
        shutil.copy(files.test, data)
        target["--report"] = files.root / "rep"
    else:
        data = files.test
    assert_refused(
        files.root,
        "curve",
        files.a,
        files.b,
        "--train",
        files.train,
        "--data",
        data,
        *align,
        option,
        target[option],
        expect=("would overwrite the input",),
    )


def test_an_existing_plot_needs_force(files: Bench) -> None:
    report = files.root / "rep"
    report.mkdir()
    (report / "curve.png").write_text("old")
    assert_refused(files.root, "curve", files.a, files.b, "--train", files.train, "--data",
                   files.test, "--report", report,
                   expect=("curve.png: already exists (--report)", "--force"))  # fmt: skip
    assert _curve(files, "--report", report, "--force")[0] == 0
    assert (report / "curve.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_curve_in_a_subprocess(files: Bench) -> None:
    out, data = run_in_a_process(files.root / "c.json", "curve", files.a, files.b, "--train",
                                 files.train, "--data", files.test, *QUICK)  # fmt: skip
    assert "bezier     test" in out
    command = data["command"]
    assert " curve " in command and "--epochs 2" in command and "''" not in command
