"""Hugging Face checkpoint directories: read lazily, built without weights, written sharded.

A directory written by ``save_pretrained`` holds ``config.json`` and the weights as one
of, in this order of preference:

* ``model.safetensors.index.json`` naming shards (``model-00001-of-00002.safetensors``);
* ``model.safetensors``;
* ``pytorch_model.bin.index.json`` naming ``.bin`` shards, or ``pytorch_model.bin``
  (read with ``torch.load(..., weights_only=True, mmap=True)``: no code runs).

The architecture is ``config.json``'s first ``architectures`` entry, which must be a
model class of the installed ``transformers``; it is built from the config with that
library's own code (never ``trust_remote_code``; a config with ``auto_map`` or
``trust_remote_code`` is refused). The model is built with its parameters on the meta
device (:func:`build_empty`): no weights are allocated or initialised, only the small
buffers a model computes itself (rotary frequencies, position ids) are real.

Weights are read lazily (:class:`LazyWeights`): each read of ``weights[key]`` opens the
file, takes that one tensor from the safetensors memory map and closes the file again,
so nothing stays mapped or cached; what a reader keeps is all that it costs.

Outputs (:func:`directory_writer`) are directories that ``from_pretrained`` loads: the
config (and generation config) copied byte for byte, the tokenizer and preprocessor
files copied when present, and the weights as safetensors in the dtypes the input
stored, sharded as the input was (the same shard names holding the same tensors; a
single ``model.safetensors`` stays single; ``.bin`` inputs become safetensors shards of
at most :data:`MAX_SHARD_BYTES`), with an index when there is more than one shard.
Shards are written one at a time, and the same inputs give the same bytes.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import safetensors.torch
import torch
from safetensors import safe_open
from torch import Tensor, nn

from modeconnect.errors import ModeconnectError, UntrustedReference, load_error_reason
from modeconnect.io.jsonfile import read_json_file
from modeconnect.io.links import refuse_outside_links
from modeconnect.io.offline import offline
from modeconnect.io.references import (
    CODE_LOADING_KEYS,
    TRANSFORMERS,
    check_hub_free,
    check_plain_kwargs,
    local_config,
    transformers_model_class,
)
from modeconnect.io.safetensors_header import sort_safetensors_metadata
from modeconnect.progress import ProgressFn

__all__ = [
    "CONFIG",
    "COPIED_FILES",
    "MAX_SHARD_BYTES",
    "HFDirectory",
    "LazyWeights",
    "build_empty",
    "config_settings",
    "directory_writer",
    "is_hf_directory",
    "model_bytes",
    "load_tokenizer",
    "open_directory",
    "quiet_transformers",
]

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
COPIED_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
)
"""Files besides ``config.json`` that outputs take from their input directory, when present."""
MAX_SHARD_BYTES = 2 * 2**30
"""Shard size of outputs whose input was not safetensors (whose layout is kept)."""

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip
_SHARD = re.compile(r"^[\w.-]+$")


# --------------------------------------------------------------------------- the directory


@dataclass(frozen=True)
class TensorInfo:
    """Where one stored tensor lives, and its shape and dtype (read from the header)."""

    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=self.dtype).element_size()


@dataclass(frozen=True, eq=False)
class HFDirectory:
    """A ``save_pretrained`` directory: its config, architecture and stored tensors.

    ``tensors`` maps each stored key to its :class:`TensorInfo`, in file order;
    ``shards`` is the weight layout as stored (file name, keys), one entry for a single
    file; ``safetensors`` says whether the weights are safetensors.
    """

    path: Path
    config: dict[str, Any]
    architecture: str
    tensors: dict[str, TensorInfo]
    shards: tuple[tuple[str, tuple[str, ...]], ...]
    safetensors: bool

    @property
    def model_ref(self) -> str:
        return f"{TRANSFORMERS}:{self.architecture}"

    def layout(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """The shards an output takes: the input's own for safetensors, else by size."""
        if self.safetensors:
            return self.shards
        return _by_size(self.tensors, MAX_SHARD_BYTES)


def is_hf_directory(path: str | Path) -> bool:
    """Whether ``path`` is a directory (read as a Hugging Face checkpoint directory)."""
    return Path(path).is_dir()


