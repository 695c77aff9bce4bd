"""One options object per command: built once from flat flags, taken whole by ``*_files``."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest

from modeconnect.commands import options as opts
from modeconnect.commands.align import align_files
from modeconnect.errors import ModeconnectError
from modeconnect.io.references import Trust

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT / "checkpoints"
COMMANDS = [
    opts.AlignOptions, opts.MergeOptions, opts.CompareOptions, opts.BarrierOptions,
    opts.CurveOptions, opts.PlaneOptions, opts.LandscapeOptions, opts.SharpnessOptions,
    opts.SpecOptions,
]  # fmt: skip


def test_flat_keywords_go_to_the_shared_values_and_the_command() -> None:
    o = opts.AlignOptions.from_keywords(
        {"model": "m:f", "trust": Trust(modules=("timm",)), "data": "d.pt", "batch_size": 7,
         "device": "cpu", "command": "x", "alpha": 0.25, "out": "o.pt", "restarts": 3}
    )  # fmt: skip
    assert o.sources == opts.Sources("m:f", None, Trust(modules=("timm",)))
    assert o.inputs == opts.Inputs(data="d.pt", batch_size=7)
    assert (o.run.device, o.run.command) == ("cpu", "x")
    assert (o.alpha, o.out) == (0.25, "o.pt")
    assert o.method_options == {"restarts": 3}  # the method's own, checked by the method


def test_a_command_default_survives_keywords_for_the_same_shared_value() -> None:
    assert opts.CurveOptions.from_keywords({"data": "d", "train": "t"}).inputs.batch_size == 128


def test_an_unknown_keyword_lists_the_ones_the_command_takes() -> None:
    with pytest.raises(ModeconnectError, match=r"unknown options alpha, colour; the command takes "
                       r"batch_size, .*margin, .*trust, workers$"):  # fmt: skip
        opts.PlaneOptions.from_keywords({"data": "d", "colour": "red", "alpha": 1.0})


def test_required_options_are_named_as_flags() -> None:
    with pytest.raises(ModeconnectError, match=r"--train, --data must be given"):
        opts.CurveOptions.build(None, {})
    with pytest.raises(ModeconnectError, match=r"--out must be given"):
        opts.MergeOptions.build(opts.MergeOptions(), {})


def test_options_and_keywords_together_are_refused() -> None:
    with pytest.raises(ModeconnectError, match="either AlignOptions or keyword options"):
        opts.AlignOptions.build(opts.AlignOptions(), {"alpha": 0.3})
    with pytest.raises(ModeconnectError, match="expected AlignOptions, got MergeOptions"):
        opts.AlignOptions.build(opts.MergeOptions(out="x"), {})  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", COMMANDS, ids=lambda c: c.__name__)
def test_every_field_has_one_home(cls: type[opts.Options]) -> None:
    """A flag name means one thing: no command field repeats a shared value's field."""
    shared = {f.name for v in (opts.Sources, opts.Inputs, opts.Run) for f in dataclasses.fields(v)}
    own = {f.name for f in dataclasses.fields(cls)}
    assert not own & shared


@pytest.mark.parametrize("cls", COMMANDS, ids=lambda c: c.__name__)
def test_files_functions_take_a_handful_of_arguments(cls: type[opts.Options]) -> None:
    import importlib

    name = cls.__name__.removesuffix("Options").lower()
    module = importlib.import_module(
        f"modeconnect.commands.{'landscape' if name == 'plane' else name}"
    )
    fn = getattr(module, f"{name}_files")
    params = inspect.signature(fn).parameters
    assert len(params) <= 5 and "options" in params


def test_the_options_object_and_the_keywords_give_the_same_result(tmp_path: Path) -> None:
    common = {"data": CHECKPOINTS / "digits_test.pt", "steps": 3}
    by_keywords = align_files(CHECKPOINTS / "mlp_a.pt", CHECKPOINTS / "mlp_b.pt",
                              json_path=tmp_path / "k.json", **common)  # fmt: skip
    options = opts.AlignOptions(
        inputs=opts.Inputs(data=common["data"]), steps=3, json_path=tmp_path / "o.json"
    )
    by_object = align_files(CHECKPOINTS / "mlp_a.pt", CHECKPOINTS / "mlp_b.pt", options)
    assert by_keywords.result.alignment.perm.keys() == by_object.result.alignment.perm.keys()
    for k, v in by_keywords.result.alignment.perm.items():
        assert (v == by_object.result.alignment.perm[k]).all()
    one, two = (json.loads((tmp_path / n).read_text()) for n in ("k.json", "o.json"))
    assert one["aligned"] == two["aligned"] and one["naive"] == two["naive"]


CONVERTED = {("curve", "align"), ("sharpness", "merge"), ("landscape", "span")}
"""Flags whose text default the command converts: ``none`` is ``None``, ``-1,1`` a pair."""


@pytest.mark.parametrize("cls", COMMANDS, ids=lambda c: c.__name__)
def test_each_flag_default_is_the_options_default(cls: type[opts.Options]) -> None:
    """The CLI declares each flag once and the options dataclass each field once: where both
    give a default they agree, so a run from the CLI and one from the library with the
    same arguments are the same run (the study's flags: ``barrier_study``'s defaults)."""
    from modeconnect.barrier_studies import barrier_study
    from modeconnect_cli.main import main

    name = cls.__name__.removesuffix("Options").lower()
    defaults = cls()
    where = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(cls)}
    for shared in ("sources", "inputs", "run"):
        value = getattr(defaults, shared)
        where.update({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if cls.REST == "study":
        where.update({k: p.default for k, p in inspect.signature(barrier_study).parameters.items()
                      if p.default is not inspect.Parameter.empty})  # fmt: skip
    compared = 0
    for param in main.commands[name].params:
        flag_default = param.default
        if param.name not in where or (name, param.name) in CONVERTED:
            continue
        if flag_default is None or type(flag_default).__name__ == "Sentinel":
            continue
        expected = where[param.name]
        assert flag_default == (list(expected) if isinstance(flag_default, list) else expected), (
            f"{name} --{param.name.replace('_', '-')}: the flag's default {flag_default!r} is "
            f"not the options' {expected!r}"
        )
        compared += 1
    assert compared >= 1 or name == "spec"
