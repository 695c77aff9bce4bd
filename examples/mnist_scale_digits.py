"""MNIST-scale stand-in: two 3x512 MLPs on 28x28 jittered digits, aligned to a near-zero barrier.

MNIST cannot be downloaded here, so this builds an MNIST-sized data set from data
that ships offline: scikit-learn's 8x8 digits, upsampled to 28x28 (bilinear) and
drawn through random affine jitter (rotations up to 15 degrees, zoom-out so the
digit spans about 19-24 pixels as in MNIST, small shears, shifts up to 2 pixels;
``F.affine_grid`` + ``F.grid_sample``): 20k training and 5k test images of 784
pixels in [0, 1], seeded and deterministic, built in memory. The 1797 source
images are split first (stratified, 1297 for training, 500 for testing), so no
test image is a jittered copy of a training image. It is MNIST-*scale* (input
size, example count, model), not MNIST: only 1297 distinct source digits lie
behind the training set, and they are blurrier than MNIST's.

Two ``modeconnect.models:mlp(784, [512, 512, 512], 10)`` models are trained from
different seeds (initialisation and batch order; SGD, momentum 0.9, lr 0.05,
batch 64, cosine schedule, 10 epochs, no weight decay), written with the test
split to ``--out`` (default: a temporary directory), and aligned with
:func:`modeconnect.align_files` (Git Re-Basin weight matching, Ainsworth et al.
2023). Run from the repository root (about a minute on one core of a 2-core CPU)::

    python examples/mnist_scale_digits.py --out runs/mnist_scale

``--pairs 1,2 3,4 5,6 --result results/mnist_scale_digits.json`` runs three seed
pairs (the first written to ``--out``) and stores each pair's report with the mean and
sample standard deviation of the barriers and midpoint accuracies (the README's
numbers). Other settings leave a small barrier: batch 128 for 5 epochs 0.036 nats
(seeds 1, 2), Adam (lr 1e-3, batch 128) for 10 epochs 0.010-0.013, SGD lr 0.1
0.004-0.05 depending on the seeds; batch 128 for 20 epochs reaches 0.0000-0.011.
``--quick`` (6k/1.5k images, same schedule, 15-25 s; aligned 0.019 nats against
naive 1.10) is for the test suite. Then study the written pair with the CLI::

    modeconnect barrier runs/mnist_scale/mlp_a.pt runs/mnist_scale/mlp_b.pt \\
        --data runs/mnist_scale/test.pt --layerwise
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from modeconnect.commands.align import AlignReport, align_files  # noqa: E402
from modeconnect.io.checkpoints import save_checkpoint  # noqa: E402
from modeconnect.models import mlp  # noqa: E402
from modeconnect.provenance import seed_pair, spread, write_result  # noqa: E402
from modeconnect.training import train_classifier  # noqa: E402

MODEL = "modeconnect.models:mlp"
MODEL_KWARGS: dict[str, Any] = {"in_features": 784, "hidden": [512, 512, 512], "out_features": 10}
DATA_SEED = 0
SOURCE_TEST = 500  # source 8x8 digits held out for the test split
SIZE = 28
FULL_TRAIN, FULL_TEST = 20_000, 5_000
QUICK_TRAIN, QUICK_TEST = 6_000, 1_500

Data = dict[str, torch.Tensor]


def _source_split() -> tuple[Data, Data]:
    """scikit-learn's 8x8 digits in [0, 1], split stratified by source image (seed 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.tensor(digits.target, dtype=torch.int64)
    tr, te = train_test_split(
        torch.arange(len(y)).numpy(), test_size=SOURCE_TEST, stratify=y.numpy(),
        random_state=DATA_SEED,
    )  # fmt: skip
    tr, te = torch.as_tensor(tr), torch.as_tensor(te)
    return {"x": x[tr], "y": y[tr]}, {"x": x[te], "y": y[te]}