def open_directory(path: str | Path) -> HFDirectory:
    """Read the config and the weight headers of a ``save_pretrained`` directory.

    Raises ``ModeconnectError`` (one line naming the file) for a link that leaves the
    directory (:mod:`modeconnect.io.links`), a missing or bad ``config.json``, a
    config asking for remote code, an architecture the installed ``transformers`` does not
    know, no weights, an index naming a missing shard or a
    tensor a shard lacks, and corrupt or truncated weight files.
    """
    path = Path(path)
    if path.is_dir():
        refuse_outside_links(path)
    config = read_config(path)
    architecture = architecture_name(path, config)
    if (path / SAFETENSORS_INDEX).is_file():
        return _indexed(path, config, architecture, SAFETENSORS_INDEX, safetensors=True)
    if (path / SAFETENSORS).is_file():
        return _single(path, config, architecture, SAFETENSORS, safetensors=True)
    if (path / TORCH_INDEX).is_file():
        return _indexed(path, config, architecture, TORCH_INDEX, safetensors=False)
    if (path / TORCH_BIN).is_file():
        return _single(path, config, architecture, TORCH_BIN, safetensors=False)
    raise ModeconnectError(
        f"{path}: holds {CONFIG} but no weights ({SAFETENSORS}, {SAFETENSORS_INDEX}, "
        f"{TORCH_BIN} or {TORCH_INDEX}); save the model with model.save_pretrained(directory)"
    )


def read_config(path: Path) -> dict[str, Any]:
    """``config.json`` as a dict of plain JSON values, without keys that load code or fetch.

    Keys that would make transformers download something (a ``backbone`` repository,
    a ``quantization_config``, ...: :func:`~modeconnect.io.references.check_hub_free`)
    are refused here, before any weight is read.
    """
    file = path / CONFIG
    if not file.is_file():
        raise ModeconnectError(
            f"{path}: is not a file, and not a Hugging Face checkpoint directory (it has no "
            f"{CONFIG}); pass a .pt/.safetensors file or a directory written by save_pretrained"
        )
    config = _read_json(file, "re-create it with save_pretrained")
    if not isinstance(config, dict):
        raise ModeconnectError(
            f"{file}: holds a {type(config).__name__}, not a JSON object; re-create it with "
            "save_pretrained"
        )
    _refuse_code(file, config)
    check_plain_kwargs({"config": config}, file)
    check_hub_free(config, file)
    return config


def _refuse_code(file: Path, config: Mapping[str, Any]) -> None:
    """A config that names its own code (``auto_map``, ``trust_remote_code``) is refused."""
    found = sorted(k for k in config if k in CODE_LOADING_KEYS)
    if found:
        raise UntrustedReference(
            f"{file}: {found[0]!r} asks for the model's own Python code (remote code), which "
            "modeconnect never runs from a checkpoint; use a model class of the installed "
            "transformers, or load the model yourself and save its state dict"
        )


def architecture_name(path: Path, config: Mapping[str, Any]) -> str:
    """The first ``architectures`` entry, if it is a model class of the installed transformers.

    It must be a concrete model class: an abstract base (``PreTrainedModel``,
    ``LlamaPreTrainedModel``) builds no model and is refused.
    """
    names = config.get("architectures")
    if not isinstance(names, list) or not names or not isinstance(names[0], str):
        raise ModeconnectError(
            f"{path / CONFIG}: has no 'architectures' list naming the model class (found "
            f'{names!r}); add e.g. "architectures": ["LlamaForCausalLM"]'
        )
    name = names[0]
    import transformers

    cls = getattr(transformers, name, None) if name.isidentifier() and name[0] != "_" else None
    if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
        if transformers_model_class(name) is None:
            raise ModeconnectError(
                f"{path / CONFIG}: architectures names {name!r}, an abstract base class of "
                "transformers that builds no model; name the model class itself (e.g. "
                "'LlamaForCausalLM')"
            )
    else:
        raise ModeconnectError(
            f"{path / CONFIG}: architectures names {name!r}, which is not a model class of the "
            f"installed transformers {transformers.__version__}; upgrade transformers, or fix "
            "the name (e.g. 'LlamaForCausalLM')"
        )
    return name


# --------------------------------------------------------------------------- weight files


