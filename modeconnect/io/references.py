"""Model references: the code that builds an architecture, and whether it may run.

A reference is ``"package.module:callable"`` or ``"path/to/file.py:callable"``; the
callable, called with keyword arguments, returns the ``torch.nn.Module``.
``"transformers:ClassName"`` with keyword arguments ``{"config": {...}}`` builds a
Hugging Face architecture from its configuration (never with remote code).

Who chose a reference decides whether it is followed (see SECURITY.md):

* one the user typed (``--model``, or ``model_ref=`` in the library) runs as given;
* one read from a file (a checkpoint's ``model`` entry, safetensors metadata) is
  data from a stranger. It is followed only when it names a known, side-effect-free
  constructor (:data:`BUILTIN`, a concrete ``transformers`` model class), a model
  class of a module the user trusts by name (``Trust.modules``, ``--trust-module``),
  or when the user trusts every reference (``Trust.any_reference``,
  ``--trust-model-ref``). Trusting a module trusts its model *constructors*, never its
  loaders: the reference must name a ``torch.nn.Module`` subclass defined in that
  module's tree, not a function (``timm.create_model``, ``torch.hub.load``) nor a
  dotted attribute (``Class.from_pretrained``). modeconnect's own internals are never
  followed from a file, and ``transformers`` only as ``transformers:ClassName`` built
  from a config, whatever is trusted. Keyword arguments from a file must be plain JSON
  values, and none of them may switch on code loading (:data:`CODE_LOADING_KEYS`).

Nothing is downloaded (:mod:`modeconnect.io.offline`). Every model is built under
:func:`~modeconnect.io.offline.offline`, and a ``transformers`` config that would
make the library fetch something is refused (:func:`check_hub_free`), at any depth:

* ``backbone`` naming a model (``"someorg/somerepo"``, ``"resnet50"``): a backbone
  config does ``hf_api().repo_exists(backbone)`` and downloads its config
  (``backbone_utils.consolidate_backbone_kwargs_to_config``; transformers 4 loaded
  its weights in ``load_backbone``). Only inside a ``timm_backbone`` config, where it
  is the timm architecture, may it name one, and then only a plain name;
* a timm architecture with ``/`` or ``:`` (``"hf-hub:org/repo"``, ``"local-dir:..."``:
  ``timm.create_model`` fetches or reads its pretrained config), as a
  ``timm_backbone``'s ``backbone`` or a ``timm_wrapper``'s ``architecture``, and the
  loader arguments of a ``timm_wrapper``'s ``model_args`` (:data:`TIMM_LOADER_ARGS`);
* ``quantization_config``: a quantized checkpoint cannot be aligned, and quantizers
  fetch their kernels from the Hub (``integrations/hub_kernels.lazy_load_kernel``).

Some keys are ignored instead (:data:`IGNORED_CONFIG_KEYS`, removed from the copy the
model is built from; the file is untouched): ``attn_implementation`` (with
``flash_attention_2`` and ``kernels`` installed, or a Hub kernel name,
``PreTrainedModel.__init__`` fetches a kernel through ``hub_kernels.get_kernel``),
``experts_implementation`` (``deepgemm`` and ``sonicmoe`` fetch kernels on the first
forward pass) and the informational ``_name_or_path``. The model then runs with the
attention modeconnect chooses: transformers' local default, ``"sdpa"`` where the model
supports it and ``"eager"`` otherwise. ``use_pretrained_backbone`` is set to false: the
weights come from the checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from modeconnect.errors import ModeconnectError, UntrustedReference
from modeconnect.io.jsonfile import check_plain_value
from modeconnect.io.offline import offline

__all__ = [
    "BUILTIN",
    "CODE_LOADING_KEYS",
    "IGNORED_CONFIG_KEYS",
    "NO_TRUST",
    "TIMM_LOADER_ARGS",
    "Architecture",
    "Trust",
    "build_model",
    "check_file_reference",
    "check_hub_free",
    "import_callable",
    "local_config",
    "reference_file",
    "split_ref",
    "transformers_model_class",
]

BUILTIN = frozenset(f"modeconnect.models:{name}" for name in ("mlp", "MLP", "conv_net"))
"""Constructors a file may name without any opt-in: modeconnect's own example models."""

