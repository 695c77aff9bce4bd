"""The test zoo itself: every model runs, randomises and exports with torch.export."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch
from zoo import HF_MODELS, ZOO, randomize_

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None

_needs_hf = pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers is not installed")

MODEL_NAMES = [pytest.param(name, marks=_needs_hf) if name in HF_MODELS else name for name in ZOO]

EXPECTED = {
    "mlp_seq", "mlp_class", "cnn_bn", "cnn_adaptive", "resnet20", "resnet_bottleneck",
    "vgg11_bn", "densenet_block", "grouped_conv", "groupnorm_cnn", "layernorm_mlp",
    "vit", "gpt", "hf_gpt2", "hf_bert",
}  # fmt: skip


def _build(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ZOO[name]()


def _float_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for k, p in model.named_parameters(remove_duplicate=False):
        out[k] = p
    for k, b in model.named_buffers(remove_duplicate=False):
        if b is not None and b.is_floating_point():
            out[k] = b
    return out


def test_registry_complete():
    assert set(ZOO) >= EXPECTED
    assert set(HF_MODELS) <= set(ZOO)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward(name):
    model, args = _build(name)
    assert isinstance(args, tuple) and args
    assert all(a.shape[0] == 2 for a in args)
    assert not model.training
    with torch.no_grad():
        y = model(*args)
    assert isinstance(y, torch.Tensor)
    assert y.shape[0] == 2
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_randomize_changes_every_float_tensor(name):
    model, args = _build(name)
    before = {k: t.detach().clone() for k, t in _float_tensors(model).items()}
    assert before
    assert randomize_(model, seed=3) is model
    after = _float_tensors(model)
    unchanged = [k for k, t in after.items() if torch.equal(t, before[k])]
    assert not unchanged, f"randomize_ left unchanged: {unchanged}"

    for mod_name, mod in model.named_modules():
        if isinstance(mod, torch.nn.modules.batchnorm._NormBase) and mod.running_var is not None:
            assert (mod.running_var > 0).all(), mod_name
        norm_types = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.BatchNorm2d)
        if isinstance(mod, norm_types) and mod.weight is not None:
            assert (mod.weight >= 0.5).all() and (mod.weight <= 1.5).all(), mod_name

    # same seed -> same values; different seed -> different values
    snap = {k: t.detach().clone() for k, t in after.items()}
    randomize_(model, seed=3)
    assert all(torch.equal(t, snap[k]) for k, t in _float_tensors(model).items())
    randomize_(model, seed=4)
    assert not any(torch.equal(t, snap[k]) for k, t in _float_tensors(model).items())

    with torch.no_grad():
        y = model(*args)
    assert torch.isfinite(y).all()


def test_randomize_keeps_ties():
    model, _ = _build("gpt")
    randomize_(model, seed=0)
    assert model.head.weight is model.tok.weight


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_export(name):
    model, args = _build(name)
    randomize_(model, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(model, args, strict=False)
    sig = ep.graph_signature
    assert sig.inputs_to_parameters
    # every placeholder and call_function node carries a value (shape) in meta
    for node in ep.graph.nodes:
        if node.op in ("placeholder", "call_function"):
            assert "val" in node.meta, node.format_node()
    with torch.no_grad():
        expected = model(*args)
        got = ep.module()(*args)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- the other zoos

try:
    from tests.zoo_vision import VISION
except ImportError:  # pragma: no cover - depends on pytest's import mode
    from zoo_vision import VISION  # type: ignore[no-redef]


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in {"tv_resnet50", "tv_mobilenet_v2",
     "tv_efficientnet", "tv_swin"} else n for n in sorted(VISION)],
)  # fmt: skip
def test_vision_models_run_randomise_and_export(name):
    model, args = VISION[name]()
    before = {k: t.detach().clone() for k, t in _float_tensors(model).items()}
    randomize_(model, seed=1)
    assert all(not torch.equal(t, before[k]) for k, t in _float_tensors(model).items())
    with torch.no_grad():
        y = model(*args)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(model, args, strict=False)
    torch.testing.assert_close(ep.module()(*args), y, rtol=1e-5, atol=1e-5)


@_needs_hf
def test_hugging_face_models_run_as_modeconnect_calls_them():
    from modeconnect.forward import output_tensors, run

    try:
        from tests.zoo_hf import CALLS, HF
    except ImportError:  # pragma: no cover - depends on pytest's import mode
        from zoo_hf import CALLS, HF  # type: ignore[no-redef]

    for name in ("hf_llama_gqa", "hf_t5_sdpa", "hf_vit", "hf_clip_text"):
        model, args = HF[name]()
        randomize_(model, seed=1)
        with torch.no_grad():
            out = output_tensors(run(model, model.state_dict(), args, call=CALLS.get(name)))
        assert len(out) == 1 and out[0].shape[0] == 2 and torch.isfinite(out[0]).all(), name
