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
from collections.abc import Callable, Mapping, Sequence
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
from modeconnect.fusion.core import fuse
from modeconnect.io.checkpoints import (
    Checkpoint,
    check_state_dict,
    checkpoint_writer,
    in_model_dtypes,
    json_writer,
    load_checkpoint,
    resolve_model,
    restore_dtypes,
)
from modeconnect.merging import normalize_weights
from modeconnect.spec import PermutationSpec

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


def _int_slots(kwargs: Mapping[str, Any]) -> list[tuple[str, int | None, int]]:
    """Every int in ``kwargs``: (keyword, list index or None, value)."""
    slots: list[tuple[str, int | None, int]] = []
    for key, value in kwargs.items():
        if isinstance(value, int) and not isinstance(value, bool):
            slots.append((key, None, value))
        elif isinstance(value, (list, tuple)):
            slots += [(key, i, v) for i, v in enumerate(value) if isinstance(v, int)]
    return slots


Slot = tuple[str, "int | None"]


def _with(kwargs: Mapping[str, Any], slot: Slot, value: int) -> dict[str, Any]:
    """A copy of ``kwargs`` (lists copied) with ``slot`` set to ``value``."""
    out = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in kwargs.items()}
    key, index = slot
    if index is None:
        out[key] = value
    else:
        out[key][index] = value
    return out


def width_slots(
    build: Callable[[Mapping[str, Any]], nn.Module],
    kwargs: Mapping[str, Any],
    spec: PermutationSpec,
) -> dict[Slot, tuple[str, ...]]:
    """Which constructor keyword sets which groups' widths, found by building the model
    (on the meta device) with each int keyword one larger: a keyword is a width slot if
    only the axes of some groups grow, and it sets exactly those groups."""
    base = {k: tuple(v.shape) for k, v in build(kwargs).state_dict().items()}
    owned = {(m.key, m.axis): g for g in spec.groups.values() for m in g.members}
    slots: dict[Slot, tuple[str, ...]] = {}
    for key, index, value in _int_slots(kwargs):
        try:
            grown = {
                k: tuple(v.shape)
                for k, v in build(_with(kwargs, (key, index), value + 1)).state_dict().items()
            }
        except (ModeconnectError, TypeError, ValueError, RuntimeError):
            continue
        if grown.keys() != base.keys():
            continue
        moved = {
            (k, ax)
            for k in base
            for ax, (x, y) in enumerate(zip(base[k], grown[k], strict=False))
            if x != y
        }
        groups = tuple(dict.fromkeys(owned[m].name for m in moved if m in owned))
        if moved and all(m in owned for m in moved):
            slots[(key, index)] = groups
    return slots


def fused_kwargs(
    kwargs: Mapping[str, Any], slots: Mapping[Slot, Sequence[str]], widths: Mapping[str, int]
) -> dict[str, Any]:
    """Model 0's constructor keywords with each width slot set to its groups' fused width.

    >>> fused_kwargs({"hidden": [64, 64], "in_features": 64}, {("hidden", 0): ["P0"],
    ...              ("hidden", 1): ["P1"]}, {"P0": 48, "P1": 40})
    {'hidden': [48, 40], 'in_features': 64}
    """
    out = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in kwargs.items()}
    for slot, groups in slots.items():
        targets = sorted({widths[g] for g in groups})
        if len(targets) != 1:
            name = slot[0] if slot[1] is None else f"{slot[0]}[{slot[1]}]"
            raise ModeconnectError(
                f"model keyword {name} sets the width of groups {list(groups)}, which get "
                f"widths {targets}; give those groups one width (--width)"
            )
        out = _with(out, slot, targets[0])
    return out


def _other(path: Path, options: MergeOptions, ref: str) -> tuple[Checkpoint, nn.Module]:
    ckpt = load_checkpoint(path)
    if ckpt.lazy:
        raise ModeconnectError(
            f"{path}: fusing checkpoint directories is not supported; save the model as a "
            ".pt or .safetensors file"
        )
    src = options.sources
    arch = resolve_model([ckpt], src.model, src.model_kwargs, trust=src.trust)
    if arch.ref != ref:
        raise ModeconnectError(
            f"{path}: names model {arch.ref} but the first checkpoint names {ref}; fused "
            "models must come from one architecture family (one constructor)"
        )
    check_state_dict(arch.model, ckpt)
    return in_model_dtypes(arch.model, ckpt), arch.model


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
    if o.reference is not None or o.bn != "none":
        raise ModeconnectError(
            f"merge --method {o.method}: --reference and --bn apply to permutation merges; "
            "leave them out"
        )
    given = {k: v for k, v in o.method_options.items() if k not in ("seed", "max_rounds")}
    chosen = fusion_options(o.method, given)
    widths = parse_widths(o.width)
    w = normalize_weights(o.weights, len(paths))
    session = open_session(
        paths[:1], o, extra_inputs=list(paths[1:]),
        outputs=[("--out", o.out, "checkpoint"), ("--json", o.json_path, "json")],
    )  # fmt: skip
    if session.lazy:
        raise ModeconnectError(
            f"{session.paths[0]}: fusing checkpoint directories is not supported; save the "
            "model as a .pt or .safetensors file"
        )
    others = [_other(Path(p), o, session.model_ref) for p in paths[1:]]
    ckpts = [session.checkpoints[0], *(c for c, _ in others)]
    models = [session.model, *(m for _, m in others)]
    sds: list[Mapping[str, Tensor]] = [c.state_dict for c in ckpts]
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
    kwargs = fused_kwargs(ckpts[0].model_kwargs, slots, result.widths)
    target = resolve_model(ckpts[:1], session.model_ref, kwargs, trust=o.sources.trust).model
    _check_target(target, result.state_dict, session.model_ref, kwargs)
    report = MergeReport(tuple(c.path for c in ckpts), session.model_ref, kwargs, result)
    if session.data is not None:
        with session.timings.phase("evaluation"):
            inputs = tuple(
                evaluate(m, c.state_dict, session.data) for m, c in zip(models, ckpts, strict=True)
            )
            report = replace(
                report, inputs=inputs, merged=evaluate(target, result.state_dict, session.data)
            )
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
        fill = checkpoint_writer(
            written["out"], restore_dtypes(result.state_dict, ckpts[0].dtypes),
            model_ref=session.model_ref, model_kwargs=kwargs, metadata=meta,
        )  # fmt: skip
        staging.write(written["out"], fill)
        if "--json" in plan:
            staging.write(written["json"], json_writer(replace(report, written=written).to_dict()))
    return replace(report, written=written, timings=session.timings.to_dict())


def _check_target(
    model: nn.Module, state_dict: Mapping[str, Tensor], ref: str, kwargs: Mapping[str, Any]
) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, t in state_dict.items():
        if expected.get(key) != tuple(t.shape):
            raise ModeconnectError(
                f"{ref} with kwargs {dict(kwargs)} has {key!r} of shape {expected.get(key)} but "
                f"the fusion made {tuple(t.shape)}; the constructor's keywords do not set these "
                "widths, so the output cannot name its model"
            )
