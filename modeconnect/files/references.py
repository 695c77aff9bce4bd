"""Model references: the code that builds an architecture, and whether it may run.

A reference is ``"package.module:callable"`` or ``"path/to/file.py:callable"``; the
callable, called with keyword arguments, returns the ``torch.nn.Module``.
``"transformers:ClassName"`` with keyword arguments ``{"config": {...}}`` builds a
Hugging Face architecture from its configuration (never with remote code).

Who chose a reference decides whether it is followed (see SECURITY.md):

* one the user typed (``--model``, or ``model_ref=`` in the library) runs as given;
* one read from a file (a checkpoint's ``model`` entry, safetensors metadata) is
  data from a stranger. It is followed only when it names a known, side-effect-free
  constructor (:data:`BUILTIN`, a ``transformers`` architecture), a constructor of a
  module the user trusts by name (``Trust.modules``, ``--trust-module``), or when
  the user trusts every reference (``Trust.any_reference``, ``--trust-model-ref``).
  Its keyword arguments must be plain JSON values, and none of them may switch on
  code loading (:data:`CODE_LOADING_KEYS`).
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

from modeconnect.errors import ModeconnectError

__all__ = [
    "BUILTIN",
    "Architecture",
    "NO_TRUST",
    "CODE_LOADING_KEYS",
    "Trust",
    "build_model",
    "check_file_reference",
    "import_callable",
    "reference_file",
    "split_ref",
]

BUILTIN = frozenset(f"modeconnect.models:{name}" for name in ("mlp", "MLP", "conv_net"))
"""Constructors a file may name without any opt-in: modeconnect's own example models."""

TRANSFORMERS = "transformers"

CODE_LOADING_KEYS = frozenset({"trust_remote_code", "auto_map", "code_revision"})
"""Keyword-argument names (at any depth) that make a constructor load code; refused from files."""

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
    values without any :data:`CODE_LOADING_KEYS`, whatever the trust. Returns the
    modules the constructor must come from when only a trusted module vouches for it
    (pass them to :func:`build_model`), else ``()``.
    """
    check_plain_kwargs(kwargs, source)
    target, attr = split_ref(ref)
    if trust.any_reference or ref in BUILTIN:
        return ()
    if target == TRANSFORMERS and "." not in attr and _is_transformers_model(attr):
        return ()
    if not _is_file_target(target) and "." not in attr and _trusted_module(target, trust):
        return trust.modules
    top = target.split(".")[0]
    how = f"--trust-module {top} or " if not _is_file_target(target) else ""
    raise ModeconnectError(
        f"{source}: names the model reference {ref!r}, which is not a known architecture "
        "constructor; a reference from a file could run any code, so it is refused; "
        f"if you trust this file, pass --model {ref} (or {how}--trust-model-ref)"
    )


def _trusted_module(target: str, trust: Trust) -> bool:
    return any(target == m or target.startswith(m + ".") for m in trust.modules)


def _is_transformers_model(name: str) -> bool:
    try:
        import transformers
    except ImportError:
        return False
    cls = getattr(transformers, name, None) if not name.startswith("_") else None
    return isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)


def check_plain_kwargs(kwargs: Mapping[str, Any], source: str | Path) -> None:
    """Require JSON values (no tensors, no objects) and no key that switches on code loading."""
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
                    raise ModeconnectError(
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
    accepted. ``modules``, when given, restricts the callable found to those modules
    (a trusted module's namespace may hold other modules' functions).
    """
    import torch

    arguments = dict(kwargs or {})
    target, attr = split_ref(ref)
    if target == TRANSFORMERS and "." not in attr:
        model = _build_transformers(ref, attr, arguments)
    else:
        factory = import_callable(ref)
        if modules and not _trusted_module(str(getattr(factory, "__module__", "")), Trust(modules)):
            raise ModeconnectError(
                f"model reference {ref!r}: resolves to {factory!r} from module "
                f"{getattr(factory, '__module__', '?')!r}, outside the trusted modules "
                f"{list(modules)}; pass --model {ref} if you trust it"
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
    """A ``transformers`` architecture from ``{"config": {...}}``; no remote code, no download."""
    if not _is_transformers_model(name):
        raise ModeconnectError(
            f"model reference {ref!r}: {name!r} is not a model class of the installed "
            "transformers; check the name (e.g. 'transformers:LlamaForCausalLM')"
        )
    config = arguments.get("config")
    if set(arguments) != {"config"} or not isinstance(config, Mapping):
        raise ModeconnectError(
            f'model reference {ref!r}: expects kwargs {{"config": {{...}}}} (the model\'s '
            f"config.json), got keys {sorted(arguments)}; pass the config as a JSON object"
        )
    import transformers

    cls = getattr(transformers, name)
    try:
        built = cls.config_class.from_dict(dict(config))
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