def _single(
    path: Path, config: dict[str, Any], arch: str, name: str, *, safetensors: bool
) -> HFDirectory:
    file = path / name
    tensors = _read_header(file) if safetensors else _read_torch_header(file)
    return HFDirectory(path, config, arch, tensors, ((name, tuple(tensors)),), safetensors)


def _indexed(
    path: Path, config: dict[str, Any], arch: str, index_name: str, *, safetensors: bool
) -> HFDirectory:
    index = path / index_name
    weight_map = _read_index(index)
    by_shard: dict[str, list[str]] = {}
    for key, shard in weight_map.items():
        by_shard.setdefault(shard, []).append(key)
    tensors: dict[str, TensorInfo] = {}
    for shard, keys in by_shard.items():
        file = path / shard
        if not file.is_file():
            more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
            raise ModeconnectError(
                f"{index}: names the shard {shard!r} (for {keys[0]!r}{more}), which does not "
                "exist; download the missing shard or re-save the model"
            )
        stored = _read_header(file) if safetensors else _read_torch_header(file)
        for key in keys:
            if key not in stored:
                raise ModeconnectError(
                    f"{file}: lacks the tensor {key!r} that {index.name} places in it; the "
                    "shard is incomplete or the index is stale, re-download or re-save the model"
                )
            tensors[key] = stored[key]
    shards = tuple((shard, tuple(keys)) for shard, keys in by_shard.items())
    return HFDirectory(path, config, arch, tensors, shards, safetensors)


def _read_json(file: Path, fix: str) -> Any:
    """The JSON in ``file`` within bounds (depth, integer digits, size), else one line."""
    return read_json_file(file, fix)


