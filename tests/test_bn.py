"""BatchNorm reset and REPAIR: exact statistics, untouched inputs, endpoint invariance."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import Tensor, nn

from modeconnect.bn import (
    check_mode,
    layer_statistics,
    make_correction,
    renormalize,
    repair,
    repair_layers,
    reset_batchnorm,
)
from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import Batch, evaluate, interpolate
from modeconnect.io.data import load_data
from modeconnect.models import conv_net, mlp

ROOT = Path(__file__).resolve().parents[1]
SMALL_CONV = {"channels": [8, 16]}


def _example() -> ModuleType:
    path = ROOT / "examples/bn_reset_digits.py"
    spec = importlib.util.spec_from_file_location("bn_reset_digits", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bn_reset_digits"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return _example()


@pytest.fixture(scope="module")
def trained(example: ModuleType) -> dict[str, dict[str, Tensor]]:
    """A and B: the example's BN CNNs, trained for 2 epochs (~1 s)."""
    return example.train_pair(epochs=2)


@pytest.fixture(scope="module")
def digits() -> dict[str, list[Batch]]:
    return {
        "train": load_data(ROOT / "checkpoints/digits_train.pt", batch_size=300),
        "test": load_data(ROOT / "checkpoints/digits_test.pt", batch_size=500),
    }


def _clone(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in sd.items()}


# --------------------------------------------------------------------------- reset


def test_reset_gives_the_exact_statistics_of_the_first_batchnorm(digits) -> None:
    torch.manual_seed(0)
    model = conv_net(**SMALL_CONV)
    sd = _clone(model.state_dict())
    train = digits["train"]  # batches of 300, 300, 300, 300, 197: unequal sizes
    got = reset_batchnorm(model, sd, train)
    with torch.no_grad():
        acts = [model[1](model[0](x)) for x, _ in train]  # ToImage, Conv: the BN's input
    flat = torch.cat([a.transpose(0, 1).reshape(a.shape[1], -1) for a in acts], dim=1).double()
    torch.testing.assert_close(got["2.running_mean"].double(), flat.mean(1), rtol=1e-5, atol=1e-6)
    sizes = torch.tensor([len(x) for x, _ in train], dtype=torch.float64)
    var = torch.stack([a.transpose(0, 1).reshape(a.shape[1], -1).double().var(1) for a in acts])
    want_var = (sizes[:, None] * var).sum(0) / sizes.sum()  # unbiased batch variances, by size
    torch.testing.assert_close(got["2.running_var"].double(), want_var, rtol=1e-5, atol=1e-6)
    assert int(got["2.num_batches_tracked"]) == len(train)
    assert not torch.equal(got["6.running_mean"], sd["6.running_mean"])  # the second BN too


def test_reset_leaves_model_and_inputs_untouched(digits) -> None:
    torch.manual_seed(1)
    model = conv_net(**SMALL_CONV)
    model[2].momentum = 0.3
    model.train()
    model[6].eval()
    own = _clone(model.state_dict())
    given = _clone(own)
    given_copy = _clone(given)
    out = reset_batchnorm(model, given, digits["train"], max_batches=2)
    for key, value in model.state_dict().items():
        assert torch.equal(value, own[key]), key
    for key, value in given.items():
        assert torch.equal(value, given_copy[key]), key
    assert model[2].momentum == 0.3 and model[6].momentum == 0.1
    assert model.training and model[2].training and not model[6].training
    assert int(out["2.num_batches_tracked"]) == 2  # max_batches
    assert set(out) == set(given) and out["1.weight"] is given["1.weight"]


def test_reset_restores_a_trained_model_with_corrupted_statistics(example, trained, digits) -> None:
    model = conv_net(**example.MODEL_KWARGS)
    a = trained["a"]
    own = evaluate(model, a, digits["test"]).accuracy
    corrupted = dict(a)
    for key in [k for k in a if k.endswith("running_mean")]:
        corrupted[key] = torch.zeros_like(a[key])
        corrupted[key.replace("mean", "var")] = torch.ones_like(a[key])
    broken = evaluate(model, corrupted, digits["test"]).accuracy
    restored = evaluate(model, reset_batchnorm(model, corrupted, digits["train"]), digits["test"])
    assert own > 0.95 and broken < own - 0.05
    assert abs(restored.accuracy - own) <= 0.01


def test_reset_at_alpha_zero_keeps_a_trained_models_accuracy(example, trained, digits) -> None:
    model = conv_net(**example.MODEL_KWARGS)
    a, b = trained["a"], trained["b"]
    at_zero = interpolate(a, b, 0.0)
    own = evaluate(model, a, digits["test"]).accuracy
    reset = evaluate(model, reset_batchnorm(model, at_zero, digits["train"]), digits["test"])
    assert abs(reset.accuracy - own) <= 0.01


def test_example_shows_a_false_barrier_without_reset(example, trained) -> None:
    studies = example.compare(trained, steps=5)
    none, reset = studies["none"].aligned.test, studies["reset"].aligned.test
    assert reset.barriers["lerp"].loss < 0.5 * none.barriers["lerp"].loss
    assert reset.midpoint.accuracy > none.midpoint.accuracy
    naive = {bn: s.naive.test.barriers["lerp"].loss for bn, s in studies.items()}
    assert naive["reset"] < naive["none"]


