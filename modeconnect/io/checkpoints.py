"""Checkpoint files and model references: every file format modeconnect reads or writes.

Formats, chosen by extension:

* ``.pt`` / ``.pth`` / ``.bin``: a ``torch.save`` of either a plain state dict (every
  value a tensor) or the dict form ``{"state_dict": {...}, "model": "module:callable",
  "model_kwargs": {...}, "metadata": {...}}``. Files are always read with
  ``torch.load(..., weights_only=True)``: modeconnect never executes code from a
  checkpoint. Other top-level keys of the dict form (``optimizer``, ``epoch``) are ignored.
* ``.safetensors``: tensors plus string metadata; the architecture may be named by the
  metadata keys ``modeconnect.model`` and ``modeconnect.model_kwargs`` (a JSON object).
* a directory written by ``save_pretrained`` (``config.json`` and safetensors or
  ``pytorch_model.bin`` weights, sharded or not): the architecture is the config's
  ``transformers`` class, built with its parameters on the meta device, and the
  weights are read lazily, one tensor at a time (:mod:`modeconnect.io.hf`).

A model reference is ``"package.module:callable"`` or ``"path/to/file.py:callable"``;
the callable, called with the keyword arguments, returns the ``torch.nn.Module``.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import safetensors.torch
import torch
from safetensors import safe_open

from modeconnect.errors import (
    ModeconnectError,
    NotFinite,
    ShapeMismatch,
    count_nonfinite,
    load_error_reason,
)
from modeconnect.forward import computed_buffers
from modeconnect.io.hf import (
    HFDirectory,
    LazyWeights,
    build_empty,
    config_settings,
    model_names,
    open_directory,
)
from modeconnect.io.jsonfile import check_plain_value, parse_json
from modeconnect.io.references import (
    NO_TRUST,
    Architecture,
    Trust,
    build_model,
    check_file_reference,
    import_callable,
    split_ref,
)
from modeconnect.io.safetensors_header import sort_safetensors_metadata
from modeconnect.io.targets import Fill, Outputs, staged_write
from modeconnect.progress import ProgressFn

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "Checkpoint",
    "LoadedModels",
    "build_model",
    "check_same_architecture",
    "check_same_width",
    "check_state_dict",
    "import_callable",
    "require_dense",
    "load_checkpoint",
    "model_dtype",
    "checkpoint_writer",
    "json_writer",
    "load_models",
    "stored_shape",
    "in_model_dtypes",
    "resolve_model",
    "restore_dtypes",
    "save_checkpoint",
    "save_json",
]

TORCH_EXTENSIONS = (".pt", ".pth", ".bin")
SUPPORTED_EXTENSIONS = (*TORCH_EXTENSIONS, ".safetensors")
MODEL_KEY = "modeconnect.model"
MODEL_KWARGS_KEY = "modeconnect.model_kwargs"
_MAX_LISTED = 5


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A loaded checkpoint: its tensors and the architecture it names, if any.

    Compared by identity (``eq=False``): tensors have no single truth value.
    """

    path: Path
    state_dict: Mapping[str, torch.Tensor]
    """A dict, or for a Hugging Face directory a :class:`~modeconnect.io.hf.LazyWeights`."""
    model_ref: str | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    dtypes: Mapping[str, torch.dtype] = field(default_factory=dict)
    """Dtypes the file stored, for the tensors :func:`in_model_dtypes` cast (empty: none)."""
    directory: HFDirectory | None = None
    """The ``save_pretrained`` directory the checkpoint was read from, if it was one."""

    @property
    def lazy(self) -> bool:
        """Read from disk on every access (a Hugging Face directory), not held in memory."""
        return isinstance(self.state_dict, LazyWeights)


# --------------------------------------------------------------------------- formatting


def _one_line(text: object) -> str:
    """Collapse whitespace so that a message from another library fits on one line."""
    return " ".join(str(text).split())


