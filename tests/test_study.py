"""barrier_study: exact zeros, endpoint metrics, the JSON contract, options and errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from modeconnect.barrier_studies import barrier_study
from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import Batch, evaluate, evaluate_examples
from modeconnect.io.checkpoints import load_checkpoint, resolve_model
from modeconnect.io.data import load_data
from modeconnect.models import mlp

SMALL = {"in_features": 6, "hidden": [10, 12], "out_features": 3}


def _pair(seed_a: int = 0, seed_b: int = 1) -> tuple[nn.Module, dict, dict]:
    torch.manual_seed(seed_a)
    model = mlp(**SMALL)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(seed_b)
    b = {k: v.clone() for k, v in mlp(**SMALL).state_dict().items()}
    return model, a, b


def _data(seed: int, n: int = 60, size: int = 20) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 6, generator=g), torch.randint(3, (n,), generator=g)
    return list(zip(x.split(size), y.split(size), strict=True))


def _bn_model(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_barrier_of_a_model_with_itself_is_exactly_zero() -> None:
    model, a, _ = _pair()
    b = {k: v.clone() for k, v in a.items()}
    study = barrier_study(
        model, a, b, test=_data(0), train=_data(1), steps=5, bootstrap=30, layerwise=True
    )
    for pair in (study.naive, study.aligned):
        assert pair is not None
        for split in pair.splits.values():
            for bar in split.barriers.values():
                assert (bar.loss, bar.error) == (0.0, 0.0)
        for interval in pair.bootstrap.values():
            assert (interval.loss.low, interval.loss.high, interval.error.high) == (0.0, 0.0, 0.0)
        assert pair.layerwise is not None
        for layer in pair.layerwise.layers:
            for path in (layer.from_a, layer.from_b, layer.cumulative):
                assert path.barriers["lerp"].loss == 0.0 and path.barriers["mean"].error == 0.0


def test_self_barrier_is_zero_with_batchnorm_reset() -> None:
    model = _bn_model(0)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    study = barrier_study(model, a, dict(a), test=_data(0), train=_data(1), align=None, bn="reset")
    assert study.naive.test.barriers["lerp"].loss == 0.0 and study.aligned is None


def test_curve_endpoints_equal_the_endpoint_models_metrics() -> None:
    model, a, b = _pair(2, 3)
    test, train = _data(2), _data(3)
    study = barrier_study(model, a, b, test=test, train=train, steps=4, align=None)
    assert study.alphas == (0.0, 1 / 3, 0.5, 2 / 3, 1.0)  # 0.5 added to the grid
    for split, data in (("test", test), ("train", train)):
        start, end = study.naive.splits[split].endpoints
        assert start == evaluate_examples(model, a, data).metrics()
        assert end == evaluate_examples(model, b, data).metrics()
        plain = evaluate(model, a, data)
        assert (
            math.isclose(start.loss, plain.loss, rel_tol=1e-6) and start.accuracy == plain.accuracy
        )


def test_aligned_curve_ends_at_b() -> None:
    model, a, b = _pair(4, 5)
    study = barrier_study(model, a, b, test=_data(4), steps=3)
    assert study.aligned is not None and study.alignment is not None
    _, end = study.aligned.test.endpoints
    want = evaluate_examples(model, b, _data(4)).metrics()
    assert math.isclose(end.loss, want.loss, rel_tol=1e-5) and end.accuracy == want.accuracy


def test_to_dict_keeps_the_keys_of_align_json_and_adds_the_rest() -> None:
    model, a, b = _pair(6, 7)
    study = barrier_study(
        model, a, b, test=_data(6), train=_data(7), steps=3, bootstrap=20, layerwise=True,
        definition="mean",
    )  # fmt: skip
    out = json.loads(json.dumps(study.to_dict()))
    for pair in ("naive", "aligned"):
        assert set(out[pair]["barrier"]) == {"loss", "error", "definition"}
        assert out[pair]["barrier"]["definition"] == "mean"
        assert out[pair]["barrier"] == out[pair]["mean"]
        assert out[pair]["lerp"]["definition"] == "lerp"
        assert [set(p) for p in out[pair]["curve"]] == [{"alpha", "loss", "accuracy"}] * 3
        assert out[pair]["midpoint"]["alpha"] == 0.5
        assert set(out[pair]["splits"]) == {"test", "train"}
        assert out[pair]["curve"] == out[pair]["splits"]["test"]["curve"]
        assert set(out[pair]["bootstrap"]) == {"lerp", "mean"}
    assert out["definition"] == "mean" and out["bn"] == "none" and out["loss"] == "ce"
    assert out["equivalence"]["passed"] and out["alignment"]["method"] == "weight"
    assert {r["pair"] for r in out["layerwise"]} == {"naive", "aligned"}
    assert {r["group"] for r in out["layerwise"]} == {"1", "3", "5"}


def test_shipped_mlp_pair_barrier_and_bootstrap_interval(checkpoints: Path) -> None:
    ca, cb = load_checkpoint(checkpoints / "mlp_a.pt"), load_checkpoint(checkpoints / "mlp_b.pt")
    model = resolve_model([ca, cb]).model
    test = load_data(checkpoints / "digits_test.pt", batch_size=500)
    study = barrier_study(
        model, ca.state_dict, cb.state_dict, test=test, align=None, steps=11, bootstrap=300
    )
    point = study.naive.test.barriers["lerp"]
    assert 1.2 < point.loss < 1.5  # checkpoints/README.md: 1.34 nats with 11 alphas
    assert study.naive.test.midpoint.accuracy == pytest.approx(0.484)
    interval = study.naive.bootstrap["lerp"]
    assert interval.loss.low <= point.loss <= interval.loss.high
    assert interval.error.low <= point.error <= interval.error.high
    assert interval.loss.high - interval.loss.low < 0.5


def test_repair_in_a_study_keeps_the_endpoints() -> None:
    model, a, b = _pair(8, 9)
    test, train = _data(8), _data(9)
    study = barrier_study(model, a, b, test=test, train=train, align=None, bn="repair", steps=3)
    start, end = study.naive.test.endpoints
    for got, sd in ((start, a), (end, b)):
        want = evaluate_examples(model, sd, test).metrics()
        assert math.isclose(got.loss, want.loss, rel_tol=1e-5) and got.accuracy == want.accuracy
    assert study.to_dict()["bn"] == "repair"


def _l1(logits: Tensor, y: Tensor) -> Tensor:
    return (logits - torch.nn.functional.one_hot(y, logits.shape[1])).abs().sum(1)


def test_losses_by_name_and_callable_and_progress() -> None:
    model, a, b = _pair(10, 11)
    calls: list[tuple[str, int, int]] = []
    study = barrier_study(
        model, a, b, test=_data(10), align=None, steps=3, loss="mse",
        progress=lambda *args: calls.append(args),
    )  # fmt: skip
    assert study.loss == "mse" and calls[-1] == ("naive curve", 3, 3)
    custom = barrier_study(model, a, b, test=_data(10), align=None, steps=3, loss=_l1)
    assert custom.loss.endswith(":_l1") and custom.naive.test.curve.losses[0] > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bn": "reset"}, "measures statistics on training data"),
        ({"bn": "reset", "train": _data(1)}, "no BatchNorm layer"),
        ({"bn": "batch"}, "unknown bn mode 'batch'"),
        ({"bootstrap": -1}, "bootstrap=-1 must be an int >= 0"),
        ({"definition": "max"}, "valid names: lerp, mean"),
        ({"steps": 1}, "steps=1 must be an int >= 2"),
        ({"loss": "hinge"}, "unknown loss 'hinge'"),
        ({"align": "magic"}, "unknown alignment method 'magic'"),
    ],
)
def test_errors(kwargs: dict, message: str) -> None:
    model, a, b = _pair()
    with pytest.raises(ModeconnectError, match=message):
        barrier_study(model, a, b, test=_data(0), **kwargs)
