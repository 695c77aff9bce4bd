"""Joint activation statistics of N models' units, group by group.

Every model runs on the same batches through its own exported graph
(:class:`~modeconnect.spec.GraphRunner`); at each activation site of a group the
units of all models are concatenated into one feature vector of size ``Σ_j n_j``,
and its mean and co-moment are streamed in float64 (Chan et al.'s pairwise update).
ZipIt! (Stoica et al. 2024) merges on the correlation of these concatenated
features, within and across models; OT fusion takes its ground cost from them.
A group seen at several sites sums its correlations over the sites.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ModeconnectError
from ..matching.activation import Observation, observations
from ..spec import GraphRunner, Leaf, PermutationSpec, Product

StateDict = Mapping[str, Tensor]

__all__ = ["JointStatistics", "joint_statistics"]


class _Moments:
    def __init__(self, m: int) -> None:
        self.count = 0
        self.mean = torch.zeros(m, dtype=torch.float64)
        self.co = torch.zeros(m, m, dtype=torch.float64)

    def update(self, x: Tensor) -> None:
        k = x.shape[0]
        if k == 0:
            return
        mean = x.mean(0)
        d = x - mean
        total = self.count + k
        delta = mean - self.mean
        self.co += d.T @ d + (self.count * k / total) * delta[:, None] * delta[None, :]
        self.mean += delta * (k / total)
        self.count = total


@dataclass(frozen=True)
class JointStatistics:
    """Per group: ``sizes[g]`` (each model's width), the correlation ``(Σn, Σn)`` of the
    concatenated units summed over sites, and each unit's uncentred second moment."""

    sizes: Mapping[str, tuple[int, ...]]
    correlation: Mapping[str, Tensor]
    power: Mapping[str, Tensor]
    sites: Mapping[str, int]
    covariance: Mapping[str, Tensor]

    def live(self, group: str) -> Tensor:
        """Units whose activations are not identically zero (dead-zero units carry no mass)."""
        p = self.power[group]
        return p > 1e-12 * float(p.max().clamp_min(1e-300))


def _correlation(mom: _Moments) -> Tensor:
    var = mom.co.diagonal().clamp_min(0)
    std = var.sqrt()
    floor = 1e-12 * float(std.max().clamp_min(1e-300))
    live = std > floor
    denom = torch.where(live[:, None] & live[None, :], std[:, None] * std[None, :], torch.ones(()))
    corr = torch.where(live[:, None] & live[None, :], mom.co / denom, torch.zeros(()))
    corr = corr.clamp(-1.0, 1.0)
    # Constant units are identical features when their values agree (two dead units, two
    # saturated ones): correlation 1, so ZipIt! merges them first and exactly.
    flat = ~live
    scale = float(mom.mean.abs().max().clamp_min(1e-300))
    same = (mom.mean[:, None] - mom.mean[None, :]).abs() <= 1e-9 * scale
    corr = torch.where(flat[:, None] & flat[None, :] & same, torch.ones(()), corr)
    corr.diagonal().fill_(1.0)
    return corr


def _site_group(obs: Observation) -> str | None:
    """The group whose units ``obs`` shows: a plain leaf's, or the outer group of a product
    of whole blocks (each head with its own axes), shown one feature per block."""
    layout = obs.layout
    if isinstance(layout, Leaf):
        return layout.group if layout.over is None else None
    if isinstance(layout, Product) and isinstance(layout.factors[0], Leaf):
        first = layout.factors[0]
        rest = layout.factors[1:]
        if first.over is None and all(isinstance(f, Leaf) and f.over == first.group for f in rest):
            return first.group
    return None


def _plain(
    obs: Sequence[Observation],
) -> dict[tuple[str, tuple[int, ...]], tuple[str, Observation]]:
    """The sites whose units show one group (:func:`_site_group`): that group and the site."""
    found = {}
    for o in obs:
        group = _site_group(o)
        if group is not None:
            found[(o.node, o.dims)] = (group, o)
    return found


def _features(obs: Observation, x: Tensor) -> Tensor:
    """``(samples, units)``: a plain site's units, or each block's norm (a head's output
    magnitude, unchanged by any map within the head) at a site of whole blocks."""
    units = obs.units(x)
    if not isinstance(obs.layout, Product):
        return units
    blocks = obs.layout.factors[0].size
    return units.reshape(units.shape[0], blocks, -1).norm(dim=-1)


def joint_statistics(
    models: Sequence[nn.Module],
    state_dicts: Sequence[StateDict],
    specs: Sequence[PermutationSpec],
    names: Sequence[Mapping[str, str]],
    data: Iterable[Any] | None,
    *,
    max_batches: int | None = None,
) -> JointStatistics:
    """Stream every model's units at the sites of the groups of ``specs[0]`` over ``data``.

    ``names[j]`` maps group names of ``specs[0]`` to model ``j``'s. A group with no plain
    site (one seen only inside heads or a product with another group) is left out.
    """
    if data is None:
        raise ModeconnectError(
            "fusing models needs activations: pass --train (or --data) on the command "
            "line, or data= to the library"
        )
    runners = [GraphRunner(m) for m in models]
    per_model = [_plain(observations(s)) for s in specs]
    wanted: list[tuple[str, tuple[str, tuple[int, ...]]]] = []
    for site, (g, _) in per_model[0].items():
        if all(site in p and p[site][0] == names[j][g] for j, p in enumerate(per_model)):
            wanted.append((g, site))
    sizes = {
        g: tuple(specs[j].groups[names[j][g]].size for j in range(len(specs))) for g, _ in wanted
    }
    moms = [_Moments(sum(sizes[g])) for g, _ in wanted]
    nodes = list(dict.fromkeys(site[0] for _, site in wanted))
    batches = 0
    for batch in data if max_batches is None else islice(data, max_batches):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        inputs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
        outs = [r.run(sd, inputs, nodes) for r, sd in zip(runners, state_dicts, strict=True)]
        for (_, site), mom in zip(wanted, moms, strict=True):
            units = [_features(per_model[j][site][1], outs[j][site[0]]) for j in range(len(models))]
            mom.update(torch.cat(units, dim=1))
        batches += 1
    if batches == 0:
        raise ModeconnectError("fusing models needs activations, but the data yielded no batch")
    corr: dict[str, Tensor] = {}
    power: dict[str, Tensor] = {}
    cov: dict[str, Tensor] = {}
    count: dict[str, int] = {}
    for (g, _), mom in zip(wanted, moms, strict=True):
        c = _correlation(mom)
        p = mom.co.diagonal() / max(mom.count, 1) + mom.mean**2
        v = mom.co / max(mom.count - 1, 1)
        corr[g] = corr[g] + c if g in corr else c
        power[g] = power[g] + p if g in power else p
        cov[g] = cov[g] + v if g in cov else v
        count[g] = count.get(g, 0) + 1
    return JointStatistics(sizes, corr, power, count, cov)
