"""Where evaluation runs: the device by name, and batches moved there."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from .choices import DEVICES
from .errors import ModeconnectError
from .probe import Batch

__all__ = ["DEVICES", "moved_batches", "resolve_device"]


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; ``"cuda"`` without CUDA is an error."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ModeconnectError(
            f"--device: {name!r} is not a device; use one of {', '.join(DEVICES)}"
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModeconnectError(
            "--device cuda: this torch build sees no CUDA device; use --device cpu (or auto)"
        )
    return device


def moved_batches(
    data: Iterable[Batch], device: torch.device, dtype: torch.dtype | None
) -> list[Batch]:
    """``(x, y)`` batches on ``device``, floating inputs in ``dtype`` (token ids stay ids)."""
    return [(_moved(x, device, dtype), y.to(device)) for x, y in data]


def _moved(x: Tensor, device: torch.device, dtype: torch.dtype | None) -> Tensor:
    """Inputs on ``device``; floating ones in the evaluation's ``dtype`` (token ids stay ids)."""
    return x.to(device, dtype=dtype if dtype is not None and x.is_floating_point() else None)
