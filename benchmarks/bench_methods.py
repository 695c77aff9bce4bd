"""Time every alignment method on two pairs, with the share spent in the solvers.

Pairs: the shipped digits MLPs (``mlp_a.pt`` / ``mlp_b.pt``, 3 x 512 hidden) and two
small CNNs (``modeconnect.models:conv_net``, channels 32/64 with BatchNorm) trained
for a few SGD steps on the digits from different seeds. For each method the time
of the method call is split into: the linear assignments (``solve_assignment``,
including the per-head inner assignments and the hardening of OT plans), the
transport solver (POT's ``ot.emd`` / ``ot.sinkhorn``), and the streaming of
activation statistics; the rest is similarity products and Python. Run from
the repository root::

    python benchmarks/bench_methods.py [--repeats 1] [--threads 1]

Prints one row per (pair, method); best of ``--repeats`` runs. Takes about 20 s.
BLAS and OpenMP run one thread unless ``OMP_NUM_THREADS`` says otherwise (set
before numpy loads): on a busy 2-core machine two threads made these small
problems slower and the timings noisy.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from probes import probes  # noqa: E402
from stored import add_out, store  # noqa: E402

import modeconnect as mc  # noqa: E402
from modeconnect.matching import activation as act_mod  # noqa: E402
from modeconnect.matching import assignment as assignment_mod  # noqa: E402
from modeconnect.matching import descent as descent_mod  # noqa: E402
from modeconnect.matching import get_method  # noqa: E402
from modeconnect.matching import ot as ot_mod  # noqa: E402
from modeconnect.models import conv_net  # noqa: E402
from modeconnect.spec import derive_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1] / "checkpoints"

METHODS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("weight", "weight", {}),
    ("activation", "activation", {}),
    ("activation moment", "activation", {"statistic": "moment"}),
    ("ot emd", "ot", {}),
    ("ot sinkhorn 0.01", "ot", {"solver": "sinkhorn", "reg": 0.01}),
    ("ot emd activations", "ot", {"cost": "activations"}),
)

# (module, attribute, bucket): the functions whose time is attributed to a bucket.
PROBES = (
    (assignment_mod, "solve_warm", "assign"),  # weight and activation matching (warm starts)
    (descent_mod, "solve_assignment", "assign"),  # per-block inner assignments
    (ot_mod, "solve_assignment", "assign"),  # hardening OT plans
    (ot_mod, "_pot", "transport"),
    (act_mod, "activation_statistics", "stats"),
    (ot_mod, "activation_statistics", "stats"),
)


@dataclass(frozen=True)
class Pair:
    name: str
    model: torch.nn.Module
    a: dict[str, torch.Tensor]
    b: dict[str, torch.Tensor]
    data: list[tuple[torch.Tensor, torch.Tensor]]


def digits_mlp() -> Pair:
    ca, cb = mc.load(ROOT / "mlp_a.pt"), mc.load(ROOT / "mlp_b.pt")
    model = mc.resolve_model([ca, cb]).model
    data = list(mc.load_data(ROOT / "digits_train.pt", batch_size=500))
    return Pair("digits mlp 3x512", model, dict(ca.state_dict), dict(cb.state_dict), data)


def _train_conv(seed: int, data: list, steps: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = conv_net(channels=(32, 64))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def digits_cnn(steps: int = 150) -> Pair:
    data = list(mc.load_data(ROOT / "digits_train.pt", batch_size=500))
    a, b = _train_conv(1, data, steps), _train_conv(2, data, steps)
    return Pair("digits cnn 32-64 BN", conv_net(channels=(32, 64)).eval(), a, b, data)


def run(pair: Pair, label: str, method: str, opts: dict[str, Any], repeats: int) -> dict:
    spec = derive_spec(pair.model, (pair.data[0][0][:2],))
    best: dict[str, Any] | None = None
    for _ in range(repeats):
        buckets: dict[str, float] = {}
        with probes(buckets, PROBES, clock=time.perf_counter):
            al = get_method(method)(spec, pair.a, pair.b, model=pair.model, data=pair.data, **opts)
        row = {"seconds": al.seconds, "objective": al.objective, "sweeps": al.iterations, **buckets}
        if best is None or row["seconds"] < best["seconds"]:
            best = row
    assert best is not None
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    add_out(parser)
    args = parser.parse_args()
    numbers: dict[str, Any] = {"threads": args.threads, "repeats": args.repeats, "runs": []}
    torch.set_num_threads(args.threads)
    pairs = [digits_mlp(), digits_cnn()]
    print(f"threads {args.threads}, best of {args.repeats}")
    head = (
        f"{'pair':<20} {'method':<20} {'seconds':>8} {'assign':>7} {'transport':>9} "
        f"{'stats':>6} {'other':>6} {'sweeps':>6}"
    )
    print(head)
    for pair in pairs:
        for label, method, opts in METHODS:
            r = run(pair, label, method, opts, args.repeats)
            total = r["seconds"]
            shares = [r.get(k, 0.0) / total for k in ("assign", "transport", "stats")]
            other = 1.0 - sum(shares)
            numbers["runs"].append({"pair": pair.name, "method": label, **r})
            print(
                f"{pair.name:<20} {label:<20} {total:8.2f} {shares[0]:7.0%} {shares[1]:9.0%} "
                f"{shares[2]:6.0%} {other:6.0%} {r['sweeps']:6d}"
            )
    store(args.out, numbers)


if __name__ == "__main__":
    main()
