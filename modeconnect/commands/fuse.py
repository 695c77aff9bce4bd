"""``merge --method zip|otfusion|universe`` on files: models of one family, any widths.

The first checkpoint opens the session (its architecture, the data, the probe, the
checked outputs); every other checkpoint is built from its own model reference,
which must name the same constructor (its width keywords may differ). The fused
checkpoint names that constructor with the fused widths (found by matching each
width keyword to the group whose widths it sets, then checked by building the
model), so it loads back with modeconnect. No equivalence guard applies to the
fused model: it is the evaluated object, and the JSON says so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from modeconnect.commands.merge import MergeReport
from modeconnect.commands.options import MergeOptions
from modeconnect.commands.session import open_session
from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import evaluate
from modeconnect.fusion import fusion_options
from modeconnect.fusion.core import FusionResult, fuse
from modeconnect.fusion.slots import fused_kwargs, width_slots
from modeconnect.io.checkpoints import (
    Checkpoint,
    checkpoint_writer,
    json_writer,
    load_models,
    resolve_model,
    restore_dtypes,
)
from modeconnect.io.hf import directory_writer
from modeconnect.io.targets import Fill, Outputs
from modeconnect.merging import normalize_weights

__all__ = ["fuse_files", "fused_kwargs", "parse_widths", "width_slots"]


def parse_widths(text: str | int | Mapping[str, int] | None) -> int | dict[str, int] | None:
    """``--width``: ``None`` (the first model's), ``"48"`` (every group that can change
    width) or ``"P0=48,P1=32"`` (those groups).

    >>> parse_widths("48"), parse_widths("P0=48, P1=32")
    (48, {'P0': 48, 'P1': 32})
    """
    if text is None or isinstance(text, (int, Mapping)):
        return text if not isinstance(text, Mapping) else dict(text)
    text = text.strip()
    try:
        if "=" not in text:
            return int(text)
        pairs = [part.split("=") for part in text.split(",") if part.strip()]
        return {name.strip(): int(value) for name, value in pairs}
    except ValueError:
        raise ModeconnectError(
            f"--width {text!r}: give a number (48) or group=width pairs (P0=48,P1=32)"
        ) from None


def _other(path: Path, options: MergeOptions, ref: str) -> tuple[Checkpoint, nn.Module]:
    """Checkpoint ``path`` with the model it names (its own widths), checked against it."""
    src = options.sources
    loaded = load_models([path], src.model, src.model_kwargs, trust=src.trust)
    if loaded.architecture.ref != ref:
        raise ModeconnectError(
            f"{path}: names model {loaded.architecture.ref} but the first checkpoint names "
            f"{ref}; fused models must come from one architecture family (one constructor)"
        )
    return loaded.checkpoints[0], loaded.architecture.model


def _in_memory(ckpt: Checkpoint) -> Mapping[str, Tensor]:
    """A checkpoint directory's tensors read into memory (fusion needs every tensor at once)."""
    return dict(ckpt.state_dict.items()) if ckpt.lazy else ckpt.state_dict


