"""Study 5: sharpness of the endpoints and of the merged model, raw and scale-invariant.

Raw sharpness (the top Hessian eigenvalue, the Hessian trace, worst-case loss
increase in a Euclidean ball) changes under rescalings that leave a ReLU network's
function unchanged (Dinh et al. 2017); adaptive sharpness (Kwon et al. 2021,
ASAM; Andriushchenko et al. 2023) does not. Weight averaging within one basin is
reported to find flatter points (Izmailov et al. 2018, SWA). Here: three seed pairs
(1, 2), (3, 4), (5, 6) of 3x512 and of 3x128 MLPs on the 8x8 digits, trained with the
shipped pairs' recipe (``checkpoints/make_checkpoints.py``); per pair their merge (the
midpoint after weight matching), the merge after two epochs of fine-tuning (SGD, lr
0.01), and for 3x512 A with its first hidden layer rescaled unit by unit (``c ∈ [1/4,
4]`` in, ``1/c`` out: the same function); :func:`modeconnect.curvature.sharpness_study`,
every measure on the training split (Lanczos for the top-3 eigenvalues, Hutchinson with
Rademacher probes for the trace, adaptive ``ρ = 0.5`` and plain ``ρ = 0.05`` in l2, ten
ascent steps); mean ± sample standard deviation over the pairs. ``--quick`` measures
the shipped 3x512 pair (``checkpoints/mlp_a.pt``, ``mlp_b.pt``) with fewer probes.
Run from the repository root (a few minutes on one core)::

    python examples/science_sharpness.py --out runs/science/sharpness
"""

from __future__ import annotations

from typing import Any

import torch
from science_common import MLP_RECIPE, digits, main, mlp_pair, ordered, pm, summarise_pairs, table

import modeconnect as mc
from modeconnect.curvature import sharpness_study
from modeconnect.figures import sharpness_figure
from modeconnect.models import mlp

FULL: dict[str, Any] = {
    "widths": {"3x512": [512] * 3, "3x128": [128] * 3},
    "pairs": [(1, 2), (3, 4), (5, 6)],
    "endpoints": MLP_RECIPE,
    "finetune_epochs": 2,
    "options": {"k": 3, "trace_samples": 50, "ascent_steps": 10, "max_batches": None},
}
QUICK: dict[str, Any] = {
    "widths": {"3x512": [512] * 3},
    "pairs": ["shipped"],
    "finetune_epochs": 0,
    "options": {"k": 1, "trace_samples": 5, "ascent_steps": 3, "max_batches": 1},
}
MEASURES = ["loss", "top_eigenvalue", "trace", "plain_sharpness", "adaptive_sharpness"]


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


def finetune(
    model: torch.nn.Module, state: dict[str, torch.Tensor], data: list, epochs: int
) -> dict[str, torch.Tensor]:
    """``epochs`` of SGD (lr 0.01, momentum 0.9, batch 32, seed 0) from ``state``."""
    torch.manual_seed(0)
    model.load_state_dict(state)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def states_of(
    hidden: list[int], pair: Any, config: dict[str, Any], data: list
) -> tuple[torch.nn.Module, list[int], dict[str, dict[str, torch.Tensor]]]:
    """The model, the pair's seeds and its states: A, B, A rescaled (3x512), the aligned
    midpoint, fine-tuned."""
    seeds, a, b = mlp_pair(pair, hidden)
    model = mlp(64, hidden, 10)
    states = {"A": a, "B": b}
    if hidden[0] == 512:
        states["A rescaled"] = rescaled(a)
    aligned = mc.align(model, a, b, data=data).aligned
    states["merged"] = mc.interpolate(a, aligned, 0.5)
    if config["finetune_epochs"]:
        tuned = finetune(model, states["merged"], data, config["finetune_epochs"])
        states[f"merged + {config['finetune_epochs']} epochs"] = tuned
    return model, seeds, states


def run(quick: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    config = QUICK if quick else FULL
    train_data = digits("train")
    runs, rows, figures, seeds = [], [], {}, set()
    for label, hidden in config["widths"].items():
        for pair in config["pairs"]:
            model, pair_seeds, states = states_of(hidden, pair, config, train_data)
            seeds.update(pair_seeds)
            study = sharpness_study(model, states, train_data, seed=0, **config["options"])
            runs.append({"width": label, "seeds": pair_seeds, **study.to_dict()})
            rows += [{"width": label, "model": name, **{k: float(m[k]) for k in MEASURES}}
                     for name, m in runs[-1]["models"].items()]  # fmt: skip
            if f"sharpness_{label}" not in figures:  # the figures: the first pair
                figures[f"sharpness_{label}"] = sharpness_figure(study)
    results: dict[str, Any] = {}
    for row in summarise_pairs(rows, ["width", "model"]):
        results.setdefault(row.pop("width"), {"models": {}})["models"][row.pop("model")] = row
    record = {"study": "sharpness", "config": config, "seeds": sorted(seeds), "probe_seed": 0,
              "runs": runs, "results": results}  # fmt: skip
    return record, figures


MODELS = ["A", "B", "A rescaled", "merged", "merged + 2 epochs"]


def report(record: dict[str, Any]) -> str:
    """Mean ± sample standard deviation over the pairs, per width and model."""
    return table(
        [[label, name, m["pairs"], pm(m, "loss", ".5f"), pm(m, "top_eigenvalue", ".4f"),
          pm(m, "trace", ".3f"), pm(m, "plain_sharpness", ".5f"),
          pm(m, "adaptive_sharpness", ".5f")]
         for label, result in ordered(record["results"], ["3x512", "3x128"])
         for name, m in ordered(result["models"], MODELS)],
        ["pair", "model", "pairs", "train loss", "top eigenvalue", "trace", "plain (ρ=0.05)",
         "adaptive (ρ=0.5)"],
    )  # fmt: skip


if __name__ == "__main__":
    main(__doc__, "sharpness", run, report)
