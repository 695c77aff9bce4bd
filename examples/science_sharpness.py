"""Study 5: sharpness of the endpoints and of the merged model, raw and scale-invariant.

Raw sharpness (the top Hessian eigenvalue, the Hessian trace, worst-case loss
increase in a Euclidean ball) changes under rescalings that leave a ReLU network's
function unchanged (Dinh et al. 2017); adaptive sharpness (Kwon et al. 2021,
ASAM; Andriushchenko et al. 2023) does not. Weight averaging within one basin is
reported to find flatter points (Izmailov et al. 2018, SWA). Here: the shipped
pair (``checkpoints/mlp_a.pt``, ``mlp_b.pt``: 3x512 MLPs on the 8x8 digits) and
the 3x128 pair ``mlp128_1``, ``mlp128_2``; their merge (the midpoint after weight
matching), the merge after two epochs of fine-tuning (SGD, lr 0.01), and A with its
first hidden layer rescaled unit by unit (``c ∈ [1/4, 4]`` in, ``1/c`` out: the
same function); :func:`modeconnect.curvature.sharpness_study`, every measure on the
training split (Lanczos for the top-3 eigenvalues, Hutchinson with Rademacher
probes for the trace, adaptive ``ρ = 0.5`` and plain ``ρ = 0.05`` in l2, ten
ascent steps). Run from the repository root (about a minute on one core)::

    python examples/science_sharpness.py --out runs/science/sharpness
"""

from __future__ import annotations

from typing import Any

import torch
from science_common import ROOT, digits, main, ordered, table

import modeconnect as mc
from modeconnect.curvature import sharpness_study
from modeconnect.figures import sharpness_figure

FULL: dict[str, Any] = {
    "pairs": {"3x512": ("mlp_a", "mlp_b"), "3x128": ("mlp128_1", "mlp128_2")},
    "finetune_epochs": 2,
    "options": {"k": 3, "trace_samples": 50, "ascent_steps": 10, "max_batches": None},
}
QUICK: dict[str, Any] = {
    "pairs": {"3x512": ("mlp_a", "mlp_b")},
    "finetune_epochs": 0,
    "options": {"k": 1, "trace_samples": 5, "ascent_steps": 3, "max_batches": 1},
}


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


def states_of(pair: tuple[str, str], config: dict[str, Any], data: list) -> tuple[Any, dict]:
    """The model and its states: A, B, A rescaled (3x512), the aligned midpoint, fine-tuned."""
    a, b = (mc.load(ROOT / f"checkpoints/{name}.pt") for name in pair)
    model = mc.resolve_model([a, b]).model
    states = {"A": a.state_dict, "B": b.state_dict}
    if pair[0] == "mlp_a":
        states["A rescaled"] = rescaled(a.state_dict)
    aligned = mc.align(model, a.state_dict, b.state_dict, data=data).aligned
    states["merged"] = mc.interpolate(a.state_dict, aligned, 0.5)
    if config["finetune_epochs"]:
        tuned = finetune(model, states["merged"], data, config["finetune_epochs"])
        states[f"merged + {config['finetune_epochs']} epochs"] = tuned
    return model, states


def run(quick: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    config = QUICK if quick else FULL
    train_data = digits("train")
    results, figures = {}, {}
    for label, pair in config["pairs"].items():
        model, states = states_of(pair, config, train_data)
        study = sharpness_study(model, states, train_data, seed=0, **config["options"])
        results[label] = study.to_dict()
        figures[f"sharpness_{label}"] = sharpness_figure(study)
    record = {"study": "sharpness", "config": config, "seeds": [0], "results": results}
    return record, figures


MODELS = ["A", "B", "A rescaled", "merged", "merged + 2 epochs"]


def report(record: dict[str, Any]) -> str:
    return table(
        [[label, name, f"{m['loss']:.5f}",
          ", ".join(f"{v:.4f}" for v in m["spectrum"]["eigenvalues"]),
          f"{m['trace']:.3f} ± {m['hutchinson']['std_error']:.3f}", f"{m['plain_sharpness']:.5f}",
          f"{m['adaptive_sharpness']:.5f}"]
         for label, result in ordered(record["results"], ["3x512", "3x128"])
         for name, m in ordered(result["models"], MODELS)],
        ["pair", "model", "train loss", "top eigenvalues", "trace", "plain (ρ=0.05)",
         "adaptive (ρ=0.5)"],
    )  # fmt: skip


if __name__ == "__main__":
    main(__doc__, "sharpness", run, report)
