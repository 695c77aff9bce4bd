"""The red team's guard attack, end to end (issue 18, item 3): a wrong spec planted in the
spec cache, and a B with a constant added to every logit.

0.2.0 passed it (``max abs diff 2.96e+01, rel 2.96e-05``) and wrote an aligned B that
agreed with B on 11.6 % of the test set. Now a cached spec is untrusted input the guard
must pass: with ``+1e6`` the check cannot verify anything and ``align`` refuses cleanly
(tests/hostile_bench.py); with a smaller offset the planted spec fails the guard, is
derived again (the file replaced), and aligned B predicts exactly what B predicts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hostile_bench import Bench, assert_refused

from modeconnect.io import spec_cache
from modeconnect.io.checkpoints import load_checkpoint
from modeconnect.models import mlp
from modeconnect.spec import PermutationSpec, derive_spec, spec_key


def _evil_b(bench: Bench, shift: float) -> Path:
    """B with ``shift`` added to its output bias: every logit of every example moves."""
    stored = torch.load(bench.b, weights_only=True)
    stored["state_dict"]["7.bias"] = stored["state_dict"]["7.bias"] + shift
    path = bench.root / "b_shifted.pt"
    torch.save(stored, path)
    return path


def _wrong(spec: PermutationSpec, how: str) -> dict:
    """A spec that fits every shape but permutes the wrong axes."""
    data = spec.to_dict()
    groups = data["groups"]
    if how == "next layer left":  # hidden layer 2's units move, layer 3's columns do not
        groups[1][3] = [m for m in groups[1][3] if m != ["5.weight", 1]]
        data["layouts"]["5.weight"][1] = ["fixed", 512]
    else:  # "two layers tied": layer 2's units follow layer 1's permutation
        groups[0][3] += [m for m in groups[1][3] if m != ["5.weight", 1]]
        groups[1][3] = [["5.weight", 1]]
        data["layouts"]["3.weight"][0] = data["layouts"]["3.bias"][0] = data["layouts"]["1.bias"][0]
    return data


@pytest.fixture
def planted(bench: Bench, tmp_path_factory: pytest.TempPathFactory, monkeypatch):
    """A cache folder outside the bench, where ``plant(how)`` writes a wrong spec under the
    key ``align`` reads; returns ``plant``, the cache paths the run reads, and the model."""
    folder = tmp_path_factory.mktemp("planted-cache")
    monkeypatch.setenv("MODECONNECT_CACHE", str(folder))
    probe = (torch.load(bench.data, weights_only=True)["x"][:2],)
    model = mlp(**load_checkpoint(bench.b).model_kwargs)
    path = folder / f"{spec_key(model, probe)}.json"
    read: list[Path] = []
    real = spec_cache.read_cached

    def reading(where: Path, net: torch.nn.Module):
        read.append(where)
        return real(where, net)

    monkeypatch.setattr(spec_cache, "read_cached", reading)

    def plant(how: str) -> Path:
        path.write_text(json.dumps(_wrong(derive_spec(model, probe), how)))
        assert spec_cache.read_cached(path, model) is not None  # it passes the shape check
        read.clear()
        return path

    return plant, read, model


def _predictions(path: Path, x: torch.Tensor) -> torch.Tensor:
    model = mlp(**load_checkpoint(path).model_kwargs).eval()
    model.load_state_dict(load_checkpoint(path).state_dict)
    with torch.no_grad():
        return model(x).argmax(dim=1)


@pytest.mark.parametrize("how", ["next layer left", "two layers tied"])
def test_a_planted_spec_and_a_shifted_b_are_refused(bench: Bench, planted, how) -> None:
    plant, read, _ = planted
    path = plant(how)
    before = path.read_bytes()
    evil = _evil_b(bench, 1e6)
    out = bench.root / "aligned.pt"
    line = assert_refused(
        bench, bench.cli("align", bench.a, evil, "--data", bench.data, "--out", out),
        "equivalence check (cannot verify): aligned B cannot be verified in float32",
    )  # fmt: skip
    assert "nothing was written" in line and "offsets" in line
    assert read == [path]  # the planted spec was the one offered to the guard
    assert path.read_bytes() == before  # B's outputs, not the spec, made it unverifiable


@pytest.mark.parametrize("shift", [0.0, 1e3])
@pytest.mark.parametrize("how", ["next layer left", "two layers tied"])
def test_a_planted_spec_is_replaced_and_aligned_b_is_b(bench: Bench, planted, how, shift) -> None:
    plant, read, model = planted
    path = plant(how)
    b = _evil_b(bench, shift)
    out = bench.root / "aligned.pt"
    args = ["align", bench.a, b, "--data", bench.data, "--out", out, "--steps", "3"]
    code, stderr = bench.cli(*args)()
    assert code == 0, stderr
    assert read == [path, path]  # the planted spec, then a miss: derived again
    x = torch.load(bench.data, weights_only=True)["x"]
    assert torch.equal(_predictions(out, x), _predictions(b, x))
    probe = (x[:2],)
    assert spec_cache.read_cached(path, model) == derive_spec(model, probe)  # replaced
    assert bench.hub.requests == [] and bench.sockets.attempts == []


def test_the_spec_command_never_shows_a_planted_spec(bench: Bench, planted) -> None:
    """``spec`` runs no model, so nothing could check a cached spec: it derives afresh."""
    plant, read, model = planted
    path = plant("next layer left")
    code, stderr = bench.cli("spec", bench.b, "--input-shape", "2,64")()
    assert code == 0, stderr
    assert read == []  # the cache was not read
    probe = (torch.load(bench.data, weights_only=True)["x"][:2],)
    assert spec_cache.read_cached(path, model) == derive_spec(model, probe)  # and refreshed
