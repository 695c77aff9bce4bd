"""Study 2: layer-wise barriers (Adilova et al. 2024, "Layer-wise linear mode connectivity").

Adilova et al. interpolate one layer at a time (the rest fixed) and find no barrier
along such a path, even between networks whose full interpolation has one; the
barrier appears only when several layers move together, and interpolating layers
1..k cumulatively it builds up in the middle of the network. Here: 6-hidden-layer
MLPs (width 128) on the 8x8 digits; for each of three seed pairs (1, 2), (3, 4), (5, 6)
three settings: the two seeds as trained (``naive``), the same pair after weight
matching (``aligned``), and two runs from the first seed's initialisation with the two
seeds' batch orders (``same init``); mean ± sample standard deviation over the pairs.

Two barrier references are reported (:func:`modeconnect.layerwise_barriers`):

* ``own``: ``max_α [L(path(α)) − ((1−α)L(path(0)) + αL(path(1)))]``, the path's own
  endpoints (one end is a hybrid: layer l from B, the rest from A): the
  convexity of the loss along the layer's path, as Adilova et al. define it;
* ``full``: against the full models' losses ``(1−α)L(A) + αL(B)`` (what
  ``modeconnect barrier --layerwise`` reports);

and the test accuracy of the models at α = 0.5: layer k averaged (the rest from A),
and layers 1..k averaged.

Run from the repository root (a few minutes on one core)::

    python examples/science_layerwise.py --out runs/science/layerwise
"""

from __future__ import annotations

from typing import Any

import torch
from science_common import digits, main, norm_mlp, ordered, pm, summarise_pairs, table, train

import modeconnect as mc
from modeconnect.figures import new_figure

FULL: dict[str, Any] = {"depth": 6, "width": 128, "epochs": 20, "lr": 0.05,
                        "pairs": [(1, 2), (3, 4), (5, 6)]}  # fmt: skip
QUICK: dict[str, Any] = {"depth": 4, "width": 64, "epochs": 8, "lr": 0.05, "pairs": [(1, 2)]}
ORDER = ["naive", "aligned", "same init"]  # the docs' order of the settings


def setups(s: int, t: int) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    """The two trained pairs of seed pair ``(s, t)``: ``(init seed, order seed)`` each.

    >>> setups(1, 2)
    {'naive': ((1, 1), (2, 2)), 'same init': ((1, 1), (1, 2))}
    """
    return {"naive": ((s, s), (t, t)), "same init": ((s, s), (s, t))}


def layer_rows(result: mc.Study, pair: str) -> list[dict[str, Any]]:
    """Per layer: single-layer barriers (own and full reference) and the cumulative one."""
    layerwise = getattr(result, pair).layerwise
    rows = []
    for k, layer in enumerate(layerwise.layers, start=1):
        own = {v: mc.barrier(getattr(layer, v).curve).loss for v in ("from_a", "from_b")}
        rows.append({
            "layer": k,
            "group": layer.group.name,
            "from_a_own": own["from_a"],
            "from_b_own": own["from_b"],
            "from_a_full": layer.from_a.barrier.loss,
            "from_b_full": layer.from_b.barrier.loss,
            "cumulative_full": layer.cumulative.barrier.loss,
            "cumulative_own": mc.barrier(layer.cumulative.curve).loss,
            "single_mid_accuracy": layer.from_a.midpoint.accuracy,
            "single_mid_loss": layer.from_a.midpoint.loss,
            "cumulative_mid_accuracy": layer.cumulative.midpoint.accuracy,
            "cumulative_mid_loss": layer.cumulative.midpoint.loss,
        })  # fmt: skip
    return rows


