"""Spec keys, specs as data, and the on-disk spec cache (issue 11).

A cache file is untrusted: every way of spoiling it must read as a miss (the spec is
derived again), never as code and never as a crash.
"""

from __future__ import annotations

import copy
import functools
import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from zoo import ZOO, randomize_
from zoo_vision import VISION

from modeconnect.errors import ModeconnectError
from modeconnect.forward import ModelCall
from modeconnect.io import spec_cache
from modeconnect.io.spec_cache import cache_folder, cached_spec, read_cached
from modeconnect.spec import PermutationSpec, derive_spec, spec_key

ROUND_TRIP = ["mlp_seq", "resnet20", "grouped_conv", "groupnorm_cnn", "vit", "gpt"]


def _mlp(hidden: int = 8, act: type[nn.Module] = nn.ReLU) -> nn.Module:
    return nn.Sequential(nn.Linear(4, hidden), act(), nn.Linear(hidden, 2)).eval()


# --------------------------------------------------------------------------- keys


def test_key_depends_on_what_the_spec_depends_on():
    x = torch.randn(2, 4)
    key = spec_key(_mlp(), (x,))
    assert key == spec_key(_mlp(), (x,)) == spec_key(randomize_(_mlp(), 3), (x,))
    assert key != spec_key(_mlp(hidden=9), (x,))  # parameter shapes
    assert key != spec_key(_mlp(act=nn.GELU), (x,))  # module structure
    assert key != spec_key(_mlp(), (torch.randn(3, 4),))  # input shape
    assert key != spec_key(_mlp(), (x.double(),))  # input dtype
    assert key != spec_key(_mlp(), (x,), permute_output=True)
    assert key != spec_key(_mlp(), (x,), ModelCall(("input",)))


def test_key_sees_plain_attributes_and_code():
    class Scaled(nn.Module):
        def __init__(self, residual: bool) -> None:
            super().__init__()
            self.fc, self.residual = nn.Linear(4, 4), residual

        def forward(self, x):
            return self.fc(x) + x if self.residual else self.fc(x)

    x = torch.randn(2, 4)
    assert spec_key(Scaled(True), (x,)) != spec_key(Scaled(False), (x,))
    assert spec_key(nn.ReLU(inplace=True), (x,)) != spec_key(nn.ReLU(), (x,))


# --------------------------------------------------------------------------- specs as data


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_to_dict_round_trips_exactly(name):
    model, inputs = ZOO[name]()
    spec = derive_spec(model, inputs)
    data = json.loads(json.dumps(spec.to_dict()))
    assert PermutationSpec.from_dict(data) == spec


def test_shuffles_and_per_block_leaves_round_trip():
    model, inputs = VISION["tv_shufflenet_v2"]()
    spec = derive_spec(model, inputs)
    assert PermutationSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def _spoiled(data: dict, path: list, value) -> dict:
    node = data
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return data


SPOILS = [
    (["format"], 99),
    (["groups"], "x"),
    (["groups", 0], ["P0", -3, None, []]),
    (["groups", 0, 2], "P999"),
    (["groups", 0, 3, 0], ["nowhere", 0]),
    (["layouts", "0.weight"], [["leaf", "P999", 8, None], ["fixed", 3]]),
    (["layouts", "0.weight", 0], ["leaf", "P0", 7, None]),
    (["layouts", "0.weight", 0], ["shuffle", ["fixed", 3], [0, 0, 1]]),
    (["layouts", "0.weight", 0], ["product", []]),
    (["layouts", "0.weight", 0], ["lambda", "__import__('os')"]),
    (["layouts", "0.weight", 0], ["fixed", True]),
    (["aliases"], {"a": 3}),
    (["fixed", 0], ["0.weight", 1, 3, "model input"]),
    (["sites"], {"P0": [["node", -1, ["fixed", 2]]]}),
    (["weight_outputs"], {"0.weight": 7}),
]


@pytest.mark.parametrize(("path", "value"), SPOILS)
def test_from_dict_rejects_malformed_data(path, value):
    model, inputs = ZOO["mlp_seq"]()
    data = _spoiled(derive_spec(model, inputs).to_dict(), path, value)
    with pytest.raises(ModeconnectError, match=r"^spec data: .*; derive the spec again$"):
        PermutationSpec.from_dict(data)


