"""The commands' default cap on BatchNorm-reset data (``--max-bn-batches``, issue 22), and
the layer-wise prefix cache counting only the training batches a capped reset reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from study_files import assert_refused, run

import modeconnect as mc
from modeconnect import layerwise
from modeconnect.bn import BatchNormReset, bn_batches
from modeconnect.choices import DEFAULT_BN_EXAMPLES
from modeconnect.errors import ModeconnectError
from modeconnect.models import conv_net

KW: dict[str, Any] = {"in_channels": 1, "channels": [2, 3], "num_classes": 3, "image_size": 4}


@given(batch=st.integers(1, 5000))
def test_the_default_is_the_most_whole_batches_within_the_cap(batch: int) -> None:
    n = bn_batches(None, batch)
    assert n is not None and n >= 1
    assert n == 1 or n * batch <= DEFAULT_BN_EXAMPLES  # within the cap, unless one batch
    assert (n + 1) * batch > DEFAULT_BN_EXAMPLES  # and no batch more would be


@given(n=st.integers(1, 10_000), batch=st.integers(1, 5000))
def test_a_given_cap_and_all_pass_through(n: int, batch: int) -> None:
    assert bn_batches(n, batch) == n
    assert bn_batches("all", batch) is None


@pytest.mark.parametrize("bad", [0, -3, "some", True])
def test_a_bad_cap_is_refused(bad: Any) -> None:
    with pytest.raises(ModeconnectError, match="max_batches"):
        bn_batches(bad, 64)


def _split(x: torch.Tensor, y: torch.Tensor, size: int) -> list:
    return list(zip(x.split(size), y.split(size), strict=True))


def test_the_prefix_cache_counts_only_the_training_batches_a_capped_reset_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(0)
    model = conv_net(**KW)
    a, b = model.state_dict(), conv_net(**KW).state_dict()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(80, 1, 4, 4, generator=g), torch.randint(0, 3, (80,), generator=g)
    test, train = _split(x[:16], y[:16], 8), _split(x[16:], y[16:], 8)  # 2 and 8 batches
    cut = layerwise.split_prefix(model, {"5.weight"}, BatchNormReset(model, train, 2))
    assert cut is not None
    one = 8 * 2 * 2 * 2 * 4  # a batch of the prefix's output: 8 x 2 channels x 2 x 2, float32
    monkeypatch.setattr(layerwise, "PREFIX_BYTES", one * 4)  # 2 test + 2 training batches
    assert cut.fits(a, test, BatchNormReset(model, train, 2))
    assert not cut.fits(a, test, BatchNormReset(model, train, 3))
    assert not cut.fits(a, test, BatchNormReset(model, train))  # all 8: 10 batches

    calls: list[int] = []
    model[1].register_forward_pre_hook(lambda m, args: calls.append(1))

    def factory(x0: dict, x1: dict) -> BatchNormReset:
        return BatchNormReset(model, train, 2)

    common: dict[str, Any] = {"groups": ["5"], "steps": 5, "correction": factory}
    cached = mc.layerwise_barriers(model, a, b, test, **common)
    ran = len(calls)
    whole = mc.layerwise_barriers(model, a, b, test, cache_prefix=False, **common)
    assert len(calls) - ran > ran  # the cache ran the first conv fewer times
    for got, want in zip(cached.layers, whole.layers, strict=True):
        for variant in ("from_a", "from_b", "cumulative"):
            g_, w_ = getattr(got, variant).curve, getattr(want, variant).curve
            torch.testing.assert_close(g_.losses, w_.losses, rtol=1e-5, atol=1e-6)


def _files(root: Path) -> list[Path]:
    paths = []
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):  # c: the plane's third model
        torch.manual_seed(seed)
        path = root / f"{name}.pt"
        torch.save({"state_dict": conv_net(**KW).state_dict(),
                    "model": "modeconnect.models:conv_net", "model_kwargs": KW}, path)  # fmt: skip
        paths.append(path)
    paths.pop()
    g = torch.Generator().manual_seed(0)
    for name, n in (("test", 64), ("train", 1200)):
        x = torch.randn(n, 1, 4, 4, generator=g) * 3 + 1
        torch.save({"x": x, "y": torch.randint(0, 3, (n,), generator=g)}, root / f"{name}.pt")
        paths.append(root / f"{name}.pt")
    return paths


def _curve(root: Path, *extra: object) -> list[float]:
    a, b, test, train = _files(root) if not (root / "a.pt").exists() else [
        root / f"{n}.pt" for n in ("a", "b", "test", "train")]  # fmt: skip
    out = root / f"study{len(list(root.glob('study*')))}.json"
    code, _, err = run("barrier", a, b, "--data", test, "--train", train, "--bn", "reset",
                       "--align", "none", "--steps", 3, "--batch-size", 100, "--quiet",
                       "--json", out, *extra)  # fmt: skip
    assert code == 0, err
    return [p["loss"] for p in json.loads(out.read_text())["naive"]["curve"]]


def test_the_commands_reset_on_the_capped_batches_by_default(tmp_path: Path) -> None:
    default = _curve(tmp_path)
    assert default == _curve(tmp_path, "--max-bn-batches", DEFAULT_BN_EXAMPLES // 100)
    full = _curve(tmp_path, "--max-bn-batches", "all")
    assert full == _curve(tmp_path, "--max-bn-batches", 12)  # all 12 batches
    assert full[1] != default[1]  # the midpoint's statistics differ (1200 vs 500 examples)


@pytest.mark.parametrize("bad", ["0", "none", "-1"])
def test_a_bad_max_bn_batches_is_one_line_and_exit_2(tmp_path: Path, bad: str) -> None:
    a, b, test, train = _files(tmp_path)
    args = ("barrier", a, b, "--data", test, "--train", train, "--bn", "reset", "--align", "none")
    assert_refused(tmp_path, *args, "--max-bn-batches", bad, expect=("--max-bn-batches",))


def _grid(root: Path, command: str, *extra: object) -> Any:
    a, b, test, train = (root / f"{n}.pt" for n in ("a", "b", "test", "train"))
    models = (a, b, root / "c.pt") if command == "plane" else (a,)
    out = root / f"{command}{len(list(root.glob(f'{command}*')))}.json"
    shape = ("--dims", 1) if command == "landscape" else ()
    code, _, err = run(command, *models, "--data", test, "--train", train, "--bn", "reset",
                       "--resolution", 3, "--batch-size", 100, *shape, "--quiet",
                       "--json", out, *extra)  # fmt: skip
    assert code == 0, err
    record = json.loads(out.read_text())
    skip = ("timings", "command", "written", "outputs")
    return {k: v for k, v in record.items() if k not in skip}


@pytest.mark.parametrize("command", ["plane", "landscape"])
def test_the_grids_reset_on_the_capped_batches_by_default(tmp_path: Path, command: str) -> None:
    _files(tmp_path)
    default = _grid(tmp_path, command)
    assert default == _grid(tmp_path, command, "--max-bn-batches", DEFAULT_BN_EXAMPLES // 100)
    assert default != _grid(tmp_path, command, "--max-bn-batches", "all")
