"""Model references read from files are data: only known or trusted constructors run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from modeconnect.errors import ModeconnectError
from modeconnect.io.references import (
    NO_TRUST,
    Trust,
    build_model,
    check_file_reference,
    reference_file,
)

SOURCE = Path("evil.pt")


@pytest.mark.parametrize(
    "ref",
    ["modeconnect.models:mlp", "modeconnect.models:MLP", "modeconnect.models:conv_net"],
)
def test_builtin_constructors_are_followed(ref: str) -> None:
    assert check_file_reference(ref, {}, SOURCE, NO_TRUST) == ()


def test_transformers_architectures_are_followed() -> None:
    pytest.importorskip("transformers")
    assert check_file_reference("transformers:GPT2LMHeadModel", {}, SOURCE, NO_TRUST) == ()


@pytest.mark.parametrize(
    "ref",
    [
        "subprocess:run",
        "shutil:rmtree",
        "os:system",
        "builtins:exec",
        "modeconnect.models:torch.load",  # a dotted path out of a known module
        "modeconnect.io.checkpoints:save_checkpoint",  # known module, not a constructor
        "transformers:AutoModel.from_pretrained",
        "transformers:pipeline",
        "/tmp/evil.py:build",
        "evil.py:build",
        "torch.nn:Linear",
    ],
)
def test_everything_else_is_refused_with_the_way_to_trust_it(ref: str) -> None:
    with pytest.raises(ModeconnectError) as info:
        check_file_reference(ref, {}, SOURCE, NO_TRUST)
    message = str(info.value)
    assert message.startswith("evil.pt: names the model reference")
    assert repr(ref) in message and f"--model {ref}" in message and "--trust-model-ref" in message
    assert "\n" not in message


def test_trust_module_follows_that_module_only() -> None:
    trust = Trust(modules=("torch",))
    assert check_file_reference("torch.nn:Linear", {}, SOURCE, trust) == ("torch",)
    with pytest.raises(ModeconnectError, match="not a known architecture"):
        check_file_reference("subprocess:run", {}, SOURCE, trust)
    with pytest.raises(ModeconnectError, match="not a known architecture"):
        check_file_reference("torch.nn:os.system", {}, SOURCE, trust)  # dotted: refused


def test_a_trusted_module_cannot_lend_another_modules_function() -> None:
    # The callable found must itself come from a trusted module, whatever the path to it.
    with pytest.raises(ModeconnectError, match="outside the trusted modules"):
        build_model("modeconnect.io.references:import_callable", modules=("torch",))


def test_trust_any_reference_follows_everything() -> None:
    assert check_file_reference("subprocess:run", {}, SOURCE, Trust(any_reference=True)) == ()


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"trust_remote_code": True}, r"model_kwargs.trust_remote_code would let"),
        ({"config": {"auto_map": {"AutoModel": "x.Y"}}}, r"model_kwargs.config.auto_map"),
        ({"w": torch.zeros(2)}, r"model_kwargs.w holds a value of type Tensor"),
        ({"n": float("nan")}, r"model_kwargs.n holds a value of type float"),
        ({"xs": [1, {2: 3}]}, r"model_kwargs.xs\[1\] has a key of type int"),
    ],
)
def test_kwargs_from_files_are_plain_json_without_code_switches(kwargs, pattern) -> None:
    for trust in (NO_TRUST, Trust(any_reference=True)):
        with pytest.raises(ModeconnectError, match=pattern):
            check_file_reference("modeconnect.models:mlp", kwargs, SOURCE, trust)


def test_transformers_reference_builds_from_a_config_without_remote_code() -> None:
    pytest.importorskip("transformers")
    config = {"model_type": "gpt2", "n_embd": 16, "n_layer": 1, "n_head": 2, "vocab_size": 50,
              "n_positions": 32}  # fmt: skip
    model = build_model("transformers:GPT2LMHeadModel", {"config": config})
    assert isinstance(model, nn.Module) and model.config.n_embd == 16
    with pytest.raises(ModeconnectError, match=r"expects kwargs \{\"config\""):
        build_model("transformers:GPT2LMHeadModel", {"n_embd": 16})
    with pytest.raises(ModeconnectError, match="is not a model class"):
        build_model("transformers:pipeline", {"config": {}})


def test_reference_file_names_the_python_file_of_a_path_reference() -> None:
    assert reference_file("models/net.py:build") == Path("models/net.py")
    assert reference_file("pkg.mod:build") is None
    assert reference_file(None) is None