def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def _list_keys(keys: Iterable[str]) -> str:
    """Sorted keys, at most ``_MAX_LISTED`` of them, then ``and N more``."""
    ordered = sorted(keys)
    shown = ", ".join(repr(k) for k in ordered[:_MAX_LISTED])
    rest = len(ordered) - _MAX_LISTED
    return f"[{shown}]" + (f" and {rest} more" if rest > 0 else "")


def _key_sets(*labelled: tuple[str, Iterable[str]]) -> str:
    """``"2 missing keys ['a', 'b'], 1 unexpected keys ['c']"``, leaving out empty sets."""
    parts = [(label, sorted(keys)) for label, keys in labelled]
    return ", ".join(f"{len(keys)} {label} {_list_keys(keys)}" for label, keys in parts if keys)


def _describe(obj: object) -> str:
    """A short description of an unexpected object, for error messages."""
    if isinstance(obj, dict):
        return f"a dict with keys {_list_keys(str(k) for k in obj)}"
    if isinstance(obj, torch.Tensor):
        return f"a single tensor of shape {_shape(obj)}"
    return f"an object of type {type(obj).__name__}"


# --------------------------------------------------------------------------- paths


def _suffix(path: Path) -> str:
    """The lower-case extension of ``path``, or an error listing the supported ones."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise ModeconnectError(
            f"{path}: unknown checkpoint extension {suffix or '(none)'!r}; "
            f"supported: {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    return suffix


def _existing_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise ModeconnectError(f"{path}: {what} not found; check the path")
    if not path.is_file():
        raise ModeconnectError(f"{path}: is not a file; pass the path of a {what}")
    return path


# --------------------------------------------------------------------------- loading


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint file into plain CPU tensors (no memory-mapped storage).

    A directory is read as a ``save_pretrained`` directory: its headers only, the
    tensors lazily (:class:`~modeconnect.io.hf.LazyWeights`). Raises
    ``ModeconnectError`` for a missing, corrupt or truncated file, an unknown
    extension, or content that is neither a state dict nor the modeconnect dict form.
    """
    if Path(path).is_dir():
        return _load_directory(Path(path))
    path = _existing_file(path, "checkpoint file")
    if _suffix(path) == ".safetensors":
        return _load_safetensors(path)
    return _unpack_torch_object(path, _torch_load(path))


def _torch_load(path: Path) -> object:
    return torch_load(path, "checkpoint", "torch.save(model.state_dict(), path) or .safetensors")


def torch_load(path: Path, what: str, resave: str) -> object:
    """``torch.load`` restricted to weights: pickled code is refused, never run.

    ``what`` names the file in errors (``"checkpoint"``), ``resave`` how to write a good one.
    """
    try:
        with warnings.catch_warnings():  # torch's own (deprecated quantized types): not the user's
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found or "reduce" in str(exc):
            name = f" ({found.group(1)})" if found else ""
            raise ModeconnectError(
                f"{path}: contains pickled code{name}: refused; modeconnect never runs code "
                f"from a {what}; if the file is yours, re-save it as {resave}"
            ) from exc
        raise _corrupt(path, what, exc) from exc
    except Exception as exc:
        raise _corrupt(path, what, exc) from exc


def _corrupt(path: Path, what: str, exc: BaseException) -> ModeconnectError:
    return ModeconnectError(
        f"{path}: cannot read the {what}, the file is corrupt or truncated "
        f"({type(exc).__name__}: {load_error_reason(exc)}); re-create or re-download it"
    )


