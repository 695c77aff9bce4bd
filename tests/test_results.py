"""Documented numbers agree with the stored results they come from (``results/*.json``).

Every check in :data:`tools.claims.CHECKS` pairs a table or sentence in README.md or
``docs/`` with a stored result; a documented number must equal the stored one to within
one unit of its last printed digit (``36 %`` passes against 0.3649, fails against 0.41).
A number edited by hand, or a result rerun without updating the docs, fails here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools import claims  # noqa: E402


def _label(check: claims.Check) -> str:
    if isinstance(check, claims.TableCheck):
        return f"{check.doc}:{check.heading}#{check.doc_index}"
    return f"{check.doc}:{check.pattern[:40]}"


@pytest.mark.parametrize("check", claims.CHECKS, ids=_label)
def test_documented_numbers_match_the_stored_result(check: claims.Check) -> None:
    findings = check.findings()
    assert findings, "the check compared nothing"
    moved = claims.moved(findings)
    assert not moved, "\n".join(str(f) for f in moved[:10])


@pytest.mark.parametrize("result", sorted({c.result for c in claims.CHECKS}))
def test_every_backing_result_records_its_provenance(result: str) -> None:
    body = json.loads((ROOT / result).read_text(encoding="utf-8"))
    prov = body["provenance"]
    program = prov["command"].split()[0]  # a script run as python's argument names itself
    assert program in ("python", "modeconnect") or program.endswith(".py"), prov["command"]
    assert len(prov["commit"]) >= 40
    assert {"torch", "modeconnect", "numpy"} <= set(prov["versions"])
    assert prov["machine"]["cores"] >= 1 and prov["machine"]["cpu"]
    if not result.startswith("results/bench_"):  # a benchmark times; a study names its seeds
        assert prov["seeds"], "a study's result names its seeds"


def test_every_stored_result_ran_from_a_committed_tree() -> None:
    """A ``+dirty`` commit names code no commit holds: that run cannot be repeated."""
    dirty = sorted(
        f"results/{p.name}" for p in (ROOT / "results").glob("*.json")
        if json.loads(p.read_text(encoding="utf-8"))["provenance"]["commit"].endswith("+dirty")
    )  # fmt: skip
    assert not dirty, dirty


def _bn_check() -> claims.TableCheck:
    (check,) = [
        c
        for c in claims.CHECKS
        if isinstance(c, claims.TableCheck) and c.heading.startswith("3. BatchNorm")
    ]
    return check  # fmt: skip


def _copy(tmp_path: Path, *rels: str) -> None:
    for rel in rels:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((ROOT / rel).read_text(encoding="utf-8"), encoding="utf-8")


def test_a_stale_table_number_fails(tmp_path: Path) -> None:
    """Copy the docs and the result, change one documented number: the check reports it."""
    check = _bn_check()
    _copy(tmp_path, check.doc, check.result)
    assert not claims.moved(check.findings(tmp_path))
    doc = tmp_path / check.doc
    text = doc.read_text(encoding="utf-8")
    table = [t for t in claims.tables(text) if t.heading.startswith(check.heading)][0]
    row = "| " + " | ".join(table.rows[0]) + " |"
    cell = table.rows[0][3]  # endpoint accuracy, e.g. "96.5%"
    (number,) = claims.printed(cell)
    stale = row.replace(cell, f"{number.value + 0.3:.1f}%", 1)
    doc.write_text(text.replace(row, stale, 1), encoding="utf-8")
    moved = claims.moved(check.findings(tmp_path))
    assert len(moved) == 1 and "endpoint acc" in moved[0].where


def test_a_stale_sentence_number_fails(tmp_path: Path) -> None:
    (check,) = [c for c in claims.CHECKS
                if isinstance(c, claims.SentenceCheck) and c.doc == "README.md"
                and "BatchNorm" in c.pattern]  # fmt: skip
    _copy(tmp_path, check.doc, check.result)
    found = check.findings(tmp_path)
    assert len(found) == 2 and not claims.moved(found)
    text = (tmp_path / check.doc).read_text(encoding="utf-8")
    old = f"removes {found[0].documented:.0f}–"
    assert old in text
    (tmp_path / check.doc).write_text(
        text.replace(old, f"removes {found[0].documented - 2:.0f}–"), encoding="utf-8"
    )
    assert len(claims.moved(check.findings(tmp_path))) == 1


def test_a_number_must_be_the_stored_one_rounded_to_its_digits(tmp_path: Path) -> None:
    """A sentence number one unit off its stored value (the old rule let it pass) fails;
    the stored value rounded to the printed digits passes."""
    (check,) = [c for c in claims.CHECKS
                if isinstance(c, claims.SentenceCheck) and c.doc == "README.md"
                and "BatchNorm" in c.pattern]  # fmt: skip
    _copy(tmp_path, check.doc, check.result)
    first = check.findings(tmp_path)[0]
    assert first.stored is not None
    text = (tmp_path / check.doc).read_text(encoding="utf-8")
    old = f"removes {first.documented:.0f}–"
    assert old in text and first.documented == round(first.stored)
    for offset, moves in ((1, True), (-1, True), (0, False)):
        wrong = text.replace(old, f"removes {round(first.stored) + offset:.0f}–")
        (tmp_path / check.doc).write_text(wrong, encoding="utf-8")
        assert bool(claims.moved(check.findings(tmp_path))) is moves
    table = claims.Finding("d", "w", 0.13, 0.125, (0.01 + 0.001) / 2)  # report 0.125: 0.12|0.13
    assert table.ok and not claims.Finding("d", "w", 0.14, 0.125, 0.0055).ok


def _table_check(doc: str, heading: str, index: int = 0) -> claims.TableCheck:
    (check,) = [c for c in claims.CHECKS if isinstance(c, claims.TableCheck) and c.doc == doc
                and c.heading.startswith(heading) and c.doc_index == index]  # fmt: skip
    return check


@pytest.mark.parametrize(
    ("doc", "heading", "column"),
    [("docs/science/transformers.md", "Measured on tiny", "loss barrier at α = 0.5"),
     ("docs/science/merging.md", "2. Width fusion", "test accuracy"),
     ("docs/architecture.md", "Past one machine", "1 worker: median ratio (pairs)")],
)  # fmt: skip
def test_a_stale_number_in_a_later_doc_fails(
    tmp_path: Path, doc: str, heading: str, column: str
) -> None:
    """One documented number in the second row moved by 3 units of its last digit."""
    check = _table_check(doc, heading)
    _copy(tmp_path, check.doc, check.result)
    assert claims.findings_ok(check.findings(tmp_path))
    text = (tmp_path / doc).read_text(encoding="utf-8")
    table = [t for t in claims.tables(text) if t.heading.startswith(heading)][0]
    row, j = table.rows[1], table.header.index(column)
    first = claims.printed(row[j])[0]
    match = claims._NUMBER.search(row[j])
    assert match is not None
    token = match.group()
    decimals = len(token.split(".")[1]) if "." in token else 0
    stale = row[j].replace(token, f"{first.value + 3 * first.unit:.{decimals}f}", 1)
    line = "| " + " | ".join(row) + " |"
    assert line in text
    (tmp_path / doc).write_text(text.replace(line, line.replace(row[j], stale, 1), 1))
    moved = claims.moved(check.findings(tmp_path))
    assert len(moved) == 1 and f"[{column}]" in moved[0].where, moved


def test_a_stored_row_the_doc_lacks_fails(tmp_path: Path) -> None:
    """The transformer table reads every stored row: one more there, not in the doc, fails."""
    check = _table_check("docs/science/transformers.md", "Measured on tiny")
    _copy(tmp_path, check.doc, check.result)
    body = json.loads((tmp_path / check.result).read_text(encoding="utf-8"))
    rows = body["numbers"]["llama"]
    rows["orthogonal, another solver"] = dict(rows["orthogonal, weight"], barrier=0.2)
    (tmp_path / check.result).write_text(json.dumps(body), encoding="utf-8")
    (found,) = check.findings(tmp_path)
    assert not found.ok and "10 rows, stored 11" in found.where


def test_a_per_pair_claim_that_stops_holding_fails(tmp_path: Path) -> None:
    """'Lower on the first pair only' is checked pair by pair, not only through the means:
    a stored pair where it no longer holds fails the check, with the reason."""
    (check,) = [c for c in claims.CHECKS if isinstance(c, claims.SentenceCheck)
                and c.pattern.startswith("Learned after least-squares heads the Ll")]  # fmt: skip
    _copy(tmp_path, check.doc, check.result)
    assert claims.findings_ok(claims.run_checks([check], tmp_path))
    body = json.loads((tmp_path / check.result).read_text(encoding="utf-8"))
    second = body["numbers"]["llama_pairs"]["2,3"]
    second["full, learned"]["barrier"] = second["orthogonal, learned"]["barrier"] - 0.001
    (tmp_path / check.result).write_text(json.dumps(body), encoding="utf-8")
    (found,) = claims.run_checks([check], tmp_path)
    assert not found.ok and "on the first pair only" in found.where


def test_a_missing_result_is_reported_not_skipped(tmp_path: Path) -> None:
    check = _bn_check()
    (tmp_path / check.doc).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / check.doc).write_text((ROOT / check.doc).read_text(encoding="utf-8"))
    found = claims.run_checks([check], tmp_path)
    assert len(found) == 1 and not found[0].ok and check.result in found[0].where


@settings(deadline=None)  # a loaded machine
@given(st.lists(st.tuples(st.integers(-(10**6), 10**6), st.integers(0, 5)), min_size=1, max_size=6))
def test_printed_numbers_round_trip(values: list[tuple[int, int]]) -> None:
    """Numbers joined with the separators the tables use parse back, with their digit unit."""
    texts = [f"{m / 10**d:.{d}f}".replace("-", "−") for m, d in values]
    parsed = claims.printed(" → ".join(t + ("%" if i % 2 else "") for i, t in enumerate(texts)))
    assert [p.unit for p in parsed] == [10.0**-d for _, d in values]
    assert [p.value for p in parsed] == pytest.approx([m / 10**d for m, d in values])


def test_tables_parse_header_rows_and_heading() -> None:
    text = "# A\n\ntext\n\n## 2. B\n\n| x | y |\n|---|---|\n| 1 | 2.5 → 3 |\n| a | b |\n\nafter"
    (table,) = claims.tables(text)
    assert table.heading == "2. B"
    assert table.header == ["x", "y"]
    assert table.rows == [["1", "2.5 → 3"], ["a", "b"]]


def test_reproduce_reruns_every_backing_result() -> None:
    """Each stored result a documented number relies on is rewritten by ``reproduce``."""
    from tools import readme_runs, reproduce

    written = {w for r in reproduce.RUNS for w in r.results()} | set(readme_runs.RUNS)
    assert {c.result for c in claims.CHECKS} <= written


def test_reproduce_default_set_fits_the_hour_the_readme_gives() -> None:
    """``python -m tools.reproduce`` without ``--all`` is the under-an-hour set, and the
    README states its expected minutes as the listing adds them up."""
    import re

    from tools import reproduce

    short = sum(r.minutes for r in reproduce.RUNS if not r.long)
    assert short < 60
    said = re.search(r"under an hour \(about (\d+) minutes", (ROOT / "README.md").read_text())
    assert said is not None and int(said.group(1)) == round(short)


def test_reproduce_skips_a_run_whose_side_venv_is_absent(tmp_path, monkeypatch, capsys) -> None:
    """``bench_rebasin`` without ``/tmp/rebasin-venv`` would store modeconnect's rows alone:
    ``reproduce`` skips it with one line naming what is missing, runs nothing, keeps going."""
    from tools import reproduce

    (bench,) = [r for r in reproduce.RUNS if r.name == "bench_rebasin"]
    assert bench.needs == reproduce.REBASIN_PYTHON
    absent = reproduce.Run("bench_rebasin", bench.command, 1.0, needs=tmp_path / "no" / "python",
                           setup="the rebasin side venv")  # fmt: skip
    present = reproduce.Run("other", ("python", "-c", "pass"), 0.1, needs=ROOT / "README.md")
    ran = []
    monkeypatch.setattr(reproduce, "RUNS", [absent, present])
    monkeypatch.setattr(reproduce.subprocess, "run", lambda cmd, **kw: ran.append(cmd) or
                        type("Done", (), {"returncode": 0, "stderr": ""})())  # fmt: skip
    monkeypatch.setattr(reproduce, "run_checks", lambda: [])
    assert reproduce.main(["--only", "bench_rebasin", "other"]) == 0
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if x.startswith("[bench_rebasin]")]
    assert line == (f"[bench_rebasin] skipped: needs {tmp_path / 'no' / 'python'}, which is "
                    "absent (the rebasin side venv)")  # fmt: skip
    assert len(ran) == 1 and ran[0][1:] == ["-c", "pass"]
    assert "runs skipped (their stored results kept): bench_rebasin" in out


@pytest.mark.slow
def test_reproduce_check_reports_no_moved_number() -> None:
    import subprocess

    done = subprocess.run([sys.executable, "-m", "tools.reproduce", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert " 0 moved beyond their tolerance" in done.stdout


@pytest.mark.slow
def test_a_benchmark_stores_its_numbers_with_provenance(tmp_path: Path) -> None:
    import subprocess

    out = tmp_path / "bench_spec_budget.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_spec.py"), "--budget", "--repeat", "1",
         "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    body = json.loads(out.read_text(encoding="utf-8"))
    numbers, prov = body["numbers"], body["provenance"]
    assert len(numbers["resnet20_seconds"]) == 1
    assert numbers["median"] == numbers["resnet20_seconds"][0]
    assert numbers["budget"] == 5.0
    assert numbers["met"] == (numbers["median"] < 5.0)
    assert "bench_spec.py --budget --repeat 1 --out" in prov["command"]


@pytest.mark.slow
def test_a_study_redraws_its_plot_from_the_stored_result(tmp_path: Path) -> None:
    import subprocess

    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "science_bn_repair.py"), "--plot-from",
         str(ROOT / "results" / "science_bn_repair.json"), "--plots", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "bn_repair.png").stat().st_size > 10_000
    assert "| batch | 128 | reset |" in done.stdout  # the table, from the stored numbers


@pytest.mark.slow
def test_the_merging_study_prints_the_tables_it_stores(tmp_path: Path) -> None:
    """``science_merging.py --quick`` runs, and its printed tables are the stored ones'."""
    import subprocess

    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "science_merging.py"), "--quick", "--out",
         str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    module = claims.script_module("examples/science_merging.py")
    names = ("class_split", "width_fusion", "compression", "n_way")
    record = {n: claims.load_record(f"merging_{n}.json", tmp_path) for n in names}
    assert module.report(record) in done.stdout
    assert len(claims.tables(done.stdout)) == 5  # n_way has two