def _read_index(index: Path) -> dict[str, str]:
    content = _read_json(index, "re-download or re-save the model")
    weight_map = content.get("weight_map") if isinstance(content, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModeconnectError(
            f"{index}: has no 'weight_map' object (tensor name -> shard file); re-download or "
            "re-save the model"
        )
    for key, shard in weight_map.items():
        if not isinstance(shard, str) or not _SHARD.match(shard) or shard in (".", ".."):
            raise ModeconnectError(
                f"{index}: maps {key!r} to {shard!r}, which is not a file name in the "
                "directory; shards must be plain file names beside the index"
            )
    return dict(weight_map)


def _read_header(file: Path) -> dict[str, TensorInfo]:
    """Names, shapes and dtypes of a safetensors file, from its header (no data read)."""
    try:
        with safe_open(str(file), framework="pt") as handle:
            infos = {}
            for key in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                part = handle.get_slice(key)
                infos[key] = TensorInfo(file, tuple(part.get_shape()), _dtype(file, key, part))
            return infos
    except ModeconnectError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        raise _corrupt(file, exc) from exc


def _dtype(file: Path, key: str, part: Any) -> torch.dtype:
    name = str(part.get_dtype())
    if name not in _DTYPES:
        raise ModeconnectError(
            f"{file}: tensor {key!r} has dtype {name}, which modeconnect cannot align; "
            "use a floating-point checkpoint"
        )
    return _DTYPES[name]


def _read_torch_header(file: Path) -> dict[str, TensorInfo]:
    state = _torch_load(file)
    return {k: TensorInfo(file, tuple(t.shape), t.dtype) for k, t in state.items()}


def _torch_load(file: Path) -> dict[str, Tensor]:
    """A ``.bin`` state dict, memory-mapped, with ``weights_only=True`` (pickled code refused)."""
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except MemoryError:
        raise
    except pickle.UnpicklingError as exc:
        raise ModeconnectError(
            f"{file}: contains pickled code or is not a state dict ({load_error_reason(exc)}): "
            "refused; modeconnect never runs code from a checkpoint; re-save it as safetensors"
        ) from exc
    except Exception as exc:
        raise _corrupt(file, exc) from exc
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise ModeconnectError(
            f"{file}: is not a state dict (str -> Tensor); re-save the model with save_pretrained"
        )
    return obj


def _corrupt(file: Path, exc: BaseException) -> ModeconnectError:
    return ModeconnectError(
        f"{file}: cannot read the weights, the file is corrupt or truncated "
        f"({type(exc).__name__}: {load_error_reason(exc)}); re-download or re-save the model"
    )


def _by_size(
    tensors: Mapping[str, TensorInfo], limit: int
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Greedy shards of at most ``limit`` bytes (a larger tensor gets one of its own)."""
    groups: list[list[str]] = [[]]
    size = 0
    for key, info in tensors.items():
        if groups[-1] and size + info.nbytes > limit:
            groups.append([])
            size = 0
        groups[-1].append(key)
        size += info.nbytes
    if len(groups) == 1:
        return ((SAFETENSORS, tuple(groups[0])),)
    n = len(groups)
    names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    return tuple((name, tuple(g)) for name, g in zip(names, groups))


# --------------------------------------------------------------------------- lazy weights


class LazyWeights(Mapping[str, Tensor]):
    """A directory's tensors, read from disk on every access and never kept.

    Keys are ``names``' keys (a model's state-dict names, tied aliases included); each
    maps to the stored tensor it reads. Floating tensors come in ``dtype`` when given
    (``None``: as stored). ``shape`` and ``stored_dtype`` answer from the headers.
    """

    def __init__(
        self,
        directory: HFDirectory,
        names: Mapping[str, str] | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.directory = directory
        self.names = dict(names) if names is not None else {k: k for k in directory.tensors}
        self.dtype = dtype

    def __getitem__(self, key: str) -> Tensor:
        stored = self.names[key]
        info = self.directory.tensors[stored]
        tensor = _read_tensor(info, stored)
        if self.dtype is not None and tensor.is_floating_point() and tensor.dtype != self.dtype:
            tensor = tensor.to(self.dtype)
        return tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, key: object) -> bool:
        return key in self.names

    def __repr__(self) -> str:
        return f"LazyWeights({self.directory.path}, {len(self)} tensors)"

    def info(self, key: str) -> TensorInfo:
        return self.directory.tensors[self.names[key]]

    def shape(self, key: str) -> tuple[int, ...]:
        return self.info(key).shape

    def stored_dtype(self, key: str) -> torch.dtype:
        return self.info(key).dtype

    def with_names(self, names: Mapping[str, str]) -> LazyWeights:
        return LazyWeights(self.directory, names, self.dtype)

    def in_dtype(self, dtype: torch.dtype | None) -> LazyWeights:
        return LazyWeights(self.directory, self.names, dtype)


def _read_tensor(info: TensorInfo, key: str) -> Tensor:
    """One tensor from its file; the file is closed again (the tensor may map its pages)."""
    try:
        if info.file.suffix == ".safetensors":
            with safe_open(str(info.file), framework="pt") as handle:
                return handle.get_tensor(key)
        return _torch_load(info.file)[key]
    except ModeconnectError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        raise ModeconnectError(
            f"{info.file}: cannot read tensor {key!r} {info.shape} ({type(exc).__name__}: "
            f"{_one_line(exc)[:200]}); the file changed or is corrupt, re-download it"
        ) from exc


# --------------------------------------------------------------------------- the model


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Create every ``nn.Parameter`` on the meta device; buffers stay real.

    Parameters take no memory and no initialisation time; buffers are small, and some
    are computed in ``__init__`` and never stored (rotary frequencies, position ids):
    they must be real for the model to run with a state dict.
    """
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign, assignment]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def build_empty(directory: HFDirectory) -> nn.Module:
    """The directory's architecture built from its config, parameters on the meta device.

    The model is for analysis (its spec) and for running with state dicts
    (:func:`modeconnect.forward.run`): it holds no weights. It is built offline
    (:func:`~modeconnect.io.offline.offline`), from a config that asks for no download
    (:func:`~modeconnect.io.references.check_hub_free`), with the attention
    modeconnect chooses: ``attn_implementation`` and the other keys of
    :data:`~modeconnect.io.references.IGNORED_CONFIG_KEYS` are ignored, so
    transformers takes its local default (``"sdpa"`` where the model supports it, else
    ``"eager"``), never a kernel from the Hub. ``use_cache`` is switched off on the
    built model (the stored config is untouched).
    """
    import transformers

    cls = getattr(transformers, directory.architecture)
    where = directory.path / CONFIG
    check_hub_free(directory.config, where)
    with offline():
        return _build_on_meta(cls, local_config(directory.config), directory.architecture, where)


