"""The straight path between two checkpoints: ``θ(α) = (1-α)·θ_A + α·θ_B``.

Frankle et al. 2020; Entezari et al. 2022; Ainsworth et al. 2023. Floating tensors
move, others (BatchNorm's ``num_batches_tracked``) come from A; both ends are exact.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from modeconnect.errors import ModeconnectError, listed
from modeconnect.forward import computed_buffers
from modeconnect.views import Converted, Extended, Lerped

__all__ = [
    "PathFn",
    "check_pair",
    "first_difference",
    "interpolate",
    "is_interpolable",
    "linear_path",
    "placed",
    "placed_path",
]

PathFn = Callable[[float], Mapping[str, Tensor]]
"""``path(α) -> θ(α)``: the state dict at one point of a path between two models."""


def interpolate(
    a: Mapping[str, Tensor], b: Mapping[str, Tensor], alpha: float
) -> dict[str, Tensor]:
    """Return ``θ(α) = (1-α)·a + α·b`` for every floating tensor; others come from ``a``.

    Computed in each tensor's dtype with :func:`torch.lerp`, which is exact at
    ``α=0`` (returns ``a``'s values) and ``α=1`` (``b``'s values), and returns
    ``a`` unchanged wherever ``a == b``. Non-floating tensors (BatchNorm's
    ``num_batches_tracked``) are taken from ``a``. Keys, shapes and dtypes must match.
    Tensors that need no arithmetic (endpoints, integers) are ``a``'s or ``b``'s own
    objects, not copies: clone before writing into them in place.

    Examples
    --------
    >>> import torch
    >>> import modeconnect as mc
    >>> a = {"w": torch.tensor([0.0, 2.0]), "steps": torch.tensor(3)}
    >>> b = {"w": torch.tensor([4.0, 6.0]), "steps": torch.tensor(5)}
    >>> mc.interpolate(a, b, 0.25)
    {'w': tensor([1., 3.]), 'steps': tensor(3)}

    The endpoints are the models themselves:

    >>> mc.interpolate(a, b, 0.0)["w"] is a["w"], mc.interpolate(a, b, 1.0)["w"] is b["w"]
    (True, True)
    """
    check_pair(a, b)
    alpha = float(alpha)
    if alpha == 0.0:
        return dict(a)
    if alpha == 1.0:
        return {k: b[k] if is_interpolable(v) else v for k, v in a.items()}
    return {k: torch.lerp(v, b[k], alpha) if is_interpolable(v) else v for k, v in a.items()}


def linear_path(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> PathFn:
    """``α -> θ(α)`` as :func:`interpolate`, sharing ``a``'s tensors where ``a`` equals ``b``.

    Keys with equal values in ``a`` and ``b`` are not interpolated: every point
    reuses ``a``'s tensor object, so points of a path between equal models are the
    same tensors and are evaluated once (exactly equal, as they must be).
    """
    check_pair(a, b)
    same = frozenset(k for k, v in a.items() if v is b[k] or torch.equal(v, b[k]))
    moving = {k: b[k] for k, v in a.items() if k not in same and is_interpolable(v)}

    def at(alpha: float) -> dict[str, Tensor]:
        alpha = float(alpha)
        if alpha == 0.0:
            return dict(a)
        if alpha == 1.0:
            return {**a, **moving}
        return {**a, **{k: torch.lerp(a[k], v, alpha) for k, v in moving.items()}}

    return at


def placed_path(
    model: nn.Module,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    *,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> PathFn:
    """``α -> θ(α)`` as :func:`linear_path`, built tensor by tensor in ``dtype`` on ``device``.

    For checkpoints that stay on disk (lazy mappings) or an evaluation on another
    device or dtype: each tensor of a point is read, interpolated in the stored dtype,
    converted and moved before the next is read (:func:`placed`), so building a point
    never holds more than that point.
    """
    check_pair(a, b)

    def at(alpha: float) -> dict[str, Tensor]:
        return placed(model, Lerped(a, b, float(alpha)), device=device, dtype=dtype)

    return at


def placed(
    model: nn.Module,
    state: Mapping[str, Tensor],
    *,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, Tensor]:
    """``state`` read into a dict with its floating tensors in ``dtype`` on ``device``, one
    tensor at a time, and the buffers the model computes itself (never saved: rotary
    frequencies, position ids) moved along, so that the model runs there."""
    buffers = {k: v if device is None else v.to(device) for k, v in computed_buffers(model).items()}
    return dict(Extended(Converted(state, dtype, device), buffers))


def is_interpolable(t: Tensor) -> bool:
    """Floating or complex: a tensor that moves along the path (counters do not)."""
    return t.is_floating_point() or t.is_complex()


def first_difference(
    reference: Mapping[str, Any],
    other: Mapping[str, Any],
    attributes: Sequence[str] = ("shape", "dtype", "device"),
) -> tuple[str, str | None, Any, Any] | None:
    """How ``other`` first differs from ``reference``, or ``None`` where it does not.

    ``("keys", None, missing, unexpected)`` (sorted key lists) when their keys differ;
    ``("type", key, tensor, entry)`` for an entry of ``other`` that is not a tensor;
    ``(attribute, key, reference's, other's)`` for the first of ``attributes`` (in
    ``reference``'s key order) that differs.

    >>> import torch
    >>> first_difference({"w": torch.zeros(2)}, {"w": torch.zeros(3)})
    ('shape', 'w', torch.Size([2]), torch.Size([3]))
    """
    missing = sorted(reference.keys() - other.keys())
    unexpected = sorted(other.keys() - reference.keys())
    if missing or unexpected:
        return "keys", None, missing, unexpected
    for key, mine in reference.items():
        theirs = other[key]
        if not isinstance(theirs, Tensor):
            return "type", key, mine, theirs
        for attribute in attributes:
            x, y = getattr(mine, attribute), getattr(theirs, attribute)
            if x != y:
                return attribute, key, x, y
    return None


_FIXES = {
    "shape": "load both from the same architecture",
    "dtype": "cast both checkpoints to one dtype first",
    "device": "move both checkpoints to one device first",
}


def check_pair(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> None:
    """Raise unless ``a`` and ``b`` have the same keys, and each key one shape, dtype, device."""
    found = first_difference(a, b)
    if found is not None:
        raise ModeconnectError(_pair_difference(*found))


def _pair_difference(what: str, key: str | None, x: Any, y: Any) -> str:
    """The one-line message for :func:`first_difference`'s finding between A and B."""
    if what == "keys":
        return (
            f"state dicts A and B: B's keys differ from A's (missing {listed(x)}, "
            f"unexpected {listed(y)}); load both from the same architecture"
        )
    if what == "type":
        return (
            f"state dicts A and B: B's entry {key!r} is a {type(y).__name__}, not a Tensor; "
            "load both from the same architecture"
        )
    shown = (tuple(x), tuple(y)) if what == "shape" else (x, y)
    return (
        f"state dicts A and B: {what} mismatch for {key!r}, A has {shown[0]}, B has "
        f"{shown[1]}; {_FIXES[what]}"
    )
