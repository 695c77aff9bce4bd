"""What every command does first, once: check its outputs, load, build, and check the data.

:func:`open_session` runs the same sequence for ``align``, ``spec``, ``barrier``,
``compare`` and ``merge``:

1. plan the outputs (:class:`~modeconnect.files.targets.Outputs`): every target is
   checked against every input before anything is loaded;
2. load the checkpoints, choose and build the architecture (a reference read from a
   file only under :class:`~modeconnect.files.references.Trust`), and require each
   file to fit the model and the first file; floating tensors are brought to the
   model's dtype (the stored dtypes are kept for writing back);
3. load the evaluation data (``--data``) and the training data (``--train``) and run
   the model on each once, so that data that do not fit get one line naming the file;
4. choose the probe batch the guard and the tracer use, one way for every command:
   ``--input-shape`` / ``--input-dtype`` if given, else the first examples of
   ``--data`` (or ``--train``), else a batch inferred from the model's first layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from modeconnect.errors import ModeconnectError
from modeconnect.files.checkpoints import (
    Checkpoint,
    checkpoint_writer,
    load_models,
    restore_dtypes,
)
from modeconnect.files.data import Batch, check_fits, load_data
from modeconnect.files.references import NO_TRUST, Trust
from modeconnect.files.targets import Fill, Outputs, input_files
from modeconnect.timing import Timings

__all__ = ["PROBE_SIZE", "Session", "open_session", "parse_dtype"]

PROBE_SIZE = 64
"""Examples of the data in the probe batch."""

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16, "long": torch.long, "int": torch.long}  # fmt: skip


@dataclass(frozen=True, eq=False)
class Session:
    """The loaded inputs of one command, and its checked outputs."""

    checkpoints: tuple[Checkpoint, ...]
    model: nn.Module
    model_ref: str
    model_kwargs: Mapping[str, Any]
    outputs: Outputs
    probe: tuple[Tensor, ...]
    data: Sequence[Batch] | None = None
    train: Sequence[Batch] | None = None
    timings: Timings = field(default_factory=Timings)

    @property
    def state_dicts(self) -> list[dict[str, Tensor]]:
        return [c.state_dict for c in self.checkpoints]

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(c.path for c in self.checkpoints)

    def checkpoint_writer(
        self,
        path: Path,
        state_dict: Mapping[str, Tensor],
        *,
        like: Checkpoint,
        metadata: Mapping[str, str],
    ) -> Fill:
        """What writes ``state_dict`` to ``path``: in the dtypes ``like`` stored, naming the
        session's architecture, so that the output loads back without ``--model``."""
        return checkpoint_writer(
            path, restore_dtypes(state_dict, like.dtypes), model_ref=self.model_ref,
            model_kwargs=self.model_kwargs, metadata=metadata,
        )  # fmt: skip


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"long"`` -> ``torch.long``; a dtype passes through."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModeconnectError(
            f"--input-dtype: unknown dtype {dtype!r}; valid: {', '.join(sorted(DTYPES))}"
        )
    return DTYPES[dtype]


def open_session(
    checkpoints: Sequence[str | Path],
    *,
    outputs: Sequence[tuple[str, str | Path | None, str]] = (),
    force: bool = False,
    model: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    trust: Trust = NO_TRUST,
    data: str | Path | None = None,
    train: str | Path | None = None,
    batch_size: int = 500,
    input_shape: Sequence[int] | None = None,
    input_dtype: str | torch.dtype | None = None,
    class_labels: bool = True,
    train_labels: bool = False,
    extra_inputs: Sequence[str | Path | None] = (),
    timings: Timings | None = None,
) -> Session:
    """Check the outputs, load and check everything a command reads (module docstring).

    ``outputs`` are ``(option, path, kind)`` triples (``path`` ``None`` when not asked
    for); ``extra_inputs`` are further files the command reads (a reference
    checkpoint). ``class_labels`` / ``train_labels``: the labels of ``data`` / ``train``
    must be class indices (a cross-entropy evaluation).
    """
    timings = timings if timings is not None else Timings()
    plan = Outputs.plan(
        outputs,
        inputs=input_files([*checkpoints, *extra_inputs], data=[data, train], model=model),
        force=force,
    )
    with timings.phase("load"):
        loaded = load_models(checkpoints, model, model_kwargs, trust=trust)
        arch = loaded.architecture
        net = arch.model
        evaluation = _load(net, data, batch_size, class_labels)
        training = _load(net, train, batch_size, train_labels)
        probe = choose_probe(net, evaluation or training, input_shape, parse_dtype(input_dtype))
    return Session(loaded.checkpoints, net, arch.ref, dict(arch.kwargs), plan, probe, evaluation,
                   training, timings)  # fmt: skip


def _load(
    model: nn.Module, source: str | Path | None, batch_size: int, class_labels: bool
) -> Sequence[Batch] | None:
    if source is None:
        return None
    batches = load_data(source, batch_size=batch_size)
    check_fits(model, batches, str(source), class_labels=class_labels)
    return batches  # type: ignore[return-value]


def choose_probe(
    model: nn.Module,
    data: Sequence[Batch] | None,
    input_shape: Sequence[int] | None,
    input_dtype: torch.dtype | None,
) -> tuple[Tensor, ...]:
    """The probe batch: from ``input_shape``, else the first examples of ``data``, else inferred."""
    from modeconnect.guard import example_inputs

    if input_shape is not None:
        return example_inputs(model, input_shape, input_dtype)
    if data is not None:
        for x, _ in data:
            return (x[:PROBE_SIZE],)
    return example_inputs(model)
