"""Merging models that are not the same, on the digits: four studies, several seeds.

1. **ZipIt! on a class split**: A trained on digits 0-4, B on 5-9 (10-way heads), with
   partial zipping at each depth.
2. **Width fusion**: hidden 2x64 with 2x32, fused at 32, 48 and 64.
3. **Self-merge compression**: one 2x128 model zipped (or OT-fused) down to 96..16 units,
   without retraining and after one epoch of training.
4. **N-way**: 4 models of one width, MergeMany (weight matching) against the universe
   basis (C2M3-style), with the cycle-consistency error of pairwise maps.

Every fused model is the evaluated object: no equivalence guard applies to it.
``python examples/science_merging.py --out results`` writes ``results/merging_*.json``.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from science_common import ROOT, digits, table, train

sys.path.insert(0, str(ROOT))

import modeconnect as mc  # noqa: E402
from modeconnect.fusion import cycle_error, fuse  # noqa: E402
from modeconnect.matching import match_weights  # noqa: E402
from modeconnect.models import mlp  # noqa: E402
from modeconnect.provenance import write_result  # noqa: E402

StateDict = dict[str, torch.Tensor]
GUARD = "not applicable: each merged model is the evaluated object"


def net(width: int) -> torch.nn.Module:
    return mlp(64, [width, width], 10)


def accuracy(width: int, sd: StateDict, batches: Sequence[Any]) -> float:
    model = net(width)
    model.load_state_dict(sd)
    model.eval()
    with torch.no_grad():
        right = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    return right / sum(len(y) for _, y in batches)


def accuracy_of(widths: dict[str, int], sd: StateDict, batches: Sequence[Any]) -> float:
    """Accuracy of an mlp whose two hidden groups have ``widths`` (P0, P1)."""
    model = mlp(64, [widths["P0"], widths["P1"]], 10)
    model.load_state_dict(sd)
    with torch.no_grad():
        right = sum(int((model.eval()(x).argmax(1) == y).sum()) for x, y in batches)
    return right / sum(len(y) for _, y in batches)


def ensemble(members: Sequence[tuple[int, StateDict]], batches: Sequence[Any]) -> float:
    """Accuracy of the average of the members' softmax outputs."""
    right = 0
    for x, y in batches:
        probs = 0
        for width, sd in members:
            model = net(width)
            model.load_state_dict(sd)
            with torch.no_grad():
                probs = probs + F.softmax(model.eval()(x), dim=1)
        right += int((probs.argmax(1) == y).sum())  # type: ignore[union-attr]
    return right / sum(len(y) for _, y in batches)


