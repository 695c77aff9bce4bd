"""Stored results carry what makes them reproducible, and read back as written."""

from __future__ import annotations

import json

import pytest

from modeconnect.provenance import provenance, read_result, write_result


def test_a_result_records_its_command_commit_versions_machine_seeds_and_date(tmp_path):
    path = write_result(
        tmp_path / "sub" / "t.json",
        {"barrier": 0.25},
        seeds=[3, 4],
        command=["python", "x.py", "--out", "a b"],
    )
    body = json.loads(path.read_text())
    assert body["numbers"] == {"barrier": 0.25}
    meta = body["provenance"]
    assert meta["command"] == "python x.py --out 'a b'"
    assert meta["seeds"] == [3, 4]
    assert meta["versions"]["torch"].startswith("2.")
    assert meta["machine"]["cores"] >= 1 and meta["machine"]["cpu"]
    assert meta["date"][:2] == "20"
    assert read_result(path) == {"barrier": 0.25}
    assert not list(tmp_path.glob("sub/.*partial"))


def test_the_command_defaults_to_this_process():
    import sys

    assert (
        provenance()["command"].split()[0] == sys.argv[0] or sys.argv[0] in provenance()["command"]
    )


def test_a_file_without_numbers_is_not_a_result(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"rows": []}')
    with pytest.raises(ValueError, match="not a stored result"):
        read_result(path)


def test_numbers_that_json_cannot_hold_are_refused(tmp_path):
    with pytest.raises(ValueError):
        write_result(tmp_path / "nan.json", {"x": float("nan")})
    assert not (tmp_path / "nan.json").exists()