TRANSFORMERS = "transformers"

CODE_LOADING_KEYS = frozenset({"trust_remote_code", "auto_map", "code_revision"})
"""Keyword-argument names (at any depth) that make a constructor load code; refused from files."""

OWN_PACKAGES = ("modeconnect", "modeconnect_cli")
"""modeconnect's packages: a file may name only :data:`BUILTIN` from them, whatever the trust."""

IGNORED_CONFIG_KEYS = frozenset({
    "attn_implementation", "_attn_implementation", "_attn_implementation_internal",
    "_attn_implementation_autoset", "experts_implementation", "_experts_implementation",
    "_experts_implementation_internal", "_name_or_path", "name_or_path",
})  # fmt: skip
"""transformers config keys (at any depth) left out of the config a model is built from."""

TIMM_LOADER_ARGS = frozenset(
    {"pretrained", "checkpoint_path", "pretrained_cfg_overlay", "cache_dir"}
)
"""``timm.create_model`` arguments that load or fetch weights; refused in ``model_args``."""

_TIMM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TIMM_KEYS = {"timm_backbone": "backbone", "timm_wrapper": "architecture"}
"""Where a timm config names its timm architecture."""

_REF_HELP = "use 'package.module:callable' or 'path/to/file.py:callable'"


@dataclass(frozen=True)
class Trust:
    """What the user allows references read from files to run.

    ``modules``: top-level module names (``"timm"``) whose constructors a file may name.
    ``any_reference``: follow whatever a file names (the ``--trust-model-ref`` flag).
    """

    modules: tuple[str, ...] = ()
    any_reference: bool = False


NO_TRUST = Trust()
"""The default: only :data:`BUILTIN` and ``transformers`` architectures may be named by files."""


@dataclass(frozen=True, eq=False)
class Architecture:
    """A built model and the reference and keyword arguments that built it."""

    model: Any
    ref: str
    kwargs: Mapping[str, Any]


# --------------------------------------------------------------------------- parsing


def split_ref(ref: object) -> tuple[str, str]:
    """``(target, attribute)``, split at the last colon so that drive letters stay in the path."""
    if not isinstance(ref, str) or ":" not in ref:
        raise ModeconnectError(f"model reference {ref!r}: has no ':callable' part; {_REF_HELP}")
    target, _, attr = ref.rpartition(":")
    if not target or not all(part.isidentifier() for part in attr.split(".")):
        raise ModeconnectError(f"model reference {ref!r}: is malformed; {_REF_HELP}")
    return target, attr


def _is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def reference_file(ref: str | None) -> Path | None:
    """The Python file a reference names, if it names one (an input that outputs must not hit)."""
    if ref is None or ":" not in ref:
        return None
    target = ref.rpartition(":")[0]
    return Path(target) if target and _is_file_target(target) else None


# --------------------------------------------------------------------------- trust


