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
(:func:`~modeconnect.io.targets.staged_write`); a failed write only skips caching.

**A spec read from the cache is never trusted to be right.** Whoever can write the
folder can plant a spec that fits every shape and permutes the wrong axes. Such a spec
is untrusted input that the equivalence guard (:mod:`modeconnect.guard`) must pass
honestly: :func:`with_untrusted_spec` runs the work (matching and guard) with the spec,
and if that fails in any way but *cannot verify* (which depends on B's outputs, not on
the spec), it removes the cache file, obtains the spec again (now derived, and stored
over the planted one) and, if it differs, runs the work once more with it. So a
poisoned file can neither pass the guard (a wrong permutation is refused) nor deny
service (the second run uses the derived spec), and it is gone after one use. A spec
derived in this run that fails is derived once more before the refusal: a cost paid
only when the guard refuses.

Why this and not a check of each cache hit: proving a hit right means deriving the
spec, the cost the cache saves; a soundness re-check (a random permutation from the
cached spec applied to B, the guard run on it) needs B's weights where the spec is
obtained (Hugging Face directories are read lazily, the model built on the meta
device), costs two more passes of B on every hit, and still trusts the guard. Here an
honest hit costs nothing. What neither can catch is a spec that permutes *less* than it
could (a group marked fixed): aligned B is then still B's function, only aligned
worse; the report's group and unit counts show it. ``modeconnect spec`` runs no model,
so it prints a planted spec as it finds it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from modeconnect.errors import ModeconnectError
from modeconnect.forward import ModelCall
from modeconnect.guard import EquivalenceError
from modeconnect.io.jsonfile import read_json_file
from modeconnect.io.targets import staged_write
from modeconnect.spec import PermutationSpec, derive_spec, spec_key
from modeconnect.spec.trace import Inputs
from modeconnect.timing import Timings

__all__ = [
    "MAX_BYTES",
    "cache_folder",
    "cached_spec",
    "forget_cached",
    "read_cached",
    "with_untrusted_spec",
    "write_cached",
]

R = TypeVar("R")

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
    refresh: bool = False,
) -> PermutationSpec:
    """:func:`~modeconnect.spec.derive_spec`, read from the cache when this architecture,
    these input shapes and this call were analysed before, and stored otherwise.

    ``folder`` overrides :func:`cache_folder` (the cache is off when both are ``None``).
    A spec read from the cache is unverified: work that the guard checks goes through
    :func:`with_untrusted_spec`. ``refresh`` derives the spec whatever the cache holds and
    stores it (what ``modeconnect spec`` does: it runs no model, so nothing would check a
    cached spec before it is shown).
    """
    path = _path(model, inputs, call, permute_output, folder)
    if path is None:
        return derive_spec(model, inputs, call=call, permute_output=permute_output)
    spec = None if refresh else read_cached(path, model)
    if spec is None:
        spec = derive_spec(model, inputs, call=call, permute_output=permute_output)
        write_cached(path, spec)
    return spec


def forget_cached(
    model: nn.Module,
    inputs: Inputs,
    *,
    call: ModelCall | None = None,
    permute_output: bool = False,
    folder: str | Path | None = None,
) -> bool:
    """Remove the file :func:`cached_spec` reads for these arguments, so that the next call
    derives the spec; ``False`` when there is none (or the cache is off)."""
    path = _path(model, inputs, call, permute_output, folder)
    if path is None:
        return False
    try:
        path.unlink()
    except OSError:
        return False
    return True


def with_untrusted_spec(
    work: Callable[[PermutationSpec], R],
    obtain: Callable[[], PermutationSpec],
    forget: Callable[[], bool],
    timings: Timings | None = None,
) -> R:
    """``work(obtain())``, the spec treated as untrusted input (module docstring).

    If ``work`` fails (a guard failure other than *cannot verify*, or any other error)
    and ``forget()`` removes a cached spec, ``obtain()`` gives the spec again, derived,
    and ``work`` runs once more with it, unless it is the same spec (then the first
    error stands). ``timings`` counts ``obtain`` under ``"spec"``.
    """
    with _phase(timings):
        spec = obtain()
    try:
        return work(spec)
    except EquivalenceError as exc:
        if exc.equivalence.failed == "cannot verify" or not forget():
            raise
        error: Exception = exc
    except Exception as exc:  # a planted spec may break matching in any way
        if not forget():
            raise
        error = exc
    with _phase(timings):
        derived = obtain()
    if derived == spec:
        raise error
    return work(derived)


def _phase(timings: Timings | None) -> contextlib.AbstractContextManager[None]:
    return timings.phase("spec") if timings is not None else contextlib.nullcontext()


def _path(
    model: nn.Module,
    inputs: Inputs,
    call: ModelCall | None,
    permute_output: bool,
    folder: str | Path | None,
) -> Path | None:
    where = Path(folder) if folder is not None else cache_folder()
    if where is None:
        return None
    return where / f"{spec_key(model, inputs, call, permute_output)}.json"


def read_cached(path: Path, model: nn.Module) -> PermutationSpec | None:
    """The spec stored at ``path`` if it is valid and fits ``model``; else ``None``."""
    try:
        if not path.is_file():
            return None
        spec = PermutationSpec.from_dict(read_json_file(path, "a cache miss", limit=MAX_BYTES))
    except (ModeconnectError, ValueError, RecursionError):  # unreadable, oversized, not a spec
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