def _unpack_torch_object(path: Path, obj: object) -> Checkpoint:
    """Accept a plain state dict or the dict form ``{"state_dict": ..., "model": ...}``."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), Mapping):
        return Checkpoint(
            path=path,
            state_dict=_tensor_dict(path, obj["state_dict"]),
            model_ref=_optional_str(path, obj.get("model"), "model"),
            model_kwargs=_kwargs_dict(path, obj.get("model_kwargs")),
            metadata=_str_dict(path, obj.get("metadata"), "metadata"),
        )
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return Checkpoint(path=path, state_dict=_tensor_dict(path, obj))
    if isinstance(obj, dict) and not obj:
        raise ModeconnectError(f"{path}: the checkpoint is an empty dict; it holds no tensors")
    raise ModeconnectError(
        f"{path}: expected a state dict (str -> Tensor) or a dict with a 'state_dict' entry, "
        f"found {_describe(obj)}; re-save it with torch.save(model.state_dict(), path)"
    )


def _tensor_dict(path: Path, raw: Mapping[Any, Any]) -> dict[str, torch.Tensor]:
    """Check that every key is a string and every value a tensor; detach parameters."""
    if not raw:
        raise ModeconnectError(f"{path}: the state dict is empty; it holds no tensors")
    out: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ModeconnectError(
                f"{path}: state dict key {key!r} has type {type(key).__name__}, not str; "
                "use the names from model.state_dict()"
            )
        if not isinstance(value, torch.Tensor):
            raise ModeconnectError(
                f"{path}: state dict entry {key!r} has type {type(value).__name__}, not Tensor; "
                "keep only tensors in the state dict"
            )
        require_dense(path, f"tensor {key!r}", value)
        out[key] = value.detach()
    return out


def require_dense(path: Path, name: str, t: torch.Tensor) -> None:
    """Refuse a sparse (or otherwise non-strided) or quantized tensor read from ``path``:
    one line naming it (``name``: ``"tensor 'w'"``), its shape, and the way to re-save it."""
    if t.layout == torch.strided and not t.is_quantized:
        return
    kind = "quantized" if t.is_quantized else f"with layout {t.layout}"
    raise ShapeMismatch(
        f"{path}: {name} {tuple(t.shape)} is stored {kind}; modeconnect reads dense "
        "tensors: save it with tensor.to_dense() (dequantize() for a quantized one)"
    )


def _optional_str(path: Path, value: object, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ModeconnectError(f"{path}: entry {name!r} must be a string, found {type(value).__name__}")


def _kwargs_dict(path: Path, value: object) -> dict[str, Any]:
    """Keyword arguments as a dict with string keys, nested within the bounds of JSON read
    from files (:func:`~modeconnect.io.jsonfile.check_plain_value`)."""
    if value is None:
        return {}
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        check_plain_value(
            value, f"{path}: 'model_kwargs'", "re-save the checkpoint or pass --model-kwargs"
        )
        return dict(value)
    raise ModeconnectError(
        f"{path}: 'model_kwargs' must be a dict with string keys, found {_describe(value)}"
    )


def _str_dict(path: Path, value: object, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return dict(value)
    raise ModeconnectError(
        f"{path}: {name!r} must map strings to strings, found {_describe(value)}"
    )


def _load_safetensors(path: Path) -> Checkpoint:
    """Copy each tensor out of the memory map (so none keeps it alive) and split the metadata."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = dict(handle.metadata() or {})
            names = handle.keys()  # safe_open is not iterable
            tensors = {key: handle.get_tensor(key).clone() for key in names}
    except MemoryError:
        raise
    except Exception as exc:
        raise _corrupt(path, "checkpoint", exc) from exc
    model_ref = header.pop(MODEL_KEY, None)
    kwargs = _parse_kwargs_json(path, header.pop(MODEL_KWARGS_KEY, None))
    return Checkpoint(path, _tensor_dict(path, tensors), model_ref, kwargs, header)


def _load_directory(path: Path) -> Checkpoint:
    """A ``save_pretrained`` directory: the ``transformers`` reference and lazy weights."""
    directory = open_directory(path)
    return Checkpoint(
        path, LazyWeights(directory), directory.model_ref, {"config": directory.config},
        directory=directory,
    )  # fmt: skip


