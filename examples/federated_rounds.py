"""Multi-round FedAvg against AlignedFedAvg on non-IID digits: when does alignment pay?

In one-shot merging, clients trained apart from different initialisations hold their
hidden units in unrelated orders, and aligning them first is what makes the average
work (``examples/federated_digits.py``). In multi-round FedAvg (McMahan et al. 2017)
every client starts each round from the global model, so units drift apart only as
far as ``local-epochs`` of training on a skewed share lets them. This study measures
whether aligning each client to the round's global model before averaging
(:class:`modeconnect.integrations.flower.AlignedFedAvg`) changes the outcome:

- 4 clients, non-IID shares of the 8x8 digits, Dirichlet α in {0.1, 0.5};
- local epochs E in {1, 5, 20}; 20 rounds; seeds 0, 1, 2 (the seed fixes the
  initial model, the partition and every batch order, so the two strategies see
  the same clients and differ only in aggregation);
- recorded per round: central test accuracy and loss, the server's wall time for
  aggregating (aligning + averaging), and the share of hidden units that the
  alignment moved;
- and the one-shot case: each client trains E=20 epochs from its own initialisation,
  then one merge, plain against aligned (MergeMany among the clients).

It runs the Flower App's own code in this process, without a SuperLink: the data,
the partition, the model and the local training come from
``examples/flower_app/digits_app/task.py``, and aggregation is the strategy's
``AlignedFedAvg.aggregate_state_dicts`` with the round's global model as reference,
as in the App's ServerApp. ``method="none"`` is plain FedAvg through the same call.

Run it (about 4 minutes on one core; ``--quick``: seconds)::

    python examples/federated_rounds.py --out results/federated_rounds

It writes ``federated_rounds.json`` (every round of every run, and the summary
tables) and ``federated_rounds.png`` (accuracy per round) under ``--out``, and
prints the tables in Markdown.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "flower_app"))  # the App's task module

from digits_app.task import (  # noqa: E402
    IN_FEATURES,
    Settings,
    Split,
    build_model,
    client_data,
    client_seed,
    load_digits_split,
    train,
)

import modeconnect as mc  # noqa: E402
from modeconnect.evaluation import Metrics, evaluate  # noqa: E402
from modeconnect.integrations.flower import AlignedFedAvg  # noqa: E402
from modeconnect.merging import merge  # noqa: E402
from modeconnect.provenance import read_result, write_result  # noqa: E402

CLIENTS = 4
METHODS = {"FedAvg": "none", "AlignedFedAvg": "weight"}
StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Round:
    """One round of one run: central test metrics and what the server spent."""

    round: int
    accuracy: float
    loss: float
    aggregation_seconds: float | None = None
    moved_units: float | None = None  # share of hidden units the alignment permuted


def _clone(sd: dict[str, torch.Tensor]) -> StateDict:
    return {k: v.detach().clone() for k, v in sd.items()}


def _test_metrics(model: torch.nn.Module, sd: StateDict, test: Split) -> Metrics:
    return evaluate(model, sd, [(test.x, test.y)])


def simulate(settings: Settings, clients: int = CLIENTS) -> list[Round]:
    """The App's federated rounds in this process; round 0 is the initial model.

    Same initial model (``torch.manual_seed(seed)``), shares, local training and
    strategy as ``digits_app``'s ServerApp and ClientApp.
    """
    torch.manual_seed(settings.seed)
    model = build_model(settings.hidden)
    spec = mc.derive_spec(model, (torch.zeros(2, IN_FEATURES),))
    strategy = AlignedFedAvg(model, method=settings.method, align_options={"spec": spec})
    shares = [client_data(k, clients, settings.alpha, settings.seed)[0] for k in range(clients)]
    counts = [len(s) for s in shares]
    _, test = load_digits_split()
    global_sd = _clone(model.state_dict())
    m = _test_metrics(model, global_sd, test)
    history = [Round(0, m.accuracy, m.loss)]
    for r in range(1, settings.num_server_rounds + 1):
        local_sds = [
            _local_update(settings, global_sd, share, client_seed(settings.seed, r, k))
            for k, share in enumerate(shares)
        ]
        strategy.global_arrays = _array_record(global_sd)
        start = time.perf_counter()
        new_sd = strategy.aggregate_state_dicts(local_sds, counts)
        seconds = time.perf_counter() - start
        moved = None
        if settings.method != "none":
            moved = _moved_units(model, local_sds, counts, global_sd, spec, settings.method)
        global_sd = new_sd
        m = _test_metrics(model, global_sd, test)
        history.append(Round(r, m.accuracy, m.loss, seconds, moved))
    return history


def _local_update(settings: Settings, global_sd: StateDict, share: Split, seed: int) -> StateDict:
    local = build_model(settings.hidden)
    local.load_state_dict(global_sd)
    train(local, share, settings.local_epochs, settings.lr, seed)
    return _clone(local.state_dict())


def _array_record(sd: StateDict) -> Any:
    from flwr.app import ArrayRecord

    return ArrayRecord(sd)


def _moved_units(
    model: torch.nn.Module,
    sds: list[StateDict],
    counts: list[int],
    reference: StateDict,
    spec: Any,
    method: str,
) -> float:
    """Share of hidden units (over clients and groups) that alignment did not leave in place.

    A second, untimed merge with the same inputs; the strategy returns only weights.
    """
    result = merge(model, sds, weights=counts, reference=reference, spec=spec, method=method)
    moved = total = 0
    for perm in result.permutations:
        for p in perm.values():
            if p.dim() == 1:
                moved += int((p != torch.arange(len(p))).sum())
                total += len(p)
    return moved / total if total else 0.0


def one_shot(
    alpha: float, seed: int, epochs: int, hidden: Sequence[int], lr: float
) -> dict[str, Any]:
    """Clients trained apart from their own initialisations, merged once, both ways."""
    shares = [client_data(k, CLIENTS, alpha, seed)[0] for k in range(CLIENTS)]
    counts = [len(s) for s in shares]
    _, test = load_digits_split()
    sds = []
    for k, share in enumerate(shares):
        torch.manual_seed(1000 * (seed + 1) + k)  # a different init per client
        local = build_model(hidden)
        train(local, share, epochs, lr, client_seed(seed, 0, k))
        sds.append(_clone(local.state_dict()))
    model = build_model(hidden)
    spec = mc.derive_spec(model, (torch.zeros(2, IN_FEATURES),))
    out: dict[str, Any] = {
        "alpha": alpha,
        "seed": seed,
        "epochs": epochs,
        "counts": counts,
        "clients": [_test_metrics(model, sd, test).accuracy for sd in sds],
    }
    for name, method in METHODS.items():
        strategy = AlignedFedAvg(
            model, method=method, reference="clients", align_options={"spec": spec}
        )
        start = time.perf_counter()
        merged = strategy.aggregate_state_dicts(sds, counts)
        out[name] = _test_metrics(model, merged, test).accuracy
        out[f"{name}_seconds"] = time.perf_counter() - start
    return out


# --------------------------------------------------------------------------- summary


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _pm(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    mean, std = _mean_std([v * scale for v in values])
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (α, E): final and best accuracy per strategy, paired differences."""
    rows = []
    keys = sorted({(r["alpha"], r["epochs"]) for r in runs})
    for alpha, epochs in keys:
        row: dict[str, Any] = {"alpha": alpha, "epochs": epochs}
        by = {
            name: sorted(
                (
                    r
                    for r in runs
                    if (r["alpha"], r["epochs"], r["strategy"]) == (alpha, epochs, name)
                ),
                key=lambda r: r["seed"],
            )
            for name in METHODS
        }
        for name, rs in by.items():
            accs = [[x["accuracy"] for x in r["rounds"][1:]] for r in rs]
            aggs = [x["aggregation_seconds"] for r in rs for x in r["rounds"][1:]]
            row[name] = {
                "final": [a[-1] for a in accs],
                "best": [max(a) for a in accs],
                "round1": [a[0] for a in accs],
                "aggregation_ms": 1000 * statistics.median(aggs),
            }
            moved = [
                x["moved_units"]
                for r in rs
                for x in r["rounds"][1:]
                if x["moved_units"] is not None
            ]
            if moved:
                row[name]["moved_units"] = statistics.fmean(moved)
                row[name]["rounds_with_moves"] = [sum(v > 0 for v in moved), len(moved)]
        a, f = row["AlignedFedAvg"], row["FedAvg"]
        row["final_difference"] = [x - y for x, y in zip(a["final"], f["final"])]
        row["best_difference"] = [x - y for x, y in zip(a["best"], f["best"])]
        rows.append(row)
    return rows