def jitter(source: Data, n: int, gen: torch.Generator) -> Data:
    """``n`` images: random sources, upsampled to 28x28, each through a random affine map.

    The map (output to input coordinates, as ``affine_grid`` takes it) zooms out by
    1.15-1.45 (the digit fills about 19-24 of the 28 pixels, as in MNIST), rotates
    by up to 15 degrees, shears by up to 0.1 and shifts by up to 2 pixels.
    """
    idx = torch.randint(len(source["y"]), (n,), generator=gen)
    big = F.interpolate(source["x"], size=(SIZE, SIZE), mode="bilinear", align_corners=False)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    zoom = uniform(1.15, 1.45)
    angle = uniform(-15.0, 15.0) * math.pi / 180
    shear = uniform(-0.1, 0.1)
    shift = uniform(-2.0, 2.0), uniform(-2.0, 2.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = zoom * cos
    theta[:, 0, 1] = zoom * (shear * cos - sin)
    theta[:, 1, 0] = zoom * sin
    theta[:, 1, 1] = zoom * (shear * sin + cos)
    theta[:, 0, 2] = shift[0] * 2 / SIZE
    theta[:, 1, 2] = shift[1] * 2 / SIZE
    x = torch.empty(n, SIZE * SIZE)
    for part in torch.arange(n).split(2048):
        grid = F.affine_grid(theta[part], [len(part), 1, SIZE, SIZE], align_corners=False)
        out = F.grid_sample(big[idx[part]], grid, mode="bilinear", align_corners=False)
        x[part] = out.clamp_(0.0, 1.0).flatten(1)
    return {"x": x, "y": source["y"][idx]}


def make_data(n_train: int = 20_000, n_test: int = 5_000) -> tuple[Data, Data]:
    """The jittered 28x28 train and test splits; deterministic (seed 0)."""
    src_train, src_test = _source_split()
    gen = torch.Generator().manual_seed(DATA_SEED)
    return jitter(src_train, n_train, gen), jitter(src_test, n_test, gen)


def train(
    seed: int,
    data: Data,
    *,
    epochs: int,
    optimizer: str = "sgd",
    lr: float = 0.05,
    batch_size: int = 128,
    weight_decay: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Train one MLP from ``seed`` (initialisation and batch order); cosine schedule.

    ``optimizer`` is ``"sgd"`` (momentum 0.9) or ``"adam"`` (AdamW: Adam when
    ``weight_decay`` is 0).
    """
    torch.manual_seed(seed)
    net = train_classifier(
        mlp(**MODEL_KWARGS), data["x"], data["y"], epochs=epochs, lr=lr, batch_size=batch_size,
        seed=seed, optimizer="adamw" if optimizer == "adam" else optimizer,
        weight_decay=weight_decay,
    )  # fmt: skip
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def run(out: Path, args: argparse.Namespace, seeds: tuple[int, int] | None = None,
        data: tuple[Data, Data] | None = None) -> AlignReport:  # fmt: skip
    """Build the data (unless given), train A and B from ``seeds`` (default ``--seeds``),
    write them and the test split to ``out``, align."""
    n_train, n_test = (QUICK_TRAIN, QUICK_TEST) if args.quick else (FULL_TRAIN, FULL_TEST)
    if data is None:
        t0 = time.perf_counter()
        data = make_data(n_train, n_test)
        print(f"data       {n_train} train / {n_test} test images of 28x28 ({_since(t0)})")
    train_data, test_data = data
    for name, seed in zip(("a", "b"), seeds or args.seeds, strict=True):
        t0 = time.perf_counter()
        sd = train(
            seed, train_data, epochs=args.epochs, optimizer=args.optimizer, lr=args.lr,
            batch_size=args.batch_size, weight_decay=args.weight_decay,
        )  # fmt: skip
        save_checkpoint(
            out / f"mlp_{name}.pt", sd, model_ref=MODEL, model_kwargs=MODEL_KWARGS, force=True
        )
        print(f"train      {name.upper()} (seed {seed}): {args.epochs} epochs ({_since(t0)})")
    torch.save(test_data, out / "test.pt")
    t0 = time.perf_counter()
    report = align_files(
        out / "mlp_a.pt", out / "mlp_b.pt", data=str(out / "test.pt"), steps=args.steps
    )
    print(f"align      weight matching + 2 curves of {args.steps} points ({_since(t0)})")
    return report


def midpoints(report: dict[str, Any]) -> dict[str, float]:
    """A stored report's naive and aligned loss barrier and accuracy at α = 0.5."""
    out = {}
    for path in ("naive", "aligned"):
        data = report[path]
        middle = min(data["curve"], key=lambda p: abs(p["alpha"] - 0.5))
        out[f"{path}_loss_barrier"] = data["barrier"]["loss"]
        out[f"{path}_mid_accuracy"] = middle["accuracy"]
    return out


def summary(pairs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Over the seed pairs' stored reports: each :func:`midpoints` value's mean and sample
    standard deviation (0 for one pair) and its value on every pair, pairs in order."""
    values = [midpoints(r) for r in pairs.values()]
    return {key: spread(v[key] for v in values) for key in values[0]}


def _since(t0: float) -> str:
    return f"{time.perf_counter() - t0:.1f} s"


def print_report(report: AlignReport) -> None:
    """The guard, naive vs aligned barriers (lerp definition) and the endpoints."""
    res, curves = report.result, report.curves
    assert curves is not None
    eq = res.equivalence
    print(f"guard      aligned B == B (max rel diff {eq.max_rel_diff:.2e})")
    print()
    print(f"{'':8} {'loss barrier':>13} {'error barrier':>14} {'acc at a=0.50':>14}")
    for name, curve, bar in (
        ("naive", curves.naive, curves.naive_barrier),
        ("aligned", curves.aligned, curves.aligned_barrier),
    ):
        mid = min(curve.points, key=lambda p: abs(p.alpha - 0.5))
        print(f"{name:8} {bar.loss:13.4f} {bar.error:14.2%} {mid.accuracy:14.2%}")
    a, b = curves.naive.points[0], curves.naive.points[-1]
    print(
        f"endpoints  A: loss {a.loss:.4f} acc {a.accuracy:.2%}   "
        f"B: loss {b.loss:.4f} acc {b.accuracy:.2%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write mlp_a.pt, mlp_b.pt, test.pt here")
    parser.add_argument(
        "--quick", action="store_true", help="6k train / 1.5k test images (for the tests)"
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--optimizer", choices=["sgd", "adam"], default="sgd", help="sgd: momentum 0.9; adam: AdamW"
    )
    parser.add_argument("--lr", type=float, help="default 0.05 (sgd) or 1e-3 (adam)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--seeds", type=int, nargs=2, default=[1, 2], help="seeds of A and B")
    parser.add_argument("--pairs", nargs="+", default=None, metavar="A,B",
                        type=seed_pair,
                        help="several seed pairs (the first is written to --out); the "
                        "result stores each pair and the mean ± sd")  # fmt: skip
    parser.add_argument("--steps", type=int, default=25, help="alphas on each curve")
    parser.add_argument(
        "--result", type=Path, help="also store the numbers with provenance (results/NAME.json)"
    )
    args = parser.parse_args()
    if args.lr is None:
        args.lr = 0.05 if args.optimizer == "sgd" else 1e-3
    pairs = [tuple(args.seeds)] if args.pairs is None else args.pairs
    torch.set_num_threads(1)
    start = time.perf_counter()
    n_train, n_test = (QUICK_TRAIN, QUICK_TEST) if args.quick else (FULL_TRAIN, FULL_TEST)
    data = make_data(n_train, n_test)
    print(f"data       {n_train} train / {n_test} test images of 28x28 ({_since(start)})")
    reports = {}
    for i, seeds in enumerate(pairs):
        if args.out is not None and i == 0:
            args.out.mkdir(parents=True, exist_ok=True)
            report = run(args.out, args, seeds, data)
            print(f"wrote      mlp_a.pt, mlp_b.pt, test.pt in {args.out}")
        else:
            with tempfile.TemporaryDirectory() as tmp:
                report = run(Path(tmp), args, seeds, data)
        print_report(report)
        reports[",".join(map(str, seeds))] = report.to_dict()
    if len(pairs) > 1:
        for key, s in summary(reports).items():
            print(f"{key:24} {s['mean']:.4f} ± {s['sd']:.4f} over {len(pairs)} pairs")
    print(f"total      {_since(start)}")
    if args.result is not None:
        numbers = {"quick": args.quick, "epochs": args.epochs,
                   "report": next(iter(reports.values())),  # the first pair (as in 0.3.0)
                   "pairs": reports, "summary": summary(reports)}  # fmt: skip
        seeds_used = [s for p in pairs for s in p]
        write_result(args.result, numbers, seeds=seeds_used, command=["python", *sys.argv])


if __name__ == "__main__":
    main()
