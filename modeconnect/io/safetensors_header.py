"""Safetensors files written byte for byte the same on every run."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["sort_safetensors_metadata"]


def sort_safetensors_metadata(path: Path) -> None:
    """Rewrite a safetensors header with its metadata keys sorted, in place.

    The Rust writer keeps metadata in a hash map, so its order changes from run to
    run; sorted, the same inputs give the same bytes. The header keeps its length
    (same entries, same JSON; padded with spaces, which the format allows).
    """
    with open(path, "r+b") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
        meta = header.pop("__metadata__", None)
        ordered = {"__metadata__": dict(sorted(meta.items()))} if meta else {}
        text = json.dumps({**ordered, **header}, separators=(",", ":"), ensure_ascii=False)
        data = text.encode("utf-8")
        if len(data) > size:  # cannot happen for the same entries; leave the file as written
            return
        handle.seek(8)
        handle.write(data + b" " * (size - len(data)))
