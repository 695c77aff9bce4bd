"""``spec`` on files: the permutation spec of a checkpoint's (or a model's) architecture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modeconnect.commands.options import SpecOptions
from modeconnect.commands.session import open_session
from modeconnect.errors import ModeconnectError
from modeconnect.fusion import width_groups
from modeconnect.io.checkpoints import json_writer
from modeconnect.io.spec_cache import cached_spec
from modeconnect.symmetry import ClassifiedSpec, classified

__all__ = ["spec_files"]


def spec_files(
    checkpoint: str | Path | None,
    options: SpecOptions | None = None,
    **keywords: Any,
) -> ClassifiedSpec:
    """The spec of ``checkpoint``'s architecture (or of ``model``), written as JSON if asked;
    with each residual stream's and attention head group's symmetry class (``classes``;
    the JSON's ``classes``; head groups are checked on the probe with the checkpoint's
    weights) and the groups that can change width in a fusion (the JSON's
    ``width_groups``)."""
    o = SpecOptions.build(options, keywords)
    if checkpoint is None and o.sources.model is None:
        raise ModeconnectError("spec: no architecture given; pass a checkpoint or --model")
    session = open_session(
        [checkpoint] if checkpoint is not None else [], o,
        outputs=[("--json", o.json_path, "json")],
    )  # fmt: skip
    probe = tuple(x[:2] for x in session.probe)
    spec = cached_spec(session.model, probe, permute_output=o.permute_output, refresh=True)
    weights = session.checkpoints[0].state_dict if session.checkpoints else None
    spec = classified(spec, session.model, probe, weights)
    if "--json" in session.outputs:
        summary = {
            **spec.summary(),
            "classes": dict(spec.classes),
            "width_groups": list(width_groups(spec)),
        }
        with session.outputs.writing() as staging:
            staging.write(session.outputs.path("--json"), json_writer(summary))
    return spec
