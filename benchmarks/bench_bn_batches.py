"""The statistical error of a BatchNorm reset on the first N training batches (issue 22).

Two BatchNorm CNNs (``modeconnect.models:conv_net``, channels 16-32) are trained on the
shipped digits (1297 training, 500 test images, 8x8) from two seeds; the naive path's
curve and loss barrier are measured with the statistics reset on all training batches
(batch 64, 21 batches) and on the first N. The error of N batches is the largest
difference of the curve's test loss from the all-batches curve, and of the barrier;
the barrier's resolution is the half-width of its 95 % bootstrap interval over the
test examples. Run from the repository root::

    python benchmarks/bench_bn_batches.py --out results/bench_bn_batches.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import modeconnect as mc  # noqa: E402
from modeconnect.models import conv_net  # noqa: E402
from modeconnect.provenance import write_result  # noqa: E402


def _digits(split: str, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = torch.load(ROOT / f"checkpoints/digits_{split}.pt", weights_only=True)
    x = data["x"].reshape(-1, 1, 8, 8)
    return list(zip(x.split(batch), data["y"].split(batch), strict=True))


def _train(seed: int, batches: list, epochs: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = conv_net(in_channels=1, channels=[16, 32], num_classes=10, image_size=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(epochs):
        for i in torch.randperm(len(batches)).tolist():
            x, y = batches[i]
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    train, test = _digits("train", 64), _digits("test", 500)
    a, b = _train(1, train, args.epochs), _train(2, train, args.epochs)
    model = conv_net(in_channels=1, channels=[16, 32], num_classes=10, image_size=8)

    def study(max_batches: int | None) -> tuple[mc.Study, float]:
        start = time.perf_counter()
        result = mc.barrier_study(model, a, b, test=test, train=train, align=None, bn="reset",
                                  steps=25, bootstrap=200, max_bn_batches=max_batches)  # fmt: skip
        return result, time.perf_counter() - start

    full, seconds = study(None)
    curve = torch.tensor(full.naive.splits["test"].curve.losses)
    barrier = full.naive.splits["test"].barriers["lerp"].loss
    interval = full.naive.bootstrap["lerp"].loss
    resolution = (interval.high - interval.low) / 2
    rows = [{"max_bn_batches": None, "seconds": seconds, "barrier": barrier,
             "max_curve_error": 0.0, "barrier_error": 0.0}]  # fmt: skip
    for count in args.counts:
        got, seconds = study(count)
        losses = torch.tensor(got.naive.splits["test"].curve.losses)
        value = got.naive.splits["test"].barriers["lerp"].loss
        rows.append({"max_bn_batches": count, "seconds": seconds, "barrier": value,
                     "max_curve_error": float((losses - curve).abs().max()),
                     "barrier_error": abs(value - barrier)})  # fmt: skip
    print(f"barrier {barrier:.4f} nats, 95% bootstrap half-width {resolution:.4f}")
    for row in rows:
        print(row)
    if args.out is not None:
        numbers = {"rows": rows, "barrier": barrier, "resolution": resolution,
                   "train_batches": len(train), "batch": 64, "epochs": args.epochs}  # fmt: skip
        write_result(args.out, numbers, seeds=(1, 2), command=sys.argv)


if __name__ == "__main__":
    main()
