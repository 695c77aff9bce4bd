"""``compare`` on files: every alignment method on one pair of checkpoints, in one table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from modeconnect.commands.barrier import resolve_loss
from modeconnect.commands.session import open_session
from modeconnect.compare import Comparison, compare_methods
from modeconnect.io.checkpoints import json_writer
from modeconnect.io.references import NO_TRUST, Trust
from modeconnect.timing import Timings

__all__ = ["CompareReport", "compare_files"]


@dataclass(frozen=True)
class CompareReport:
    """What ``modeconnect compare`` computed and wrote."""

    a_path: Path
    b_path: Path
    model_ref: str
    comparison: Comparison
    written: Mapping[str, Path] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": str(self.a_path),
            "b": str(self.b_path),
            "model": self.model_ref,
            **self.comparison.to_dict(),
        }


def compare_files(
    a_path: str | Path,
    b_path: str | Path,
    *,
    data: str,
    train: str | None = None,
    methods: Sequence[str] | None = None,
    model: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    trust: Trust = NO_TRUST,
    steps: int = 25,
    seed: int = 0,
    batch_size: int = 500,
    input_shape: Sequence[int] | None = None,
    input_dtype: str | torch.dtype | None = None,
    permute_output: bool = False,
    json_path: str | Path | None = None,
    force: bool = False,
    timings: Timings | None = None,
    **options: Any,
) -> CompareReport:
    """Load two checkpoints and the data, run :func:`~modeconnect.compare.compare_methods`,
    and write the table as JSON if asked."""
    session = open_session(
        [a_path, b_path], force=force, model=model, model_kwargs=model_kwargs, trust=trust,
        data=data, train=train, batch_size=batch_size, input_shape=input_shape,
        input_dtype=input_dtype, timings=timings, outputs=[("--json", json_path, "json")],
    )  # fmt: skip
    (ca, cb), clock = session.checkpoints, session.timings
    with clock.phase("methods"):
        comparison = compare_methods(
            session.model, ca.state_dict, cb.state_dict, session.data or [], methods=methods,
            steps=steps, seed=seed, train=session.train, options=options, inputs=session.probe,
            permute_output=permute_output, loss=resolve_loss(None, session),
        )  # fmt: skip
    report = CompareReport(Path(a_path), Path(b_path), session.model_ref, comparison)
    if "--json" in session.outputs:
        written = {"json": session.outputs.path("--json")}
        report = replace(report, written=written)
        with clock.phase("writes"), session.outputs.writing() as staging:
            staging.write(written["json"], json_writer(report.to_dict()))
    return replace(report, timings=clock.to_dict())