def _parse_kwargs_json(path: Path, text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    where = f"{path}: metadata {MODEL_KWARGS_KEY!r}"
    value = parse_json(text, where, "re-save the checkpoint or pass --model-kwargs")
    return _kwargs_dict(path, value)


# --------------------------------------------------------------------------- saving


def save_checkpoint(
    path: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    *,
    model_ref: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
    force: bool = False,
) -> Path:
    """Write a checkpoint atomically; the format follows the extension.

    The parent directory must exist (it is never created silently, so that a typo in
    an output path fails instead of scattering files). An existing file is replaced
    only with ``force=True``. The data go to a temporary file in the same directory,
    which is then renamed over ``path``; on failure the temporary file is removed and
    any previous file is left untouched. ``model_kwargs`` must be JSON-serialisable
    (tuples come back as lists). Tensors are written contiguous, on the CPU, and each
    once: tied or overlapping tensors are cloned so every key owns its data. The same
    inputs give the same bytes.
    """
    path = Path(path)
    Outputs.plan([("the output", path, "checkpoint")], inputs=(), force=force)
    fill = checkpoint_writer(
        path, state_dict, model_ref=model_ref, model_kwargs=model_kwargs, metadata=metadata
    )
    return staged_write(path, fill)


def checkpoint_writer(
    path: Path,
    state_dict: Mapping[str, torch.Tensor],
    *,
    model_ref: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Fill:
    """Check what :func:`save_checkpoint` would write to ``path``; return the function that
    writes it to a (temporary) file, for :class:`~modeconnect.io.targets.Staging`."""
    suffix = _suffix(path)
    tensors = _tensors_for_saving(path, state_dict)
    kwargs = _kwargs_for_saving(path, model_kwargs)
    meta = _metadata_for_saving(path, metadata)
    if model_ref is not None:
        split_ref(model_ref)
    if suffix == ".safetensors":
        header = _safetensors_header(model_ref, kwargs, meta)

        def fill(tmp: Path) -> None:
            safetensors.torch.save_file(tensors, str(tmp), header)
            sort_safetensors_metadata(tmp)

        return fill
    payload = {"state_dict": tensors, "model": model_ref, "model_kwargs": kwargs,
               "metadata": dict(sorted(meta.items()))}  # fmt: skip

    def save(tmp: Path) -> None:
        # A file object, not a path: torch.save names the archive after a path's file
        # name, which would put the temporary name into the bytes.
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)

    return save


def _safetensors_header(
    model_ref: str | None, kwargs: dict[str, Any], meta: dict[str, str]
) -> dict[str, str]:
    """The user's string metadata plus ``modeconnect.model`` and ``.model_kwargs``."""
    header = dict(meta)
    if model_ref is not None:
        header[MODEL_KEY] = model_ref
    if kwargs:
        header[MODEL_KWARGS_KEY] = json.dumps(kwargs, sort_keys=True)
    return header


def save_json(path: str | Path, obj: Any, *, force: bool = False) -> Path:
    """Write ``obj`` as indented JSON, atomically; an existing file needs ``force``."""
    path = Path(path)
    Outputs.plan([("the output", path, "json")], inputs=(), force=force)
    return staged_write(path, json_writer(obj))


def json_writer(obj: Any) -> Fill:
    """The function that writes ``obj`` as indented JSON to a (temporary) file."""
    text = json.dumps(obj, indent=2, allow_nan=True) + "\n"
    return lambda tmp: tmp.write_text(text, encoding="utf-8")


def _tensors_for_saving(
    path: Path, state_dict: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, each owning its storage (safetensors refuses shared memory)."""
    if not isinstance(state_dict, Mapping):
        raise ModeconnectError(
            f"{path}: cannot save {_describe(state_dict)}; pass a state dict (str -> Tensor)"
        )
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for key, tensor in _tensor_dict(path, state_dict).items():
        tensor = tensor.cpu().contiguous()
        storage = tensor.untyped_storage()
        owns_all = storage.nbytes() == tensor.numel() * tensor.element_size()
        if storage.data_ptr() in seen or not owns_all:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out


def _kwargs_for_saving(path: Path, kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The kwargs after a JSON round trip, so both formats give back the same values."""
    checked = _kwargs_dict(path, kwargs)
    try:
        return dict(json.loads(json.dumps(checked, allow_nan=False)))
    except (TypeError, ValueError) as exc:
        raise ModeconnectError(
            f"{path}: model_kwargs must be JSON-serialisable ({_one_line(exc)}); "
            "use numbers, strings, booleans, lists and dicts"
        ) from exc


def _metadata_for_saving(path: Path, metadata: Mapping[str, str] | None) -> dict[str, str]:
    meta = _str_dict(path, metadata, "metadata")
    reserved = sorted(k for k in meta if k in (MODEL_KEY, MODEL_KWARGS_KEY))
    if reserved:
        raise ModeconnectError(
            f"{path}: metadata key {reserved[0]!r} is reserved; "
            "pass model_ref / model_kwargs instead"
        )
    return meta


# --------------------------------------------------------------------------- model references


def resolve_model(
    checkpoints: Sequence[Checkpoint],
    model_ref: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    *,
    trust: Trust = NO_TRUST,
) -> Architecture:
    """Choose the architecture and build it.

    Precedence: the explicit ``model_ref`` (the CLI's ``--model``) with ``model_kwargs``;
    otherwise the reference the checkpoints name, with ``model_kwargs`` replacing their
    kwargs when given. Checkpoints that name no architecture are ignored; two that name
    different ones are an error unless ``model_ref`` is given. A reference read from a
    checkpoint runs only if it is known or ``trust`` allows it
    (:func:`~modeconnect.io.references.check_file_reference`).
    """
    if model_ref is not None:
        kwargs = dict(model_kwargs or {})
        return Architecture(build_model(model_ref, kwargs), model_ref, kwargs)
    named = [c for c in checkpoints if c.model_ref is not None]
    if not named:
        files = ", ".join(str(c.path) for c in checkpoints) or "(no checkpoints)"
        raise ModeconnectError(
            f"{files}: no checkpoint names its model architecture; "
            "pass --model module:callable (and --model-kwargs if needed)"
        )
    first = named[0]
    for other in named[1:]:
        _check_same_ref(first, other, ignore_kwargs=model_kwargs is not None)
    ref = str(first.model_ref)
    restrict = check_file_reference(ref, first.model_kwargs, first.path, trust)
    kwargs = dict(model_kwargs if model_kwargs is not None else first.model_kwargs)
    return Architecture(build_model(ref, kwargs, modules=restrict), ref, kwargs)


def _check_same_ref(a: Checkpoint, b: Checkpoint, *, ignore_kwargs: bool) -> None:
    if a.model_ref == b.model_ref and (
        ignore_kwargs or dict(a.model_kwargs) == dict(b.model_kwargs)
    ):
        return
    raise ModeconnectError(
        f"{a.path} names model {_short(a.model_ref)} with kwargs {_short(dict(a.model_kwargs))} "
        f"but {b.path} names {_short(b.model_ref)} with kwargs {_short(dict(b.model_kwargs))}; "
        "pass --model module:callable to choose one"
    )


def _short(value: object, limit: int = 300) -> str:
    """``repr(value)``, shortened to ``limit`` characters: values read from files can be huge."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


# --------------------------------------------------------------------------- checks


def load_models(
    paths: Sequence[str | Path],
    model_ref: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    *,
    trust: Trust = NO_TRUST,
    progress: ProgressFn | None = None,
) -> LoadedModels:
    """Load checkpoints of one architecture and build it.

    Each file, in order, must fit the model exactly (keys, shapes, finite values)
    and match the first file; see :func:`resolve_model` for which architecture
    is built. Hugging Face directories name their architecture in ``config.json``;
    when every input is one (and no ``model_ref`` is given) the model is built from
    the first one's config with its parameters on the meta device, and the
    checkpoints stay on disk (:class:`~modeconnect.io.hf.LazyWeights`); their one
    full read, the finite check, reports its shards to ``progress``.
    """
    ckpts = [load_checkpoint(p) for p in paths]
    for ckpt in ckpts[1:]:  # first: names both files where each names its own widths
        check_same_width(ckpts[0], ckpt)
    arch = _architecture(ckpts, model_ref, model_kwargs, trust)
    ckpts = [_named_for(arch.model, c) for c in ckpts]
    for ckpt in ckpts:  # each fits the model exactly, so all have one architecture
        check_state_dict(arch.model, ckpt)
    return LoadedModels(tuple(in_model_dtypes(arch.model, c, progress) for c in ckpts), arch)


def _architecture(
    ckpts: Sequence[Checkpoint],
    model_ref: str | None,
    model_kwargs: Mapping[str, Any] | None,
    trust: Trust,
) -> Architecture:
    dirs = [c.directory for c in ckpts if c.directory is not None]
    if model_ref is not None or model_kwargs is not None or not dirs or len(dirs) < len(ckpts):
        return resolve_model(ckpts, model_ref, model_kwargs, trust=trust)
    first = ckpts[0]
    for other in ckpts[1:]:
        if other.model_ref != first.model_ref:
            raise ModeconnectError(
                f"{first.path} holds a {first.model_ref!r} model but {other.path} a "
                f"{other.model_ref!r} one (their config.json 'architectures'); "
                "all checkpoints must come from the same architecture"
            )
        _check_same_config(first, other)
    return Architecture(build_empty(dirs[0]), dirs[0].model_ref, {"config": dirs[0].config})


def _check_same_config(first: Checkpoint, other: Checkpoint) -> None:
    """Refuse Hugging Face directories whose configs differ beyond bookkeeping
    (:func:`~modeconnect.io.hf.config_settings`): the model is built from the first one's,
    so another's activation, norm epsilon or rotary base would be silently replaced by
    the first's, and its losses measured as another function."""
    a = config_settings(cast(HFDirectory, first.directory))
    b = config_settings(cast(HFDirectory, other.directory))
    for key in sorted(a.keys() | b.keys()):
        mine, theirs = a.get(key, "<absent>"), b.get(key, "<absent>")
        if mine != theirs:
            raise ShapeMismatch(
                f"{other.path}: config {key!r} is {_short(theirs, 120)} but "
                f"{_short(mine, 120)} in {first.path}; the model is built from the first "
                "config, so this checkpoint would run as another function: make the configs "
                "agree"
            )


def _named_for(model: torch.nn.Module, ckpt: Checkpoint) -> Checkpoint:
    """A lazy checkpoint keyed by the model's state-dict names (tied aliases included)."""
    weights = ckpt.state_dict
    if not isinstance(weights, LazyWeights):
        return ckpt
    return replace(ckpt, state_dict=weights.with_names(model_names(model, weights.directory)))


@dataclass(frozen=True, eq=False)
class LoadedModels:
    """Checkpoints of one architecture, in the model's dtypes, and the built architecture."""

    checkpoints: tuple[Checkpoint, ...]
    architecture: Architecture


def in_model_dtypes(
    model: torch.nn.Module, ckpt: Checkpoint, progress: ProgressFn | None = None
) -> Checkpoint:
    """The checkpoint with each floating tensor in the model's dtype; the stored ones in ``dtypes``.

    Half-precision and float64 checkpoints are computed with in the model's precision
    (float32 for most models); :func:`restore_dtypes` writes results back as stored.
    A lazy checkpoint converts each tensor as it is read.
    """
    if isinstance(ckpt.state_dict, LazyWeights):
        return _lazy_in_model_dtype(model, ckpt, ckpt.state_dict, progress)
    expected = model.state_dict()
    cast = {
        k: t.to(expected[k].dtype)
        for k, t in ckpt.state_dict.items()
        if t.is_floating_point() and t.dtype != expected[k].dtype
    }
    if not cast:
        return ckpt
    casted = replace(
        ckpt,
        state_dict={**ckpt.state_dict, **cast},
        dtypes={k: ckpt.state_dict[k].dtype for k in cast},
    )
    _check_finite(casted, "after conversion to the model's dtype ")
    return casted


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype the model runs in: its first floating parameter's (torch's default if none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()),
                torch.get_default_dtype())  # fmt: skip