def check_file_reference(
    ref: str, kwargs: Mapping[str, Any], source: str | Path, trust: Trust
) -> tuple[str, ...]:
    """Refuse a reference read from ``source`` unless it is known or trusted (module docstring).

    ``kwargs`` are the keyword arguments the file gives it: they must be plain JSON
    values without any :data:`CODE_LOADING_KEYS`, whatever the trust, and a
    ``transformers`` config must not ask for downloads (:func:`check_hub_free`).
    A reference vouched for only by a trusted module is imported here (the user
    trusts that module) and must name a model class defined in it. Returns the
    modules the constructor must come from in that case (pass them to
    :func:`build_model`), else ``()``.
    """
    check_plain_kwargs(kwargs, source)
    target, attr = split_ref(ref)
    if trust.any_reference or ref in BUILTIN:
        return ()
    top = target.split(".")[0]
    if target == TRANSFORMERS and "." not in attr and _transformers_subclass(attr):
        _require_concrete(attr, source, ref)
        config = kwargs.get("config")
        if isinstance(config, Mapping):
            check_hub_free(config, source, "model_kwargs.config")
        return ()
    if top in OWN_PACKAGES or top == TRANSFORMERS:
        raise _never_followed(ref, top, source)
    if not _is_file_target(target) and "." not in attr and _trusted_module(target, trust):
        with offline():
            problem = _not_a_trusted_class(import_callable(ref), trust.modules)
        if problem is not None:
            raise UntrustedReference(
                f"{source}: the model reference {ref!r} {problem}; "
                f"if you trust this file, pass --model {ref} (or --trust-model-ref)"
            )
        return trust.modules
    how = f"--trust-module {top} or " if not _is_file_target(target) else ""
    raise UntrustedReference(
        f"{source}: names the model reference {ref!r}, which is not a known architecture "
        "constructor; a reference from a file could run any code, so it is refused; "
        f"if you trust this file, pass --model {ref} (or {how}--trust-model-ref)"
    )


def _never_followed(ref: str, top: str, source: str | Path) -> UntrustedReference:
    """modeconnect's internals and transformers' non-model names, whatever the trust."""
    if top == TRANSFORMERS:
        why = (
            "transformers is followed only as 'transformers:ClassName' with kwargs "
            '{"config": {...}}, a model class built from its config'
        )
    else:
        why = (
            "modeconnect's own functions are never followed from a file, only its example "
            f"models {sorted(BUILTIN)}"
        )
    return UntrustedReference(
        f"{source}: names the model reference {ref!r}, which is not a known architecture "
        f"constructor; {why}, whatever --trust-module says; "
        f"if you trust this file, pass --model {ref} (or --trust-model-ref)"
    )


def _trusted_module(target: str, trust: Trust) -> bool:
    return any(target == m or target.startswith(m + ".") for m in trust.modules)


def _not_a_trusted_class(factory: Any, modules: tuple[str, ...]) -> str | None:
    """Why ``factory`` is not a model class of ``modules``, or ``None`` if it is one."""
    import torch

    origin = str(getattr(factory, "__module__", ""))
    if not _trusted_module(origin, Trust(modules)):
        return (
            f"resolves to {_describe(factory)} from module {origin!r}, outside the trusted "
            f"modules {list(modules)}"
        )
    if not (isinstance(factory, type) and issubclass(factory, torch.nn.Module)):
        return (
            f"names {_describe(factory)}, not a torch.nn.Module class; trusting a module lets a "
            "file name its model classes, never its functions (a function can load or download "
            "anything)"
        )
    return None


def _describe(obj: object) -> str:
    kind = "the class" if isinstance(obj, type) else f"a {type(obj).__name__}"
    return f"{kind} {getattr(obj, '__qualname__', repr(obj))!r}"


def transformers_model_class(name: str) -> Any | None:
    """The concrete model class ``transformers.<name>``, or ``None``.

    Concrete: a ``PreTrainedModel`` subclass of the installed library, with a config
    class of its own. Abstract bases (``PreTrainedModel``, ``LlamaPreTrainedModel``)
    build no model and are not; neither are ``Auto`` classes, pipelines or functions.
    """
    cls = _transformers_subclass(name)
    if cls is None or _abstract(cls):
        return None
    return cls


def _transformers_subclass(name: str) -> Any | None:
    """``transformers.<name>`` if it is a ``PreTrainedModel`` subclass of the library."""
    if not name.isidentifier() or name.startswith("_"):
        return None
    try:
        import transformers
    except ImportError:
        return None
    try:
        cls = getattr(transformers, name, None)
    except Exception:  # a lazy module whose optional dependency is missing
        return None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        return None
    return cls if str(cls.__module__).startswith(TRANSFORMERS + ".") else None


