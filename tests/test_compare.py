"""Comparing methods: registry errors, option routing, the digits pair, the CLI command."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import modeconnect as mc
from modeconnect.compare import compare_methods, method_options
from modeconnect.errors import ModeconnectError
from modeconnect.matching import METHODS, get_method, route_options
from modeconnect_cli.format import format_comparison
from modeconnect_cli.main import main

CKPT = Path(__file__).resolve().parents[1] / "checkpoints"


@pytest.fixture(scope="module")
def digits():
    ca, cb = mc.load(f"{CKPT}/mlp_a.pt"), mc.load(f"{CKPT}/mlp_b.pt")
    model = mc.resolve_model([ca, cb]).model
    test = mc.load_data(f"{CKPT}/digits_test.pt")
    train = mc.load_data(f"{CKPT}/digits_train.pt")
    return model, ca.state_dict, cb.state_dict, test, train


@pytest.fixture(scope="module")
def comparison(digits):
    model, a, b, test, train = digits
    return compare_methods(model, a, b, test, train=train, steps=9)


def test_all_methods_registered():
    assert {"weight", "activation", "ot"} <= set(METHODS)


def test_unknown_method_lists_valid_names():
    with pytest.raises(ModeconnectError, match=r"unknown alignment method 'nope'; valid methods: "):
        get_method("nope")
    with pytest.raises(ModeconnectError, match=r"activation, learned, ot, weight"):
        get_method("nope")


def test_compare_rejects_unknown_method_before_any_work(digits):
    model, a, b, test, _ = digits
    with pytest.raises(ModeconnectError, match="valid methods: activation, learned, ot, weight"):
        compare_methods(model, a, b, test, methods=["weight", "sinkhorn"])


def test_options_are_routed_to_the_methods_that_take_them():
    options = {
        "restarts": 3, "statistic": "moment", "max_batches": 2, "ot_solver": "sinkhorn",
        "reg": 0.1, "cost": "activations", "solver": "scipy", "seed": 4, "max_iter": None,
    }  # fmt: skip
    routed = route_options(["weight", "activation", "ot"], options)
    assert routed["weight"] == {"restarts": 3, "solver": "scipy", "seed": 4}
    assert routed["activation"] == {
        "statistic": "moment", "max_batches": 2, "solver": "scipy", "seed": 4,
    }  # fmt: skip
    assert routed["ot"] == {
        "statistic": "moment", "max_batches": 2, "solver": "sinkhorn", "reg": 0.1,
        "cost": "activations", "seed": 4,
    }  # fmt: skip
    assert method_options("weight", {"restarts": 3, "seed": 4}) == {"restarts": 3, "seed": 4}
    # an option none of the chosen methods takes is an error, not silence
    with pytest.raises(
        ModeconnectError,
        match=r"no method of weight, activation takes options 'cost', 'ot_solver', 'reg'; ",
    ):
        route_options(["weight", "activation"], options)
    with pytest.raises(ModeconnectError, match=r"takes option 'unused'"):
        route_options(["weight", "ot"], {**options, "unused": 1})
    with pytest.raises(
        ModeconnectError, match=r"^method 'weight' takes no options 'cost', 'max_batches', "
    ):
        method_options("weight", options)


def test_every_method_lowers_the_digits_barrier(comparison):
    assert comparison.methods == tuple(METHODS)
    for row in comparison.rows:
        assert row.naive.loss > 1.0 and row.naive.error > 0.3, row.method
        assert row.aligned.loss < 0.05 * row.naive.loss, row.method
        assert row.aligned.error < 0.02, row.method
        assert row.seconds > 0 and row.iterations >= 1
    # EMD on weight costs solves the same assignments as weight matching.
    assert comparison.row("ot").objective == pytest.approx(comparison.row("weight").objective)
    with pytest.raises(ModeconnectError, match="methods compared: weight, activation, ot"):
        comparison.row("zipit")


def test_comparison_table_and_json(comparison):
    table = format_comparison(comparison)
    for name in comparison.methods:
        assert f"\n{name} " in table
    data = json.loads(json.dumps(comparison.to_dict()))
    assert [r["method"] for r in data["rows"]] == list(comparison.methods)
    assert data["rows"][1]["params"]["statistic"] == "correlation"


def _cli() -> click.Group:
    return main


def test_cli_compare_prints_one_table_and_writes_json(tmp_path):
    out = tmp_path / "cmp.json"
    args = [
        "compare", f"{CKPT}/mlp_a.pt", f"{CKPT}/mlp_b.pt",
        "--data", f"{CKPT}/digits_test.pt", "--train", f"{CKPT}/digits_train.pt",
        "--methods", "weight,activation", "--steps", "3", "--statistic", "moment",
        "--max-batches", "1", "--batch-size", "400", "--json", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("weight ") for line in lines)
    assert any(line.startswith("activation ") for line in lines)
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == ["weight", "activation"]
    params = rows[1]["params"]
    assert (params["statistic"], params["max_batches"], params["batches"]) == ("moment", 1, 1)
    again = CliRunner().invoke(_cli(), args)
    assert again.exit_code == 2 and "already exists (--json); pass --force" in again.output


def test_cli_compare_unknown_method_exits_2():
    args = [
        "compare", f"{CKPT}/mlp_a.pt", f"{CKPT}/mlp_b.pt",
        "--data", f"{CKPT}/digits_test.pt", "--methods", "weight,zipit",
    ]  # fmt: skip
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "Error: Invalid value for '--methods': 'zipit' is not one of 'weight', 'activation', "
        "'ot', 'learned'"
    )