def _lazy_in_model_dtype(
    model: torch.nn.Module, ckpt: Checkpoint, weights: LazyWeights, progress: ProgressFn | None
) -> Checkpoint:
    dtype = model_dtype(model)
    dtypes = {
        k: weights.stored_dtype(k)
        for k in weights
        if weights.stored_dtype(k).is_floating_point and weights.stored_dtype(k) != dtype
    }
    casted = replace(ckpt, state_dict=weights.in_dtype(dtype), dtypes=dtypes)
    _check_finite(casted, "after conversion to the model's dtype " if dtypes else "", progress)
    return casted


def restore_dtypes(
    state_dict: Mapping[str, torch.Tensor], dtypes: Mapping[str, torch.dtype]
) -> dict[str, torch.Tensor]:
    """``state_dict`` with the tensors named in ``dtypes`` cast back to those dtypes."""
    return {k: t.to(dtypes[k]) if k in dtypes else t for k, t in state_dict.items()}


def check_state_dict(model: torch.nn.Module, ckpt: Checkpoint) -> None:
    """Require the checkpoint to fit ``model`` exactly: same keys, same shapes, finite values.

    A lazy checkpoint is checked from its headers; its values are checked for
    finiteness by :func:`in_model_dtypes`, which reads them once.
    """
    expected = model.state_dict(keep_vars=True)
    missing = expected.keys() - ckpt.state_dict.keys()
    unexpected = ckpt.state_dict.keys() - expected.keys()
    if isinstance(ckpt.state_dict, LazyWeights):
        used = set(ckpt.state_dict.names.values())
        stored = ckpt.state_dict.directory.tensors
        unexpected = stored.keys() - used - computed_buffers(model).keys()
    if missing or unexpected:
        raise ShapeMismatch(
            f"{ckpt.path}: the checkpoint does not fit the model: "
            f"{_key_sets(('missing keys', missing), ('unexpected keys', unexpected))}; "
            "check --model and --model-kwargs"
        )
    shapes = {key: (_shape(t), stored_shape(ckpt, key)) for key, t in expected.items()}
    resized = _resized(shapes)
    for key, reference in expected.items():
        shape, floating = shapes[key][1], _dtype_of(ckpt, key).is_floating_point
        if shape != _shape(reference):
            other_width = (
                f", and {len(resized) - 1} more tensors differ: the checkpoint is another "
                f"width of this architecture; {FUSE_HINT}"
                if len(resized) >= 2
                else ""
            )
            raise ShapeMismatch(
                f"{_where(ckpt, key)}: tensor {key!r} has shape {shape} in the checkpoint "
                f"but {_shape(reference)} in the model{other_width}; check --model-kwargs"
            )
        if floating != reference.is_floating_point():
            raise ShapeMismatch(
                f"{_where(ckpt, key)}: tensor {key!r} {shape} has dtype {_dtype_of(ckpt, key)} "
                f"in the checkpoint but {reference.dtype} in the model; quantized or integer "
                "weights cannot be aligned, use a floating-point checkpoint"
            )
    if not isinstance(ckpt.state_dict, LazyWeights):
        _check_finite(ckpt)


