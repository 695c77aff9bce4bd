"""Width fusion and self-merge compression at MNIST scale (3x512 with 3x256).

Data: the MNIST-sized stand-in of ``examples/mnist_scale_digits.py`` (20k training and
5k test 28x28 jittered digits, built offline). A is ``mlp(784, [512]*3, 10)``, B
``mlp(784, [256]*3, 10)``, each trained from its own seed (SGD, momentum 0.9, lr 0.05,
batch 128, cosine schedule). They are fused at 256, 384 and 512 (OT fusion soft and
hard, ZipIt!), and A alone is narrowed to 384, 256 and 128 (self-merge, no retraining).
Activation statistics: the first 5,000 training images. No equivalence guard applies to
a fused model (it is the evaluated object).

    python examples/science_merging_mnist.py --out results
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mnist_scale_digits import make_data  # noqa: E402

from modeconnect.fusion import fuse  # noqa: E402
from modeconnect.models import mlp  # noqa: E402
from modeconnect.provenance import write_result  # noqa: E402
from modeconnect.training import train_classifier  # noqa: E402


def net(width: int) -> torch.nn.Module:
    return mlp(784, [width] * 3, 10)


def train(width: int, seed: int, data: dict[str, torch.Tensor], epochs: int) -> dict:
    torch.manual_seed(seed)
    model = train_classifier(net(width), data["x"], data["y"], epochs=epochs, lr=0.05,
                             batch_size=128, seed=seed)  # fmt: skip
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def logits(width: int, sd: dict, x: torch.Tensor) -> torch.Tensor:
    model = net(width)
    model.load_state_dict(sd)
    with torch.no_grad():
        return model.eval()(x)


def accuracy(width: int, sd: dict, data: dict) -> float:
    return float((logits(width, sd, data["x"]).argmax(1) == data["y"]).double().mean())


def run(seeds: list[int], epochs: int, n_train: int, n_test: int) -> dict[str, Any]:
    train_set, test = make_data(n_train, n_test)
    stats = [
        (train_set["x"][i : i + 1000], train_set["y"][i : i + 1000]) for i in range(0, 5000, 1000)
    ]
    runs = []
    for seed in seeds:
        start = time.perf_counter()
        a, b = train(512, seed, train_set, epochs), train(256, 100 + seed, train_set, epochs)
        probs = F.softmax(logits(512, a, test["x"]), 1) + F.softmax(logits(256, b, test["x"]), 1)
        row = {
            "A (3x512)": accuracy(512, a, test),
            "B (3x256)": accuracy(256, b, test),
            "ensemble": float((probs.argmax(1) == test["y"]).double().mean()),
        }
        row["better parent"] = max(row["A (3x512)"], row["B (3x256)"])
        for t in (256, 384, 512):
            for name, kw in (("otfusion soft", {}), ("otfusion hard", {"transport": "hard"}),
                             ("zip", {"method": "zip"})):  # fmt: skip
                out = fuse([net(512), net(256)], [a, b], data=stats, widths=t, **kw)
                row[f"{name} @ {t}"] = accuracy(t, out.state_dict, test)
        for t in (384, 256, 128):
            for method in ("zip", "otfusion"):
                out = fuse([net(512)], [a], data=stats, method=method, widths=t)
                row[f"self-merge {method} 512 -> {t}"] = accuracy(t, out.state_dict, test)
        row["seconds"] = time.perf_counter() - start
        runs.append(row)
        print(seed, row, flush=True)
    return summarised(runs)


def summarised(runs: list[dict[str, float]]) -> dict[str, Any]:
    """Mean and std over seeds of every number of the runs but their seconds."""
    keys = [k for k in runs[0] if k != "seconds"]
    summary = {
        k: {"mean": statistics.fmean(r[k] for r in runs),
            "std": statistics.stdev([r[k] for r in runs]) if len(runs) > 1 else 0.0}
        for k in keys
    }  # fmt: skip
    return {"accuracy": summary, "runs": runs}


def cli(
    doc: str,
    run_fn: Callable[..., dict[str, Any]],
    name: str,
    report: Callable[[dict[str, Any]], str],
    **notes: Any,
) -> None:
    """Parse the common flags, run ``run_fn(seeds, epochs, n_train, n_test)``, store the
    numbers in ``OUT/name`` with their provenance, and print ``report(numbers)``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="3k/1k images, 2 epochs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n_train, n_test = (3000, 1000) if args.quick else (20_000, 5_000)
    epochs = 2 if args.quick else args.epochs
    numbers = run_fn(args.seeds, epochs, n_train, n_test)
    numbers.update(epochs=epochs, train_images=n_train, test_images=n_test, **notes)
    command = ["python", f"examples/{Path(sys.argv[0]).name}", *sys.argv[1:]]
    write_result(args.out / name, numbers, seeds=args.seeds, command=command)
    print(report(numbers))


def report(numbers: dict[str, Any]) -> str:
    """The MNIST-scale width-fusion table of ``docs/science/merging.md`` (stored result)."""
    from science_merging import _rows, fusions

    selfs = [(f"self-merge zip 512 -> {t}", f"self-merge otfusion 512 -> {t}")
             for t in (384, 256, 128)]  # fmt: skip
    keys = ["A (3x512)", "B (3x256)", "ensemble", *fusions((256, 384, 512)), *selfs]
    return _rows(numbers["accuracy"], keys, digits=4)


def main() -> None:
    cli(__doc__ or "", run, "merging_mnist_scale.json", report,
        equivalence_guard="not applicable: each fused model is the evaluated object",
        data="MNIST-scale stand-in of examples/mnist_scale_digits.py")  # fmt: skip


if __name__ == "__main__":
    main()
