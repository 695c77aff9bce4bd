"""``modeconnect plane``: the grid JSON, the three points at their coordinates, the curve drawn."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from study_files import (
    Bench,
    assert_outputs_spare_inputs,
    assert_refused,
    files_fixture,  # noqa: F401 (the ``files`` fixture)
    run,
    run_in_a_process,
    snapshot,
)

import modeconnect as mc


def _plane(f: Bench, *extra: object) -> tuple[int, str, str]:
    return run("plane", f.a, f.b, f.c, "--data", f.test, "--resolution", "4", *extra)


def test_plane_json_has_the_three_points_at_their_coordinates(files: Bench) -> None:
    js = files.root / "p.json"
    code, out, err = _plane(files, "--json", js)
    assert code == 0, err
    assert "points     A (0, 0)  B (" in out and "grid       4 x 4 points" in out
    data = json.loads(js.read_text())
    a, b, c = (mc.load(p).state_dict for p in (files.a, files.b, files.c))
    basis = mc.plane_basis(a, b, c)
    length = math.sqrt(sum(float(((b[k] - a[k]).double() ** 2).sum()) for k in a))
    points = data["points"]
    assert points["A"] == [0.0, 0.0]
    assert points["B"] == pytest.approx([length, 0.0], rel=1e-6)
    assert points["C"] == pytest.approx(list(basis.coordinates[2]), rel=1e-9)
    assert points["C"] == pytest.approx(list(basis.project(c)), rel=1e-9, abs=1e-9)
    assert data["kind"] == "plane" and len(data["xs"]) == len(data["ys"]) == 4
    assert len(data["loss"]) == 4 and all(len(row) == 4 for row in data["loss"])
    assert set(data["paths"]) == {"line"} and data["paths"]["line"][0] == pytest.approx([0, 0])
    assert data["a"] == str(files.a) and data["c"] == str(files.c)


def test_plane_grid_is_the_library_grid(files: Bench) -> None:
    js = files.root / "p.json"
    assert _plane(files, "--margin", "0.5", "--json", js)[0] == 0
    a, b, c = (mc.load(p).state_dict for p in (files.a, files.b, files.c))
    model = mc.resolve_model([mc.load(files.a)]).model
    surface = mc.plane_grid(model, a, b, c, mc.load_data(files.test), resolution=4, margin=0.5)
    data = json.loads(js.read_text())
    assert data["xs"] == pytest.approx(list(surface.xs))
    torch.testing.assert_close(torch.tensor(data["loss"]), torch.tensor(surface.loss))
    torch.testing.assert_close(torch.tensor(data["accuracy"]), torch.tensor(surface.accuracy))


def _bend(f: Bench, kind: str) -> Path:
    """The bend of a one-bend curve from A to B, trained for one epoch."""
    bend = f.root / f"{kind}.pt"
    args = ["--curve", kind, "--epochs", "1", "--batch-size", "20", "--steps", "3"]
    code, _, err = run(
        "curve", f.a, f.b, "--train", f.train, "--data", f.test, *args, "--bend", bend
    )
    assert code == 0, err
    return bend


def test_plane_through_a_bend_draws_the_curve_and_writes_a_report(files: Bench) -> None:
    bend, js, report = _bend(files, "bezier"), files.root / "p.json", files.root / "rep"
    outputs = ("--json", js, "--report", report)
    code, out, err = run("plane", files.a, files.b, bend, "--curve", "bezier", "--data",
                         files.train, "--resolution", "3", *outputs)  # fmt: skip
    assert code == 0, err
    assert "bend (" in out and "paths      line, curve (projected)" in out
    data = json.loads(js.read_text())
    assert set(data["points"]) == {"A", "B", "bend"} and set(data["paths"]) == {"line", "curve"}
    # a quadratic Bezier curve lies in the plane of its control points: t=0.5 sits halfway
    # between the midpoint of A and B and the bend
    mid = data["paths"]["curve"][len(data["paths"]["curve"]) // 2]
    x_b, (x_c, y_c) = data["points"]["B"][0], data["points"]["bend"]
    assert mid == pytest.approx([0.25 * x_b + 0.5 * x_c, 0.5 * y_c], rel=1e-6, abs=1e-9)
    plots = {"plane_loss.png", "plane_error.png", "report.html"}
    assert {p.name for p in report.iterdir()} == plots
    page = (report / "report.html").read_text(encoding="utf-8")
    assert "Plane through A, B, bend" in page and 'href="plane_error.png"' in page


def test_a_bend_of_another_curve_is_refused(files: Bench) -> None:
    bend = _bend(files, "polychain")
    assert_refused(files.root, "plane", files.a, files.b, bend, "--curve", "bezier", "--data",
                   files.test, expect=("bend 1/1 of a polychain", "--curve polychain"))  # fmt: skip


def test_a_bend_after_alignment_needs_the_aligned_b(files: Bench) -> None:
    bend, aligned = files.root / "bend.pt", files.root / "b_aligned.pt"
    code, _, err = run("curve", files.a, files.b, "--train", files.train, "--data", files.test,
                       "--epochs", "1", "--steps", "3", "--align", "weight", "--bend", bend,
                       "--aligned", aligned)  # fmt: skip
    assert code == 0, err
    assert_refused(files.root, "plane", files.a, files.b, bend, "--curve", "bezier", "--data",
                   files.test, expect=("aligned by weight", "--aligned FILE"))  # fmt: skip
    code, out, err = run("plane", files.a, aligned, bend, "--curve", "bezier", "--data",
                         files.test, "--resolution", "2")  # fmt: skip
    assert code == 0, err


def test_names_label_the_points(files: Bench) -> None:
    js = files.root / "p.json"
    assert _plane(files, "--names", "x,y,z", "--json", js)[0] == 0
    assert list(json.loads(js.read_text())["points"]) == ["x", "y", "z"]
    assert_refused(files.root, "plane", files.a, files.b, files.c, "--data", files.test,
                   "--names", "x,x,z", expect=("three different labels",))  # fmt: skip


def test_three_models_on_one_line_span_no_plane(files: Bench) -> None:
    assert_refused(files.root, "plane", files.a, files.b, files.a, "--data", files.test,
                   expect=("C lies on the line through A and B",))  # fmt: skip


def test_batchnorm_needs_training_data(tmp_path: Path) -> None:
    from modeconnect.models import conv_net

    kwargs: dict[str, Any] = {"in_channels": 1, "channels": [4], "num_classes": 3, "image_size": 4}
    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        paths.append(tmp_path / f"m{seed}.pt")
        torch.save({"state_dict": conv_net(**kwargs).state_dict(), "model": "modeconnect.models:"
                    "conv_net", "model_kwargs": kwargs}, paths[-1])  # fmt: skip
    data = tmp_path / "d.pt"
    torch.save({"x": torch.randn(8, 1, 4, 4), "y": torch.randint(0, 3, (8,))}, data)
    assert_refused(tmp_path, "plane", *paths, "--data", data, "--json", tmp_path / "p.json",
                   expect=("BatchNorm", "--train"))  # fmt: skip
    code, _, err = run("plane", *paths, "--data", data, "--train", data, "--resolution", "2")
    assert code == 0, err


@pytest.mark.parametrize("option", ["--json", "--report"])
def test_no_output_may_overwrite_an_input(files: Bench, option: str) -> None:
    assert_outputs_spare_inputs(
        files, option, "plane_error.png", "plane", files.a, files.b, files.c
    )


def test_outputs_only_when_asked_and_existing_ones_need_force(files: Bench) -> None:
    before = snapshot(files.root)
    assert _plane(files)[0] == 0
    assert snapshot(files.root) == before
    report = files.root / "rep"
    report.mkdir()
    (report / "plane_loss.png").write_text("old")
    assert_refused(files.root, "plane", files.a, files.b, files.c, "--data", files.test,
                   "--report", report, expect=("plane_loss.png: already exists",))  # fmt: skip


@pytest.mark.slow
def test_plane_in_a_subprocess(files: Bench) -> None:
    out, data = run_in_a_process(files.root / "p.json", "plane", files.a, files.b, files.c,
                                 "--data", files.test, "--resolution", "3")  # fmt: skip
    assert "points     A (0, 0)" in out
    assert data["points"]["A"] == [0.0, 0.0]