def only(batches: Sequence[Any], keep: Callable[[torch.Tensor], torch.Tensor]) -> list[Any]:
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    mask = keep(y)
    return [(x[mask], y[mask])]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def summarise(runs: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {k: summary([r[k] for r in runs]) for k in runs[0]}


def weight_merge(width: int, sds: Sequence[StateDict], train_batches: Any) -> StateDict:
    return mc.merge(net(width), list(sds), method="weight", data=train_batches).state_dict


# --------------------------------------------------------------------------- studies


def class_split(seeds: Sequence[int], epochs: int, width: int, tr: Any, te: Any) -> dict:
    runs = []
    low = only(tr, lambda y: y < 5)
    high = only(tr, lambda y: y >= 5)
    for seed in seeds:
        a = train(lambda: net(width), 100 + seed, low, epochs=epochs)
        b = train(lambda: net(width), 200 + seed, high, epochs=epochs)
        model = net(width)
        row = {
            "A (0-4)": accuracy(width, a, te),
            "B (5-9)": accuracy(width, b, te),
            "ensemble (mean softmax)": ensemble([(width, a), (width, b)], te),
            "plain average": accuracy(width, mc.merge(model, [a, b], method="none").state_dict, te),
            "weight matching + average": accuracy(width, weight_merge(width, [a, b], tr), te),
        }
        for beta in (0.0, 0.5, 1.0):
            z = fuse([model, model], [a, b], data=tr, method="zip", beta=beta)
            row[f"zip (beta {beta:g})"] = accuracy(width, z.state_dict, te)
        row["otfusion soft"] = accuracy(width, fuse([model, model], [a, b], data=tr).state_dict, te)
        for depth in (0, 1):  # partial zipping: 0 groups zipped (ensemble), 1 of 2
            part = fuse([model, model], [a, b], data=tr, method="zip", zip_until=depth)
            row[f"zip until depth {depth}"] = accuracy_of(part.widths, part.state_dict, te)
        cca = fuse([model, model], [a, b], data=tr, method="cca")
        row["cca"] = accuracy(width, cca.state_dict, te)
        runs.append(row)
    return {"width": width, "accuracy": summarise(runs), "runs": runs}


def width_fusion(
    seeds: Sequence[int], epochs: int, wide: int, narrow: int, tr: Any, te: Any
) -> dict:
    runs = []
    targets = [narrow, (wide + narrow) // 2, wide]
    for seed in seeds:
        a = train(lambda: net(wide), 300 + seed, tr, epochs=epochs)
        b = train(lambda: net(narrow), 400 + seed, tr, epochs=epochs)
        models = [net(wide), net(narrow)]
        row = {
            f"A ({wide})": accuracy(wide, a, te),
            f"B ({narrow})": accuracy(narrow, b, te),
            "better parent": max(accuracy(wide, a, te), accuracy(narrow, b, te)),
            "ensemble": ensemble([(wide, a), (narrow, b)], te),
        }
        for t in targets:
            for name, kw in (("otfusion soft", {}), ("otfusion hard", {"transport": "hard"}),
                             ("zip", {"method": "zip"})):  # fmt: skip
                out = fuse(models, [a, b], data=tr, widths=t, **kw)
                row[f"{name} @ {t}"] = accuracy(t, out.state_dict, te)
        row[f"cca @ {wide}"] = accuracy(
            wide, fuse(models, [a, b], data=tr, method="cca").state_dict, te
        )
        runs.append(row)
    return {"widths": [wide, narrow], "targets": targets, "accuracy": summarise(runs), "runs": runs}


def repaired(width: int, sd: StateDict, tr: Any, seed: int) -> StateDict:
    """One epoch of SGD (lr 0.01, momentum 0.9) from ``sd``."""
    model = net(width)
    model.load_state_dict(sd)
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.cat([b[0] for b in tr])
    y = torch.cat([b[1] for b in tr])
    model.train()
    for idx in torch.randperm(len(y)).split(32):
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def compression(
    seeds: Sequence[int], epochs: int, width: int, targets: Sequence[int], tr: Any, te: Any
) -> dict:
    runs = []
    for seed in seeds:
        a = train(lambda: net(width), 500 + seed, tr, epochs=epochs)
        row = {f"original ({width})": accuracy(width, a, te)}
        for t in targets:
            for method in ("zip", "otfusion"):
                out = fuse([net(width)], [a], data=tr, method=method, widths=t).state_dict
                row[f"{method} @ {t}"] = accuracy(t, out, te)
                row[f"{method} @ {t} + 1 epoch"] = accuracy(t, repaired(t, out, tr, seed), te)
            row[f"trained from scratch @ {t}"] = accuracy(
                t, train(lambda t=t: net(t), 600 + seed, tr, epochs=epochs), te
            )
        runs.append(row)
    return {"width": width, "targets": list(targets), "accuracy": summarise(runs), "runs": runs}


def _direct_maps(
    spec: Any, sds: Sequence[StateDict], group: str
) -> dict[tuple[int, int], torch.Tensor]:
    """Weight matching of every ordered pair on its own: unit i of j -> unit perm[i] of k."""
    return {
        (j, k): match_weights(spec, sds[j], sds[k]).perm[group]
        for j in range(len(sds)) for k in range(len(sds)) if j != k
    }  # fmt: skip


def _basis_maps(units: Sequence[torch.Tensor]) -> dict[tuple[int, int], torch.Tensor]:
    """Maps induced by a common basis: ``units[j][i]`` is model j's unit at basis position i."""
    return {
        (j, k): units[k][torch.argsort(units[j])]
        for j in range(len(units)) for k in range(len(units)) if j != k
    }  # fmt: skip


def _disagreement(a: dict, b: dict) -> float:
    return statistics.fmean(float((a[key] != b[key]).double().mean()) for key in a)


def n_way(seeds: Sequence[int], epochs: int, width: int, n: int, tr: Any, te: Any) -> dict:
    runs, cycles = [], []
    for seed in seeds:
        sds = [train(lambda: net(width), 700 + 10 * seed + j, tr, epochs=epochs) for j in range(n)]
        model = net(width)
        spec = mc.derive_spec(model, (tr[0][0][:2],))
        many = mc.merge(model, sds, method="weight", data=tr)
        uni = fuse([model] * n, sds, data=tr, method="universe")
        row = {
            "best endpoint": max(accuracy(width, sd, te) for sd in sds),
            "mean endpoint": statistics.fmean(accuracy(width, sd, te) for sd in sds),
            "ensemble": ensemble([(width, sd) for sd in sds], te),
            "plain average": accuracy(width, mc.merge(model, sds, method="none").state_dict, te),
            "MergeMany (weight matching)": accuracy(width, many.state_dict, te),
            "universe (C2M3-style, activations)": accuracy(width, uni.state_dict, te),
            "cca": accuracy(width, fuse([model] * n, sds, data=tr, method="cca").state_dict, te),
        }
        runs.append(row)
        cycle: dict[str, float] = {}
        for group in spec.groups:
            direct = _direct_maps(spec, sds, group)
            mm = _basis_maps([p[group] for p in many.permutations])
            un = _basis_maps([uni.maps[group].unmerge[j].argmax(1).argsort() for j in range(n)])
            cycle[f"{group} direct pairwise weight matching"] = cycle_error(direct, n)
            cycle[f"{group} MergeMany induced maps"] = cycle_error(mm, n)
            cycle[f"{group} universe maps"] = cycle_error(un, n)
            cycle[f"{group} MergeMany vs direct (disagreeing units)"] = _disagreement(mm, direct)
            cycle[f"{group} universe vs direct (disagreeing units)"] = _disagreement(un, direct)
        cycles.append(cycle)
    return {"models": n, "width": width, "accuracy": summarise(runs), "runs": runs,
            "cycle_error": summarise(cycles)}  # fmt: skip


# --------------------------------------------------------------------------- driver


def _plot(numbers: dict[str, Any], path: Path) -> None:
    """Accuracy against width for the self-merge compression study."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc, targets = numbers["accuracy"], numbers["targets"]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    curves = (
        ("zip @ {}", "o-"), ("otfusion @ {}", "s-"), ("zip @ {} + 1 epoch", "o--"),
        ("otfusion @ {} + 1 epoch", "s--"), ("trained from scratch @ {}", "k:"),
    )  # fmt: skip
    for label, fmt in curves:
        means = [acc[label.format(t)]["mean"] for t in targets]
        stds = [acc[label.format(t)]["std"] for t in targets]
        ax.errorbar(targets, means, yerr=stds, fmt=fmt, capsize=3, label=label.format("w"))
    ax.axhline(
        acc[f"original ({numbers['width']})"]["mean"], color="grey", lw=0.8, label="original"
    )
    ax.set(
        xlabel="hidden width", ylabel="test accuracy", xscale="log", title="self-merge compression"
    )
    ax.set_xticks(targets, [str(t) for t in targets])
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(out: Path, quick: bool) -> dict[str, Any]:
    seeds = [0] if quick else [0, 1, 2]
    epochs = 2 if quick else 10
    tr, te = digits("train"), digits("test")
    small = 16 if quick else 64
    record = {
        "class_split": class_split(seeds, epochs, small, tr, te),
        "width_fusion": width_fusion(seeds, epochs, small, small // 2, tr, te),
        "compression": compression(
            seeds, epochs, 2 * small, [small * 3 // 2, small, small // 2, small // 4], tr, te
        ),
        "n_way": n_way(seeds, epochs, small, 4, tr, te),
    }
    _plot(record["compression"], out / "merging_compression.png")
    command = [
        "python",
        "examples/science_merging.py",
        "--out",
        str(out),
        *(["--quick"] if quick else []),
    ]
    for name, numbers in record.items():
        numbers = {**numbers, "equivalence_guard": GUARD, "data": "sklearn digits (shipped split)",
                   "epochs": epochs}  # fmt: skip
        write_result(out / f"merging_{name}.json", numbers, seeds=seeds, command=command)
    return record


def cell(stats: dict[str, float], digits: int = 3) -> str:
    """``mean ± std`` as the docs print it; exactly zero (both) prints as ``0``."""
    if stats["mean"] == 0 and stats["std"] == 0:
        return "0"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def _rows(acc: dict[str, Any], keys: Sequence[str | tuple[str, ...]], digits: int = 3) -> str:
    """One row per entry of ``keys``: a key, or several shown ``a / b / c`` in one cell."""
    rows = [
        [k if isinstance(k, str) else " / ".join(k),
         " / ".join(cell(acc[x], digits) for x in ((k,) if isinstance(k, str) else k))]
        for k in keys
    ]  # fmt: skip
    return table(rows, ["row", "test accuracy"])


def fusions(targets: Sequence[int]) -> list[tuple[str, ...]]:
    """The keys of OT soft / OT hard / zip at each target width (one table row each)."""
    return [(f"otfusion soft @ {t}", f"otfusion hard @ {t}", f"zip @ {t}") for t in targets]


def report_class_split(numbers: dict[str, Any]) -> str:
    """The class-split table of ``docs/science/merging.md`` from its stored result."""
    keys = ["A (0-4)", "B (5-9)", "ensemble (mean softmax)", "plain average",
            "weight matching + average", "otfusion soft", "cca", "zip (beta 0)",
            "zip (beta 0.5)", "zip (beta 1)", "zip until depth 0", "zip until depth 1"]  # fmt: skip
    return _rows(numbers["accuracy"], keys)


def report_width_fusion(numbers: dict[str, Any]) -> str:
    """The width-fusion table of ``docs/science/merging.md`` from its stored result."""
    a, b = numbers["widths"]
    keys = [f"A ({a})", f"B ({b})", "better parent", "ensemble", *fusions(numbers["targets"]),
            f"cca @ {a}"]  # fmt: skip
    return _rows(numbers["accuracy"], keys)


def report_compression(numbers: dict[str, Any]) -> str:
    """The self-merge compression table of ``docs/science/merging.md``."""
    acc, width = numbers["accuracy"], numbers["width"]
    rows = [[f"{width} (original)", cell(acc[f"original ({width})"]), "", "", "", ""]]
    for t in numbers["targets"]:
        rows.append([str(t), *(cell(acc[k.format(t)]) for k in (
            "zip @ {}", "zip @ {} + 1 epoch", "otfusion @ {}", "otfusion @ {} + 1 epoch",
            "trained from scratch @ {}"))])  # fmt: skip
    return table(rows, ["width", "zip", "zip + 1 epoch", "OT", "OT + 1 epoch",
                        "trained from scratch"])  # fmt: skip


def report_n_way(numbers: dict[str, Any], digits: int = 3) -> str:
    """The N-way tables of ``docs/science/merging.md``: accuracies, then cycle errors
    (one column per hidden layer)."""
    acc = numbers["accuracy"]
    ensemble = "ensemble" if "ensemble" in acc else "ensemble (mean softmax)"
    keys = ["best endpoint", "mean endpoint", ensemble, "plain average",
            "MergeMany (weight matching)", "universe (C2M3-style, activations)", "cca"]  # fmt: skip
    cycles = numbers["cycle_error"]
    groups = sorted({k.split()[0] for k in cycles}, key=lambda g: int(g[1:]))
    maps = [
        "direct pairwise weight matching",
        "MergeMany induced maps",
        "universe maps",
        "MergeMany vs direct (disagreeing units)",
        "universe vs direct (disagreeing units)",
    ]
    rows = [[m, *(cell(cycles[f"{g} {m}"]) for g in groups)] for m in maps]
    layers = [f"layer {i + 1}" for i in range(len(groups))]
    return _rows(acc, keys, digits) + "\n\n" + table(rows, ["row", *layers])


REPORTS = {"class_split": report_class_split, "width_fusion": report_width_fusion,
           "compression": report_compression, "n_way": report_n_way}  # fmt: skip


def report(record: dict[str, Any]) -> str:
    """Every study's tables (``record``: study name to its stored numbers)."""
    return "\n\n".join(f"### {name}\n\n" + REPORTS[name](numbers)
                         for name, numbers in record.items())  # fmt: skip


def cli() -> None:
    """``--out FOLDER`` (the four ``merging_*.json`` and the plot), ``--quick``."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the results")
    parser.add_argument("--quick", action="store_true", help="reduced size (for the tests)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(report(run(args.out, args.quick)))


if __name__ == "__main__":
    cli()