def _abstract(cls: Any) -> bool:
    import inspect

    from transformers import PretrainedConfig

    config_class = getattr(cls, "config_class", None)
    return (
        cls.__name__.endswith(("PreTrainedModel", "PretrainedModel"))
        or inspect.isabstract(cls)
        or not isinstance(config_class, type)
        or not issubclass(config_class, PretrainedConfig)
        or config_class is PretrainedConfig
    )


def _require_concrete(name: str, source: str | Path, ref: str) -> None:
    if transformers_model_class(name) is None:
        raise UntrustedReference(
            f"{source}: names the model reference {ref!r}, an abstract base class of "
            "transformers that builds no model; name the model class itself "
            "(e.g. 'transformers:LlamaForCausalLM')"
        )


# --------------------------------------------------------------------------- configs


def check_hub_free(config: Mapping[str, Any], source: str | Path, where: str = "") -> None:
    """Refuse a transformers config that would make the library fetch something.

    Walks the config at any depth (sub-configs, lists) and refuses, with one line
    naming ``source`` and the key's path (after ``where``), a ``backbone`` naming a
    model outside a ``timm_backbone`` config, a timm architecture that is a
    repository or a path, timm's loader arguments, and ``quantization_config``
    (module docstring, with the transformers code that would fetch).
    """
    stack: list[tuple[str, Any]] = [(where, config)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, Mapping):
            _check_level(value, path, source)
            items = [(f"{path}.{k}" if path else str(k), v) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            items = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
        else:
            continue
        stack.extend((p, v) for p, v in items if isinstance(v, (Mapping, list, tuple)))


def _check_level(level: Mapping[str, Any], path: str, source: str | Path) -> None:
    def key(name: str) -> str:
        return f"{path}.{name}" if path else name

    model_type = level.get("model_type")
    backbone = level.get("backbone")
    if backbone is not None and model_type != "timm_backbone":
        raise UntrustedReference(
            f"{source}: {key('backbone')} names the backbone {_short(backbone)}, which "
            "transformers would look up on the Hugging Face Hub while building the model; "
            "modeconnect never downloads, so this config is refused; give the backbone's own "
            "config as 'backbone_config' (save_pretrained writes one), or load the model "
            "yourself and save it"
        )
    timm_key = _TIMM_KEYS.get(str(model_type))
    timm_name = level.get(timm_key) if timm_key else None
    if timm_name is not None and not (isinstance(timm_name, str) and _TIMM_NAME.match(timm_name)):
        raise UntrustedReference(
            f"{source}: {key(str(timm_key))} names the timm model {_short(timm_name)}, a "
            "repository or path that timm would fetch or read; modeconnect never downloads, "
            "so this config is refused; name a timm architecture (e.g. 'resnet50')"
        )
    model_args = level.get("model_args")
    if model_type == "timm_wrapper" and isinstance(model_args, Mapping):
        loaders = sorted(TIMM_LOADER_ARGS & set(model_args))
        if loaders:
            raise UntrustedReference(
                f"{source}: {key('model_args')}.{loaders[0]} makes timm load or download "
                "weights; modeconnect reads the weights from the checkpoint only, so this "
                "config is refused; remove it"
            )
    if level.get("quantization_config") is not None:
        raise UntrustedReference(
            f"{source}: {key('quantization_config')} marks a quantized checkpoint, which "
            "modeconnect cannot align (and whose quantizer fetches kernels from the Hub); "
            "refused; use the unquantized checkpoint"
        )


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def local_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` to build from: :data:`IGNORED_CONFIG_KEYS` left out at any depth.

    ``use_pretrained_backbone`` becomes ``False`` wherever it is set (the weights come
    from the checkpoint). Lists and sub-configs are copied, so ``config`` is untouched.
    """
    root: dict[str, Any] = {}
    stack: list[tuple[Any, Any]] = [(config, root)]
    while stack:
        source, target = stack.pop()
        pairs = source.items() if isinstance(source, Mapping) else enumerate(source)
        for key, value in pairs:
            if isinstance(source, Mapping) and key in IGNORED_CONFIG_KEYS:
                continue
            if isinstance(value, Mapping):
                copy: Any = {}
                stack.append((value, copy))
            elif isinstance(value, (list, tuple)):
                copy = [None] * len(value)
                stack.append((value, copy))
            else:
                copy = value
            target[key] = copy
        if isinstance(source, Mapping) and "use_pretrained_backbone" in source:
            target["use_pretrained_backbone"] = False
    return root


def check_plain_kwargs(kwargs: Mapping[str, Any], source: str | Path) -> None:
    """Require JSON values (no tensors, no objects) within the bounds of JSON read from files
    (:func:`~modeconnect.io.jsonfile.check_plain_value`: depth, integer digits, size, no
    container holding itself), and no key that switches on code loading."""
    check_plain_value(kwargs, f"{source}: model_kwargs", "re-save it with plain JSON values")
    stack: list[tuple[str, Any]] = [("model_kwargs", kwargs)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ModeconnectError(
                        f"{source}: {where} has a key of type {type(key).__name__}; "
                        "keyword arguments must be plain JSON"
                    )
                if key in CODE_LOADING_KEYS:
                    raise UntrustedReference(
                        f"{source}: {where}.{key} would let the model constructor load code; "
                        "refused for keyword arguments read from a file; "
                        "pass --model-kwargs yourself if you trust it"
                    )
                stack.append((f"{where}.{key}", item))
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value))
        elif not _is_json_scalar(value):
            raise ModeconnectError(
                f"{source}: {where} holds a value of type {type(value).__name__}; "
                "keyword arguments must be plain JSON values (numbers, strings, lists, dicts)"
            )


def _is_json_scalar(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, (bool, int, str))


# --------------------------------------------------------------------------- building


def build_model(
    ref: str, kwargs: Mapping[str, Any] | None = None, *, modules: tuple[str, ...] = ()
) -> Any:
    """Call the constructor named by ``ref`` with ``kwargs``; the result must be an ``nn.Module``.

    Run only for references the user typed or that :func:`check_file_reference`
    accepted. ``modules``, when given (a reference only a trusted module vouches
    for), requires a ``torch.nn.Module`` class defined in those modules (a trusted
    module's namespace may hold other modules' functions). The constructor runs
    under :func:`~modeconnect.io.offline.offline`: nothing is downloaded.
    """
    import torch

    arguments = dict(kwargs or {})
    target, attr = split_ref(ref)
    with offline():
        if target == TRANSFORMERS and "." not in attr:
            model = _build_transformers(ref, attr, arguments)
        else:
            factory = import_callable(ref)
            problem = _not_a_trusted_class(factory, modules) if modules else None
            if problem is not None:
                raise UntrustedReference(
                    f"model reference {ref!r}: {problem}; pass --model {ref} if you trust it"
                )
            model = _call(ref, factory, arguments)
    if not isinstance(model, torch.nn.Module):
        raise ModeconnectError(
            f"model reference {ref!r}: returned an object of type {type(model).__name__}, not a "
            "torch.nn.Module; name a model class or a function that builds one"
        )
    return model


def _call(ref: str, factory: Callable[..., Any], arguments: dict[str, Any]) -> Any:
    try:
        return factory(**arguments)
    except ModeconnectError:
        raise
    except Exception as exc:
        raise ModeconnectError(
            f"model reference {ref!r}: calling it with kwargs {json.dumps(arguments, default=str)} "
            f"failed with {type(exc).__name__}: {_one_line(exc)}; check --model-kwargs"
        ) from exc


def _build_transformers(ref: str, name: str, arguments: dict[str, Any]) -> Any:
    """A ``transformers`` architecture from ``{"config": {...}}``; no remote code, no download.

    The config must not ask for downloads (:func:`check_hub_free`); the model is built
    from :func:`local_config` (its attention chosen by modeconnect, module docstring).
    """
    cls = transformers_model_class(name)
    if cls is None:
        what = (
            "an abstract base class of transformers that builds no model; name the model "
            "class itself"
            if _transformers_subclass(name) is not None
            else "not a model class of the installed transformers; check the name"
        )
        raise ModeconnectError(
            f"model reference {ref!r}: {name!r} is {what} (e.g. 'transformers:LlamaForCausalLM')"
        )
    config = arguments.get("config")
    if set(arguments) != {"config"} or not isinstance(config, Mapping):
        raise ModeconnectError(
            f'model reference {ref!r}: expects kwargs {{"config": {{...}}}} (the model\'s '
            f"config.json), got keys {sorted(arguments)}; pass the config as a JSON object"
        )
    check_hub_free(config, f"model reference {ref!r}", "config")
    try:
        built = cls.config_class.from_dict(local_config(config))
    except Exception as exc:
        raise ModeconnectError(
            f"model reference {ref!r}: the config does not fit {cls.config_class.__name__} "
            f"({type(exc).__name__}: {_one_line(exc)}); check the config"
        ) from exc
    return _call(ref, cls, {"config": built})


def import_callable(ref: str) -> Callable[..., Any]:
    """Import ``"package.module:callable"`` or ``"path/to/file.py:callable"``.

    Runs the module's code: call it only for references the user chose. The
    attribute may be dotted (``"pkg.mod:Class.create"``). A file is imported under a
    module name unique to its resolved path and modification time, with its directory
    on ``sys.path`` while it runs, so it may import modules next to it.
    """
    target, attr = split_ref(ref)
    module = _import_target(target, ref)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModeconnectError(
                f"model reference {ref!r}: {target!r} has no attribute {attr!r}; "
                f"public callables there: {_public_callables(module)}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModeconnectError(
            f"model reference {ref!r}: {attr!r} has type {type(obj).__name__}, not callable; "
            "name a class or function"
        )
    return obj  # type: ignore[no-any-return]


def _public_callables(module: ModuleType) -> str:
    names = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
    shown = ", ".join(repr(n) for n in names[:5])
    return f"[{shown}]" + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _import_target(target: str, ref: str) -> ModuleType:
    if _is_file_target(target):
        return _import_file(Path(target), ref)
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name and (target == exc.name or target.startswith(exc.name + ".")):
            raise ModeconnectError(
                f"model reference {ref!r}: module {target!r} not found ({_one_line(exc)}); "
                "check the spelling and PYTHONPATH, or use 'path/to/file.py:callable'"
            ) from exc
        raise _import_failed(ref, target, exc) from exc
    except Exception as exc:
        raise _import_failed(ref, target, exc) from exc


def _import_failed(ref: str, target: str, exc: BaseException) -> ModeconnectError:
    return ModeconnectError(
        f"model reference {ref!r}: importing {target!r} failed with "
        f"{type(exc).__name__}: {_one_line(exc)}; fix that module or install what it needs"
    )


def _import_file(path: Path, ref: str) -> ModuleType:
    """Load a Python file as a module under a unique name (cached while the file is unchanged)."""
    if path.suffix != ".py" or not path.is_file():
        what = "file not found" if not path.exists() else "not a .py file"
        raise ModeconnectError(f"{path}: {what}, in model reference {ref!r}; {_REF_HELP}")
    name = _file_module_name(path)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModeconnectError(f"{path}: cannot be imported as a module, in {ref!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        _exec_with_dir_on_path(spec.loader, module, path.resolve().parent)
    except Exception as exc:
        del sys.modules[name]
        raise _import_failed(ref, str(path), exc) from exc
    return module


def _file_module_name(path: Path) -> str:
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_mtime_ns}:{stat.st_size}"
    stem = re.sub(r"\W", "_", path.stem)
    return f"_modeconnect_user_{stem}_{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _exec_with_dir_on_path(loader: Any, module: ModuleType, directory: Path) -> None:
    sys.path.insert(0, str(directory))
    try:
        loader.exec_module(module)
    finally:
        sys.path.remove(str(directory))


def _one_line(text: object) -> str:
    return " ".join(str(text).split())[:300]
