"""Study 3: BatchNorm reset and REPAIR recover the interpolated network (Jordan et al. 2023).

Jordan et al. (2023, "REPAIR: REnormalizing Permuted Activations for Interpolation
Repair") find that much of the barrier left after alignment is *variance collapse*:
the hidden units of the interpolated network have smaller variance than the
endpoints'. Resetting BatchNorm statistics fixes it for BatchNorm nets; REPAIR
(rescaling each unit to the interpolated endpoint statistics) for nets without it,
plain or LayerNorm. Here: 4-hidden-layer MLPs on the 8x8 digits, plain, with
LayerNorm and with BatchNorm, widths 32 and 128, aligned by weight matching;
``lerp`` loss barriers on the test split without correction and with the
correction that fits the net (``--bn reset`` / ``--bn repair``).
Run from the repository root (about two minutes on one core)::

    python examples/science_bn_repair.py --out runs/science/bn_repair
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
from science_common import digits, main, norm_mlp, table, train

import modeconnect as mc
from modeconnect.figures import new_figure

NORMS = {"none": "repair", "layer": "repair", "batch": "reset"}  # norm -> its correction
FULL: dict[str, Any] = {
    "widths": [32, 128],
    "pairs": [(1, 2), (3, 4), (5, 6)],
    "epochs": 20,
    "depth": 4,
    "lr": 0.05,
}
QUICK: dict[str, Any] = {"widths": [32], "pairs": [(1, 2)], "epochs": 12, "depth": 4, "lr": 0.05}


def measure(
    norm: str, width: int, seeds: tuple[int, int], config: dict[str, Any]
) -> dict[str, Any]:
    """Naive and aligned barriers without and with the correction, for one pair."""
    train_data, test_data = digits("train"), digits("test")

    def make() -> torch.nn.Module:
        return norm_mlp([width] * config["depth"], norm)

    a, b = (train(make, s, train_data, epochs=config["epochs"], lr=config["lr"]) for s in seeds)
    out: dict[str, Any] = {"norm": norm, "width": width, "seeds": list(seeds)}
    for mode in ("none", NORMS[norm]):
        study = mc.barrier_study(make(), a, b, test=test_data, train=train_data, steps=11, bn=mode)
        key = "plain" if mode == "none" else "corrected"
        for pair in ("naive", "aligned"):
            result = getattr(study, pair).test
            out[f"{pair}_{key}"] = result.barriers["lerp"].loss
            out[f"{pair}_{key}_mid_acc"] = result.midpoint.accuracy
    start, end = study.naive.test.endpoints
    out["endpoint_acc"] = (start.accuracy + end.accuracy) / 2
    out["correction"] = NORMS[norm]
    return out


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for norm in NORMS:
        for width in sorted({r["width"] for r in runs}):
            group = [r for r in runs if r["norm"] == norm and r["width"] == width]
            row: dict[str, Any] = {"norm": norm, "width": width, "correction": NORMS[norm]}
            for key in [k for k, v in group[0].items() if isinstance(v, float)]:
                row[key] = statistics.fmean(r[key] for r in group)
            row["recovered"] = 1 - row["aligned_corrected"] / row["aligned_plain"]
            per_pair = [1 - r["aligned_corrected"] / r["aligned_plain"] for r in group]
            row["pairs"] = len(group)
            row["recovered_std"] = statistics.stdev(per_pair) if len(group) > 1 else 0.0
            rows.append(row)
    return rows


def figure(rows: list[dict[str, Any]]) -> Any:
    fig, (ax,) = new_figure(7.0, 4.0)
    labels = [f"{r['norm']}\nw={r['width']}" for r in rows]
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["aligned_plain"] for r in rows], 0.4, label="aligned")
    ax.bar([x + 0.2 for x in xs], [r["aligned_corrected"] for r in rows], 0.4,
           label="aligned + reset (BN) / REPAIR")  # fmt: skip
    ax.set_xticks(list(xs), labels)
    ax.set(ylabel="lerp loss barrier (nats)", title="BatchNorm reset and REPAIR, digits MLPs")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def run(quick: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    config = QUICK if quick else FULL
    runs = [
        measure(norm, width, tuple(seeds), config)
        for norm in NORMS
        for width in config["widths"]
        for seeds in config["pairs"]
    ]
    rows = summarise(runs)
    seeds = sorted({s for pair in config["pairs"] for s in pair})
    record = {"study": "bn_repair", "config": config, "seeds": seeds, "runs": runs,
              "summary": rows}  # fmt: skip
    return record, draw(record)


def draw(record: dict[str, Any]) -> dict[str, Any]:
    """The figure, from the stored record."""
    return {"bn_repair": figure(record["summary"])}


def report(record: dict[str, Any]) -> str:
    return table(
        [[r["norm"], r["width"], r["correction"], f"{r['endpoint_acc']:.1%}",
          f"{r['naive_plain']:.3f} → {r['naive_corrected']:.3f}",
          f"{r['aligned_plain']:.3f} → {r['aligned_corrected']:.3f}",
          f"{r['recovered']:.0%} ± {r['recovered_std']:.0%}",
          f"{r['aligned_plain_mid_acc']:.1%} → {r['aligned_corrected_mid_acc']:.1%}"]
         for r in record["summary"]],
        ["norm", "width", "correction", "endpoint acc", "naive barrier", "aligned barrier",
         "aligned barrier removed (± sd over pairs)", "aligned acc at α=0.5"],
    )  # fmt: skip


if __name__ == "__main__":
    main(__doc__, "bn_repair", run, report, draw)
