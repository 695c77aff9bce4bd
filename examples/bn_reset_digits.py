"""BatchNorm reset on a pair of small CNNs: without it, interpolation shows a false barrier.

Trains two :func:`modeconnect.models.conv_net` models (Conv-BatchNorm-ReLU) on the
8x8 digits from different seeds (a few seconds on one CPU core), writes them as
checkpoints, and measures the barrier between them with and without recomputing
the BatchNorm statistics at every α (Git Re-Basin, Ainsworth et al. 2023; REPAIR,
Jordan et al. 2023). Interpolated running statistics belong to neither model, so
without the reset even the *aligned* path shows a barrier that is not there.
Run from the repository root::

    python examples/bn_reset_digits.py --out runs/bn

then study the written pair with the CLI::

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
from modeconnect.provenance import write_result  # noqa: E402
from modeconnect.training import train_classifier  # noqa: E402

MODEL = "modeconnect.models:conv_net"
MODEL_KWARGS: dict[str, Any] = {"in_channels": 1, "channels": [16, 32], "num_classes": 10}
SEEDS = {"a": 1, "b": 2}


def train(seed: int, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 6) -> nn.Module:
    """Train one CNN from ``seed`` (initialisation and batch order): SGD, cosine schedule."""
    torch.manual_seed(seed)
    return train_classifier(conv_net(**MODEL_KWARGS), x, y, epochs=epochs, lr=0.05, seed=seed)


def train_pair(*, epochs: int = 6) -> dict[str, dict[str, torch.Tensor]]:
    """The state dicts of A and B, trained on ``checkpoints/digits_train.pt``."""
    data = torch.load(ROOT / "checkpoints/digits_train.pt", weights_only=True)
    models = {
        name: train(seed, data["x"], data["y"], epochs=epochs) for name, seed in SEEDS.items()
    }
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


def run(out: Path | None = None, *, epochs: int = 6, steps: int = 11) -> dict[str, Study]:
    """Train the pair (writing it to ``out`` if given) and compare bn none / reset."""
    states = train_pair(epochs=epochs)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name, sd in states.items():
            save_checkpoint(
                out / f"conv_{name}.pt", sd, model_ref=MODEL, model_kwargs=MODEL_KWARGS, force=True
            )
    return compare(states, steps=steps)


def report(numbers: dict[str, Any]) -> str:
    """The README's table, from the stored numbers."""
    lines = ["| `--bn` | path | loss barrier | error barrier | acc at α = 0.5 |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in numbers["rows"]:
        error, mid = 100 * r["error_barrier"], 100 * r["mid_accuracy"]
        lines.append(
            f"| {r['bn']} | {r['path']} | {r['loss_barrier']:.4f} | {error:.2f} % | {mid:.1f} % |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write conv_a.pt and conv_b.pt here")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=11, help="alphas on each curve")
    parser.add_argument(
        "--result", type=Path, help="also store the numbers with provenance (results/NAME.json)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    studies = run(args.out, epochs=args.epochs, steps=args.steps)
    print(f"{'bn':6} {'path':8} {'loss barrier':>13} {'error barrier':>14} {'acc@0.5':>8}")
    numbers: dict[str, Any] = {"epochs": args.epochs, "steps": args.steps, "rows": []}
    for bn, study in studies.items():
        for name, pair in study.pairs.items():
            bar, mid = pair.test.barriers["lerp"], pair.test.midpoint
            print(f"{bn:6} {name:8} {bar.loss:13.4f} {bar.error:14.2%} {mid.accuracy:8.2%}")
            row = {"bn": bn, "path": name, "loss_barrier": bar.loss, "error_barrier": bar.error}
            numbers["rows"].append({**row, "mid_accuracy": mid.accuracy})
    a, b = studies["none"].naive.test.endpoints
    print(f"endpoints: A {a.accuracy:.2%}, B {b.accuracy:.2%} test accuracy")
    numbers["endpoint_accuracy"] = [a.accuracy, b.accuracy]
    if args.result is not None:
        write_result(args.result, numbers, seeds=SEEDS.values(), command=["python", *sys.argv])
    if args.out is not None:
        print(f"wrote {args.out / 'conv_a.pt'} and {args.out / 'conv_b.pt'}")
    print(f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
