"""Every command returns the one report type, and its JSON keeps its 0.2.0 keys.

:class:`~modeconnect.commands.results.FileReport` writes the inputs, the model, the
example counts, the command line and the outputs the same way for every command; each
command only adds what it computed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modeconnect.commands import align, barrier, compare, curve, landscape, merge, sharpness
from modeconnect.commands.results import FileReport

CK = Path(__file__).resolve().parent.parent / "checkpoints"
A, B, TEST = CK / "mlp_a.pt", CK / "mlp_b.pt", CK / "digits_test.pt"

COMMON = {"model", "examples", "command", "outputs"}


@pytest.mark.parametrize(
    "function",
    [align.align_files, merge.merge_files, compare.compare_files, barrier.barrier_files,
     curve.curve_files, landscape.landscape_files, landscape.plane_files,
     sharpness.sharpness_files],
)  # fmt: skip
def test_every_files_function_returns_a_file_report(function) -> None:
    import typing

    returned = typing.get_type_hints(function)["return"]
    assert issubclass(typing.get_origin(returned) or returned, FileReport), function.__name__


def test_align_json_keeps_its_keys_and_gains_the_shared_ones(tmp_path: Path) -> None:
    out = tmp_path / "a.json"
    report = align.align_files(A, B, data=TEST, steps=3, json_path=out, command="modeconnect align")
    body = json.loads(out.read_text())
    assert {"a", "b", "alignment", "equivalence", "spec", "alpha", "naive", "aligned"} <= set(body)
    assert set(body) >= COMMON and body["command"] == "modeconnect align"
    assert body["model"]["ref"] == report.model_ref
    assert (report.a_path, report.b_path) == (A, B)
    assert body["outputs"] == {"json": str(out)}


def test_merge_json_keeps_its_keys_and_the_report_its_sources(tmp_path: Path) -> None:
    out, js = tmp_path / "m.pt", tmp_path / "m.json"
    report = merge.merge_files([A, B], out=out, data=TEST, json_path=js)
    body = json.loads(js.read_text())
    assert body["sources"] == [str(A), str(B)] and report.sources == (A, B)
    assert {"merge", "metrics"} | COMMON <= set(body)
    assert report.inputs is not None and len(report.inputs) == 2
    assert body["metrics"]["merged"]["accuracy"] == pytest.approx(report.merged.accuracy)


def test_compare_json_keeps_the_model_reference_as_a_string(tmp_path: Path) -> None:
    js = tmp_path / "c.json"
    report = compare.compare_files(A, B, data=TEST, methods=["weight"], steps=3,
                                   json_path=js)  # fmt: skip
    body = json.loads(js.read_text())
    assert body["model"] == report.model_ref and isinstance(body["model"], str)
    assert report.comparison is report.result
    assert {"a", "b", "definition", "steps", "rows"} <= set(body)
