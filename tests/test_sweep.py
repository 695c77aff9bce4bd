"""``modeconnect sweep``: rows are ``compare``'s, the table resumes, the config is hostile input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from study_files import Bench, files_fixture, run  # noqa: F401 (the ``files`` fixture)

from modeconnect.commands.sweep import COLUMNS, read_sweep_config
from modeconnect.errors import ModeconnectError


def _config(files: Bench, name: str = "sweep.json", **fields: object) -> Path:
    body = {"pairs": [["a.pt", "b.pt"]], "methods": ["weight"], "steps": 3, **fields}
    path = files.root / name
    path.write_text(json.dumps(body))
    return path


def _sweep(files: Bench, config: Path, *extra: object) -> tuple[int, str, str]:
    return run("sweep", config, "--data", files.test, "--json", files.root / "table.json",
               "--quiet", *extra)  # fmt: skip


def _table(files: Bench) -> dict:
    return json.loads((files.root / "table.json").read_text())


@pytest.mark.slow
def test_a_row_is_compare_on_its_pair_method_and_seed(files: Bench) -> None:
    config = _config(files, seeds=[0, 1])
    code, out, err = _sweep(files, config)
    assert code == 0, err
    assert "rows       2 (2 new, 0 from the table)" in out
    rows = _table(files)["rows"]
    assert [(r["method"], r["seed"]) for r in rows] == [("weight", 0), ("weight", 1)]
    compare = files.root / "compare.json"
    code, _, err = run("compare", files.a, files.b, "--data", files.test, "--methods", "weight",
                       "--steps", "3", "--seed", "1", "--json", compare)  # fmt: skip
    assert code == 0, err
    want = json.loads(compare.read_text())["rows"][0]
    assert rows[1]["naive_loss"] == want["naive"]["loss"]
    assert rows[1]["aligned_loss"] == want["aligned"]["loss"]
    assert rows[1]["objective"] == want["objective"] and rows[1]["a"] == str(files.a)


def test_the_table_resumes_where_it_stopped(files: Bench) -> None:
    code, _, err = _sweep(files, _config(files), "--csv", files.root / "table.csv")
    assert code == 0, err
    (first,) = _table(files)["rows"]
    # The sweep grows (another pair): the row already in the table is not computed again
    # (its measured seconds stay those of the first run).
    bigger = _config(files, pairs=[["a.pt", "b.pt"], {"a": "a.pt", "b": "c.pt"}])
    code, out, err = _sweep(files, bigger, "--csv", files.root / "table.csv")
    assert code == 0, err
    assert "rows       2 (1 new, 1 from the table)" in out
    rows = _table(files)["rows"]
    assert rows[0] == first and rows[1]["b"] == str(files.c)
    with (files.root / "table.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == list(COLUMNS) and [r["b"] for r in table] == [
        str(files.b), str(files.c),
    ]  # fmt: skip
    code, out, _ = _sweep(files, bigger)
    assert code == 0 and "(0 new, 2 from the table)" in out and _table(files)["rows"] == rows


def test_a_failed_row_keeps_the_rows_before_it_and_the_next_run_resumes(files: Bench) -> None:
    (files.root / "d.pt").write_bytes(b"not a checkpoint")
    broken = _config(files, pairs=[["a.pt", "b.pt"], ["a.pt", "d.pt"]])
    code, out, err = _sweep(files, broken)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "d.pt" in err
    (first,) = _table(files)["rows"]  # the row that finished was saved
    files.c.replace(files.root / "d.pt")  # the user fixes the file and runs again
    code, out, err = _sweep(files, broken)
    assert code == 0 and "rows       2 (1 new, 1 from the table)" in out, err
    assert _table(files)["rows"][0] == first
    # A sweep whose only row fails writes no table at all.
    (files.root / "table.json").unlink()
    (files.root / "e.pt").write_bytes(b"nor this")
    code, _, err = _sweep(files, _config(files, pairs=[["a.pt", "e.pt"]]))
    assert code == 2 and "e.pt" in err and not (files.root / "table.json").exists()


def test_a_table_of_other_settings_is_refused_and_force_starts_again(files: Bench) -> None:
    assert _sweep(files, _config(files))[0] == 0
    before = (files.root / "table.json").read_text()
    code, out, err = _sweep(files, _config(files, steps=4))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "was written by a sweep with other settings" in err and "--force" in err
    assert (files.root / "table.json").read_text() == before
    code, out, err = _sweep(files, _config(files, steps=4), "--force")
    assert code == 0 and "(1 new, 0 from the table)" in out, err
    # A file that is not a sweep table is never overwritten.
    (files.root / "table.json").write_text('{"something": "else"}')
    code, _, err = _sweep(files, _config(files, steps=4))
    assert code == 2 and "is not a sweep table" in err


HOSTILE = [
    ("[1, 2]", "a sweep config is a JSON object"),
    ('{"pairs": [["a.pt", "b.pt"]], "model": "os:system"}', "unknown key model; a sweep"),
    ('{"methods": ["weight"]}', "pairs is missing"),
    ('{"pairs": []}', "pairs must be a non-empty list, got list"),
    ('{"pairs": [["a.pt"]]}', r"pairs\[0\] must be \[A, B\]"),
    ('{"pairs": [["a.pt", 3]]}', r"pairs\[0\]\[1\] must be a checkpoint path, got int"),
    ('{"pairs": [["a.pt", "b.pt"]], "methods": ["nope"]}', "nope.*weight"),
    ('{"pairs": [["a.pt", "b.pt"]], "seeds": [true]}', r"seeds\[0\] must be a whole number"),
    ('{"pairs": [["a.pt", "b.pt"]], "seeds": [-1]}', r"seeds\[0\] must be a whole number"),
    ('{"pairs": [["a.pt", "b.pt"]], "steps": 1}', "steps must be a whole number from 2"),
    ('{"pairs": [["a.pt", "b.pt"]], "permute_output": true}', "unknown key permute_output"),
    ('{"pairs": [["a.pt", "b.pt"]], "method_options": {"ot": {}}}', "'ot' is not one of"),
    ('{"pairs": [["a.pt", "b.pt"]], "method_options": {"weight": {"device": "cuda"}}}',
     "method_options.weight.device: not an option of the method"),
    ('{"pairs": [["a.pt", "b.pt"]], "method_options": {"weight": {"restarts": 0}}}',
     "method_options.weight.restarts must be int >= 1, got 0"),
    ('{"pairs": [["a.pt", "b.pt"]], "method_options": {"weight": {"restarts": "3"}}}',
     "restarts must be int >= 1, got '3'"),
    ('{"pairs": [["a.pt", "b.pt"]], "steps": 3', r"is not valid JSON \(Expecting ','"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), HOSTILE)
def test_a_bad_config_is_one_line_and_writes_nothing(files: Bench, text: str, message: str):
    config = files.root / "bad.json"
    config.write_text(text)
    with pytest.raises(ModeconnectError, match=message):
        read_sweep_config(config)
    code, out, err = _sweep(files, config)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert str(config) in err and not (files.root / "table.json").exists()


def test_yaml_configs_read_plain_values_only(files: Bench) -> None:
    pytest.importorskip("yaml")
    good = files.root / "sweep.yaml"
    good.write_text("pairs:\n  - [a.pt, b.pt]\nmethods: [weight]\nseeds: [3]\n")
    plan = read_sweep_config(good)
    assert plan.rows() == [(str(files.a), str(files.b), "weight", 3)] and plan.steps == 25
    evil = files.root / "evil.yaml"
    evil.write_text("pairs: !!python/object/apply:os.system [echo hi]\n")
    with pytest.raises(ModeconnectError, match="evil.yaml: is not valid YAML"):
        read_sweep_config(evil)
