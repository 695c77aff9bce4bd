"""Study 5: sharpness of the endpoints and of the merged model, raw and scale-invariant.

Raw sharpness (the top Hessian eigenvalue, the Hessian trace, worst-case loss
increase in a Euclidean ball) changes under rescalings that leave a ReLU network's
function unchanged (Dinh et al. 2017); adaptive sharpness (Kwon et al. 2021,
ASAM; Andriushchenko et al. 2023) does not. Weight averaging within one basin is
reported to find flatter points (Izmailov et al. 2018, SWA). Here: the shipped
pair (``checkpoints/mlp_a.pt``, ``mlp_b.pt``: 3x512 MLPs on the 8x8 digits),
their merge (midpoint after weight matching, :func:`modeconnect.sharpness.sharpness_study`
with ``merge="weight"``) and A with its first hidden layer rescaled unit by unit
(``c ∈ [1/4, 4]`` in, ``1/c`` out: the same function); every measure on the
training split (Lanczos for the top-3 eigenvalues, Hutchinson with Rademacher
probes for the trace, adaptive ``ρ = 0.5`` and plain ``ρ = 0.05`` in l2, ten
ascent steps). Run from the repository root (about a minute on one core)::

    python examples/science_sharpness.py --out runs/science/sharpness
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from science_common import ROOT, digits, main, table, write

import modeconnect as mc
from modeconnect.figures import sharpness_figure
from modeconnect.sharpness import sharpness_study

FULL: dict[str, Any] = {"k": 3, "trace_samples": 50, "ascent_steps": 10, "max_batches": None}
QUICK: dict[str, Any] = {"k": 1, "trace_samples": 5, "ascent_steps": 3, "max_batches": 1}


def rescaled(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """The first hidden layer's unit ``i`` scaled by ``c_i`` (log-uniform in [1/4, 4]), the next
    layer's input ``i`` by ``1/c_i``: the same function (ReLU is positively homogeneous)."""
    gen = torch.Generator().manual_seed(seed)
    c = torch.exp(torch.empty(state["1.bias"].shape).uniform_(-1.386, 1.386, generator=gen))
    out = dict(state)
    out["1.weight"] = state["1.weight"] * c[:, None]
    out["1.bias"] = state["1.bias"] * c
    out["3.weight"] = state["3.weight"] / c[None, :]
    return out


def run(out: Path, quick: bool) -> dict[str, Any]:
    config = QUICK if quick else FULL
    a, b = mc.load(ROOT / "checkpoints/mlp_a.pt"), mc.load(ROOT / "checkpoints/mlp_b.pt")
    model, _, _ = mc.resolve_model([a, b])
    train_data = digits("train")
    states = {"A": a.state_dict, "B": b.state_dict, "A rescaled": rescaled(a.state_dict)}
    study = sharpness_study(model, states, train_data, merge="weight", seed=0, **config)
    record = {"study": "sharpness", "config": config, "result": study.to_dict()}
    write(out, "sharpness", record, {"sharpness": sharpness_figure(study)})
    return record


def report(record: dict[str, Any]) -> str:
    models = record["result"]["models"]
    return table(
        [[name, f"{m['loss']:.5f}", ", ".join(f"{v:.4f}" for v in m["spectrum"]["eigenvalues"]),
          f"{m['trace']:.3f} ± {m['hutchinson']['std_error']:.3f}", f"{m['plain_sharpness']:.5f}",
          f"{m['adaptive_sharpness']:.5f}"] for name, m in models.items()],
        ["model", "train loss", "top eigenvalues", "trace", "plain (ρ=0.05)", "adaptive (ρ=0.5)"],
    )  # fmt: skip


if __name__ == "__main__":
    main(__doc__, run, report)