def stored_shape(ckpt: Checkpoint, key: str) -> tuple[int, ...]:
    """The shape of ``key`` as stored (a directory's from its headers, without reading it)."""
    weights = ckpt.state_dict
    return weights.shape(key) if isinstance(weights, LazyWeights) else _shape(weights[key])


def _dtype_of(ckpt: Checkpoint, key: str) -> torch.dtype:
    weights = ckpt.state_dict
    return weights.stored_dtype(key) if isinstance(weights, LazyWeights) else weights[key].dtype


def _where(ckpt: Checkpoint, key: str) -> Path:
    """The file that holds ``key``: the checkpoint, or a directory's shard."""
    weights = ckpt.state_dict
    return weights.info(key).file if isinstance(weights, LazyWeights) else ckpt.path


FINITE_CHUNK = 1 << 22
"""Entries checked at once: ``isfinite`` makes an ``abs`` copy and two masks."""


def _check_finite(ckpt: Checkpoint, when: str = "", progress: ProgressFn | None = None) -> None:
    weights = ckpt.state_dict
    keys: Iterable[str] = weights.keys()
    dtype = None
    if isinstance(weights, LazyWeights):  # each stored tensor once, tied aliases skipped
        keys = {stored: key for key, stored in weights.names.items()}.values()
        weights, dtype = weights.in_dtype(None), weights.dtype  # converted chunk by chunk
    for key in _reporting_shards(ckpt, keys, progress):
        tensor = weights[key]
        if not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        flat = tensor.reshape(-1)
        bad = sum(
            count_nonfinite(flat[i : i + FINITE_CHUNK].to(dtype or flat.dtype))
            for i in range(0, len(flat), FINITE_CHUNK)
        )
        if bad:
            raise NotFinite(
                f"{_where(ckpt, key)}: tensor {key!r} {_shape(tensor)} has {bad} non-finite "
                f"values (NaN or inf) {when}out of {math.prod(_shape(tensor))}; "
                "the weights are unusable, use an earlier checkpoint"
            )


