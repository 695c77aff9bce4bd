"""Normalisation scales across a change of width.

RMSNorm and LayerNorm divide by a statistic over every unit of the stream they read,
dead units included: ``rms_n(x) = sqrt(live / n) · rms_live(x)`` when ``n - live`` of
the ``n`` units are identically zero. Fusion assumes a fused unit keeps the magnitude of
the units merged into it, so what changes a norm's output across a change of width is
the share of live units: model ``j``'s norm scales over a group are multiplied by

    r_j = sqrt((n_j / live_j) · (live_t / t))

(``live_t``: the fused units that receive any live unit). A model whose units are all
live, fused into units that are all live, keeps its scales (``r_j = 1``): in a trained
model every residual unit is live, and the fused norms are the merged norms,
uncorrected. A copy of a model padded with dead units (whose norm scales were divided
by ``sqrt(n / live)`` so that it computes the model's function) fuses back to the
model exactly, up to the norm's ``eps``, which the fused model takes from the first
model's configuration.

A module normalises over a group if its output does not change when its input is
scaled (LayerNorm, RMSNorm); its scale is corrected only if its output is linear in
that scale (not so for Gemma's ``1 + weight``), and a width change that would need a
correction it cannot make is refused in one line. No equivalence guard applies to the
fused model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import ModeconnectError
from ..spec import Leaf, PermutationSpec
from .features import JointStatistics
from .maps import GroupMap

StateDict = Mapping[str, Tensor]

__all__ = ["norm_scales", "normalising_weights"]


def _run(module: nn.Module, tensors: Mapping[str, Tensor], x: Tensor) -> Tensor | None:
    try:
        with torch.no_grad():
            out = torch.func.functional_call(module, dict(tensors), (x,))
    except (RuntimeError, TypeError, ValueError, AttributeError, IndexError):
        return None
    return out if isinstance(out, Tensor) and out.shape == x.shape else None


def _own(module: nn.Module, prefix: str, sd: StateDict) -> dict[str, Tensor] | None:
    names = [n for n, _ in module.named_parameters(recurse=False)]
    names += [n for n, _ in module.named_buffers(recurse=False)]
    if any(prefix + n not in sd for n in names):
        return None
    return {n: sd[prefix + n].detach().float().cpu() for n in names}


def _kind(module: nn.Module, prefix: str, sd: StateDict) -> str:
    """``"none"``: not a norm over its width; ``"linear"``: a norm whose output is linear in
    its weight (LayerNorm with its bias zeroed, RMSNorm); ``"other"``: a norm that is not."""
    own = _own(module, prefix, sd)
    if own is None or "weight" not in own or own["weight"].dim() != 1:
        return "none"
    n = own["weight"].shape[0]
    x = torch.randn(4, n, generator=torch.Generator().manual_seed(0)) * 10
    base = _run(module, own, x)
    scaled = _run(module, own, 3 * x)
    if base is None or scaled is None or not torch.allclose(base, scaled, rtol=1e-3, atol=1e-5):
        return "none"
    plain = {k: torch.zeros_like(v) if k == "bias" else v for k, v in own.items()}
    one = _run(module, plain, x)
    two = _run(module, {**plain, "weight": 2 * plain["weight"]}, x)
    if one is None or two is None or not torch.allclose(two, 2 * one, rtol=1e-4, atol=1e-5):
        return "other"
    return "linear"


def normalising_weights(
    model: nn.Module, spec: PermutationSpec, sd: StateDict, group: str
) -> dict[str, str]:
    """The 1-D scale tensors of ``model`` laid over ``group`` alone whose module normalises
    over them, each with its kind (``"linear"`` or ``"other"``, see the module docstring).

    >>> from modeconnect.spec import derive_spec
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    >>> spec = derive_spec(net, (torch.randn(2, 3),))
    >>> normalising_weights(net, spec, net.state_dict(), "P0")
    {'1.weight': 'linear'}
    """
    out: dict[str, str] = {}
    for key, layouts in spec.layouts.items():
        if (
            not key.endswith("weight")
            or len(layouts) != 1
            or not isinstance(layouts[0], Leaf)
            or layouts[0].group != group
            or layouts[0].over is not None
            or key in spec.aliases
        ):
            continue
        prefix = key[: -len("weight")]
        try:
            module = model.get_submodule(prefix.rstrip("."))
        except AttributeError:
            continue
        kind = _kind(module, prefix, sd)
        if kind != "none":
            out[key] = kind
    return out


def _live_target(merge: GroupMap, live: Sequence[Tensor]) -> int:
    got = sum(
        (m[:, alive].abs().sum(1) > 0).double() for m, alive in zip(merge.merge, live, strict=True)
    )
    return int((torch.as_tensor(got) > 0).sum())


def norm_scales(
    models: Sequence[nn.Module],
    specs: Sequence[PermutationSpec],
    names: Sequence[Mapping[str, str]],
    state_dicts: Sequence[StateDict],
    stats: JointStatistics,
    maps: Mapping[str, GroupMap],
    labels: Sequence[str],
) -> list[dict[str, float]]:
    """Per model, the factor ``r_j`` (module docstring) of each normalisation scale whose
    group changes width and whose factor is not 1. Raises
    :class:`~modeconnect.ModeconnectError` (one line) for a norm that needs a factor but
    whose output is not linear in its scale."""
    out: list[dict[str, float]] = [{} for _ in models]
    for g, gmap in maps.items():
        if g not in stats.power:
            continue
        sizes = stats.sizes[g]
        t = gmap.width
        if all(n == t for n in sizes):
            continue
        live = list(stats.live(g).split(list(sizes)))
        live_t = _live_target(gmap, live)
        for j, n in enumerate(sizes):
            count = int(live[j].sum())
            r = math.sqrt((n / count) * (live_t / t)) if count and live_t else 1.0
            if abs(r - 1.0) < 1e-12:
                continue
            group = names[j][g]
            for key, kind in normalising_weights(
                models[j], specs[j], state_dicts[j], group
            ).items():
                if kind != "linear":
                    raise ModeconnectError(
                        f"{labels[j]}: {key!r} normalises over group {g}, which changes width "
                        f"({n} -> {t}) with {n - count} dead units, but its output is not "
                        "proportional to its scale, so it cannot be corrected; fuse at this "
                        "model's width or without dead units"
                    )
                out[j][key] = r
    return out


def rescaled(sd: StateDict, factors: Mapping[str, float]) -> StateDict:
    """``sd`` with the tensors of ``factors`` multiplied by their factor (a new mapping)."""
    if not factors:
        return sd
    return {**sd, **{k: (sd[k].double() * f).to(sd[k].dtype) for k, f in factors.items()}}
