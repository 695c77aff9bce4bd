"""Tests for modeconnect.models and the shipped checkpoints in checkpoints/."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from modeconnect.errors import ModeconnectError
from modeconnect.models import MLP, conv_net, mlp

CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
KWARGS = {"in_features": 64, "hidden": [512, 512, 512], "out_features": 10}


def _resolve(target: str) -> object:
    """Import ``"package.module:NAME"`` the way checkpoints name their model."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _load(name: str) -> dict:
    return torch.load(CHECKPOINTS / name, weights_only=True)


def _accuracy(model: torch.nn.Module, data: dict[str, torch.Tensor]) -> float:
    with torch.no_grad():
        return (model.eval()(data["x"]).argmax(1) == data["y"]).float().mean().item()


@pytest.mark.parametrize("shape", [(5, 64), (5, 1, 8, 8)])
def test_mlp_forward_shape(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    assert mlp(64, (16, 8), 10)(torch.randn(shape)).shape == (5, 10)
    assert MLP(64, (16, 8), 10)(torch.randn(shape)).shape == (5, 10)


@pytest.mark.parametrize("shape", [(5, 64), (5, 1, 8, 8)])
def test_conv_net_forward_shape(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    assert conv_net(channels=(4, 8))(torch.randn(shape)).shape == (5, 10)


def test_conv_net_other_sizes() -> None:
    net = conv_net(in_channels=3, channels=[4, 6, 8], num_classes=7, image_size=7)
    assert net(torch.randn(2, 3, 7, 7)).shape == (2, 7)


def test_mlp_and_MLP_compute_the_same_function() -> None:
    torch.manual_seed(0)
    seq, cls = mlp(64, [32, 16, 8], 10), MLP(64, [32, 16, 8], 10)
    linear_keys = [k for k in seq.state_dict() if k.endswith(".weight")]
    mapping = {}
    for i, key in enumerate(linear_keys, start=1):
        index = key.split(".")[0]
        mapping.update({f"{index}.weight": f"fc{i}.weight", f"{index}.bias": f"fc{i}.bias"})
    cls.load_state_dict({mapping[k]: v for k, v in seq.state_dict().items()})
    x = torch.randn(7, 1, 8, 8)
    torch.testing.assert_close(cls(x), seq(x))


def test_MLP_layer_names() -> None:
    assert list(MLP(4, [3, 2], 1).state_dict()) == [
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
        "fc3.weight",
        "fc3.bias",
    ]


@pytest.mark.parametrize("builder", [mlp, conv_net])
def test_builders_trace_with_export(builder: object) -> None:
    model = builder()  # type: ignore[operator]
    exported = torch.export.export(model.eval(), (torch.randn(2, 64),), strict=False)
    assert set(exported.graph_signature.inputs_to_parameters.values()) >= {
        k for k, _ in model.named_parameters()
    }


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: mlp(0), "in_features=0"),
        (lambda: MLP(hidden=[8, -1]), r"hidden=\[8, -1\]"),
        (lambda: conv_net(channels=[]), "channels"),
    ],
)
def test_bad_sizes_raise(call: object, match: str) -> None:
    with pytest.raises(ModeconnectError, match=match):
        call()  # type: ignore[operator]


@pytest.mark.parametrize("split, size", [("train", 1297), ("test", 500)])
def test_shipped_data(split: str, size: int) -> None:
    data = _load(f"digits_{split}.pt")
    assert set(data) == {"x", "y"}
    assert data["x"].shape == (size, 64) and data["x"].dtype == torch.float32
    assert data["y"].shape == (size,) and data["y"].dtype == torch.int64
    assert data["x"].min() >= 0.0 and data["x"].max() <= 1.0
    assert set(data["y"].tolist()) == set(range(10))


@pytest.mark.parametrize("name", ["mlp_a.pt", "mlp_b.pt"])
def test_shipped_checkpoint_format_and_accuracy(name: str) -> None:
    ckpt = _load(name)
    assert set(ckpt) == {"state_dict", "model", "model_kwargs"}
    assert ckpt["model"] == "modeconnect.models:mlp"
    assert ckpt["model_kwargs"] == KWARGS
    json.dumps(ckpt["model_kwargs"])
    model = _resolve(ckpt["model"])(**ckpt["model_kwargs"])  # type: ignore[operator]
    model.load_state_dict(ckpt["state_dict"])  # strict: same keys and shapes
    assert _accuracy(model, _load("digits_test.pt")) >= 0.90


def test_shipped_checkpoints_differ() -> None:
    a, b = _load("mlp_a.pt")["state_dict"], _load("mlp_b.pt")["state_dict"]
    assert not torch.equal(a["1.weight"], b["1.weight"])


def test_shipped_safetensors_matches_mlp_b() -> None:
    expected = _load("mlp_b.pt")["state_dict"]
    with safe_open(str(CHECKPOINTS / "mlp_b.safetensors"), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    assert meta["modeconnect.model"] == "modeconnect.models:mlp"
    assert json.loads(meta["modeconnect.model_kwargs"]) == KWARGS
    assert sorted(tensors) == sorted(expected)
    for key, value in expected.items():
        torch.testing.assert_close(tensors[key], value, rtol=0, atol=0)
