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


@pytest.mark.parametrize(
    ("command", "recorded"),
    [
        (["benchmarks/bench_evaluate.py", "--out", "a b"],
         "python benchmarks/bench_evaluate.py --out 'a b'"),
        ("benchmarks/convbn_study.py --estimate", "python benchmarks/convbn_study.py --estimate"),
        (["python", "examples/x.py"], "python examples/x.py"),
        (["modeconnect", "align", "a.py"], "modeconnect align a.py"),
        ("/usr/bin/python3 -m tools.reproduce", "/usr/bin/python3 -m tools.reproduce"),
        ("x.py 'unbalanced", "x.py 'unbalanced"),
    ],
)  # fmt: skip
def test_a_script_command_is_recorded_as_the_interpreter_runs_it(tmp_path, command, recorded):
    """``sys.argv`` of ``python benchmarks/x.py`` starts with the script: the stored command
    puts ``python`` back, so it runs when pasted (and nothing else is changed)."""
    path = write_result(tmp_path / "r.json", {"x": 1}, command=command)
    assert json.loads(path.read_text())["provenance"]["command"] == recorded


@pytest.mark.slow  # a subprocess importing torch: ~4 s on the loaded machine
def test_a_script_run_records_python_first(tmp_path):
    """A real script writing with the default command (its own ``sys.argv``)."""
    import subprocess
    import sys

    script = tmp_path / "study.py"
    script.write_text("import sys\nfrom modeconnect.provenance import write_result\n"
                      "write_result(sys.argv[2], {'x': 1}, command=sys.argv)\n")  # fmt: skip
    out = tmp_path / "r.json"
    subprocess.run([sys.executable, str(script), "--out", str(out)], check=True, cwd=tmp_path)
    command = json.loads(out.read_text())["provenance"]["command"]
    assert command == f"python {script} --out {out}"


def test_a_file_without_numbers_is_not_a_result(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"rows": []}')
    with pytest.raises(ValueError, match="not a stored result"):
        read_result(path)


def test_numbers_that_json_cannot_hold_are_refused(tmp_path):
    with pytest.raises(ValueError):
        write_result(tmp_path / "nan.json", {"x": float("nan")})
    assert not (tmp_path / "nan.json").exists()


@pytest.mark.parametrize(
    ("start", "now", "recorded"),
    [
        ("a" * 40, "a" * 40, "a" * 40),  # nothing moved
        ("a" * 40, "b" * 40, "a" * 40 + "+dirty"),  # a commit landed while it ran
        ("a" * 40, "a" * 40 + "+dirty", "a" * 40 + "+dirty"),  # an edit while it ran
        ("a" * 40 + "+dirty", "a" * 40, "a" * 40 + "+dirty"),  # started from an edited tree
        (None, None, None),  # not a git checkout (an installed package)
    ],
)
def test_the_commit_is_the_one_the_run_started_from(monkeypatch, start, now, recorded):
    """A run records the tree it computed on: the commit at its start, ``+dirty`` when the
    tree was edited then or moved before the result was written."""
    from modeconnect import provenance as module

    monkeypatch.setattr(module, "_AT_START", start)
    monkeypatch.setattr(module, "_git_commit", lambda: now)
    assert provenance()["commit"] == recorded
