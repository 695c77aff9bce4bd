"""Methods declare their parameters in the registry; the library and the CLI both read them.

A flag or option the chosen method does not take is an error that lists the ones it
takes, never silence; ``--help`` lists each method flag with the methods that take it;
and a declaration cannot drift from its function's signature.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from modeconnect.errors import ModeconnectError
from modeconnect.matching import (
    METHOD_NAMES,
    METHODS,
    MethodInfo,
    Param,
    describe_method,
    get_method,
    match_weights,
    method_info,
    method_options,
    register_method,
    route_options,
    takes,
)
from modeconnect.matching.params import CONTEXT, Computed
from modeconnect_cli import options as o
from modeconnect_cli.main import main

MLP_REF = "modeconnect.models:mlp"
SMALL = {"in_features": 6, "hidden": [10, 12], "out_features": 3}


def _run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def _small_pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    from modeconnect.models import mlp

    paths = []
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        p = tmp_path / f"{name}.pt"
        torch.save({"state_dict": mlp(**SMALL).state_dict(), "model": MLP_REF,
                    "model_kwargs": SMALL}, p)  # fmt: skip
        paths.append(p)
    data = tmp_path / "data.pt"
    torch.save({"x": torch.randn(40, 6), "y": torch.randint(0, 3, (40,))}, data)
    return paths[0], paths[1], data


# --------------------------------------------------------------------------- declarations


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_declaration_agrees_with_the_functions_signature(name):
    info = method_info(name)
    params = inspect.signature(get_method(name)).parameters
    keyword_only = {n: p for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
    assert list(params)[:3] == ["spec", "a", "b"]
    assert set(keyword_only) == set(info.keywords), "declared keywords != keyword-only ones"
    assert len(info.keywords) == len(set(info.keywords))
    for declared in info.parameters:
        real = keyword_only[declared.name]
        annotation = str(real.annotation)
        assert declared.type.__name__ in annotation, (declared.name, annotation)
        if isinstance(declared.default, Computed):
            assert declared.choices is not None and real.default in declared.choices
        else:
            assert real.default == declared.default, declared.name
            assert type(real.default) is type(declared.default), declared.name
            assert (declared.default is None) == ("None" in annotation), declared.name
        if declared.choices is not None and not isinstance(declared.default, Computed):
            assert declared.default in declared.choices


def test_declared_choices_are_the_ones_the_methods_check():
    from modeconnect.matching.activation import STATISTICS
    from modeconnect.matching.assignment import SOLVERS
    from modeconnect.matching.ot import COSTS, OT_SOLVERS

    ot = {p.name: p for p in method_info("ot").params}
    assert ot["solver"].choices == OT_SOLVERS and ot["cost"].choices == COSTS
    assert ot["statistic"].choices == STATISTICS
    weight_solver = {p.name: p for p in method_info("weight").params}["solver"]
    assert set(SOLVERS) <= set(weight_solver.choices or ())


def test_declarations_are_read_without_importing_numerics():
    import subprocess
    import sys

    code = (
        "import sys; from modeconnect.matching import method_info, describe_method\n"
        "assert method_info('ot').flags == ('--ot-solver', '--reg', '--cost', '--statistic', "
        "'--max-batches', '--rtol'), method_info('ot').flags\n"
        "describe_method('weight')\n"
        "heavy = {'torch', 'scipy', 'numpy', 'ot'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_describe_lists_every_declared_parameter():
    text = describe_method("ot")
    assert text.startswith("ot: OTFusion")
    assert "  reg (--reg): float > 0 [default: 0.01]. Sinkhorn regularisation" in text
    assert "  solver (--ot-solver): one of emd, sinkhorn [default: emd]." in text
    assert "  num_itermax: int >= 1. " in text and "run context: model, data" in text
    assert "solver: one of lapjvh, scipy [default: lapjvh if lapx" in describe_method("weight")
    assert METHODS.info("weight") is method_info("weight")
    with pytest.raises(ModeconnectError, match=r"unknown alignment method 'zipit'; valid"):
        describe_method("zipit")


def test_takes_answers_from_the_declaration():
    assert takes("weight", "max_bytes") and takes("weight", "progress")
    assert takes("weight", "device") and takes("weight", "restarts")
    assert not takes("ot", "max_bytes") and not takes("activation", "progress")
    assert takes("ot", "model") and takes("activation", "data") and takes("ot", "seed")


def test_a_declaration_that_names_a_keyword_twice_is_refused():
    reg = Param("reg", float, 0.1, "r", flag="--reg")
    with pytest.raises(ModeconnectError, match=r"parameters declared twice \['reg'\]"):
        MethodInfo("bad", "m", "f", params=(reg, reg))
    with pytest.raises(ModeconnectError, match=r"unknown run context \['gpu'\]"):
        MethodInfo("bad", "m", "f", context=("gpu",))
    with pytest.raises(ModeconnectError, match="named like the run context"):
        MethodInfo("bad", "m", "f", params=(Param("device", str, "cpu", "d"),))
    assert set(CONTEXT) >= {"model", "data", "progress", "max_bytes", "device", "dtype"}


# --------------------------------------------------------------------------- the library


def test_method_options_refuses_what_the_method_does_not_take():
    assert method_options("weight", {"restarts": 2, "rtol": None, "seed": 3}) == {
        "restarts": 2, "seed": 3,
    }  # fmt: skip
    with pytest.raises(
        ModeconnectError,
        match=r"^method 'weight' takes no option 'reg'; its options: seed, restarts, max_iter, "
        r"tol, rtol, solver$",
    ):
        method_options("weight", {"reg": 0.1})
    # OT's solver is --ot-solver: the key 'solver' would be weight's assignment solver
    with pytest.raises(ModeconnectError, match=r"method 'ot' takes no option 'solver'"):
        method_options("ot", {"solver": "emd"})
    with pytest.raises(ModeconnectError, match=r"no alignment method is chosen.*'reg'"):
        method_options(None, {"reg": 0.1, "restarts": None})
    assert method_options(None, {"reg": None}) == {}


def test_run_context_passes_only_to_a_method_that_takes_it():
    assert method_options("weight", {"max_bytes": 10, "device": "cpu"}) == {
        "max_bytes": 10, "device": "cpu",
    }  # fmt: skip
    with pytest.raises(ModeconnectError, match=r"method 'ot' takes no option 'max_bytes'"):
        method_options("ot", {"max_bytes": 10})


def test_route_options_for_several_methods():
    routed = route_options(["weight", "ot"], {"restarts": 2, "reg": 0.05, "seed": 1})
    assert routed == {"weight": {"restarts": 2, "seed": 1}, "ot": {"reg": 0.05, "seed": 1}}
    with pytest.raises(ModeconnectError, match=r"^no method of weight, ot takes option 'cost2'"):
        route_options(["weight", "ot"], {"cost2": 1})


def _mlp() -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    def make(seed: int) -> nn.Sequential:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))

    a, b = make(0), make(1)
    return a, a.state_dict(), b.state_dict()


def test_a_registered_method_with_a_new_parameter_is_accepted_and_checked():
    from modeconnect.alignment import align

    seen: list[float] = []

    def scaled(spec, a, b, *, model=None, data=None, seed=0, scale=1.0):
        seen.append(scale)
        return match_weights(spec, a, b, seed=seed)

    scale = Param("scale", float, 1.0, "How much to scale.", min=0, flag="--scale")
    info = register_method("scaled", scaled, params=(scale,), summary="For a test.")
    try:
        assert method_info("scaled") is info and "scaled" in METHODS
        assert get_method("scaled") is scaled and info.flags == ("--scale",)
        opts = method_options("scaled", {"scale": 2.5, "seed": 1})
        assert opts == {"scale": 2.5, "seed": 1}
        model, a, b = _mlp()
        result = align(model, a, b, method="scaled", inputs=(torch.randn(4, 6),), **opts)
        assert seen == [2.5] and result.equivalence.passed
        with pytest.raises(
            ModeconnectError, match=r"^method 'scaled' takes no option 'reg'; its options: seed, "
            r"scale$",
        ):  # fmt: skip
            method_options("scaled", {"scale": 2.5, "reg": 0.1})
        assert route_options(["scaled", "ot"], {"scale": 3.0, "reg": 0.1}) == {
            "scaled": {"scale": 3.0}, "ot": {"reg": 0.1},
        }  # fmt: skip
        assert "  scale (--scale): float >= 0 [default: 1.0]. How much" in describe_method("scaled")
    finally:
        del METHODS["scaled"]
    assert "scaled" not in METHODS


def test_a_method_set_without_a_declaration_takes_only_the_shared_ones():
    def plain(spec, a, b, *, model=None, data=None, seed=0):
        return match_weights(spec, a, b, seed=seed)

    METHODS["plain"] = plain
    try:
        assert method_options("plain", {"seed": 2}) == {"seed": 2}
        with pytest.raises(ModeconnectError, match=r"'plain' takes no option 'restarts'"):
            method_options("plain", {"restarts": 2})
        METHODS["weight"] = plain  # replacing a function keeps its declaration
        assert method_info("weight").flags == ("--restarts", "--rtol")
    finally:
        del METHODS["plain"]
        METHODS["weight"] = match_weights
    assert get_method("weight") is match_weights


# --------------------------------------------------------------------------- the CLI


def test_cli_flags_come_from_the_declarations():
    assert o.METHOD_FLAGS == {
        "restarts": "--restarts", "rtol": "--rtol", "statistic": "--statistic",
        "max_batches": "--max-batches", "ot_solver": "--ot-solver", "reg": "--reg",
        "cost": "--cost", "learn_epochs": "--learn-epochs", "learn_lr": "--learn-lr",
        "random_alpha": "--random-alpha", "learn_permutations": "--learn-permutations",
        "learn_sides": "--learn-sides", "learn_heads": "--learn-heads",
    }  # fmt: skip
    declared = {f for name in METHOD_NAMES for f in method_info(name).flags}
    assert set(o.METHOD_FLAGS.values()) == declared


def test_align_help_marks_each_flag_with_the_methods_that_take_it():
    text = " ".join(_run("align", "--help").output.split())
    assert "Runs from successive seeds; the best objective is kept. [default: 1] [weight]" in text
    assert "[default: 0.001] [weight, activation, ot]" in text
    assert "Sinkhorn regularisation, relative to the cost range. [default: 0.01] [ot]" in text
    assert "--statistic [correlation|moment]" in text and "[activation, ot]" in text


def test_a_new_method_with_a_new_parameter_adds_its_flag():
    scale = Param("scale", float, 1.0, "How much to scale.", min=0, flag="--scale")
    infos = [method_info("weight"), MethodInfo("scaled", "m", "f", params=(scale,))]
    flags, keys = o.method_flags(infos)
    assert keys == {"restarts": "--restarts", "rtol": "--rtol", "scale": "--scale"}

    @click.command()
    @flags
    def cmd(**opts):
        click.echo(json.dumps(opts, sort_keys=True))

    out = CliRunner().invoke(cmd, ["--scale", "2"])
    assert json.loads(out.output) == {"restarts": None, "rtol": None, "scale": 2.0}
    bad = CliRunner().invoke(cmd, ["--scale", "-1"])
    assert bad.exit_code == 2 and "--scale" in bad.output
    help_text = " ".join(CliRunner().invoke(cmd, ["--help"]).output.split())
    assert "How much to scale. [default: 1.0] [scaled]" in help_text


def test_two_methods_may_share_a_flag_only_as_one_parameter():
    a = MethodInfo("a", "m", "f", params=(Param("k", int, 1, "k", min=1, flag="--k"),))
    b = MethodInfo("b", "m", "f", params=(Param("k", float, 1.0, "k", flag="--k"),))
    with pytest.raises(ValueError, match=r"--k: method 'b' declares it unlike 'a'"):
        o.method_flags([a, b])
    c = MethodInfo("c", "m", "f", params=(Param("k", int, 4, "k", min=1, flag="--k"),))
    flags, _ = o.method_flags([a, c])

    @click.command()
    @flags
    def cmd(**opts):
        pass

    help_text = " ".join(CliRunner().invoke(cmd, ["--help"]).output.split())
    assert "[default: a 1, c 4] [a, c]" in help_text


def test_a_flag_the_method_does_not_take_is_a_one_line_error(tmp_path):
    # refused before any file is read: the checkpoints do not exist
    a, b = str(tmp_path / "a.pt"), str(tmp_path / "b.pt")
    line = _one_line_error(_run("align", a, b, "--method", "weight", "--reg", "0.1"))
    assert line == "Error: --reg: method 'weight' does not take it; weight takes --restarts, --rtol"
    line = _one_line_error(_run("align", a, b, "--restarts", "2", "--cost", "weights",
                                "--method", "activation"))  # fmt: skip
    assert line == (
        "Error: --restarts, --cost: method 'activation' does not take them; activation takes "
        "--statistic, --max-batches, --rtol"
    )
    line = _one_line_error(_run("merge", a, b, "--out", str(tmp_path / "m.pt"),
                                "--method", "none", "--restarts", "2"))  # fmt: skip
    assert line.startswith("Error: --restarts: --method none aligns nothing, so no method takes")
    line = _one_line_error(_run("barrier", a, b, "--data", a, "--align", "none", "--reg", "1"))
    assert "--reg: --align none aligns nothing" in line
    line = _one_line_error(_run("curve", a, b, "--data", a, "--train", a, "--statistic",
                                "moment"))  # fmt: skip
    assert "--statistic: --align none aligns nothing" in line
    line = _one_line_error(_run("barrier", a, b, "--data", a, "--align", "ot", "--restarts", "3"))
    assert line.startswith("Error: --restarts: method 'ot' does not take it; ot takes --ot-solver")


def test_compare_refuses_a_flag_only_if_no_chosen_method_takes_it(tmp_path):
    a, b = str(tmp_path / "a.pt"), str(tmp_path / "b.pt")
    line = _one_line_error(_run("compare", a, b, "--data", a, "--methods", "weight,activation",
                                "--reg", "0.1"))  # fmt: skip
    assert line == (
        "Error: --reg: none of the methods weight, activation takes it; they take --restarts, "
        "--rtol, --statistic, --max-batches"
    )
    o.check_method_flags(["weight", "ot"], {"reg": 0.1, "restarts": 2})
    o.check_method_flags(None, {"reg": 0.1, "statistic": "moment"})


def test_compare_routes_each_flag_to_the_methods_that_take_it(tmp_path):
    a, b, data = _small_pair(tmp_path)
    js = tmp_path / "cmp.json"
    result = _run("compare", str(a), str(b), "--data", str(data), "--methods", "weight,ot",
                  "--restarts", "2", "--reg", "0.05", "--ot-solver", "sinkhorn", "--steps", "3",
                  "--json", str(js))  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = {r["method"]: r["params"] for r in json.loads(js.read_text())["rows"]}
    assert rows["weight"]["restarts"] == 2 and "reg" not in rows["weight"]
    assert (rows["ot"]["reg"], rows["ot"]["solver"]) == (0.05, "sinkhorn")


def test_activation_takes_statistic_from_the_command_line(tmp_path):
    a, b, data = _small_pair(tmp_path)
    js = tmp_path / "r.json"
    result = _run("align", str(a), str(b), "--data", str(data), "--method", "activation",
                  "--statistic", "moment", "--rtol", "0", "--steps", "3",
                  "--json", str(js))  # fmt: skip
    assert result.exit_code == 0, result.output
    params = json.loads(js.read_text())["alignment"]["params"]
    assert params["statistic"] == "moment"
