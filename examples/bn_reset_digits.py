"""BatchNorm reset on a pair of small CNNs: without it, interpolation shows a false barrier.

Trains two :func:`modeconnect.models.conv_net` models (Conv-BatchNorm-ReLU) on the
8x8 digits from different seeds (a few seconds on one CPU core), writes them as
checkpoints, and measures the barrier between them with and without recomputing
the BatchNorm statistics at every α (Git Re-Basin, Ainsworth et al. 2023; REPAIR,
Jordan et al. 2023). Interpolated running statistics belong to neither model, so
without the reset even the *aligned* path shows a barrier that is not there.
Run from the repository root::

    python examples/bn_reset_digits.py --out runs/bn

then study the written pair with the CLI (``--pairs 1,2 3,4 5,6`` runs three seed
pairs, the first written to ``--out``, and prints the README's table: mean ± sample
standard deviation over the pairs)::

    modeconnect barrier runs/bn/conv_a.pt runs/bn/conv_b.pt \\
        --data checkpoints/digits_test.pt --train checkpoints/digits_train.pt --bn reset
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from modeconnect.barrier_studies import Study, barrier_study  # noqa: E402
from modeconnect.io.checkpoints import save_checkpoint  # noqa: E402
from modeconnect.io.data import load_data  # noqa: E402
from modeconnect.models import conv_net  # noqa: E402
from modeconnect.provenance import seed_pair, spread, write_result  # noqa: E402
from modeconnect.training import train_classifier  # noqa: E402

MODEL = "modeconnect.models:conv_net"
MODEL_KWARGS: dict[str, Any] = {"in_channels": 1, "channels": [16, 32], "num_classes": 10}
SEEDS = {"a": 1, "b": 2}


def train(seed: int, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 6) -> nn.Module:
    """Train one CNN from ``seed`` (initialisation and batch order): SGD, cosine schedule."""
    torch.manual_seed(seed)
    return train_classifier(conv_net(**MODEL_KWARGS), x, y, epochs=epochs, lr=0.05, seed=seed)


def train_pair(
    *, epochs: int = 6, seeds: tuple[int, int] = (SEEDS["a"], SEEDS["b"])
) -> dict[str, dict[str, torch.Tensor]]:
    """The state dicts of A and B (trained from ``seeds``) on ``checkpoints/digits_train.pt``."""
    data = torch.load(ROOT / "checkpoints/digits_train.pt", weights_only=True)
    models = {name: train(seed, data["x"], data["y"], epochs=epochs)
              for name, seed in zip("ab", seeds, strict=True)}  # fmt: skip
    return {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in models.items()}


def compare(states: dict[str, dict[str, torch.Tensor]], *, steps: int = 11) -> dict[str, Study]:
    """Barrier studies of the pair (naive and weight-matched) without and with BN reset."""
    test = load_data(ROOT / "checkpoints/digits_test.pt", batch_size=500)
    train_batches = load_data(ROOT / "checkpoints/digits_train.pt", batch_size=500)
    net = conv_net(**MODEL_KWARGS)
    return {
        bn: barrier_study(
            net, states["a"], states["b"], test=test, train=train_batches, bn=bn, steps=steps
        )
        for bn in ("none", "reset")
    }


def run(
    out: Path | None = None, *, epochs: int = 6, steps: int = 11,
    seeds: tuple[int, int] = (SEEDS["a"], SEEDS["b"]),
) -> dict[str, Study]:  # fmt: skip
    """Train the pair from ``seeds`` (writing it to ``out`` if given); bn none / reset."""
    states = train_pair(epochs=epochs, seeds=seeds)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name, sd in states.items():
            save_checkpoint(
                out / f"conv_{name}.pt", sd, model_ref=MODEL, model_kwargs=MODEL_KWARGS, force=True
            )
    return compare(states, steps=steps)


def pair_numbers(studies: dict[str, Study]) -> dict[str, Any]:
    """One pair's stored numbers: a row per ``--bn`` and path, the endpoints' accuracy."""
    rows = []
    for bn, study in studies.items():
        for name, pair in study.pairs.items():
            bar, mid = pair.test.barriers["lerp"], pair.test.midpoint
            rows.append({"bn": bn, "path": name, "loss_barrier": bar.loss,
                         "error_barrier": bar.error, "mid_accuracy": mid.accuracy})  # fmt: skip
    a, b = studies["none"].naive.test.endpoints
    return {"rows": rows, "endpoint_accuracy": [a.accuracy, b.accuracy]}


KEYS = ("loss_barrier", "error_barrier", "mid_accuracy")


def summary(pairs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Over the seed pairs: each row's :data:`KEYS` as mean, sample sd (0 for one pair)
    and the value on every pair (pairs in order), and the same for all endpoints' accuracy."""
    first = next(iter(pairs.values()))["rows"]
    rows = [{"bn": r["bn"], "path": r["path"],
             **{k: spread([p["rows"][i][k] for p in pairs.values()]) for k in KEYS}}
            for i, r in enumerate(first)]  # fmt: skip
    ends = [a for p in pairs.values() for a in p["endpoint_accuracy"]]
    return {"rows": rows, "endpoint_accuracy": spread(ends)}


