"""Shared pieces of the ``science_*.py`` studies: data, training, output.

Data: scikit-learn's 8x8 digits as shipped in ``checkpoints/digits_{train,test}.pt``
(1297 / 500 images, pixels / 16, stratified split), nothing downloaded. Models:
MLPs with optional LayerNorm or BatchNorm after each hidden Linear, trained with
SGD (momentum 0.9), a cosine schedule and seeded initialisation and batch order.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from modeconnect.provenance import read_result, write_result  # noqa: E402
from modeconnect.training import train_classifier  # noqa: E402

Batches = list[tuple[torch.Tensor, torch.Tensor]]
StateDict = dict[str, torch.Tensor]


def digits(split: str, batch_size: int = 500) -> Batches:
    """The shipped digits split (``"train"`` or ``"test"``) as a list of batches."""
    data = torch.load(ROOT / f"checkpoints/digits_{split}.pt", weights_only=True)
    x, y = data["x"], data["y"]
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size)]


def norm_mlp(hidden: Sequence[int], norm: str = "none", in_features: int = 64) -> nn.Sequential:
    """``Linear -> [LayerNorm|BatchNorm1d] -> ReLU`` per hidden width, then a ``Linear`` head."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers.append(nn.Linear(width, h))
        if norm == "layer":
            layers.append(nn.LayerNorm(h))
        elif norm == "batch":
            layers.append(nn.BatchNorm1d(h))
        layers.append(nn.ReLU())
        width = h
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def train(
    make: Callable[[], nn.Module],
    seed: int,
    data: Batches,
    *,
    epochs: int = 20,
    lr: float = 0.1,
    batch_size: int = 32,
    order_seed: int | None = None,
) -> StateDict:
    """Build ``make()`` under ``torch.manual_seed(seed)`` and train it; returns its state dict.

    SGD with momentum 0.9, ``lr`` with a cosine decay to 0, batches drawn in an
    order seeded by ``order_seed`` (default ``seed``), no weight decay (as
    ``checkpoints/make_checkpoints.py``).
    """
    torch.manual_seed(seed)
    model = make()
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    order = seed if order_seed is None else order_seed
    train_classifier(model, x, y, epochs=epochs, lr=lr, batch_size=batch_size, seed=order)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# The shipped pairs (checkpoints/make_checkpoints.py): 3x512 from seeds 1 and 2, 3x128
# from seeds 11 and 12, trained by an earlier version of the training loop (the current
# one does not reproduce them bit for bit; MLP_RECIPE is their recipe).
SHIPPED = {512: (("mlp_a", "mlp_b"), [1, 2]), 128: (("mlp128_1", "mlp128_2"), [11, 12])}
MLP_RECIPE: dict[str, Any] = {"epochs": 20, "lr": 0.1, "batch_size": 32}


def mlp_pair(pair: Any, hidden: Sequence[int]) -> tuple[list[int], StateDict, StateDict]:
    """A pair of ``modeconnect.models.mlp(64, hidden, 10)`` and its seeds: ``"shipped"``
    loads the shipped checkpoints of that width, a seed pair ``(s, t)`` trains both with
    the shipped pair's recipe (``MLP_RECIPE``)."""
    import modeconnect as mc
    from modeconnect.models import mlp

    if pair == "shipped":
        names, seeds = SHIPPED[hidden[0]]
        a, b = (mc.load(ROOT / f"checkpoints/{n}.pt").state_dict for n in names)
        return list(seeds), a, b
    data = digits("train")
    a, b = (train(lambda: mlp(64, list(hidden), 10), s, data, **MLP_RECIPE) for s in pair)
    return list(pair), a, b


