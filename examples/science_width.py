"""Study 1: the loss barrier against width, naive and aligned (Entezari et al. 2022; Git Re-Basin).

Entezari et al. (2022) conjecture that, once permutation symmetry is accounted for,
SGD solutions are linearly connected, and that the barrier left after the best
permutation shrinks as networks get wider; Ainsworth et al. (2023, Git Re-Basin,
Fig. 5) show the aligned barrier falling toward zero with width while the naive
one stays high. Here: 3-hidden-layer MLPs of width 16 x {1, 2, 4, 8, 16} on the
8x8 digits, pairs trained from different seeds (initialisation and batch order),
weight matching, ``lerp`` loss barriers on the test and train splits (25 alphas).
Run from the repository root (about a minute on one core)::

    python examples/science_width.py --out runs/science/width

``--quick`` (one pair, three widths, fewer epochs) is for the test suite.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
from science_common import digits, main, norm_mlp, table, train

import modeconnect as mc
from modeconnect.figures import new_figure

BASE = 16
FULL: dict[str, Any] = {
    "multipliers": [1, 2, 4, 8, 16],
    "pairs": [(1, 2), (3, 4), (5, 6), (7, 8)],
    "epochs": 20,
}
QUICK: dict[str, Any] = {"multipliers": [1, 4, 16], "pairs": [(1, 2)], "epochs": 10}


def measure(width: int, seeds: tuple[int, int], epochs: int) -> dict[str, Any]:
    """Naive and aligned barriers of one pair of width-``width`` MLPs."""
    train_data, test_data = digits("train"), digits("test")

    def make() -> torch.nn.Module:
        return norm_mlp([width] * 3)

    a, b = (train(make, s, train_data, epochs=epochs) for s in seeds)
    study = mc.barrier_study(make(), a, b, test=test_data, train=train_data, steps=25)
    out: dict[str, Any] = {"width": width, "seeds": list(seeds)}
    for name, pair in study.pairs.items():
        for split, result in pair.splits.items():
            out[f"{name}_{split}_loss"] = result.barriers["lerp"].loss
            out[f"{name}_{split}_error"] = result.barriers["lerp"].error
    start, end = study.naive.test.endpoints
    out["accuracy"] = [start.accuracy, end.accuracy]
    return out


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and (population) standard deviation over seed pairs, per width."""
    rows = []
    for width in sorted({r["width"] for r in runs}):
        group = [r for r in runs if r["width"] == width]
        row: dict[str, Any] = {"width": width, "pairs": len(group)}
        for key in [k for k in group[0] if k.endswith(("_loss", "_error"))]:
            values = [r[key] for r in group]
            row[key] = statistics.fmean(values)
            row[f"{key}_std"] = statistics.pstdev(values)
        row["accuracy"] = statistics.fmean(a for r in group for a in r["accuracy"])
        rows.append(row)
    return rows


def figure(rows: list[dict[str, Any]]) -> Any:
    fig, (ax,) = new_figure(6.0, 4.0)
    widths = [r["width"] for r in rows]
    for name, color in (("naive", "#d62728"), ("aligned", "#1f77b4")):
        for split, style in (("test", "-"), ("train", "--")):
            key = f"{name}_{split}_loss"
            ax.errorbar(widths, [r[key] for r in rows], yerr=[r[f"{key}_std"] for r in rows],
                        color=color, linestyle=style, marker="o", capsize=3,
                        label=f"{name} ({split})")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.set(xlabel="hidden width (3 layers)", ylabel="lerp loss barrier (nats)",
           title="Barrier against width, digits MLPs")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def run(quick: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    config = QUICK if quick else FULL
    runs = [
        measure(BASE * m, tuple(seeds), config["epochs"])
        for m in config["multipliers"]
        for seeds in config["pairs"]
    ]
    rows = summarise(runs)
    seeds = sorted({s for pair in config["pairs"] for s in pair})
    record = {"study": "width", "config": config, "seeds": seeds, "runs": runs, "summary": rows}
    return record, draw(record)


def draw(record: dict[str, Any]) -> dict[str, Any]:
    """The figure, from the stored record."""
    return {"width": figure(record["summary"])}


def report(record: dict[str, Any]) -> str:
    return table(
        [[r["width"], r["pairs"], f"{r['naive_test_loss']:.3f} ± {r['naive_test_loss_std']:.3f}",
          f"{r['aligned_test_loss']:.4f} ± {r['aligned_test_loss_std']:.4f}",
          f"{r['aligned_train_loss']:.4f}", f"{r['naive_test_error']:.1%}",
          f"{r['aligned_test_error']:.1%}", f"{r['accuracy']:.1%}"]
         for r in record["summary"]],
        ["width", "pairs", "naive loss barrier", "aligned loss barrier", "aligned (train)",
         "naive error barrier", "aligned error barrier", "endpoint acc"],
    )  # fmt: skip


if __name__ == "__main__":
    main(__doc__, "width", run, report, draw)