BOOKKEEPING = frozenset({
    "_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures",
    "use_cache", "output_attentions", "output_hidden_states", "return_dict", "torchscript",
    "id2label", "label2id", "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id",
    "_commit_hash", "initializer_range", "initializer_factor", "gradient_checkpointing",
})  # fmt: skip
"""Config entries that leave the evaluated forward pass as it is (:func:`config_settings`):
names, versions, the stored dtype, what the model returns, the cache, special token ids
(the labels' count shows in the head's shape), initialisation. Every entry whose name
holds ``drop`` (dropout rates, drop-path and layer-drop) is left out as well: models are
evaluated in eval mode."""


def config_settings(directory: HFDirectory) -> dict[str, Any]:
    """The directory's config as transformers reads it (its config class's ``to_dict()``:
    one spelling whatever version wrote it, defaults filled in), without
    :data:`BOOKKEEPING` at any depth and the keys modeconnect ignores: what the evaluated
    forward pass depends on.

    Two directories whose settings differ compute different functions from the same
    weights (another activation, norm epsilon, rotary base).
    """
    import transformers

    cls = getattr(transformers, directory.architecture)
    config = _config(cls, local_config(directory.config), directory.path / CONFIG)
    return cast(dict[str, Any], _forward_only(config.to_dict()))


def _forward_only(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _forward_only(v) for k, v in value.items()
                if k not in BOOKKEEPING and "drop" not in str(k)}  # fmt: skip
    if isinstance(value, list):
        return [_forward_only(v) for v in value]
    return value


def _config(cls: Any, settings: dict[str, Any], where: Path) -> Any:
    try:
        return cls.config_class.from_dict(settings)
    except Exception as exc:
        raise ModeconnectError(
            f"{where}: does not fit {cls.config_class.__name__} ({type(exc).__name__}: "
            f"{_one_line(exc)[:200]}); check the config"
        ) from exc


def _build_on_meta(cls: Any, settings: dict[str, Any], architecture: str, where: Path) -> nn.Module:
    """``cls`` built from the config ``settings`` with its parameters on the meta device."""
    config = _config(cls, settings, where)
    if hasattr(config, "use_cache"):
        config.use_cache = False
    try:
        with _parameters_on_meta(), quiet_transformers():
            model = cls(config)
    except Exception as exc:
        raise ModeconnectError(
            f"{where}: building {architecture} from it failed ({type(exc).__name__}: "
            f"{_one_line(exc)[:200]}); check the config"
        ) from exc
    return model.eval()


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers warns about config values on stderr; a command prints one result."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def model_names(model: nn.Module, directory: HFDirectory) -> dict[str, str]:
    """State-dict name -> stored name, for every name of ``model.state_dict()``.

    A tied parameter (an output head sharing the input embedding) goes by several
    names and ``save_pretrained`` stores one of them: the others read that one.
    Names that are neither stored nor tied to a stored name are left out (the caller
    reports them as missing).
    """
    tensors: dict[int, list[str]] = {}
    for name, t in [*model.named_parameters(remove_duplicate=False),
                    *model.named_buffers(remove_duplicate=False)]:  # fmt: skip
        tensors.setdefault(id(t), []).append(name)
    names: dict[str, str] = {}
    renamed: dict[str, str] | None = None
    for key in model.state_dict(keep_vars=True):
        group = next((g for g in tensors.values() if key in g), [key])
        stored = next((n for n in [key, *group] if n in directory.tensors), None)
        if stored is None:
            renamed = _renamed(model, directory) if renamed is None else renamed
            stored = next((renamed[n] for n in [key, *group] if n in renamed), None)
        if stored is not None:
            names[key] = stored
    return names


