"""Hostile configs cannot make modeconnect download anything (SECURITY.md, "never downloads").

A ``config.json`` can ask transformers to fetch: a backbone repository (``backbone``,
looked up with ``hf_api().repo_exists`` while the config is built), a Hub kernel for
the attention (``attn_implementation``, fetched by ``PreTrainedModel.__init__`` through
the ``kernels`` package), a timm model from the Hub, a quantizer's kernels. Each such
config, as a ``save_pretrained`` directory or as the ``transformers:ClassName`` reference
of a ``.pt``/``.safetensors`` file, is refused with one line, in-process and by the
installed command, and the recording Hub endpoint gets no request
(tests/hostile_bench.py). ``attn_implementation`` is ignored instead: the model runs
with transformers' local attention, and the command succeeds without a request.

The positive controls show that the recorder would see each of these requests: the
same calls, made without modeconnect's protection in a child with the same
environment, reach it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import hf_models as hf
import huggingface_hub  # noqa: F401  (imported first, so the bench points it at the recorder)
import pytest
import safetensors.torch
import torch
import transformers
from click.testing import CliRunner
from hostile_bench import Bench, assert_refused, hub_environment

from modeconnect.errors import ModeconnectError
from modeconnect.io.offline import OFFLINE_ENV, hub_offline, offline
from modeconnect.io.references import build_model, check_hub_free, local_config
from modeconnect_cli.main import main

REPO = "someorg/somerepo"


# --------------------------------------------------------------------------- hostile configs


def _as_json(config: dict) -> dict:
    """The config as ``config.json`` holds it (label ids become strings)."""
    return json.loads(json.dumps(config))


def _detr(**changes: object) -> dict:
    config = transformers.DetrConfig().to_dict()
    config.update(architectures=["DetrModel"], **changes)
    return _as_json(config)


def _dpt(**changes: object) -> dict:
    config = transformers.DPTConfig(is_hybrid=False).to_dict()
    config.update(architectures=["DPTForDepthEstimation"], **changes)
    return _as_json(config)


def _upernet(**changes: object) -> dict:
    config = transformers.UperNetConfig().to_dict()
    config.update(architectures=["UperNetForSemanticSegmentation"], **changes)
    return _as_json(config)


def _llama(**changes: object) -> dict:
    config = transformers.LlamaConfig(
        vocab_size=hf.VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1
    ).to_dict()
    config.update(architectures=["LlamaForCausalLM"], **changes)
    return _as_json(config)


def _timm_wrapper(**changes: object) -> dict:
    config = {"architectures": ["TimmWrapperForImageClassification"], "model_type": "timm_wrapper",
              "architecture": "resnet18", "num_labels": 10}  # fmt: skip
    config.update(changes)
    return config


TIMM_BACKBONE = {"model_type": "timm_backbone", "backbone": f"hf-hub:{REPO}",
                 "out_indices": [1, 2, 3, 4], "features_only": True}  # fmt: skip
FP8 = {"quant_method": "fp8", "weight_block_size": [128, 128]}

HOSTILE = {
    # The red-team case, as written: DETR's default (a timm backbone) named by a repository.
    "detr-backbone": (lambda: _detr(backbone=REPO, backbone_config=None), "backbone names"),
    # The same without timm: transformers asks the Hub whether the repository exists.
    "detr-backbone-hub": (
        lambda: _detr(
            backbone=REPO,
            backbone_config=None,
            use_timm_backbone=False,
            use_pretrained_backbone=True,
        ),
        "backbone names the backbone 'someorg/somerepo'",
    ),  # fmt: skip
    "dpt-backbone": (lambda: _dpt(backbone=REPO, backbone_config=None), "backbone names"),
    "upernet-backbone": (lambda: _upernet(backbone=REPO, backbone_config=None), "backbone names"),
    "detr-timm-hub-backbone": (
        lambda: _detr(backbone_config=TIMM_BACKBONE),
        "backbone_config.backbone names the timm model 'hf-hub:someorg/somerepo'",
    ),
    "timm-wrapper-hub": (
        lambda: _timm_wrapper(architecture=f"hf-hub:{REPO}"),
        "architecture names the timm model",
    ),
    "timm-wrapper-weights": (
        lambda: _timm_wrapper(model_args={"checkpoint_path": "/etc/passwd"}),
        "model_args.checkpoint_path makes timm load",
    ),
    "quantized": (lambda: _llama(quantization_config=FP8), "quantization_config marks"),
    "quantized-nested": (
        lambda: _llama(text_config={"model_type": "llama", "quantization_config": FP8}),
        "text_config.quantization_config marks",
    ),
}


def _directory(root: Path, name: str, config: dict) -> Path:
    """A ``save_pretrained``-style directory: the config and a weights file."""
    path = root / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    weights = {"embeddings.weight": torch.zeros(4, 4)}
    safetensors.torch.save_file(weights, str(path / "model.safetensors"), {"format": "pt"})
    return path


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_config_asking_for_a_download_is_refused(bench: Bench, case: str) -> None:
    make, expect = HOSTILE[case]
    x = _directory(bench.root, "a", make())
    y = _directory(bench.root, "b", make())
    line = assert_refused(bench, bench.cli("spec", x), expect)
    assert line.startswith(f"Error: {x / 'config.json'}: ") and "refused" in line
    assert_refused(bench, bench.cli("align", x, y, "--out", bench.root / "c"), expect)
    assert_refused(bench, bench.cli("align", y, x), expect)


@pytest.mark.parametrize("case", ["detr-backbone", "detr-backbone-hub"])
def test_the_installed_command_refuses_a_backbone_repository(bench: Bench, case: str) -> None:
    make, expect = HOSTILE[case]
    x = _directory(bench.root, "a", make())
    y = _directory(bench.root, "b", make())
    assert_refused(bench, bench.subprocess("spec", x), expect)
    assert_refused(bench, bench.subprocess("align", x, y, "--out", bench.root / "c"), expect)


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_a_transformers_reference_in_a_file_gets_the_same_refusal(bench: Bench, fmt: str) -> None:
    plant = bench.pt_naming if fmt == "pt" else bench.safetensors_naming
    config = _detr(backbone=REPO, backbone_config=None, use_timm_backbone=False)
    x = plant(f"detr.{fmt}", "transformers:DetrModel", {"config": config})
    line = assert_refused(bench, bench.cli("spec", x), "model_kwargs.config.backbone names")
    assert line.startswith(f"Error: {x}: ")
    # Trusting every reference trusts the constructor, not a download.
    assert_refused(bench, bench.cli("spec", x, "--trust-model-ref"), "config.backbone names")
    config = _llama(quantization_config=FP8)
    q = plant(f"quantized.{fmt}", "transformers:LlamaForCausalLM", {"config": config})
    assert_refused(bench, bench.cli("align", q, q, "--data", bench.data), "quantization_config")
    assert_refused(bench, bench.subprocess("spec", x), "model_kwargs.config.backbone names")


# --------------------------------------------------------------------------- attention: ignored

KERNEL_ATTENTION = {
    "attn_implementation": "flash_attention_2",
    "_attn_implementation": "kernels-community/flash-attn2",
    "experts_implementation": "deepgemm",
}


@pytest.fixture(scope="module")
def llamas(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, torch.nn.Module]:
    a = hf.llama()
    return a, hf.permuted_copy(a)


def _kernel_pair(
    bench: Bench, llamas: tuple[torch.nn.Module, torch.nn.Module]
) -> tuple[Path, Path]:
    a = hf.save(llamas[0], bench.root / "a")
    b = hf.save(llamas[1], bench.root / "b")
    hf.edit_config(a, **KERNEL_ATTENTION)
    hf.edit_config(b, attn_implementation=f"{REPO}:flash_attn")
    return a, b


def _assert_ran_offline(bench: Bench, code: int, stderr: str) -> None:
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert bench.hub.requests == [], f"the Hub was asked: {bench.hub.requests}"
    assert bench.sockets.attempts == [], f"sockets tried to leave: {bench.sockets.attempts}"


def test_attn_implementation_from_a_file_is_ignored_and_runs_locally(bench: Bench, llamas) -> None:
    a, b = _kernel_pair(bench, llamas)
    config_before = (a / "config.json").read_bytes()
    result = CliRunner().invoke(main, ["spec", str(a)])
    _assert_ran_offline(bench, result.exit_code, result.stderr)
    out = bench.root / "c"
    result = CliRunner().invoke(main, ["align", str(a), str(b), "--out", str(out)])
    _assert_ran_offline(bench, result.exit_code, result.stderr)
    assert (a / "config.json").read_bytes() == config_before
    assert (out / "config.json").read_bytes() == (b / "config.json").read_bytes()


def test_attn_implementation_is_ignored_by_the_installed_command(bench: Bench, llamas) -> None:
    a, b = _kernel_pair(bench, llamas)
    _assert_ran_offline(bench, *bench.subprocess("spec", a)())
    _assert_ran_offline(bench, *bench.subprocess("align", a, b)())


def test_the_model_is_built_with_a_local_attention() -> None:
    config = {"model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": 32,
              "n_positions": 16, **KERNEL_ATTENTION}  # fmt: skip
    model = build_model("transformers:GPT2LMHeadModel", {"config": config})
    assert model.config._attn_implementation in ("sdpa", "eager")
    assert config["attn_implementation"] == "flash_attention_2"  # the caller's dict is untouched


def test_local_config_drops_the_ignored_keys_at_any_depth() -> None:
    config: dict[str, Any] = {"a": 1, "attn_implementation": "x", "_name_or_path": REPO,
              "text_config": {"_attn_implementation": "y", "b": [{"experts_implementation": "z"}]},
              "backbone_config": {"use_pretrained_backbone": True}}  # fmt: skip
    assert local_config(config) == {
        "a": 1, "text_config": {"b": [{}]}, "backbone_config": {"use_pretrained_backbone": False}
    }  # fmt: skip
    assert config["text_config"]["_attn_implementation"] == "y"


def test_a_plain_timm_backbone_is_no_download() -> None:
    check_hub_free(_detr(), "detr/config.json")  # what DetrConfig writes: a timm_backbone config
    with pytest.raises(ModeconnectError, match=r"^x: backbone names the backbone 'resnet50'"):
        check_hub_free(_dpt(backbone="resnet50", backbone_config=None), "x")


def test_a_tokenizer_naming_a_repository_is_read_locally(bench: Bench, llamas) -> None:
    from modeconnect.io.hf import load_tokenizer

    a = hf.save(llamas[0], bench.root / "a", tokenizer=True)
    settings = json.loads((a / "tokenizer_config.json").read_text())
    settings.update(name_or_path=REPO, tokenizer_file=f"{REPO}/tokenizer.json")
    (a / "tokenizer_config.json").write_text(json.dumps(settings))
    assert load_tokenizer(a).mask_token == "[MASK]"
    (a / "tokenizer.json").unlink()  # what is missing is an error, not a download
    with pytest.raises(ModeconnectError, match="cannot load its tokenizer"):
        load_tokenizer(a)
    assert bench.hub.requests == [] and bench.sockets.attempts == []


# --------------------------------------------------------------------------- offline()


def test_offline_blocks_every_hub_request_and_restores_the_state(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # online, as a user may be
    for name in OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)
    api = HfApi(endpoint=bench.hub.url)
    assert not hub_offline()
    with offline():
        assert hub_offline()
        with offline():  # re-entrant
            assert hub_offline()
        assert hub_offline()
        with pytest.raises(OfflineModeIsEnabled):
            api.repo_exists(REPO)
        with pytest.raises(LocalEntryNotFoundError):  # "outgoing traffic has been disabled"
            huggingface_hub.hf_hub_download(REPO, "config.json", endpoint=bench.hub.url)
    assert bench.hub.requests == []
    assert not hub_offline()
    assert all(name not in os.environ for name in OFFLINE_ENV)
    # Positive control: the same call without the block reaches the recorder (which answers 404).
    with pytest.raises(huggingface_hub.errors.HfHubHTTPError):
        api.repo_exists(REPO)
    assert bench.hub.requests, "the recorder saw nothing: the no-request assertions prove nothing"
    bench.hub.requests.clear()


def test_offline_keeps_a_user_chosen_offline_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with offline():
        pass
    assert constants.HF_HUB_OFFLINE is True and os.environ["HF_HUB_OFFLINE"] == "1"


def test_kernels_fetched_by_a_constructor_stay_offline(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    # YOSO loads its kernel from the Hub in __init__ on a CUDA machine: pretend to be one.
    from transformers.models.yoso import modeling_yoso

    monkeypatch.setattr(modeling_yoso, "is_torch_cuda_available", lambda: True)
    monkeypatch.setattr(modeling_yoso, "is_ninja_available", lambda: True)
    config = {"model_type": "yoso", "num_hidden_layers": 1, "hidden_size": 16,
              "num_attention_heads": 2, "intermediate_size": 32, "vocab_size": 32}  # fmt: skip
    model = build_model("transformers:YosoModel", {"config": config})
    assert isinstance(model, torch.nn.Module)
    assert bench.hub.requests == [] and bench.sockets.attempts == []


# --------------------------------------------------------------------------- positive controls

UNPROTECTED = {
    "hf_hub_download": (
        f"import huggingface_hub\nhuggingface_hub.hf_hub_download({REPO!r}, 'config.json')\n"
    ),
    "detr-backbone": (
        "import transformers\n"
        f"transformers.DetrConfig(backbone={REPO!r}, use_timm_backbone=False)\n"
    ),
    "flash-attention-kernel": (
        "import transformers\n"
        "config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32,\n"
        "                                 attn_implementation='flash_attention_2')\n"
        "transformers.GPT2Model(config)\n"
    ),
}


@pytest.mark.parametrize("case", sorted(UNPROTECTED))
def test_without_modeconnect_the_recorder_sees_the_request(bench: Bench, case: str) -> None:
    """The child has the environment of ``bench.subprocess``: what it fetches, the recorder sees."""
    env = hub_environment(bench.hub.url)
    env["HF_HOME"] = str(bench.root / "hf-home")
    subprocess.run(
        [sys.executable, "-c", UNPROTECTED[case]], env=env, capture_output=True, timeout=300,
        cwd=bench.root,
    )  # fmt: skip
    assert bench.hub.requests, f"{case}: no request reached the recorder"
    bench.hub.requests.clear()