def test_from_dict_rejects_deep_nesting():
    deep: list = ["fixed", 2]
    for _ in range(100):
        deep = ["concat", [deep]]
    model, inputs = ZOO["mlp_seq"]()
    data = _spoiled(derive_spec(model, inputs).to_dict(), ["layouts", "0.weight", 0], deep)
    with pytest.raises(ModeconnectError, match="nested too deeply"):
        PermutationSpec.from_dict(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 40) | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),  # fmt: skip
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values, where=st.integers(0, 6))
def test_any_json_reads_as_a_spec_or_a_clean_error(value, where):
    data = copy.deepcopy(_mlp_data())
    data[list(data)[where]] = value
    before = copy.deepcopy(data)
    try:
        spec = PermutationSpec.from_dict(data)
    except ModeconnectError as err:
        # A clean error: one line that says something, not a traceback.
        message = str(err)
        assert message.strip() and "\n" not in message.strip()
    else:
        # What was accepted is a spec: it writes and reads back to itself.
        assert PermutationSpec.from_dict(spec.to_dict()).to_dict() == spec.to_dict()
    assert data == before  # the input is never modified


@functools.cache
def _mlp_data() -> dict:
    model, inputs = ZOO["mlp_seq"]()
    return derive_spec(model, inputs).to_dict()


# --------------------------------------------------------------------------- the disk cache


def test_cache_folder_follows_the_environment(tmp_path):
    assert cache_folder({"MODECONNECT_CACHE": str(tmp_path)}) == tmp_path
    assert cache_folder({"MODECONNECT_CACHE": "off"}) is None
    assert cache_folder({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "modeconnect" / "specs"
    home = cache_folder({})
    assert home is not None and home.parts[-3:] == (".cache", "modeconnect", "specs")


def test_second_run_skips_the_export(tmp_path, monkeypatch):
    monkeypatch.setenv("MODECONNECT_CACHE", str(tmp_path))
    model, inputs = VISION["tv_resnet18"]()
    first = cached_spec(model, inputs)
    assert len(list(tmp_path.glob("*.json"))) == 1

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr("modeconnect.spec.derive.trace", no_export)
    again = cached_spec(VISION["tv_resnet18"]()[0], inputs)
    assert again == first and again.sites == first.sites  # activation matching needs sites


def test_cache_off_always_derives(tmp_path, monkeypatch):
    monkeypatch.setenv("MODECONNECT_CACHE", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model, inputs = ZOO["mlp_seq"]()
    assert cached_spec(model, inputs) == derive_spec(model, inputs)
    assert not list(tmp_path.rglob("*.json"))


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"\xff\xfe", b"null", b"[]", b'{"format": 1}', b"1e999999", b'"' + b"x" * 100],
)
def test_spoiled_files_are_misses_and_get_replaced(tmp_path, content):
    model, inputs = ZOO["mlp_seq"]()
    expected = cached_spec(model, inputs, folder=tmp_path)
    (path,) = tmp_path.glob("*.json")
    path.write_bytes(content)
    assert read_cached(path, model) is None
    assert cached_spec(model, inputs, folder=tmp_path) == expected
    assert read_cached(path, model) == expected


def test_a_spec_for_other_shapes_is_a_miss(tmp_path):
    """A file that parses but does not fit the model (renamed, edited) is not used."""
    small, x = _mlp(8), torch.randn(2, 4)
    big = _mlp(9)
    spec = cached_spec(small, (x,), folder=tmp_path)
    (path,) = tmp_path.glob("*.json")
    assert read_cached(path, big) is None
    data = spec.to_dict()
    data["layouts"].pop("0.bias")
    path.write_text(json.dumps(data))
    assert read_cached(path, small) is None


def test_oversized_files_are_not_read(tmp_path, monkeypatch):
    model, inputs = ZOO["mlp_seq"]()
    cached_spec(model, inputs, folder=tmp_path)
    (path,) = tmp_path.glob("*.json")
    monkeypatch.setattr(spec_cache, "MAX_BYTES", 10)
    assert read_cached(path, model) is None


def test_unwritable_folder_still_gives_the_spec(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    model, inputs = ZOO["mlp_seq"]()
    assert cached_spec(model, inputs, folder=blocker / "specs") == derive_spec(model, inputs)