def test_reset_without_batchnorm_returns_a_copy(digits) -> None:
    model = mlp(64, [16], 10)
    sd = model.state_dict()
    out = reset_batchnorm(model, sd, digits["train"])
    assert out == sd and out is not sd
    with pytest.raises(ModeconnectError, match="batches` is empty"):
        reset_batchnorm(conv_net(**SMALL_CONV), conv_net(**SMALL_CONV).state_dict(), [])


# --------------------------------------------------------------------------- REPAIR


def _mlp_pair(seed: int = 0) -> tuple[nn.Module, dict[str, Tensor], dict[str, Tensor]]:
    torch.manual_seed(seed)
    a = mlp(64, [32, 32], 10)
    b = mlp(64, [32, 32], 10)
    return a, _clone(a.state_dict()), _clone(b.state_dict())


def _hidden_stats(model: nn.Module, sd: dict[str, Tensor], x: Tensor) -> dict[str, tuple]:
    """Independent reference: load, run layer by layer, record each Linear's output stats."""
    net = copy.deepcopy(model)
    net.load_state_dict(sd)
    net.eval()
    out, h = {}, x
    with torch.no_grad():
        for name, layer in net.named_children():
            h = layer(h)
            if isinstance(layer, nn.Linear):
                out[name] = (h.double().mean(0), h.double().std(0, unbiased=False))
    return out


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_repair_does_not_change_an_endpoint(digits, alpha: float) -> None:
    model, a, b = _mlp_pair()
    end = a if alpha == 0.0 else b
    out = repair(model, a, b, dict(end), digits["train"], alpha=alpha)
    for key, value in end.items():
        torch.testing.assert_close(out[key], value, rtol=1e-6, atol=1e-7)


def test_repair_gives_every_hidden_unit_the_interpolated_statistics(digits) -> None:
    model, a, b = _mlp_pair(1)
    alpha = 0.3
    merged = interpolate(a, b, alpha)
    out = repair(model, a, b, merged, digits["train"], alpha=alpha)
    x = torch.cat([x for x, _ in digits["train"]])
    sa, sb, so = (_hidden_stats(model, sd, x) for sd in (a, b, out))
    for name in ("1", "3"):
        for i in range(2):  # mean, std
            want = (1 - alpha) * sa[name][i] + alpha * sb[name][i]
            torch.testing.assert_close(so[name][i], want, rtol=1e-4, atol=1e-5)
    for key in ("5.weight", "5.bias"):  # the output layer (the logits) is left alone
        assert torch.equal(out[key], merged[key])
    assert not torch.equal(out["1.weight"], merged["1.weight"])


def test_layer_statistics_skip_the_output_layer_and_follow_run_order(digits) -> None:
    model, a, _ = _mlp_pair()
    stats = layer_statistics(model, a, digits["train"], max_batches=1)
    assert list(stats.mean) == ["1", "3"] and stats.std["1"].shape == (32,)
    assert [n for n, _ in repair_layers(model)] == ["1", "3", "5"]


class _NoBias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 16, bias=False)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def test_repair_rescales_a_layer_without_bias(digits) -> None:
    torch.manual_seed(2)
    model = _NoBias()
    a, b = _clone(model.state_dict()), _clone(_NoBias().state_dict())
    merged = interpolate(a, b, 0.5)
    out = repair(model, a, b, merged, digits["train"], alpha=0.5)
    assert set(out) == set(a)
    ratio = out["fc1.weight"] / merged["fc1.weight"]
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-4)  # one scale per unit
    assert (ratio[:, 0] > 1.0).float().mean() > 0.5  # variance collapse undone


def test_repair_and_reset_refuse_the_wrong_architecture(digits) -> None:
    conv = conv_net(**SMALL_CONV)
    sd = conv.state_dict()
    with pytest.raises(ModeconnectError, match="has BatchNorm layers; reset"):
        repair(conv, sd, sd, sd, digits["train"], alpha=0.5)
    with pytest.raises(ModeconnectError, match="no BatchNorm layer.*bn='repair'"):
        check_mode(mlp(64, [8], 10), "reset", digits["train"])
    with pytest.raises(ModeconnectError, match="bn='repair' but the model has BatchNorm"):
        check_mode(conv, "repair", digits["train"])
    with pytest.raises(ModeconnectError, match="measures statistics on training data"):
        check_mode(conv, "reset", None)
    with pytest.raises(ModeconnectError, match="unknown bn mode 'bn'; valid modes: none, reset"):
        check_mode(conv, "bn", None)


def test_renormalize_and_make_correction(digits) -> None:
    model, a, b = _mlp_pair(3)
    merged = interpolate(a, b, 0.5)
    assert renormalize(model, a, b, merged, None, mode="none", alpha=0.5) == merged
    repaired = renormalize(model, a, b, merged, digits["train"], mode="repair", alpha=0.5)
    direct = repair(model, a, b, merged, digits["train"], alpha=0.5)
    for key in a:
        torch.testing.assert_close(repaired[key], direct[key])
    conv = conv_net(**SMALL_CONV)
    sd = conv.state_dict()
    correct = make_correction(conv, sd, sd, digits["train"], mode="reset")
    reset = reset_batchnorm(conv, sd, digits["train"])
    assert all(torch.equal(correct(sd, 0.5)[k], reset[k]) for k in sd)