def run(quick: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    config = QUICK if quick else FULL
    train_data, test_data = digits("train"), digits("test")

    def make() -> torch.nn.Module:
        return norm_mlp([config["width"]] * config["depth"])

    seeds = sorted({s for pair in config["pairs"] for s in pair})
    runs: list[dict[str, Any]] = []
    for pair in config["pairs"]:
        for name, models in setups(*pair).items():
            a, b = (
                train(make, s, train_data, order_seed=o, epochs=config["epochs"], lr=config["lr"])
                for s, o in models
            )
            align = "weight" if name == "naive" else None
            study = mc.barrier_study(make(), a, b, test=test_data, steps=11, layerwise=True,
                                     align=align)  # fmt: skip
            for which in ("naive", "aligned") if align else ("naive",):
                result = getattr(study, which).test
                runs.append({
                    "setting": name if which == "naive" else "aligned",
                    "seeds": list(pair),
                    "full_barrier": result.barriers["lerp"].loss,
                    "a_accuracy": result.endpoints[0].accuracy,
                    "mid_accuracy": result.midpoint.accuracy,
                    "layers": layer_rows(study, which),
                })  # fmt: skip
    record = {"study": "layerwise", "config": config, "seeds": seeds, "runs": runs,
              "settings": summarise(runs)}  # fmt: skip
    return record, draw(record)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per setting: mean and sample standard deviation over the pairs, per layer too."""
    settings = {}
    for head in summarise_pairs(runs, ["setting"]):
        group = [r for r in runs if r["setting"] == head["setting"]]
        layers = summarise_pairs([x for r in group for x in r["layers"]], ["layer", "group"])
        settings[head.pop("setting")] = {**head, "layers": layers}
    return settings


def draw(record: dict[str, Any]) -> dict[str, Any]:
    """The two figures, from the stored record."""
    return {
        "layerwise_barriers": panels(
            record, BARRIER_LINES, ("full_barrier", "whole model"),
            ylabel="lerp loss barrier (nats), rest from A",
        ),
        "layerwise_midpoints": panels(
            record, MID_LINES, ("a_accuracy", "A"),
            ylabel="test accuracy at α = 0.5, rest from A", ylim=(0, 1.02),
        ),
    }  # fmt: skip


BARRIER_LINES = [
    ("from_a_own", "o-", "layer k alone, own ends"),
    ("from_a_full", "s--", "layer k alone, vs A and B"),
    ("cumulative_full", "^-", "layers 1..k, vs A and B"),
]
MID_LINES = [
    ("single_mid_accuracy", "o-", "layer k averaged"),
    ("cumulative_mid_accuracy", "^-", "layers 1..k averaged"),
]


def panels(
    record: dict[str, Any], lines: list[tuple[str, str, str]], reference: tuple[str, str], **axes
) -> Any:
    """One panel per pair: the ``lines`` over the layers, a horizontal ``reference`` line."""
    settings = dict(ordered(record["settings"], ORDER))
    fig, all_axes = new_figure(4.2 * len(settings), 3.8, ncols=len(settings))
    for ax, (label, data) in zip(all_axes, settings.items(), strict=True):
        ks = [r["layer"] for r in data["layers"]]
        for key, style, text in lines:
            ax.plot(ks, [r[key] for r in data["layers"]], style, label=text)
        ax.axhline(data[reference[0]], color="black", linewidth=0.8, label=reference[1])
        ax.set(xlabel="layer k", title=label, **axes)
        ax.grid(alpha=0.3)
    all_axes[0].legend(fontsize="x-small")
    return fig


def report(record: dict[str, Any]) -> str:
    """Per setting, mean ± sample standard deviation over the pairs."""
    parts = []
    for label, data in ordered(record["settings"], ORDER):
        parts.append(
            f"{label} ({data['pairs']} pairs): whole-model barrier "
            f"{pm(data, 'full_barrier', '.3f')}, test accuracy of A "
            f"{pm(data, 'a_accuracy', '.1%')}, of the average {pm(data, 'mid_accuracy', '.1%')}"
        )
        parts.append(table(
            [[r["layer"], f"{pm(r, 'from_a_own', '.3f')} / {pm(r, 'from_b_own', '.3f')}",
              f"{pm(r, 'from_a_full', '.3f')} / {pm(r, 'from_b_full', '.3f')}",
              pm(r, "single_mid_accuracy", ".1%"), pm(r, "cumulative_full", ".3f"),
              pm(r, "cumulative_mid_accuracy", ".1%")]
             for r in data["layers"]],
            ["layer k", "k alone: own ends (rest A / B)", "k alone: vs A and B",
             "acc, k averaged", "1..k: vs A and B", "acc, 1..k averaged"],
        ))  # fmt: skip
    return "\n\n".join(parts)


if __name__ == "__main__":
    main(__doc__, "layerwise", run, report, draw)