def report(numbers: dict[str, Any]) -> str:
    """The README's table, from the stored numbers: mean ± sd over the seed pairs, and the
    loss barrier on each pair."""
    lines = ["| `--bn` | path | loss barrier | error barrier | acc at α = 0.5 | loss barrier "
             "by pair |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in numbers["summary"]["rows"]:
        loss, error, mid = r["loss_barrier"], r["error_barrier"], r["mid_accuracy"]
        lines.append(
            f"| {r['bn']} | {r['path']} | {loss['mean']:.4f} ± {loss['sd']:.4f} "
            f"| {100 * error['mean']:.2f} ± {100 * error['sd']:.2f} % "
            f"| {100 * mid['mean']:.1f} ± {100 * mid['sd']:.1f} % "
            f"| {', '.join(f'{x:.4f}' for x in loss['pairs'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write conv_a.pt and conv_b.pt here")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=11, help="alphas on each curve")
    parser.add_argument(
        "--pairs",
        nargs="+",
        default=[(1, 2)],
        metavar="A,B",
        type=seed_pair,
        help="seed pairs (the first is written to --out); mean ± sd over them",
    )
    parser.add_argument(
        "--result", type=Path, help="also store the numbers with provenance (results/NAME.json)"
    )
    args = parser.parse_args()
    pairs = args.pairs
    torch.set_num_threads(1)
    start = time.perf_counter()
    stored = {}
    for i, seeds in enumerate(pairs):
        studies = run(args.out if i == 0 else None, epochs=args.epochs, steps=args.steps,
                      seeds=seeds)  # fmt: skip
        print(f"seeds {seeds[0]} and {seeds[1]}")
        print(f"{'bn':6} {'path':8} {'loss barrier':>13} {'error barrier':>14} {'acc@0.5':>8}")
        one = stored[",".join(map(str, seeds))] = pair_numbers(studies)
        for r in one["rows"]:
            print(f"{r['bn']:6} {r['path']:8} {r['loss_barrier']:13.4f} "
                  f"{r['error_barrier']:14.2%} {r['mid_accuracy']:8.2%}")  # fmt: skip
        a, b = one["endpoint_accuracy"]
        print(f"endpoints: A {a:.2%}, B {b:.2%} test accuracy")
    numbers: dict[str, Any] = {"epochs": args.epochs, "steps": args.steps,
                               **next(iter(stored.values())),  # the first pair, as in 0.3.0
                               "pairs": stored, "summary": summary(stored)}  # fmt: skip
    if len(pairs) > 1:
        print(report(numbers))
    if args.result is not None:
        seeds_used = [s for p in pairs for s in p]
        write_result(args.result, numbers, seeds=seeds_used, command=["python", *sys.argv])
    if args.out is not None:
        print(f"wrote {args.out / 'conv_a.pt'} and {args.out / 'conv_b.pt'}")
    print(f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