def fuse_files(paths: Sequence[str | Path], options: MergeOptions) -> MergeReport:
    """Fuse checkpoints of one family (widths may differ) with ``options.method``.

    ``--width`` (``options.width``) chooses the fused widths; ``--train`` (else
    ``--data``) feeds the activation statistics; ``--data`` evaluates each input and
    the fusion. The output names the constructor with the fused widths.
    """
    o = options
    if not paths or (o.method == "universe" and len(paths) < 2):
        raise ModeconnectError(
            f"merge --method {o.method}: needs {'two' if o.method == 'universe' else 'one'} "
            f"or more checkpoints, got {len(paths)}"
        )
    if o.reference is not None or o.bn != "none" or o.symmetry != "permutation":
        raise ModeconnectError(
            f"merge --method {o.method}: --reference, --bn and --symmetry apply to "
            "permutation merges; leave them out"
        )
    given = {k: v for k, v in o.method_options.items() if k not in ("seed", "max_rounds")}
    chosen = fusion_options(o.method, given)
    widths = parse_widths(o.width)
    w = normalize_weights(o.weights, len(paths))
    session = open_session(
        paths[:1], o, extra_inputs=list(paths[1:]),
        outputs=[("--out", o.out, "checkpoint"), ("--json", o.json_path, "json")],
    )  # fmt: skip
    others = [_other(Path(p), o, session.model_ref) for p in paths[1:]]
    ckpts = [session.checkpoints[0], *(c for c, _ in others)]
    models = [session.model, *(m for _, m in others)]
    sds = [_in_memory(c) for c in ckpts]
    stats = session.train if session.train is not None else session.data
    with session.timings.phase("merge"):
        result = fuse(
            models, sds, data=stats, method=o.method, widths=widths, weights=w,
            inputs=session.probe, labels=[str(c.path) for c in ckpts], **chosen,
        )  # fmt: skip

    def build(kw: Mapping[str, Any]) -> nn.Module:
        with torch.device("meta"):
            return resolve_model(ckpts[:1], session.model_ref, kw, trust=o.sources.trust).model

    slots = width_slots(build, ckpts[0].model_kwargs, result.spec)
    kwargs = fused_kwargs(ckpts[0].model_kwargs, slots, result.widths, result.input_widths[0])
    _check_target(build(kwargs), result.state_dict, session.model_ref, kwargs)
    report = MergeReport(
        files={"sources": [str(c.path) for c in ckpts]}, model_ref=session.model_ref,
        model_kwargs=kwargs, result=result, command=o.run.command,
    )  # fmt: skip
    if session.data is not None:
        with session.timings.phase("evaluation"):
            inputs = tuple(
                evaluate(m, sd, session.data, loss=session.scoring)
                for m, sd in zip(models, sds, strict=True)
            )
            target = resolve_model(ckpts[:1], session.model_ref, kwargs, trust=o.sources.trust)
            merged = evaluate(target.model, result.state_dict, session.data, loss=session.scoring)
            report = replace(report, inputs=inputs, merged=merged)
    plan = session.outputs
    written = {"out": plan.path("--out")}
    if "--json" in plan:
        written["json"] = plan.path("--json")
    meta = {
        "modeconnect.role": "merged",
        "modeconnect.sources": json.dumps([str(c.path) for c in ckpts]),
        "modeconnect.weights": json.dumps(list(result.weights)),
        "modeconnect.method": result.method,
        "modeconnect.widths": json.dumps(result.widths),
        "modeconnect.equivalence_guard": "not applicable (the fused model is the evaluated object)",
    }
    with session.timings.phase("writes"), plan.writing() as staging:
        fill = _writer(plan, written["out"], result, ckpts[0], session.model_ref, kwargs, meta)
        staging.write(written["out"], fill)
        if "--json" in plan:
            staging.write(written["json"], json_writer(replace(report, written=written).to_dict()))
    return replace(report, written=written, timings=session.timings.to_dict())


def _writer(
    plan: Outputs,
    path: Path,
    result: FusionResult,
    like: Checkpoint,
    ref: str,
    kwargs: Mapping[str, Any],
    meta: Mapping[str, str],
) -> Fill:
    """A checkpoint file naming the constructor with ``kwargs``, or, for a folder target, a
    ``save_pretrained`` directory like ``like``'s whose ``config.json`` has the fused widths."""
    if not plan.is_folder_path(path):
        return checkpoint_writer(
            path, restore_dtypes(result.state_dict, like.dtypes), model_ref=ref,
            model_kwargs=kwargs, metadata=meta,
        )  # fmt: skip
    if like.directory is None or "config" not in kwargs:
        raise ModeconnectError(
            f"--out {path}: a folder output needs checkpoint directories as inputs; name a "
            ".pt or .safetensors file"
        )
    shards = directory_writer(result.state_dict, like.directory, dtypes=like.dtypes, metadata=meta,
                              names=getattr(like.state_dict, "names", None))  # fmt: skip

    def fill(folder: Path) -> None:
        shards(folder)
        text = json.dumps(kwargs["config"], indent=2, sort_keys=True) + "\n"
        (folder / "config.json").write_text(text, encoding="utf-8")

    return fill


def _check_target(
    model: nn.Module, state_dict: Mapping[str, Tensor], ref: str, kwargs: Mapping[str, Any]
) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, t in state_dict.items():
        if expected.get(key) != tuple(t.shape):
            raise ModeconnectError(
                f"{ref} with kwargs {str(dict(kwargs))[:200]} has {key!r} of shape "
                f"{expected.get(key)} but "
                f"the fusion made {tuple(t.shape)}; the constructor's keywords do not set these "
                "widths, so the output cannot name its model"
            )
