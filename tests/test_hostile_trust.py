"""``--trust-module`` trusts a module's model constructors, never its loaders (SECURITY.md).

A file that names a reference gets only what the user trusted: with
``--trust-module NAME`` a ``torch.nn.Module`` class defined in ``NAME``'s tree, never a
function (``torch.hub.load``, a loader of any file), a dotted attribute
(``Class.from_pretrained``) or a class ``NAME`` merely imported. modeconnect's own
internals are never followed from a file (only its example models), and
``transformers`` only as a model class built from a config, whatever is trusted;
abstract bases such as ``transformers:PreTrainedModel`` are refused with one line
before anything is built. Every refusal holds the bench's promises
(tests/hostile_bench.py): exit 2, one line, no payload, nothing written, no network.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import safetensors.torch
import torch
from click.testing import CliRunner
from hostile_bench import Bench, assert_refused

from modeconnect_cli.main import main

MLP_KWARGS = {"in_features": 64, "hidden": [512, 512, 512], "out_features": 10}
TRUSTED = "mc_trusted_models"


@pytest.fixture
def trusted(tmp_path_factory: pytest.TempPathFactory, bench: Bench) -> Iterator[str]:
    """An importable module the user trusts: a model class, a loader function, an import."""
    folder = tmp_path_factory.mktemp("trusted")
    (folder / f"{TRUSTED}.py").write_text(
        "from pathlib import Path\n"
        "from torch import nn\n"
        "from modeconnect.models import MLP, mlp\n"
        "class Net(nn.Sequential):\n"
        "    def __init__(self, in_features=64, hidden=(512, 512, 512), out_features=10):\n"
        "        super().__init__(*mlp(in_features, hidden, out_features))\n"
        "    @classmethod\n"
        "    def from_file(cls, path):\n"
        f"        Path({str(bench.marker)!r}).write_text('loaded')\n"
        "def build(**kwargs):\n"
        f"    Path({str(bench.marker)!r}).write_text('loaded')\n"
        "    return mlp(**kwargs)\n"
    )
    sys.path.insert(0, str(folder))
    yield TRUSTED
    sys.path.remove(str(folder))
    sys.modules.pop(TRUSTED, None)


def _both(bench: Bench, ref: str, kwargs: dict) -> list[Path]:
    return [
        bench.pt_naming("x.pt", ref, kwargs),
        bench.safetensors_naming("x.safetensors", ref, kwargs),
    ]


# --------------------------------------------------------------------------- modeconnect itself


@pytest.mark.parametrize(
    ("ref", "kwargs"),
    [
        ("modeconnect.io.references:build_model", {"ref": "EVIL:build", "kwargs": MLP_KWARGS}),
        ("modeconnect.io.references:import_callable", {"ref": "EVIL:build"}),
        ("modeconnect.io.references:Architecture", {"model": None, "ref": "", "kwargs": {}}),
        ("modeconnect.models:ToImage", {"channels": 1, "height": 8, "width": 8}),
        ("modeconnect_cli.main:main", {}),
    ],
)
@pytest.mark.parametrize("trust", ["modeconnect", "modeconnect.files", "modeconnect_cli"])
def test_modeconnect_internals_are_never_followed_from_a_file(
    bench: Bench, ref: str, kwargs: dict, trust: str
) -> None:
    evil = f"{bench.evil_module()}:build"
    kwargs = json.loads(json.dumps(kwargs).replace("EVIL:build", evil))
    for x in _both(bench, ref, kwargs):
        line = assert_refused(bench, bench.cli("spec", x, "--trust-module", trust), repr(ref))
        assert "modeconnect's own functions are never followed from a file" in line
        assert f"--model {ref}" in line and "--trust-model-ref" in line
        assert "--trust-module" not in line.split("whatever --trust-module says")[1]


def test_build_model_named_by_a_file_never_loads_a_python_file(bench: Bench) -> None:
    evil = f"{bench.evil_module()}:build"
    x = bench.pt_naming("x.pt", "modeconnect.io.references:build_model", {"ref": evil})
    run = bench.subprocess("spec", x, "--trust-module", "modeconnect")
    assert_refused(bench, run, "never followed from a file")


def test_the_example_models_are_still_followed(bench: Bench) -> None:
    x = bench.pt_naming("x.pt", "modeconnect.models:mlp", MLP_KWARGS)
    result = CliRunner().invoke(main, ["spec", str(x), "--trust-module", "modeconnect"])
    assert result.exit_code == 0, result.stderr


# --------------------------------------------------------------------------- transformers


@pytest.mark.parametrize(
    "ref",
    [
        "transformers.dynamic_module_utils:get_class_from_dynamic_module",
        "transformers:AutoModel",
        "transformers:pipeline",
        "transformers:AutoModel.from_pretrained",
        "transformers.models.llama.modeling_llama:LlamaForCausalLM",
        "transformers.utils.hub:cached_file",
    ],
)
def test_transformers_is_trusted_only_as_model_classes_built_from_a_config(
    bench: Bench, ref: str
) -> None:
    kwargs = {"class_reference": "evil.Model", "pretrained_model_name_or_path": "someorg/somerepo"}
    for x in _both(bench, ref, kwargs):
        line = assert_refused(
            bench, bench.cli("spec", x, "--trust-module", "transformers"), repr(ref)
        )
        assert "transformers is followed only as 'transformers:ClassName'" in line


@pytest.mark.parametrize("name", ["PreTrainedModel", "LlamaPreTrainedModel", "BertPreTrainedModel"])
@pytest.mark.parametrize("trust", [[], ["--trust-module", "transformers"]])
def test_an_abstract_transformers_class_is_refused_before_anything_is_built(
    bench: Bench, name: str, trust: list[str]
) -> None:
    ref = f"transformers:{name}"
    for x in _both(bench, ref, {"config": {"model_type": "llama"}}):
        line = assert_refused(bench, bench.cli("spec", x, *trust), "an abstract base class")
        assert line.startswith(f"Error: {x}: ") and repr(ref) in line


def test_an_abstract_class_typed_by_the_user_gets_one_line(bench: Bench) -> None:
    run = bench.cli("spec", bench.a, "--model", "transformers:PreTrainedModel",
                    "--model-kwargs", '{"config": {}}')  # fmt: skip
    assert_refused(bench, run, "abstract base class")
    run = bench.subprocess("spec", bench.pt_naming("x.pt", "transformers:PreTrainedModel", {}))
    assert_refused(bench, run, "abstract base class")


def test_a_directory_naming_an_abstract_class_is_refused(bench: Bench) -> None:
    path = bench.root / "dir"
    path.mkdir()
    config = {"architectures": ["PreTrainedModel"], "model_type": "llama"}
    (path / "config.json").write_text(json.dumps(config))
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(path / "model.safetensors"))
    line = assert_refused(bench, bench.cli("spec", path), "an abstract base class")
    assert line.startswith(f"Error: {path / 'config.json'}: architectures names 'PreTrainedModel'")


# --------------------------------------------------------------------------- other trusted modules


def test_a_trusted_model_class_is_followed(bench: Bench, trusted: str) -> None:
    for x in _both(bench, f"{trusted}:Net", MLP_KWARGS):
        result = CliRunner().invoke(main, ["spec", str(x), "--trust-module", trusted])
        assert result.exit_code == 0, result.stderr
    assert not bench.marker.exists()


@pytest.mark.parametrize(
    ("attr", "expect"),
    [
        ("build", "names a function 'build', not a torch.nn.Module class"),
        ("MLP", "from module 'modeconnect.models', outside the trusted modules"),
        ("mlp", "from module 'modeconnect.models', outside the trusted modules"),
        ("Net.from_file", "not a known architecture constructor"),
        ("Path", "from module 'pathlib', outside the trusted modules"),
    ],
)
def test_a_trusted_module_lends_no_loader(
    bench: Bench, trusted: str, attr: str, expect: str
) -> None:
    ref = f"{trusted}:{attr}"
    for x in _both(bench, ref, MLP_KWARGS):
        line = assert_refused(bench, bench.cli("spec", x, "--trust-module", trusted), expect)
        assert repr(ref) in line and f"--model {ref}" in line


@pytest.mark.parametrize(
    "ref",
    ["torch.hub:load", "torch:load", "torch.serialization:load", "torch.nn:Module.load_state_dict"],
)
def test_trusting_torch_lends_none_of_its_loaders(bench: Bench, ref: str) -> None:
    kwargs = {"repo_or_dir": "someorg/somerepo", "model": "evil", "f": str(bench.a)}
    for x in _both(bench, ref, kwargs):
        assert_refused(bench, bench.cli("spec", x, "--trust-module", "torch"), repr(ref))


def test_refusals_are_typed_for_library_users(bench: Bench) -> None:
    """A library user catches what they mean: an untrusted reference is UntrustedReference."""
    from modeconnect.errors import ModeconnectError, UntrustedReference
    from modeconnect.io.checkpoints import load_checkpoint, resolve_model

    path = bench.pt_naming("evil.pt", "subprocess:run", {"args": "true"})
    with pytest.raises(UntrustedReference, match="not a known architecture constructor"):
        resolve_model([load_checkpoint(path)])
    assert issubclass(UntrustedReference, ModeconnectError)
