"""The probe batch: the inputs the tracer and the guard run the model on, chosen one way.

Every command and library entry point that needs inputs for a model (to trace its graph
for the spec, and to run B beside aligned B in the guard) takes them from
:func:`probe_inputs`, in this order: inputs the caller gives; the first
:data:`PROBE_SIZE` examples of the data; inputs inferred from the model's first layer
(:func:`modeconnect.spec.example_inputs`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor, nn

from .errors import ModeconnectError
from .spec import example_inputs

__all__ = ["PROBE_SIZE", "Batch", "first_batch", "probe_inputs"]

Batch = tuple[Tensor, Tensor]
"""One ``(inputs, targets)`` pair of tensors."""

PROBE_SIZE = 64
"""Examples of the data in the probe batch."""


def first_batch(data: Iterable[Any]) -> Batch:
    """The first ``(x, y)`` batch of ``data``; one line if there is none or it is no pair."""
    for index, batch in enumerate(data):
        if (
            isinstance(batch, (tuple, list))
            and len(batch) == 2
            and all(isinstance(t, Tensor) for t in batch)
        ):
            return batch[0], batch[1]
        kinds = (
            f"a {type(batch).__name__} of {len(batch)} items"
            if isinstance(batch, (tuple, list))
            else f"a {type(batch).__name__}"
        )
        raise ModeconnectError(
            f"data: batch {index} is {kinds}; each batch must be an (x, y) pair of tensors"
        )
    raise ModeconnectError("data: the data source yielded no batches; pass non-empty data")


def probe_inputs(
    model: nn.Module,
    inputs: Sequence[Any] | None = None,
    data: Iterable[Any] | None = None,
    size: int = PROBE_SIZE,
) -> tuple[Any, ...]:
    """The probe: ``inputs`` as given, else the first ``size`` examples of ``data``'s first
    batch, else inputs inferred from the model (module docstring)."""
    if inputs is not None:
        return tuple(inputs)
    if data is not None:
        return (first_batch(data)[0][:size],)
    return example_inputs(model)
