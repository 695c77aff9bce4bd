"""``modeconnect landscape``: filter-normalised slices and surfaces, seeded, as the library's."""

from __future__ import annotations

import json

import pytest
import torch
from study_files import (
    Bench,
    assert_outputs_spare_inputs,
    files_fixture,  # noqa: F401 (the ``files`` fixture)
    run,
    run_in_a_process,
    snapshot,
)

import modeconnect as mc


def _grid(f: Bench, name: str, *extra: object) -> dict:
    path = f.root / f"{name}.json"
    code, _, err = run("landscape", f.a, "--data", f.test, "--resolution", "5", "--json", path,
                       *extra)  # fmt: skip
    assert code == 0, err
    return json.loads(path.read_text())


def test_the_same_seed_gives_the_same_landscape(files: Bench) -> None:
    first, again = _grid(files, "one", "--seed", "7"), _grid(files, "two", "--seed", "7")
    other = _grid(files, "three", "--seed", "8")
    assert first["loss"] == again["loss"] and first["accuracy"] == again["accuracy"]
    assert first["loss"] != other["loss"]
    assert first["kind"] == "filter_normalized" and first["params"]["seed"] == 7
    assert len(first["loss"]) == 5 and first["points"] == {"model": [0.0, 0.0]}
    assert first["checkpoint"] == str(files.a) and first["dims"] == 2


def test_a_slice_is_the_library_slice(files: Bench) -> None:
    data = _grid(files, "slice", "--dims", "1", "--span", "-0.5,2", "--seed", "3")
    a = mc.load(files.a)
    model = mc.resolve_model([a]).model
    line = mc.slice_1d(model, a.state_dict, mc.load_data(files.test), seed=3, span=(-0.5, 2.0),
                       steps=5)  # fmt: skip
    assert data["xs"] == pytest.approx([-0.5, 0.125, 0.75, 1.375, 2.0])
    torch.testing.assert_close(torch.tensor(data["loss"]), torch.tensor(line.loss))
    assert data["params"]["span"] == [-0.5, 2.0]


@pytest.mark.parametrize(("dims", "plot"), [("1", "landscape_1d.png"), ("2", "landscape_2d.png")])
def test_the_report_holds_the_plot_of_its_dimension(files: Bench, dims: str, plot: str) -> None:
    report = files.root / "rep"
    code, out, err = run("landscape", files.a, "--data", files.test, "--dims", dims,
                         "--resolution", "3", "--report", report)  # fmt: skip
    assert code == 0, err
    assert {p.name for p in report.iterdir()} == {plot, "report.html"}
    assert f'href="{plot}"' in (report / "report.html").read_text(encoding="utf-8")
    assert ("slice      one" if dims == "1" else "surface    two") in out


def test_nothing_is_written_unless_asked(files: Bench) -> None:
    before = snapshot(files.root)
    code, out, _ = run("landscape", files.a, "--data", files.test, "--dims", "1", "--resolution",
                       "3")  # fmt: skip
    assert code == 0 and "loss       min" in out and "wrote" not in out
    assert snapshot(files.root) == before


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        (["--span", "1,-1"], "expected finite LOW < HIGH"),
        (["--span", "x"], "expected two numbers"),
        (["--bn", "reset", "--train", "TRAIN"], "no BatchNorm layer"),
    ],
)
def test_bad_options_are_refused(files: Bench, extra: list[str], expect: str) -> None:
    args = [str(files.train) if x == "TRAIN" else x for x in extra]
    code, _, err = run("landscape", files.a, "--data", files.test, *args)
    assert code == 2 and expect in err and "Traceback" not in err, err


@pytest.mark.parametrize("option", ["--json", "--report"])
def test_no_output_may_overwrite_an_input(files: Bench, option: str) -> None:
    assert_outputs_spare_inputs(files, option, "landscape_2d.png", "landscape", files.a)


@pytest.mark.slow
def test_landscape_in_a_subprocess(files: Bench) -> None:
    out, data = run_in_a_process(files.root / "l.json", "landscape", files.a, "--data", files.test,
                                 "--resolution", "3")  # fmt: skip
    assert "surface    two" in out
    assert len(data["loss"]) == 3
