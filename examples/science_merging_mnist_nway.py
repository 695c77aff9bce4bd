"""N-way merging at MNIST scale: four 3x512 MLPs, MergeMany against a universe basis.

Data: the MNIST-sized stand-in of ``examples/mnist_scale_digits.py`` (20k training and
5k test 28x28 jittered digits, built offline). Four ``mlp(784, [512]*3, 10)`` models are
trained from their own seeds on all the training images (as in
``science_merging_mnist.py``) and merged: plain average, MergeMany (weight matching),
the universe basis (C2M3-style, activations of the first 5,000 training images), CCA
Merge; against the best and mean endpoint and the ensemble (mean softmax). The
cycle-consistency error of direct pairwise weight matching, of MergeMany's induced maps
and of the universe maps is measured per group (``science_merging.py``'s definitions).
No equivalence guard applies to a merged model (it is the evaluated object).

    python examples/science_merging_mnist_nway.py --out results
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mnist_scale_digits import make_data  # noqa: E402
from science_merging import _basis_maps, _direct_maps, _disagreement  # noqa: E402
from science_merging_mnist import accuracy, cli, logits, net, summarised, train  # noqa: E402

import modeconnect as mc  # noqa: E402
from modeconnect.fusion import cycle_error, fuse  # noqa: E402

WIDTH, MODELS = 512, 4


def run(seeds: list[int], epochs: int, n_train: int, n_test: int) -> dict[str, Any]:
    train_set, test = make_data(n_train, n_test)
    stats = [
        (train_set["x"][i : i + 1000], train_set["y"][i : i + 1000]) for i in range(0, 5000, 1000)
    ]
    runs, cycles = [], []
    for seed in seeds:
        start = time.perf_counter()
        sds = [train(WIDTH, 700 + 10 * seed + j, train_set, epochs) for j in range(MODELS)]
        model = net(WIDTH)
        spec = mc.derive_spec(model, (stats[0][0][:2],))
        many = mc.merge(model, sds, method="weight", data=stats)
        uni = fuse([model] * MODELS, sds, data=stats, method="universe")
        probs = sum(F.softmax(logits(WIDTH, sd, test["x"]), 1) for sd in sds)
        endpoints = [accuracy(WIDTH, sd, test) for sd in sds]
        row = {
            "best endpoint": max(endpoints),
            "mean endpoint": statistics.fmean(endpoints),
            "ensemble (mean softmax)": float((probs.argmax(1) == test["y"]).double().mean()),  # type: ignore[union-attr]
            "plain average": accuracy(WIDTH, mc.merge(model, sds, method="none").state_dict, test),
            "MergeMany (weight matching)": accuracy(WIDTH, many.state_dict, test),
            "universe (C2M3-style, activations)": accuracy(WIDTH, uni.state_dict, test),
            "cca": accuracy(
                WIDTH, fuse([model] * MODELS, sds, data=stats, method="cca").state_dict, test
            ),
        }
        cycle: dict[str, float] = {}
        for group in spec.groups:
            direct = _direct_maps(spec, sds, group)
            mm = _basis_maps([p[group] for p in many.permutations])
            un = _basis_maps(
                [uni.maps[group].unmerge[j].argmax(1).argsort() for j in range(MODELS)]
            )
            cycle[f"{group} direct pairwise weight matching"] = cycle_error(direct, MODELS)
            cycle[f"{group} MergeMany induced maps"] = cycle_error(mm, MODELS)
            cycle[f"{group} universe maps"] = cycle_error(un, MODELS)
            cycle[f"{group} MergeMany vs direct (disagreeing units)"] = _disagreement(mm, direct)
            cycle[f"{group} universe vs direct (disagreeing units)"] = _disagreement(un, direct)
        row["seconds"] = time.perf_counter() - start
        runs.append(row)
        cycles.append(cycle)
        print(seed, row, cycle, flush=True)
    out = summarised(runs)
    out["cycle_error"] = summarised([{**c, "seconds": 0.0} for c in cycles])["accuracy"]
    return out


def report(numbers: dict[str, Any]) -> str:
    """The MNIST-scale N-way tables of ``docs/science/merging.md`` (stored result)."""
    from science_merging import report_n_way

    return report_n_way(numbers, digits=4)


def main() -> None:
    data = "MNIST-scale stand-in of examples/mnist_scale_digits.py"
    cli(__doc__ or "", run, "merging_mnist_n_way.json", report, width=WIDTH, models=MODELS,
        data=data,
        equivalence_guard="not applicable: each merged model is the evaluated object")  # fmt: skip


if __name__ == "__main__":
    main()
