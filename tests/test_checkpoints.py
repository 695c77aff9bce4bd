"""Tests for modeconnect.io.checkpoints: checkpoint formats, atomic writes, model references."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from modeconnect.errors import ModeconnectError, ShapeMismatch
from modeconnect.io import checkpoints as mio
from modeconnect.io.checkpoints import (
    Checkpoint,
    build_model,
    check_same_architecture,
    check_state_dict,
    import_callable,
    load_checkpoint,
    resolve_model,
    save_checkpoint,
)
from modeconnect.io.references import Trust

MODEL_SOURCE = """
import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, width: int = 4, depth: int = 1):
        super().__init__()
        layers = [nn.Linear(3, width)] + [nn.Linear(width, width) for _ in range(depth - 1)]
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(width, 2)

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.head(x)


def not_a_model():
    return 42


NOT_CALLABLE = 3
"""

EXTENSIONS = [".pt", ".pth", ".bin", ".safetensors"]


def _esc(path: Path | str) -> str:
    return re.escape(str(path))


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_models.py"
    path.write_text(MODEL_SOURCE)
    return path


@pytest.fixture
def state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "w": torch.randn(4, 3),
        "b": torch.randn(4),
        "half": torch.randn(2, 2).half(),
        "count": torch.tensor(7, dtype=torch.int64),
        "mask": torch.tensor([True, False]),
    }


def _assert_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for key, tensor in expected.items():
        torch.testing.assert_close(actual[key], tensor, rtol=0, atol=0)


def _head_width(model: nn.Module) -> int:
    head = model.get_submodule("head")
    assert isinstance(head, nn.Linear)
    return head.in_features


def _mlp_ckpt(path: Path, width: int = 4, **kwargs: object) -> Checkpoint:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2))
    return Checkpoint(path=path, state_dict=model.state_dict(), **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("ext", EXTENSIONS)
def test_round_trip_plain(tmp_path: Path, state_dict: dict[str, torch.Tensor], ext: str) -> None:
    path = save_checkpoint(tmp_path / f"a{ext}", state_dict)
    ckpt = load_checkpoint(path)
    _assert_same(ckpt.state_dict, state_dict)
    assert ckpt.path == path
    assert ckpt.model_ref is None
    assert dict(ckpt.model_kwargs) == {}
    assert dict(ckpt.metadata) == {}


@pytest.mark.parametrize("ext", EXTENSIONS)
def test_round_trip_with_model_ref(
    tmp_path: Path, state_dict: dict[str, torch.Tensor], ext: str
) -> None:
    kwargs = {"width": 8, "sizes": (1, 2), "name": "x", "nested": {"a": None}}
    path = save_checkpoint(
        str(tmp_path / f"a{ext}"),
        state_dict,
        model_ref="pkg.models:MLP",
        model_kwargs=kwargs,
        metadata={"method": "weight", "alpha": "0.5"},
    )
    ckpt = load_checkpoint(path)
    _assert_same(ckpt.state_dict, state_dict)
    assert ckpt.model_ref == "pkg.models:MLP"
    assert dict(ckpt.model_kwargs) == {
        "width": 8,
        "sizes": [1, 2],
        "name": "x",
        "nested": {"a": None},
    }
    assert dict(ckpt.metadata) == {"method": "weight", "alpha": "0.5"}


def test_plain_torch_save_state_dict_loads(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    torch.save(model.state_dict(), tmp_path / "m.pth")
    ckpt = load_checkpoint(tmp_path / "m.pth")
    _assert_same(ckpt.state_dict, model.state_dict())
    assert ckpt.model_ref is None


def test_dict_form_written_by_hand_loads_and_ignores_extra_keys(tmp_path: Path) -> None:
    layer = nn.Linear(2, 2)
    payload = {"state_dict": layer.state_dict(), "model": "torch.nn:Linear", "epoch": 3}
    torch.save(payload, tmp_path / "m.pt")
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt.model_ref == "torch.nn:Linear"
    _assert_same(ckpt.state_dict, layer.state_dict())


def test_parameters_in_file_load_as_plain_tensors(tmp_path: Path) -> None:
    layer = nn.Linear(2, 2)
    torch.save(dict(layer.named_parameters()), tmp_path / "p.pt")
    ckpt = load_checkpoint(tmp_path / "p.pt")
    assert all(type(t) is torch.Tensor and not t.requires_grad for t in ckpt.state_dict.values())


@pytest.mark.parametrize("ext", EXTENSIONS)
def test_tied_and_sliced_tensors_are_saved(tmp_path: Path, ext: str) -> None:
    emb = torch.randn(5, 3)
    big = torch.randn(10)
    sd = {"emb": emb, "head": emb, "view": emb.t(), "lo": big[:4], "hi": big[4:]}
    ckpt = load_checkpoint(save_checkpoint(tmp_path / f"t{ext}", sd))
    _assert_same(ckpt.state_dict, {k: v.contiguous() for k, v in sd.items()})
    ckpt.state_dict["emb"].add_(1.0)  # tensors own their data after loading
    torch.testing.assert_close(ckpt.state_dict["head"], emb)


def test_save_does_not_modify_input(tmp_path: Path) -> None:
    w = torch.randn(3, 3)
    sd = {"a": w, "b": w}
    save_checkpoint(tmp_path / "t.safetensors", sd)
    assert sd["a"] is w and sd["b"] is w


def test_safetensors_load_is_not_memory_mapped(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "z.safetensors", {"a": torch.zeros(1000)})
    ckpt = load_checkpoint(path)
    size = path.stat().st_size
    with open(path, "r+b") as handle:  # overwrite the tensor data in place
        handle.seek(size - 4000)
        handle.write(b"\x01" * 4000)
    torch.testing.assert_close(ckpt.state_dict["a"], torch.zeros(1000))
    ckpt.state_dict["a"].add_(1.0)  # writable, and writing does not touch the file
    assert path.read_bytes()[-4000:] == b"\x01" * 4000


@pytest.mark.parametrize("ext", EXTENSIONS)
def test_load_leaves_file_unchanged(tmp_path: Path, state_dict: dict, ext: str) -> None:
    path = save_checkpoint(tmp_path / f"a{ext}", state_dict, model_ref="m:f")
    before = path.read_bytes()
    ckpt = load_checkpoint(path)
    for tensor in ckpt.state_dict.values():
        tensor.zero_()
    assert path.read_bytes() == before


def test_safetensors_other_metadata_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "h.safetensors"
    meta = {"format": "pt", "modeconnect.model": "a.b:C", "modeconnect.model_kwargs": '{"n": 2}'}
    safetensors.torch.save_file({"w": torch.ones(2)}, path, metadata=meta)
    ckpt = load_checkpoint(path)
    assert (ckpt.model_ref, dict(ckpt.model_kwargs), dict(ckpt.metadata)) == (
        "a.b:C",
        {"n": 2},
        {"format": "pt"},
    )


# --------------------------------------------------------------------------- load errors


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(ModeconnectError, match=f"{_esc(path)}: checkpoint file not found"):
        load_checkpoint(path)


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(ModeconnectError, match=f"{_esc(tmp_path)}: is not a file"):
        load_checkpoint(tmp_path)


def test_load_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"x")
    with pytest.raises(ModeconnectError, match=rf"{_esc(path)}: unknown .*'\.ckpt'.*\.safetensors"):
        load_checkpoint(path)


def test_load_pickled_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(nn.Linear(2, 2), path)
    with pytest.raises(ModeconnectError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert "contains pickled code (torch.nn.modules.linear.Linear): refused" in message
    assert "never runs code" in message
    assert "torch.save(model.state_dict(), path)" in message and ".safetensors" in message
    assert "\n" not in message


@pytest.mark.parametrize("ext", [".pt", ".safetensors"])
def test_load_truncated(tmp_path: Path, ext: str) -> None:
    path = save_checkpoint(tmp_path / f"a{ext}", {"w": torch.randn(100, 100)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModeconnectError, match=f"{_esc(path)}: .*corrupt or truncated") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("ext", EXTENSIONS)
@pytest.mark.parametrize("content", [b"", bytes(range(256)) * 8])
def test_load_garbage(tmp_path: Path, ext: str, content: bytes) -> None:
    path = tmp_path / f"g{ext}"
    path.write_bytes(content)
    with pytest.raises(ModeconnectError, match=f"{_esc(path)}: .*corrupt or truncated"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ([torch.ones(1)], "found an object of type list"),
        (torch.ones(2), r"found a single tensor of shape \(2,\)"),
        ({"w": torch.ones(1), "epoch": 3}, r"found a dict with keys \['epoch', 'w'\]"),
        ({}, "empty dict"),
        ({"state_dict": {"w": torch.ones(1), "step": 3}}, "entry 'step' has type int, not Tensor"),
        ({"state_dict": {}}, "state dict is empty"),
        ({"state_dict": {1: torch.ones(1)}}, "key 1 has type int, not str"),
        ({"state_dict": {"w": torch.ones(1)}, "model": 3}, "entry 'model' must be a string"),
        (
            {"state_dict": {"w": torch.ones(1)}, "model_kwargs": [1]},
            "'model_kwargs' must be a dict",
        ),
        ({"state_dict": {"w": torch.ones(1)}, "metadata": {"a": 1}}, "'metadata' must map strings"),
    ],
)
def test_load_unexpected_torch_content(tmp_path: Path, content: object, pattern: str) -> None:
    path = tmp_path / "odd.pt"
    torch.save(content, path)
    with pytest.raises(ModeconnectError, match=f"{_esc(path)}: .*{pattern}"):
        load_checkpoint(path)


def test_load_safetensors_bad_kwargs_json(tmp_path: Path) -> None:
    path = tmp_path / "k.safetensors"
    safetensors.torch.save_file({"w": torch.ones(1)}, path, {"modeconnect.model_kwargs": "{oops"})
    with pytest.raises(ModeconnectError, match=f"{_esc(path)}: metadata .* not valid JSON"):
        load_checkpoint(path)


def test_load_safetensors_kwargs_not_object(tmp_path: Path) -> None:
    path = tmp_path / "k.safetensors"
    safetensors.torch.save_file({"w": torch.ones(1)}, path, {"modeconnect.model_kwargs": "[1]"})
    with pytest.raises(ModeconnectError, match=f"{_esc(path)}: 'model_kwargs' must be a dict"):
        load_checkpoint(path)


# --------------------------------------------------------------------------- saving


@pytest.mark.parametrize("ext", EXTENSIONS)
def test_save_refuses_existing_file_unless_forced(tmp_path: Path, ext: str) -> None:
    path = save_checkpoint(tmp_path / f"a{ext}", {"w": torch.zeros(2)})
    with pytest.raises(
        ModeconnectError,
        match=rf"{_esc(path)}: already exists \(the output\); pass --force to overwrite",
    ):
        save_checkpoint(path, {"w": torch.ones(2)})
    torch.testing.assert_close(load_checkpoint(path).state_dict["w"], torch.zeros(2))
    save_checkpoint(path, {"w": torch.ones(2)}, force=True)
    torch.testing.assert_close(load_checkpoint(path).state_dict["w"], torch.ones(2))
    assert _files(tmp_path) == [path.name]


def test_save_keeps_umask_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "a.pt", {"w": torch.zeros(2)})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("ext", EXTENSIONS)
def test_save_non_tensor_leaves_nothing(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"a{ext}"
    with pytest.raises(ModeconnectError, match=f"{_esc(path)}: .*'step' has type int, not Tensor"):
        save_checkpoint(path, {"w": torch.ones(1), "step": 3})  # type: ignore[dict-item]
    assert _files(tmp_path) == []


@pytest.mark.parametrize("ext", EXTENSIONS)
def test_failure_while_writing_removes_temp_and_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ext: str
) -> None:
    path = save_checkpoint(tmp_path / f"a{ext}", {"w": torch.zeros(2)})
    before = path.read_bytes()

    def broken_writer(obj: object, target: object, *args: object) -> None:
        if hasattr(target, "write"):  # torch.save gets an open file
            target.write(b"partial")
        else:
            Path(str(target)).write_bytes(b"partial")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(mio.torch, "save", broken_writer)
    monkeypatch.setattr(mio.safetensors.torch, "save_file", broken_writer)
    with pytest.raises(RuntimeError, match="disk on fire"):
        save_checkpoint(path, {"w": torch.ones(2)}, force=True)
    assert _files(tmp_path) == [path.name]
    assert path.read_bytes() == before


def test_os_error_while_writing_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(obj: object, target: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mio.torch, "save", no_space)
    path = tmp_path / "a.pt"
    with pytest.raises(ModeconnectError, match=f"{_esc(path)}: cannot write.*No space left"):
        save_checkpoint(path, {"w": torch.ones(2)})
    assert _files(tmp_path) == []


def test_save_missing_parent_directory(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "a.pt"
    with pytest.raises(ModeconnectError, match=f"{_esc(path)}: the folder .* does not exist"):
        save_checkpoint(path, {"w": torch.ones(1)})
    assert not path.parent.exists()


def test_save_onto_directory(tmp_path: Path) -> None:
    (tmp_path / "d.pt").mkdir()
    with pytest.raises(ModeconnectError, match="d.pt: the output names a directory"):
        save_checkpoint(tmp_path / "d.pt", {"w": torch.ones(1)}, force=True)


def test_save_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    with pytest.raises(
        ModeconnectError,
        match=rf"{_esc(path)}: the output needs a checkpoint extension, got '.ckpt'; "
        r"use one of \.pt, \.pth, \.bin",
    ):
        save_checkpoint(path, {"w": torch.ones(1)})
    assert _files(tmp_path) == []


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"state_dict": [torch.ones(1)]}, "cannot save an object of type list"),
        ({"state_dict": {}}, "state dict is empty"),
        ({"model_kwargs": {"f": object()}}, "model_kwargs must be JSON-serialisable"),
        ({"model_kwargs": {"x": float("nan")}}, "model_kwargs must be JSON-serialisable"),
        ({"metadata": {"a": 1}}, "'metadata' must map strings to strings"),
        ({"metadata": {"modeconnect.model": "a:b"}}, "'modeconnect.model' is reserved"),
        ({"model_ref": "no_colon"}, "no ':callable' part"),
    ],
)
def test_save_bad_arguments(tmp_path: Path, kwargs: dict, pattern: str) -> None:
    arguments = {"state_dict": {"w": torch.ones(1)}, **kwargs}
    with pytest.raises(ModeconnectError, match=pattern):
        save_checkpoint(tmp_path / "a.safetensors", **arguments)
    assert _files(tmp_path) == []


# --------------------------------------------------------------------------- import_callable


def test_import_module_ref() -> None:
    assert import_callable("torch.nn:Linear") is nn.Linear
    assert import_callable("torch.nn:Linear.forward") is nn.Linear.forward


def test_import_file_ref(model_file: Path) -> None:
    cls = import_callable(f"{model_file}:MLP")
    assert cls.__name__ == "MLP"
    assert import_callable(f"{model_file}:MLP") is cls  # unchanged file: same module
    assert cls.__module__ in sys.modules and cls.__module__ != "my_models"


def test_import_file_ref_can_import_its_neighbours(tmp_path: Path) -> None:
    (tmp_path / "helper_mc_test.py").write_text("WIDTH = 5\n")
    path = tmp_path / "net.py"
    path.write_text("import helper_mc_test\n\ndef width():\n    return helper_mc_test.WIDTH\n")
    assert import_callable(f"{path}:width")() == 5
    assert str(tmp_path) not in sys.path


def test_import_relative_file_ref(model_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(model_file.parent)
    assert import_callable("my_models.py:MLP").__name__ == "MLP"


@pytest.mark.parametrize(
    ("ref", "pattern"),
    [
        ("torch.nn.Linear", "has no ':callable' part"),
        ("torch.nn:", "is malformed"),
        (":Linear", "is malformed"),
        ("torch.nn:not-a-name", "is malformed"),
        ("no_such_module_mc:f", r"module 'no_such_module_mc' not found \(No module named"),
        ("torch.no_such_sub:f", "module 'torch.no_such_sub' not found"),
        ("torch.nn:Linearr", r"'torch.nn' has no attribute 'Linearr'; public callables there: \["),
        ("torch.nn:Linear.nope", "has no attribute 'Linear.nope'"),
        ("math:pi", "'pi' has type float, not callable"),
    ],
)
def test_import_errors(ref: str, pattern: str) -> None:
    with pytest.raises(
        ModeconnectError, match=f"model reference {re.escape(repr(ref))}.*{pattern}"
    ):
        import_callable(ref)


def test_import_file_errors(tmp_path: Path, model_file: Path) -> None:
    missing = tmp_path / "missing.py"
    with pytest.raises(ModeconnectError, match=f"{_esc(missing)}: file not found"):
        import_callable(f"{missing}:f")
    data = tmp_path / "data.txt"
    data.write_text("")
    with pytest.raises(ModeconnectError, match=f"{_esc(data)}: not a .py file"):
        import_callable(f"{data}:f")
    with pytest.raises(ModeconnectError, match="'NOT_CALLABLE' has type int, not callable"):
        import_callable(f"{model_file}:NOT_CALLABLE")
    with pytest.raises(
        ModeconnectError, match=r"has no attribute 'Nope'.*\['MLP', 'not_a_model'\]"
    ):
        import_callable(f"{model_file}:Nope")


def test_import_file_that_raises(tmp_path: Path) -> None:
    path = tmp_path / "bad.py"
    path.write_text("import no_such_dependency_mc\n")
    modules_before = set(sys.modules)
    pattern = (
        f"importing {re.escape(repr(str(path)))} failed with ModuleNotFoundError: "
        "No module named 'no_such_dependency_mc'"
    )
    with pytest.raises(ModeconnectError, match=pattern):
        import_callable(f"{path}:f")
    assert set(sys.modules) == modules_before
    syntax = tmp_path / "syntax.py"
    syntax.write_text("def f(:\n")
    with pytest.raises(ModeconnectError, match="failed with SyntaxError"):
        import_callable(f"{syntax}:f")


def test_import_module_with_missing_dependency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mc_pkg_dep_test.py").write_text("import no_such_dependency_mc\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pattern = "importing 'mc_pkg_dep_test' failed with ModuleNotFoundError: .*no_such_dependency_mc"
    with pytest.raises(ModeconnectError, match=pattern):
        import_callable("mc_pkg_dep_test:f")


# --------------------------------------------------------------------------- build / resolve


def test_build_model(model_file: Path) -> None:
    model = build_model(f"{model_file}:MLP", {"width": 6})
    assert _head_width(model) == 6
    assert isinstance(build_model("torch.nn:Identity"), nn.Identity)


def test_build_model_errors(model_file: Path) -> None:
    with pytest.raises(ModeconnectError, match=r"calling it with kwargs \{\"widht\": 6\} failed"):
        build_model(f"{model_file}:MLP", {"widht": 6})
    with pytest.raises(ModeconnectError, match="returned an object of type int, not a torch.nn"):
        build_model(f"{model_file}:not_a_model")


TRUST_ALL = Trust(any_reference=True)


def test_resolve_model_from_checkpoint(tmp_path: Path, model_file: Path) -> None:
    ref = f"{model_file}:MLP"
    a = Checkpoint(tmp_path / "a.pt", {}, ref, {"width": 5})
    b = Checkpoint(tmp_path / "b.pt", {})  # names nothing: ignored
    arch = resolve_model([b, a], trust=TRUST_ALL)
    model = arch.model
    assert (arch.ref, arch.kwargs) == (ref, {"width": 5})
    assert _head_width(model) == 5


def test_resolve_model_explicit_ref_wins(tmp_path: Path, model_file: Path) -> None:
    a = Checkpoint(tmp_path / "a.pt", {}, "x:y", {"width": 5})
    b = Checkpoint(tmp_path / "b.pt", {}, "z:w")
    arch = resolve_model([a, b], f"{model_file}:MLP", {"width": 3})
    assert (arch.ref, arch.kwargs) == (f"{model_file}:MLP", {"width": 3})
    assert _head_width(arch.model) == 3
    assert resolve_model([a], "torch.nn:Identity").kwargs == {}


def test_resolve_model_explicit_kwargs_replace_checkpoint_kwargs(
    tmp_path: Path, model_file: Path
) -> None:
    ref = f"{model_file}:MLP"
    a = Checkpoint(tmp_path / "a.pt", {}, ref, {"width": 5})
    b = Checkpoint(tmp_path / "b.pt", {}, ref, {"width": 6})
    arch = resolve_model([a, b], model_kwargs={"width": 7}, trust=TRUST_ALL)
    assert arch.kwargs == {"width": 7}


def test_resolve_model_conflicts(tmp_path: Path, model_file: Path) -> None:
    ref = f"{model_file}:MLP"
    a = Checkpoint(tmp_path / "a.pt", {}, ref, {"width": 5})
    b = Checkpoint(tmp_path / "b.pt", {}, ref, {"width": 6})
    c = Checkpoint(tmp_path / "c.pt", {}, "other:Net")
    pattern = f"{_esc(a.path)} names model .* but {_esc(b.path)} names .* pass --model"
    with pytest.raises(ModeconnectError, match=pattern):
        resolve_model([a, b])
    with pytest.raises(ModeconnectError, match=f"but {_esc(c.path)} names 'other:Net'"):
        resolve_model([a, c], model_kwargs={"width": 5})


def test_resolve_model_without_any_ref(tmp_path: Path) -> None:
    a, b = Checkpoint(tmp_path / "a.pt", {}), Checkpoint(tmp_path / "b.pt", {})
    pattern = f"{_esc(a.path)}, {_esc(b.path)}: no checkpoint names .* pass --model module:callable"
    with pytest.raises(ModeconnectError, match=pattern):
        resolve_model([a, b])


def test_resolve_from_saved_checkpoint(tmp_path: Path, model_file: Path) -> None:
    model = build_model(f"{model_file}:MLP", {"width": 5, "depth": 2})
    path = save_checkpoint(
        tmp_path / "m.safetensors",
        model.state_dict(),
        model_ref=f"{model_file}:MLP",
        model_kwargs={"width": 5, "depth": 2},
    )
    ckpt = load_checkpoint(path)
    rebuilt = resolve_model([ckpt], trust=TRUST_ALL).model
    check_state_dict(rebuilt, ckpt)
    rebuilt.load_state_dict(ckpt.state_dict)
    x = torch.randn(4, 3)
    torch.testing.assert_close(rebuilt(x), model(x))


# --------------------------------------------------------------------------- checks


def test_check_state_dict_accepts_matching(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    check_state_dict(model, Checkpoint(tmp_path / "a.pt", model.state_dict()))


def test_check_state_dict_missing_and_unexpected(tmp_path: Path) -> None:
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(4)])  # 8 keys
    sd = {f"extra{i}": torch.ones(1) for i in range(2)}
    sd["0.weight"] = model.get_parameter("0.weight").detach()
    ckpt = Checkpoint(tmp_path / "a.pt", sd)
    pattern = (
        rf"{_esc(ckpt.path)}: .*7 missing keys \['0.bias', '1.bias', '1.weight', '2.bias', "
        r"'2.weight'\] and 2 more, 2 unexpected keys \['extra0', 'extra1'\]; check --model"
    )
    with pytest.raises(ModeconnectError, match=pattern):
        check_state_dict(model, ckpt)
    only_extra = Checkpoint(tmp_path / "b.pt", {**model.state_dict(), "extra": torch.ones(1)})
    pattern = r"does not fit the model: 1 unexpected keys \['extra'\]; check --model"
    with pytest.raises(ModeconnectError, match=pattern):
        check_state_dict(model, only_extra)


def test_check_state_dict_shape_mismatch(tmp_path: Path) -> None:
    ckpt = _mlp_ckpt(tmp_path / "a.pt", width=5)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    pattern = (
        rf"{_esc(ckpt.path)}: tensor '0.weight' has shape \(5, 3\) in the checkpoint but \(4, 3\)"
    )
    with pytest.raises(ModeconnectError, match=pattern):
        check_state_dict(model, ckpt)


def test_check_state_dict_non_finite(tmp_path: Path) -> None:
    ckpt = _mlp_ckpt(tmp_path / "a.pt")
    ckpt.state_dict["2.weight"][0, :2] = float("nan")
    ckpt.state_dict["2.weight"][1, 0] = float("inf")
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    pattern = rf"{_esc(ckpt.path)}: tensor '2.weight' \(2, 4\) has 3 non-finite values"
    with pytest.raises(ModeconnectError, match=pattern):
        check_state_dict(model, ckpt)


def test_check_same_architecture(tmp_path: Path) -> None:
    a, b = _mlp_ckpt(tmp_path / "a.pt"), _mlp_ckpt(tmp_path / "b.pt")
    check_same_architecture(a, b)
    broken = Checkpoint(tmp_path / "broken.pt", {**b.state_dict, "0.bias": torch.zeros(6)})
    pattern = (
        rf"tensor '0.bias' has shape \(4,\) in {_esc(a.path)} but \(6,\) in {_esc(broken.path)}"
    )
    with pytest.raises(ShapeMismatch, match=pattern):
        check_same_architecture(a, broken)


def test_another_width_is_named_by_the_shared_checks(tmp_path: Path) -> None:
    """Every tensor of the hidden group resized: both checks name the change of width (and
    ``merge --width``), from the shapes they already read."""
    a, wide = _mlp_ckpt(tmp_path / "a.pt"), _mlp_ckpt(tmp_path / "wide.pt", width=6)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    for check, pattern in [
        (lambda: check_same_architecture(a, wide),
         rf"^{_esc(wide.path)} differs from {_esc(a.path)} in width \(3 tensors, e\.g\. "
         r"'0\.bias' is \(6,\) in B, \(4,\) in A\); .*merge A B --method otfusion\|zip --width N"),
        (lambda: check_state_dict(model, wide),
         rf"{_esc(wide.path)}: tensor '0.weight' has shape \(6, 3\) in the checkpoint but "
         r"\(4, 3\) in the model, and 2 more tensors differ: the checkpoint is another width"),
    ]:  # fmt: skip
        with pytest.raises(ShapeMismatch, match=pattern):
            check()


def test_check_same_architecture_keys(tmp_path: Path) -> None:
    a = _mlp_ckpt(tmp_path / "a.pt")
    b = Checkpoint(tmp_path / "b.pt", {**a.state_dict, "extra": torch.ones(1)})
    del b.state_dict["0.bias"]
    pattern = (
        rf"{_esc(a.path)} and {_esc(b.path)} have different tensors: "
        r"1 only in a.pt \['0.bias'\], 1 only in b.pt \['extra'\]"
    )
    with pytest.raises(ModeconnectError, match=pattern):
        check_same_architecture(a, b)


def test_error_messages_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "k.safetensors"
    safetensors.torch.save_file({"w": torch.ones(1)}, path, {"modeconnect.model_kwargs": "{\n"})
    with pytest.raises(ModeconnectError) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    assert json.dumps(str(info.value))  # printable as one JSON string
