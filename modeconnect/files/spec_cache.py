"""Derived specs cached on disk, so a second run on the same architecture skips the export.

A spec is stored as JSON (:meth:`~modeconnect.spec.PermutationSpec.to_dict`) under the
key :func:`~modeconnect.spec.spec_key` gives (model code and structure, tensor shapes,
input shapes, the call, torch's version), in the folder:

* ``$MODECONNECT_CACHE`` if set (``MODECONNECT_CACHE=off`` turns the cache off);
* else ``$XDG_CACHE_HOME/modeconnect/specs``;
* else ``~/.cache/modeconnect/specs``.

A cache file is untrusted data: it is read as JSON only (never as code), checked by
:meth:`~modeconnect.spec.PermutationSpec.from_dict`, and checked against the model
(every layout must match a tensor of the model, axis by axis). Anything wrong — an
unreadable, truncated, oversized or inconsistent file — is a cache miss: the spec
is derived again and the file replaced. Writes are atomic
(:func:`~modeconnect.files.targets.staged_write`); a failed write only skips caching.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from modeconnect.errors import ModeconnectError
from modeconnect.files.targets import staged_write
from modeconnect.forward import ModelCall
from modeconnect.spec import PermutationSpec, derive_spec, spec_key
from modeconnect.spec.trace import Inputs

__all__ = ["MAX_BYTES", "cache_folder", "cached_spec", "read_cached", "write_cached"]

MAX_BYTES = 64 << 20
"""A cache file larger than this is not read (a spec of a billion-parameter model is ~1 MB)."""


def cache_folder(environ: Mapping[str, str] | None = None) -> Path | None:
    """Where specs are cached, or ``None`` when ``MODECONNECT_CACHE=off``."""
    env = os.environ if environ is None else environ
    chosen = env.get("MODECONNECT_CACHE", "").strip()
    if chosen.lower() in ("off", "0", "false", "no", "none"):
        return None
    if chosen:
        return Path(chosen).expanduser()
    xdg = env.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "modeconnect" / "specs"


def cached_spec(
    model: nn.Module,
    inputs: Inputs,
    *,
    call: ModelCall | None = None,
    permute_output: bool = False,
    folder: str | Path | None = None,
) -> PermutationSpec:
    """:func:`~modeconnect.spec.derive_spec`, read from the cache when this architecture,
    these input shapes and this call were analysed before, and stored otherwise.

    ``folder`` overrides :func:`cache_folder` (the cache is off when both are ``None``).
    """
    where = Path(folder) if folder is not None else cache_folder()
    if where is None:
        return derive_spec(model, inputs, call=call, permute_output=permute_output)
    path = where / f"{spec_key(model, inputs, call, permute_output)}.json"
    spec = read_cached(path, model)
    if spec is None:
        spec = derive_spec(model, inputs, call=call, permute_output=permute_output)
        write_cached(path, spec)
    return spec


def read_cached(path: Path, model: nn.Module) -> PermutationSpec | None:
    """The spec stored at ``path`` if it is valid and fits ``model``; else ``None``."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        spec = PermutationSpec.from_dict(data)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, ModeconnectError):
        return None
    return spec if fits(spec, model) else None


def write_cached(path: Path, spec: PermutationSpec) -> bool:
    """Store ``spec`` at ``path`` atomically; ``False`` (nothing written) if that fails."""
    text = json.dumps(spec.to_dict(), separators=(",", ":"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staged_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    except (OSError, ModeconnectError):
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # only if this call created it and it is empty
        return False
    return True


def fits(spec: PermutationSpec, model: nn.Module) -> bool:
    """Every layout matches a tensor of ``model`` (its rank and the size of each axis), and
    every tensor the model saves has a layout (or is an alias of one)."""
    shapes = _shapes(model)
    for key, axes in spec.layouts.items():
        shape = shapes.get(key)
        if shape is None or len(shape) != len(axes):
            return False
        if any(_size(layout) != n for layout, n in zip(axes, shape)):
            return False
    known = {*spec.layouts, *(k for k, v in spec.aliases.items() if v in spec.layouts)}
    saved = set(model.state_dict(keep_vars=True))
    return saved <= known and all(k in shapes for k in spec.aliases)


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    named: list[tuple[str, Any]] = [*model.named_parameters(remove_duplicate=False)]
    named += model.named_buffers(remove_duplicate=False)
    return {k: tuple(int(s) for s in t.shape) for k, t in named}


def _size(layout: Any) -> int:
    try:
        return int(layout.size)
    except (AttributeError, TypeError, ValueError, OverflowError):
        return -1
