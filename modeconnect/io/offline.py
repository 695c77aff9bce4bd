"""Offline mode: no Hugging Face Hub request while modeconnect works (SECURITY.md).

modeconnect reads checkpoints from disk and never downloads. The libraries it calls to
build models and tokenizers would: a ``config.json`` can name a backbone repository, an
attention kernel on the Hub, a quantizer whose kernels are fetched. Configs that ask for
such things are refused (:func:`modeconnect.io.references.check_hub_free`); and every
call modeconnect makes into ``transformers`` and ``huggingface_hub`` runs under
:func:`offline`, so that a way in that the refusals missed still cannot fetch anything.

:func:`offline` switches on the libraries' own offline mode, not a hope that they will
not ask: ``huggingface_hub`` (>= 1.0) refuses every request of its HTTP client while
``huggingface_hub.constants.HF_HUB_OFFLINE`` is true, which it reads at each request
(``hf_request_event_hook``), and ``transformers`` and the ``kernels`` package reach the
Hub only through that client. The environment variables are set as well, for a library
imported while the block runs and for ``transformers``' own switch of Hub kernels
(``USE_HUB_KERNELS``). The previous state comes back when the outermost block ends, so
a program that uses the Hub itself keeps doing so between modeconnect's calls (while a
block runs, the switch holds for every thread of the process).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator

__all__ = ["OFFLINE_ENV", "hub_offline", "offline"]

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "USE_HUB_KERNELS": "NO",
}
"""Environment variables :func:`offline` sets while it runs."""

_FLAGS = (
    ("huggingface_hub.constants", "HF_HUB_OFFLINE"),  # read at every request
    ("transformers.utils.hub", "_is_offline_mode"),  # transformers 4.x kept its own copy
)
"""Module attributes that say "offline", set while :func:`offline` runs if the module is loaded."""

_lock = threading.Lock()
_depth = 0
_saved_env: dict[str, str | None] = {}
_saved_flags: dict[tuple[str, str], object] = {}


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Run the block with every Hugging Face Hub request refused (module docstring).

    Re-entrant and shared between threads: the first block to enter saves the
    environment variables and flags, the last to leave restores them.
    """
    _enter()
    try:
        yield
    finally:
        _leave()


def hub_offline() -> bool:
    """Whether ``huggingface_hub`` refuses requests now (it is imported to answer)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _enter() -> None:
    global _depth
    with _lock:
        if _depth == 0:
            _saved_env.clear()
            _saved_env.update({name: os.environ.get(name) for name in OFFLINE_ENV})
            _saved_flags.clear()
            _saved_flags.update(
                {flag: getattr(sys.modules[flag[0]], flag[1]) for flag in _loaded_flags()}
            )
        _depth += 1
        os.environ.update(OFFLINE_ENV)
        for module, name in _loaded_flags():
            setattr(sys.modules[module], name, True)


def _leave() -> None:
    global _depth
    with _lock:
        _depth -= 1
        if _depth:
            return
        for name, value in _saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        # A library first imported inside the block read "offline" from the environment:
        # it gets what the restored environment says, as if imported now.
        for flag in _loaded_flags():
            default = _env_offline()
            setattr(sys.modules[flag[0]], flag[1], _saved_flags.get(flag, default))


def _loaded_flags() -> list[tuple[str, str]]:
    return [
        (module, name)
        for module, name in _FLAGS
        if module in sys.modules and hasattr(sys.modules[module], name)
    ]


def _env_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in {"1", "ON", "YES", "TRUE"}
