"""JSON from strangers, read within bounds: every failure is one ``ModeconnectError`` line.

``json.loads`` on text from a file trusts the text: a document nested 100 000 levels
deep raises ``RecursionError`` (or parses, and crashes later code that recurses over
it: ``json.dumps``, ``repr``, ``copy.deepcopy``, a config class), an integer of 5 000
digits raises ``ValueError`` (Python's limit on integer-string conversion), and a file
of gigabytes is read whole. Every JSON that modeconnect reads from a file or the command
line goes through :func:`parse_json` / :func:`read_json_file` instead, with these bounds:

* :data:`MAX_DEPTH` levels of nested arrays and objects (real configs use under 10);
* integers of at most :data:`MAX_DIGITS` digits (int64 has 19);
* :data:`MAX_BYTES` of text (a sharded model's index of 100 000 tensors is ~10 MB).

:func:`check_plain_value` applies the depth and integer bounds, and a bound on the number
of values, to values that did not come from JSON text (keyword arguments unpickled from a
``.pt`` file, which may contain themselves or share one list many times), so that what
passes can be printed, copied and walked safely.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from modeconnect.errors import ModeconnectError

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_DIGITS",
    "MAX_VALUES",
    "check_plain_value",
    "parse_json",
    "read_json_file",
]

MAX_DEPTH = 64
"""Levels of nested arrays and objects accepted (``{}`` and ``[1]`` are level 1)."""
MAX_DIGITS = 64
"""Digits of a JSON integer accepted (``2**63`` has 19)."""
MAX_BYTES = 64 << 20
"""Bytes of JSON text accepted from one file or string."""
MAX_VALUES = 1_000_000
"""Values in one value that did not come from JSON text (:func:`check_plain_value`)."""
_BIGGEST = 10**MAX_DIGITS


class _Refused(Exception):
    """Raised inside the parser's hooks; becomes a :class:`ModeconnectError` naming the source."""


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        digits = len(text.lstrip("-"))
        raise _Refused(
            f"holds an integer of {digits} digits; modeconnect reads at most {MAX_DIGITS}"
        )
    return int(text)


_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
"""A JSON string (skipped: brackets in it do not nest) or one bracket."""


def _nesting(text: str) -> int:
    """How deeply arrays and objects nest in ``text``, counted without recursion.

    Stops counting past :data:`MAX_DEPTH`. For text that is not valid JSON the count
    may be off; ``json.loads`` refuses such text anyway.
    """
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return 0  # too few brackets to nest too deeply: no scan
    depth = deepest = 0
    for match in _TOKENS.finditer(text):
        char = match.group()
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_DEPTH:
                break
        elif char in "]}":
            depth -= 1
    return deepest


def parse_json(text: str | bytes, where: str, fix: str) -> Any:
    """``json.loads(text)`` within the module's bounds, else one line ``where: ...; fix``.

    ``where`` names the source (a file, a metadata key, an option); ``fix`` says what to
    do. Raises :class:`ModeconnectError` for text that is not JSON, not UTF-8, nested
    deeper than :data:`MAX_DEPTH`, holding an integer longer than :data:`MAX_DIGITS`
    digits, or longer than :data:`MAX_BYTES`.
    """
    if len(text) > MAX_BYTES:
        raise ModeconnectError(
            f"{where}: is {len(text)} bytes of JSON, more than modeconnect reads "
            f"({MAX_BYTES >> 20} MiB); {fix}"
        )
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        if _nesting(text) > MAX_DEPTH:
            raise _Refused(
                f"nests arrays or objects more than {MAX_DEPTH} levels deep; modeconnect reads at "
                f"most {MAX_DEPTH}"
            )
        return json.loads(text, parse_int=_parse_int)
    except _Refused as exc:
        raise ModeconnectError(f"{where}: {exc}; {fix}") from None
    except UnicodeDecodeError as exc:
        raise ModeconnectError(
            f"{where}: is not UTF-8 text (byte {exc.start}: {exc.reason}); {fix}"
        ) from None
    except json.JSONDecodeError as exc:
        raise ModeconnectError(
            f"{where}: is not valid JSON ({exc.msg}: line {exc.lineno} column {exc.colno}); {fix}"
        ) from None
    except (RecursionError, ValueError) as exc:  # bounds the scan missed: still one line
        raise ModeconnectError(
            f"{where}: cannot be read as JSON ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}); {fix}"
        ) from None


def read_json_file(file: Path, fix: str, *, limit: int = MAX_BYTES) -> Any:
    """The JSON in ``file``, read within bounds (:func:`parse_json`); at most ``limit`` bytes.

    The file is never read past ``limit`` (a huge file, or a device that never ends, is
    refused after ``limit + 1`` bytes). Unreadable files get one line too.
    """
    try:
        with open(file, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise ModeconnectError(
            f"{file}: cannot be read ({exc.strerror or type(exc).__name__}); {fix}"
        ) from None
    if len(data) > limit:
        raise ModeconnectError(
            f"{file}: is more than {limit} bytes, more than modeconnect reads as JSON; {fix}"
        )
    return parse_json(data, str(file), fix)


def check_plain_value(value: Any, where: str, fix: str) -> None:
    """Refuse a value nested deeper than :data:`MAX_DEPTH`, holding too long an integer, or
    more than :data:`MAX_VALUES` values.

    Walks lists, tuples and dicts (keys and values) without recursion, as printing or
    copying the value would: a container that holds itself counts as nested without
    end, and one held many times is counted each time (a pickle can share a list of a
    thousand copies of a list of a thousand copies ..., a few bytes that ``json.dumps``
    would expand without end). Other values are left to the caller.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise ModeconnectError(
                f"{where}: holds more than {MAX_VALUES} values (shared ones counted each time "
                f"they occur); modeconnect reads at most {MAX_VALUES}; {fix}"
            )
        if isinstance(item, int) and not isinstance(item, bool) and abs(item) >= _BIGGEST:
            raise ModeconnectError(
                f"{where}: holds an integer of more than {MAX_DIGITS} digits; modeconnect "
                f"reads at most {MAX_DIGITS}; {fix}"
            )
        if not isinstance(item, (list, tuple, dict)):
            continue
        if depth > MAX_DEPTH:
            raise ModeconnectError(
                f"{where}: nests lists or dicts more than {MAX_DEPTH} levels deep (or holds "
                f"itself); modeconnect reads at most {MAX_DEPTH}; {fix}"
            )
        children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children)