def _moved(row: dict[str, Any]) -> str:
    if "moved_units" not in row:
        return "-"
    with_moves, rounds = row["rounds_with_moves"]
    return f"{100 * row['moved_units']:.2f} % ({with_moves} of {rounds})"


def markdown_tables(rows: list[dict[str, Any]], shots: list[dict[str, Any]]) -> str:
    """The summary as Markdown: test accuracy in %, mean ± std over seeds."""
    lines = [
        "| α | E | FedAvg final | AlignedFedAvg final | Δ final | FedAvg best | "
        "AlignedFedAvg best | Δ best | units moved (rounds with any) | "
        "aggregation ms/round, median (plain / aligned) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f, a = r["FedAvg"], r["AlignedFedAvg"]
        lines.append(
            f"| {r['alpha']} | {r['epochs']} | {_pm(f['final'])} | {_pm(a['final'])} | "
            f"{_pm(r['final_difference'])} | {_pm(f['best'])} | {_pm(a['best'])} | "
            f"{_pm(r['best_difference'])} | {_moved(a)} | "
            f"{f['aggregation_ms']:.1f} / {a['aggregation_ms']:.1f} |"
        )
    lines += [
        "",
        "| α | one-shot, E | clients (mean) | FedAvg | AlignedFedAvg (MergeMany) | Δ |",
        "|---|---|---|---|---|---|",
    ]
    for alpha in sorted({s["alpha"] for s in shots}):
        ss = [s for s in shots if s["alpha"] == alpha]
        clients = [statistics.fmean(s["clients"]) for s in ss]
        plain, aligned = [s["FedAvg"] for s in ss], [s["AlignedFedAvg"] for s in ss]
        diff = [x - y for x, y in zip(aligned, plain)]
        lines.append(
            f"| {alpha} | {ss[0]['epochs']} | {_pm(clients)} | {_pm(plain)} | "
            f"{_pm(aligned)} | {_pm(diff)} |"
        )
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path, title: str) -> None:
    """Test accuracy per round, mean ± std over seeds, one panel per (α, E)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = sorted({r["alpha"] for r in runs})
    epochs = sorted({r["epochs"] for r in runs})
    fig, axes = plt.subplots(
        len(alphas),
        len(epochs),
        figsize=(3.4 * len(epochs), 2.8 * len(alphas)),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    for i, alpha in enumerate(alphas):
        for j, e in enumerate(epochs):
            ax = axes[i][j]
            styles = (
                {"color": "tab:gray", "lw": 2.5},
                {"color": "tab:blue", "lw": 1.2, "ls": "--"},
            )
            for name, style in zip(METHODS, styles):
                rs = [
                    r for r in runs if (r["alpha"], r["epochs"], r["strategy"]) == (alpha, e, name)
                ]
                acc = torch.tensor([[x["accuracy"] for x in r["rounds"]] for r in rs]) * 100
                mean, std = acc.mean(0), acc.std(0) if len(rs) > 1 else torch.zeros(acc.shape[1])
                x = torch.arange(acc.shape[1])
                ax.plot(x, mean, label=name, **style)
                ax.fill_between(x, mean - std, mean + std, color=style["color"], alpha=0.15, lw=0)
            ax.set_title(f"α = {alpha}, E = {e}", fontsize=9)
            ax.grid(alpha=0.3)
            if i == len(alphas) - 1:
                ax.set_xlabel("round")
            if j == 0:
                ax.set_ylabel("test accuracy (%)")
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="folder for the JSON and the plot, or the result .json")
    p.add_argument("--plot", type=Path, help="draw the plot here (default: in the --out folder)")
    p.add_argument("--plot-from", type=Path, help="draw --plot from this stored result; no run")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--epochs", type=int, nargs="+", default=[1, 5, 20])
    p.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.5])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--hidden", default="128,128,128", help="hidden widths, as in the App")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--one-shot-epochs", type=int, default=20)
    p.add_argument(
        "--quick",
        action="store_true",
        help="2 rounds, E=1, α=0.5, 2 seeds, a 32-unit MLP: a smoke test",
    )
    args = p.parse_args(argv)
    if args.out is None and args.plot_from is None:
        p.error("--out is required (a folder, or the result .json)")
    if args.plot_from is not None and args.plot is None:
        p.error("--plot-from needs --plot (the PNG to draw)")
    if args.quick:
        args.rounds, args.epochs, args.alphas, args.seeds = 2, [1], [0.5], [0, 1]
        args.hidden, args.one_shot_epochs = "32", 2
    return args


def report(record: dict[str, Any]) -> str:
    """The Markdown tables of a stored result (docs/federated.md shows them)."""
    return markdown_tables(record["summary"], record["one_shot"])


def draw(record: dict[str, Any], path: Path) -> None:
    """The accuracy-per-round plot of a stored result."""
    settings = record["settings"]
    hidden = "×".join(map(str, settings["hidden"]))
    title = (
        f"{CLIENTS} clients, non-IID digits, MLP {hidden}, lr {settings['lr']}: FedAvg vs "
        f"AlignedFedAvg (mean ± std over {len(settings['seeds'])} seeds)"
    )
    plot(record["runs"], path, title)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.plot_from is not None:
        record = read_result(args.plot_from)
        draw(record, args.plot)
        print(f"drew {args.plot} from {args.plot_from}")
        return record
    torch.set_num_threads(1)  # tiny models: one thread is fastest on a small, busy CPU
    if args.out.suffix == ".json":
        target, picture = args.out, args.plot
    else:
        target, picture = (
            args.out / "federated_rounds.json",
            args.plot or (args.out / "federated_rounds.png"),
        )
    base = Settings(
        num_server_rounds=args.rounds,
        lr=args.lr,
        hidden=tuple(int(h) for h in args.hidden.split(",")),
    )
    runs, start = [], time.perf_counter()
    for alpha in args.alphas:
        for epochs in args.epochs:
            for seed in args.seeds:
                for name, method in METHODS.items():
                    s = replace(base, alpha=alpha, local_epochs=epochs, seed=seed, method=method)
                    rounds = simulate(s)
                    runs.append(
                        {
                            "alpha": alpha,
                            "epochs": epochs,
                            "seed": seed,
                            "strategy": name,
                            "rounds": [asdict(r) for r in rounds],
                        }
                    )
                    best = max(r.accuracy for r in rounds[1:])
                    print(
                        f"α={alpha} E={epochs:>2} seed={seed} {name:>13}: final "
                        f"{rounds[-1].accuracy:6.2%}  best {best:6.2%}"
                        f"  [{time.perf_counter() - start:6.0f} s]",
                        flush=True,
                    )
    shots = [
        one_shot(alpha, seed, args.one_shot_epochs, base.hidden, args.lr)
        for alpha in args.alphas
        for seed in args.seeds
    ]
    rows = summarise(runs)
    tables = markdown_tables(rows, shots)
    print("\n" + tables)
    result = {
        "settings": {
            "clients": CLIENTS,
            "rounds": args.rounds,
            "epochs": args.epochs,
            "alphas": args.alphas,
            "seeds": args.seeds,
            "hidden": list(base.hidden),
            "lr": args.lr,
            "one_shot_epochs": args.one_shot_epochs,
        },
        "summary": rows,
        "one_shot": shots,
        "runs": runs,
        "markdown": tables,
        "seconds": time.perf_counter() - start,
    }
    write_result(target, result, seeds=args.seeds, command=["python", *sys.argv])
    if picture is not None:
        picture.parent.mkdir(parents=True, exist_ok=True)
        draw(read_result(target), picture)  # the plot is drawn from what was stored
    print(f"\nwrote {target}{f' and {picture}' if picture else ''} in {result['seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
