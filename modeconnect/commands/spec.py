"""``spec`` on files: the permutation spec of a checkpoint's (or a model's) architecture."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from modeconnect.commands.session import open_session
from modeconnect.errors import ModeconnectError
from modeconnect.io.checkpoints import json_writer
from modeconnect.io.references import NO_TRUST, Trust
from modeconnect.io.spec_cache import cached_spec
from modeconnect.spec import PermutationSpec

__all__ = ["spec_files"]


def spec_files(
    checkpoint: str | Path | None,
    *,
    model: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    trust: Trust = NO_TRUST,
    input_shape: Sequence[int] | None = None,
    input_dtype: str | torch.dtype | None = None,
    permute_output: bool = False,
    json_path: str | Path | None = None,
    force: bool = False,
) -> PermutationSpec:
    """The spec of ``checkpoint``'s architecture (or of ``model``), written as JSON if asked."""
    if checkpoint is None and model is None:
        raise ModeconnectError("spec: no architecture given; pass a checkpoint or --model")
    session = open_session(
        [checkpoint] if checkpoint is not None else [], model=model, model_kwargs=model_kwargs,
        trust=trust, input_shape=input_shape, input_dtype=input_dtype, force=force,
        outputs=[("--json", json_path, "json")],
    )  # fmt: skip
    probe = tuple(x[:2] for x in session.probe)
    spec = cached_spec(session.model, probe, permute_output=permute_output, refresh=True)
    if "--json" in session.outputs:
        with session.outputs.writing() as staging:
            staging.write(session.outputs.path("--json"), json_writer(spec.summary()))
    return spec