def _reporting_shards(
    ckpt: Checkpoint, keys: Iterable[str], progress: ProgressFn | None
) -> Iterator[str]:
    """``keys`` in order; ``progress(f"reading {dir}", done, shards)`` as each shard ends."""
    keys = list(keys)
    weights, directory = ckpt.state_dict, ckpt.directory
    if progress is None or directory is None or not isinstance(weights, LazyWeights):
        yield from keys
        return
    files = [weights.info(k).file for k in keys]
    last = {file: i for i, file in enumerate(files)}
    task, total, done = f"reading {ckpt.path.name}", len(last), 0
    progress(task, 0, total)
    for i, key in enumerate(keys):
        yield key
        if last[files[i]] == i:
            done += 1
            progress(task, done, total)


def check_same_architecture(a: Checkpoint, b: Checkpoint) -> None:
    """Require two checkpoints to have the same keys and the same shape for each key."""
    only_a = a.state_dict.keys() - b.state_dict.keys()
    only_b = b.state_dict.keys() - a.state_dict.keys()
    if only_a or only_b:
        raise ModeconnectError(
            f"{a.path} and {b.path} have different tensors: "
            f"{_key_sets((f'only in {a.path.name}', only_a), (f'only in {b.path.name}', only_b))}; "
            "both checkpoints must come from the same architecture"
        )
    shapes = check_same_width(a, b)
    for key, (shape_a, shape_b) in shapes.items():
        if shape_a != shape_b:
            raise ShapeMismatch(
                f"tensor {key!r} has shape {shape_a} in {a.path} but {shape_b} in {b.path}; "
                "both checkpoints must come from the same architecture"
            )