def _renamed(model: nn.Module, directory: HFDirectory) -> dict[str, str]:
    """Model name -> stored name for the stored names that ``transformers`` renames when
    it loads them (its own table for the model's class, renames only: ViT's legacy
    ``encoder.layer.0.attention.attention.query`` is ``layers.0.attention.q_proj``); empty
    where this ``transformers`` has no such table. ``save_pretrained`` writes the stored
    names back, so the output keeps them."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key
    except ImportError:
        return {}
    mapping = get_model_conversion_mapping(model)  # type: ignore[arg-type]
    renamings = [t for t in mapping if isinstance(t, WeightRenaming)]
    if not renamings:
        return {}
    out: dict[str, str] = {}
    for stored in directory.tensors:
        out.setdefault(rename_source_key(stored, renamings, [])[0], stored)
    return out


def model_bytes(state_dict: Mapping[str, Tensor]) -> int | None:
    """The bytes a lazy checkpoint stores (``S``), from its headers; ``None`` for a dict."""
    if not isinstance(state_dict, LazyWeights):
        return None
    return sum(info.nbytes for info in state_dict.directory.tensors.values())


# --------------------------------------------------------------------------- tokenizer


def load_tokenizer(path: Path) -> Any:
    """The directory's own tokenizer (local files only, offline, never remote code)."""
    from transformers import AutoTokenizer

    try:
        with offline(), quiet_transformers():
            return AutoTokenizer.from_pretrained(
                str(path), local_files_only=True, trust_remote_code=False
            )
    except Exception as exc:
        raise ModeconnectError(
            f"{path}: cannot load its tokenizer ({type(exc).__name__}: {_one_line(exc)[:200]}); "
            "text data is tokenized with the checkpoint's own tokenizer files "
            "(tokenizer.json, tokenizer_config.json), or pass token ids (.pt/.npy)"
        ) from exc


# --------------------------------------------------------------------------- writing


def directory_writer(
    tensors: Mapping[str, Tensor],
    like: HFDirectory,
    *,
    dtypes: Mapping[str, torch.dtype] | None = None,
    metadata: Mapping[str, str] | None = None,
    progress: ProgressFn | None = None,
    task: str = "writing shards",
    names: Mapping[str, str] | None = None,
) -> Callable[[Path], None]:
    """The function that writes ``tensors`` as a ``save_pretrained`` directory into a folder.

    Writes the stored keys of ``like`` (tied aliases stay implicit, as
    ``save_pretrained`` leaves them), each in the dtype ``like`` stored it (``dtypes``
    overrides), sharded as :meth:`HFDirectory.layout`, one shard in memory at a time;
    copies ``config.json`` and :data:`COPIED_FILES` from ``like``. ``metadata`` goes
    into every shard's header beside ``format: pt``, keys sorted (same bytes each run).
    ``names`` (state-dict name -> stored name, :func:`model_names`) finds the tensor of a
    stored name that the model calls otherwise.
    """
    by_stored: dict[str, str] = {}
    for key, name in (names or {}).items():
        if key in tensors:
            by_stored.setdefault(name, key)
    # stored name -> the key of ``tensors`` that holds it; each tensor is read only when its
    # shard is written (a lazy view computes it then), so one shard is in memory at a time
    source = {k: k if k in tensors else by_stored[k]
              for k in like.tensors if k in tensors or k in by_stored}  # fmt: skip
    missing = sorted(k for k in like.tensors if k not in source)
    if missing:
        raise ModeconnectError(
            f"{like.path}: the tensors to write lack {missing[:3]} (of {len(missing)}); "
            "they must come from the same architecture"
        )
    layout = like.layout()
    header = {**dict(metadata or {}), "format": "pt"}
    stored = {k: (dtypes or {}).get(k, info.dtype) for k, info in like.tensors.items()}

    def fill(folder: Path) -> None:
        for name in (CONFIG, *COPIED_FILES):
            if (like.path / name).is_file():
                shutil.copyfile(like.path / name, folder / name)
        weight_map: dict[str, str] = {}
        total = 0
        for i, (shard, keys) in enumerate(layout):
            part = {k: _for_saving(tensors[source[k]], stored[k]) for k in keys}
            total += sum(t.numel() * t.element_size() for t in part.values())
            safetensors.torch.save_file(part, str(folder / shard), header)
            _sort_metadata(folder / shard)
            del part
            weight_map.update(dict.fromkeys(keys, shard))
            if progress is not None:
                progress(task, i + 1, len(layout))
        if len(layout) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            text = json.dumps(index, indent=2, sort_keys=True) + "\n"
            (folder / SAFETENSORS_INDEX).write_text(text, encoding="utf-8")

    return fill


def _for_saving(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    """Contiguous, on the CPU, in ``dtype``, owning its storage (safetensors refuses sharing)."""
    out = tensor.detach().to(device="cpu", dtype=dtype if tensor.is_floating_point() else None)
    out = out.contiguous()
    if out.untyped_storage().nbytes() != out.numel() * out.element_size():
        out = out.clone()
    return out


def _sort_metadata(path: Path) -> None:
    sort_safetensors_metadata(path)


def _one_line(exc: object) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
