"""ZipIt! on a class split at MNIST scale (two 3x512 MLPs, digits 0-4 and 5-9).

Data: the MNIST-sized stand-in of ``examples/mnist_scale_digits.py`` (20k training and
5k test 28x28 jittered digits, built offline). A is ``mlp(784, [512]*3, 10)`` trained on
the training images of digits 0-4 only, B the same on 5-9 only (each from its own seed,
with a 10-way head; training as in ``science_merging_mnist.py``). Both are evaluated on
all ten digits against: each endpoint, the plain average, weight matching + average,
the ensemble (mean softmax), OT fusion, and ZipIt! at width 512 with partial zipping at
each depth (0 groups zipped: the two models side by side, i.e. the ensemble of logits;
3: the full zip). Activation statistics: the first 5,000 training images (both halves).
No equivalence guard applies to a merged model (it is the evaluated object).

    python examples/science_merging_mnist_split.py --out results
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mnist_scale_digits import make_data  # noqa: E402
from science_merging_mnist import accuracy, cli, logits, net, summarised, train  # noqa: E402

import modeconnect as mc  # noqa: E402
from modeconnect.fusion import fuse  # noqa: E402
from modeconnect.models import mlp  # noqa: E402

WIDTH = 512


def accuracy_at(widths: dict[str, int], sd: dict, data: dict) -> float:
    """Accuracy of ``mlp(784, [P0, P1, P2], 10)`` holding ``sd`` (a partial zip is wider)."""
    model = mlp(784, [widths[f"P{i}"] for i in range(3)], 10)
    model.load_state_dict(sd)
    with torch.no_grad():
        return float((model.eval()(data["x"]).argmax(1) == data["y"]).double().mean())


def half(data: dict, keep: torch.Tensor) -> dict:
    return {"x": data["x"][keep], "y": data["y"][keep]}


def run(seeds: list[int], epochs: int, n_train: int, n_test: int) -> dict[str, Any]:
    train_set, test = make_data(n_train, n_test)
    stats = [
        (train_set["x"][i : i + 1000], train_set["y"][i : i + 1000]) for i in range(0, 5000, 1000)
    ]
    low, high = half(train_set, train_set["y"] < 5), half(train_set, train_set["y"] >= 5)
    runs = []
    for seed in seeds:
        start = time.perf_counter()
        a, b = train(WIDTH, 100 + seed, low, epochs), train(WIDTH, 200 + seed, high, epochs)
        probs = F.softmax(logits(WIDTH, a, test["x"]), 1) + F.softmax(
            logits(WIDTH, b, test["x"]), 1
        )
        model = net(WIDTH)
        row = {
            "A (0-4)": accuracy(WIDTH, a, test),
            "B (5-9)": accuracy(WIDTH, b, test),
            "ensemble (mean softmax)": float((probs.argmax(1) == test["y"]).double().mean()),
            "plain average": accuracy(
                WIDTH, mc.merge(model, [a, b], method="none").state_dict, test
            ),
            "weight matching + average": accuracy(
                WIDTH, mc.merge(model, [a, b], method="weight", data=stats).state_dict, test
            ),
            "otfusion soft": accuracy(
                WIDTH, fuse([model, model], [a, b], data=stats).state_dict, test
            ),
        }
        for depth in (0, 1, 2, 3):  # groups zipped; the rest keep each model's units
            part = fuse([model, model], [a, b], data=stats, method="zip", zip_until=depth)
            row[f"zip until depth {depth}"] = accuracy_at(part.widths, part.state_dict, test)
        row["seconds"] = time.perf_counter() - start
        runs.append(row)
        print(seed, row, flush=True)
    return summarised(runs)


def report(numbers: dict[str, Any]) -> str:
    """The MNIST-scale class-split table of ``docs/science/merging.md`` (stored result)."""
    from science_merging import _rows

    depths = sorted(int(k.rsplit(" ", 1)[1]) for k in numbers["accuracy"]
                    if k.startswith("zip until depth "))  # fmt: skip
    keys = ["A (0-4)", "B (5-9)", "ensemble (mean softmax)", "plain average",
            "weight matching + average", "otfusion soft",
            *(f"zip until depth {d}" for d in depths)]  # fmt: skip
    return _rows(numbers["accuracy"], keys, digits=4)


def main() -> None:
    data = "MNIST-scale stand-in of examples/mnist_scale_digits.py; A: digits 0-4, B: 5-9"
    cli(__doc__ or "", run, "merging_mnist_class_split.json", report, width=WIDTH, data=data,
        equivalence_guard="not applicable: each merged model is the evaluated object")  # fmt: skip


if __name__ == "__main__":
    main()