def main(
    doc: str,
    name: str,
    run: Callable[[bool], tuple[dict[str, Any], dict[str, Any]]],
    report: Callable[[dict[str, Any]], str],
    draw: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> None:
    """The command line of every study.

    ``--out`` is a folder (``name.json`` and the PNGs go in it) or a ``.json`` file (the
    stored result, e.g. ``results/science_width.json``; plots go to ``--plots`` if given).
    ``--quick`` runs a reduced size (for the tests). ``--plot-from FILE`` draws the plots
    from a stored result instead of running (studies whose figures need only the stored
    numbers). One torch thread; ``run(quick)`` returns the record and its figures,
    ``report(record)`` is the Markdown table printed.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for JSON and PNG, or the result .json")
    parser.add_argument("--quick", action="store_true", help="reduced size (for the tests)")
    parser.add_argument("--plots", type=Path, help="draw the PNGs here (default: --out folder)")
    parser.add_argument("--plot-from", type=Path, help="draw the plots from this stored result")
    args = parser.parse_args()
    if args.plot_from is not None:
        if draw is None:
            parser.error(f"{name}: its plots need the fitted models; run it with --out instead")
        record = read_result(args.plot_from)
        plots = args.plots or args.plot_from.parent
        save_figures(plots, draw(record))
        print(report(record))
        print(f"drew {plots}/ from {args.plot_from}")
        return
    if args.out is None:
        parser.error("--out is required (a folder, or the result .json)")
    torch.set_num_threads(1)
    start = time.perf_counter()
    record, figures = run(args.quick)
    result, plots = outputs(args.out, name, args.plots)
    write_result(result, record, seeds=record.get("seeds", ()), command=["python", *sys.argv])
    if plots is not None:
        # Drawn from the stored file where the figures need only its numbers.
        save_figures(plots, figures if draw is None else draw(read_result(result)))
    print(report(record))
    print(f"wrote {result} ({time.perf_counter() - start:.1f} s)")


def outputs(out: Path, name: str, plots: Path | None) -> tuple[Path, Path | None]:
    """Where the result and the plots go: ``out`` as a ``.json`` file or as a folder.

    >>> outputs(Path("results/science_width.json"), "width", None)
    (PosixPath('results/science_width.json'), None)
    >>> outputs(Path("runs/width"), "width", None)
    (PosixPath('runs/width/width.json'), PosixPath('runs/width'))
    """
    if out.suffix == ".json":
        return out, plots
    return out / f"{name}.json", plots or out


def save_figures(folder: Path, figures: dict[str, Any]) -> None:
    """``folder/<figure>.png`` for each figure."""
    folder.mkdir(parents=True, exist_ok=True)
    for fig_name, fig in figures.items():
        fig.savefig(folder / f"{fig_name}.png", dpi=110)


def ordered(items: dict[str, Any], order: Sequence[str]) -> list[tuple[str, Any]]:
    """``items`` in the docs' order (a stored result sorts its keys); unknown keys last.

    >>> ordered({"b": 1, "z": 0, "a": 2}, ["b", "a"])
    [('b', 1), ('a', 2), ('z', 0)]
    """
    rank = {k: i for i, k in enumerate(order)}
    return sorted(items.items(), key=lambda kv: (rank.get(kv[0], len(order)), kv[0]))


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A Markdown table (the form docs/science.md uses)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def summarise_pairs(runs: Sequence[dict[str, Any]], by: Sequence[str]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation (n − 1) over seed pairs of every float in ``runs``.

    Rows are grouped by the keys ``by`` (in order of first appearance); each summary row
    has those keys, ``pairs`` (how many runs), ``key`` (the mean) and ``key_std`` (0.0 for
    a single pair) per float ``key``.

    >>> summarise_pairs([{"k": "a", "x": 1.0}, {"k": "a", "x": 3.0}], ["k"])
    [{'k': 'a', 'pairs': 2, 'x': 2.0, 'x_std': 1.4142135623730951}]
    """
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    rows = []
    for key, group in groups.items():
        row: dict[str, Any] = {**dict(zip(by, key, strict=True)), "pairs": len(group)}
        for name in [k for k, v in group[0].items() if isinstance(v, float)]:
            values = [r[name] for r in group]
            row[name] = statistics.fmean(values)
            row[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def pm(row: dict[str, Any], key: str, spec: str) -> str:
    """``row[key] ± row[key_std]`` in format ``spec`` (a summary row of :func:`summarise_pairs`).

    >>> pm({"x": 0.5, "x_std": 0.25}, "x", ".1%")
    '50.0% ± 25.0%'
    """
    return f"{row[key]:{spec}} ± {row[key + '_std']:{spec}}"