def check_same_width(
    a: Checkpoint, b: Checkpoint
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Refuse ``b`` when it is another width of ``a``'s architecture; the shapes of their
    common keys (sorted) otherwise.

    One line names the change (how many tensors, one of them with both shapes) and
    ``merge --width``, the command that takes such models.
    """
    common = sorted(a.state_dict.keys() & b.state_dict.keys())
    shapes = {key: (stored_shape(a, key), stored_shape(b, key)) for key in common}
    resized = _resized(shapes)
    if len(resized) >= 2:
        key, (shape_a, shape_b) = resized[0]
        raise ShapeMismatch(
            f"{b.path} differs from {a.path} in width ({len(resized)} tensors, e.g. {key!r} "
            f"is {shape_b} in B, {shape_a} in A); aligning, interpolating and averaging map "
            f"units one-to-one at one width: {FUSE_HINT}"
        )
    return shapes


FUSE_HINT = (
    "to fuse models of different widths use modeconnect merge A B --method otfusion|zip "
    "--width N (no equivalence guard applies to a fused model)"
)
"""What to do with checkpoints that are other widths of one architecture."""


def _resized(
    shapes: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]],
) -> list[tuple[str, tuple[tuple[int, ...], tuple[int, ...]]]]:
    """The tensors whose two shapes differ in size but not in rank, in ``shapes``' order.

    A change of width resizes every tensor of a permutation group together, so two or
    more of them mark another width of the architecture; a single one is a broken
    tensor, which the caller names on its own.
    """
    return [
        (k, pair)
        for k, pair in shapes.items()
        if pair[0] != pair[1] and len(pair[0]) == len(pair[1])
    ]
