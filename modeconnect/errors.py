"""The exception types for user errors, and the rule that a message is one line.

Every user error is a :class:`ModeconnectError`; the CLI prints it as one line and exits
with code 2. A few subclasses name what a library user may want to catch on its own:

* :class:`UntrustedReference`: a file names code (a model reference, keyword arguments
  that load code, a configuration that fetches from the network) that is not followed;
* :class:`ShapeMismatch`: tensors, checkpoints or data that do not fit together;
* :class:`NotFinite`: NaN or infinity in weights, data or outputs;
* :class:`OutputConflict`: an output target that may not be written (an input, a
  folder, an existing file without ``force``, two outputs on one path);
* :class:`NotEquivalent`: the permanent guard found aligned B computing another function.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI imports this module before torch: keep it light
    import torch

ERRORS = (
    "ModeconnectError",
    "NotEquivalent",
    "NotFinite",
    "OutputConflict",
    "ShapeMismatch",
    "UntrustedReference",
)
"""The error classes, exported at the top level as well."""

__all__ = [
    "ERRORS",
    "MAX_MESSAGE",
    *ERRORS,
    "count_nonfinite",
    "listed",
    "load_error_reason",
    "printable",
]

MAX_MESSAGE = 2000
"""Characters of a message kept (its start and its end, where the advice is); a file can
put a string of any length into a message, a terminal line should stay readable."""
_TAIL = 500


def count_nonfinite(t: torch.Tensor) -> int:
    """The NaN and infinite entries of ``t`` that :class:`NotFinite` reports (0 unless it is
    floating or complex). ``isfinite`` does not take float8, so one-byte floats are counted
    in float32, which keeps their NaN.

    >>> import torch
    >>> count_nonfinite(torch.tensor([1.0, float("nan")]).to(torch.float8_e4m3fn))
    1
    """
    import torch

    if not (t.is_floating_point() or t.is_complex()):
        return 0
    one_byte = t.is_floating_point() and t.element_size() == 1
    return int((~torch.isfinite(t.float() if one_byte else t)).sum())


def listed(keys: Sequence[str], limit: int = 5) -> str:
    """``"['a', 'b', ... (3 more)]"``: the first ``limit`` keys of ``keys`` for a message.

    >>> listed(["a", "b", "c"], limit=2)
    "['a', 'b', ... (1 more)]"
    """
    shown = ", ".join(repr(k) for k in keys[:limit])
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return f"[{shown}{more}]"


def printable(text: object, limit: int | None = None) -> str:
    """``text`` with every character that is not printable escaped as ``repr`` escapes it.

    Newlines, carriage returns, tabs, other control characters, line and paragraph
    separators and invisible format characters (``\\n``, ``\\x1b``, ``\\u2028``,
    ``\\u202e``) become their escapes, so a file name can neither break a message into
    several lines nor rewrite the terminal. Printable text (accents, CJK) is kept as is,
    and so are backslashes. With ``limit``, a longer result keeps its first and last
    characters around a note of how many were left out.
    """
    text = str(text)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if limit is not None and len(text) > limit:
        tail = min(_TAIL, limit // 4)
        head = limit - tail
        text = f"{text[:head]} [... {len(text) - head - tail} characters left out ...] " + (
            text[-tail:] if tail else ""
        )
    return text


class ModeconnectError(Exception):
    """A user error: bad input, an unreadable file, mismatched checkpoints.

    The message is one line that names the file, the tensor key and the shapes
    involved, and says what to do. The CLI prints it and exits with code 2.
    ``str(exc)`` is always one line of printable characters: whatever a message
    quotes (a file name with a newline, a string read from a file) is escaped by
    :func:`printable` and, past :data:`MAX_MESSAGE` characters, shortened in the middle.
    """

    def __str__(self) -> str:
        return printable(super().__str__(), MAX_MESSAGE)


class UntrustedReference(ModeconnectError):
    """A file points at what modeconnect does not follow: code, a download, a link out of its
    directory (SECURITY.md)."""


class ShapeMismatch(ModeconnectError):
    """Tensors, checkpoints or data whose shapes (or keys) do not fit together."""


class NotFinite(ModeconnectError):
    """NaN or infinity where finite values are needed (weights, data, probe outputs)."""


class OutputConflict(ModeconnectError):
    """An output target that may not be written: an input, a clash, an existing file."""


class NotEquivalent(ModeconnectError):
    """The guard: aligned B does not compute B's function, so nothing is written."""


_ADVICE = re.compile(
    r"weights_only|arbitrary code|trusted source|file an issue|check the documentation|https?://",
    re.IGNORECASE,
)
"""Sentences of a loader's message that give advice rather than say what was wrong."""
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_UNPICKLER = re.compile(r"WeightsUnpickler error:\s*(.*?)(?:\s*Check the documentation|$)")


def load_error_reason(exc: BaseException, limit: int = 200) -> str:
    """What a loader's exception says was wrong, in whole sentences, without its advice.

    ``torch.load(weights_only=True)`` explains a failure with advice to re-run it with
    ``weights_only=False``, which would run the file's code: that advice, and every
    other sentence about ``weights_only``, links or filing issues, is left out; what
    the unpickler found (``WeightsUnpickler error: Unsupported operand 69``) is kept.
    Sentences are never cut in the middle: past ``limit`` characters the rest is left
    out whole (a first sentence longer than ``limit`` is shortened with ``...``). An
    exception with nothing left to say gives its type's name.
    """
    text = " ".join(str(exc).split())
    found = _UNPICKLER.search(text)
    if found and found.group(1):
        text = found.group(1)
    kept = [s for s in _SENTENCE_END.split(text) if s and not _ADVICE.search(s)]
    out = ""
    for sentence in kept:
        if len(out) + len(sentence) + 1 > limit:
            break
        out = f"{out} {sentence}" if out else sentence
    if not out and kept:
        out = kept[0][: limit - 3].rstrip() + "..."
    return out or type(exc).__name__
