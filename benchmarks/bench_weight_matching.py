"""Weight matching: where the time goes, on independently trained pairs and permuted copies.

Pairs (``benchmarks/pairs.py``): the shipped digits pair (64-512x3-10) and the
MNIST-scale stand-in of ``examples/mnist_scale_digits.py`` (784-Wx3-10, trained from
two seeds, cached), both *independently trained*: their similarity matrices have no
clear optimum, which is the real use. Beside them, permuted and noised copies of a
random MLP (the easy case: nearly diagonal similarities).

For each pair, :func:`modeconnect.match_weights` (defaults, seed 0) is run
``--repeats`` times and the best run (CPU seconds) is split into

- **products**: the similarity products it computed (``WeightSource.product``:
  whole ``A_rows · B_rowsᵀ`` products, or the column updates of cached ones when a
  neighbour moved, each with the gathers of its operands and its float64 sum);
- **assignments**: the linear assignments it solved (``solve_warm``: reduced costs,
  the warm-started solver, the price step);
- **other**: everything else (summing similarities, gathers, the objective, Python).

``floor`` is products + assignments measured in the same run: the work the descent
cannot avoid. ``total/floor`` is the overhead. Then the similarity matrices of the
run are solved again by each solver, alone: SciPy's ``linear_sum_assignment`` and
lapx's ``lapjvh`` / ``lapjv`` on the raw matrix (cold), ``lapjvh`` on row-reduced
costs (cold), and ``lapjvh`` / SciPy warm-started with the prices carried from each
group's previous solve (as in the descent). Widths above 1024 time the cold solvers
on a sample of the matrices (``--solver-sample``).

The plain reference (Git Re-Basin's Algorithm 1 as usually written: float64 NumPy
products, SciPy's Hungarian solver, every neighbour re-permuted at every step) runs
on pairs up to width 2048. On permuted copies both must find the same permutation;
on real pairs both stop at local optima, and the objectives are printed.

``--tolerances 0 1e-4 1e-3`` instead measures the relative stopping tolerance on the
real pairs (seeds ``--seeds``): sweeps, assignments, the objective and the loss and
error barriers (lerp definition, test split, 25 alphas) of each ``rtol``.

Run from the repository root (the MNIST-scale pairs train once: about 1 minute at
width 512, 10 minutes at 4096 on one core)::

    python benchmarks/bench_weight_matching.py [--pairs digits mnist512 permuted512 ...]
        [--repeats 3] [--threads 1]
    python benchmarks/bench_weight_matching.py --pairs digits mnist512 --tolerances 0 1e-6 1e-4 1e-3
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pairs import CACHE, Pair, by_name, test_data  # noqa: E402
from probes import probes  # noqa: E402
from stored import add_out, store  # noqa: E402

from modeconnect.matching import assignment as assignment_mod  # noqa: E402
from modeconnect.matching import match_weights  # noqa: E402
from modeconnect.matching import weight as weight_mod  # noqa: E402
from modeconnect.matching.assignment import (  # noqa: E402
    SOLVERS,
    WarmStart,
    solve_assignment,
    solve_warm,
)
from modeconnect.matching.weight import objective  # noqa: E402
from modeconnect.spec import apply_permutation  # noqa: E402

PROBES = (
    (weight_mod.WeightSource, "product", "products"),
    (weight_mod.WeightSource, "_base", "products"),
    (assignment_mod, "solve_warm", "assignments"),
)


def reference_weight_matching(a: dict, b: dict, n_hidden: int, seed: int = 0, max_iter: int = 100):
    """Plain Git Re-Basin weight matching for an nn.Sequential MLP (keys 1, 3, 5, ...)."""
    layers = [f"{2 * i + 1}" for i in range(n_hidden + 1)]
    A = {k: v.double().numpy() for k, v in a.items()}
    B = {k: v.double().numpy() for k, v in b.items()}
    perms = [np.arange(A[f"{layers[i]}.weight"].shape[0]) for i in range(n_hidden)]
    rng = np.random.default_rng(seed)

    def permuted(key: str, i_out: int | None, i_in: int | None) -> np.ndarray:
        w = B[key]
        if i_out is not None:
            w = w[perms[i_out]]
        if i_in is not None and w.ndim == 2:
            w = w[:, perms[i_in]]
        return w

    for _ in range(max_iter):
        progress = False
        for p in rng.permutation(n_hidden):
            n = len(perms[p])
            s = np.zeros((n, n))
            wl, wn = layers[p], layers[p + 1]
            s += A[f"{wl}.weight"] @ permuted(f"{wl}.weight", None, p - 1 if p > 0 else None).T
            s += A[f"{wl}.bias"][:, None] * B[f"{wl}.bias"][None, :]
            nxt_out = p + 1 if p + 1 < n_hidden else None
            s += A[f"{wn}.weight"].T @ permuted(f"{wn}.weight", nxt_out, None)
            _, col = linear_sum_assignment(s, maximize=True)
            old = s[np.arange(n), perms[p]].sum()
            new = s[np.arange(n), col].sum()
            if new > old + 1e-12:
                progress = True
                perms[p] = col
        if not progress:
            break
    return perms


# ----------------------------------------------------------------------------
# One pair
# ----------------------------------------------------------------------------


class Recorder(WarmStart):
    """A :class:`WarmStart` that keeps every similarity it solves, with its group."""

    def __init__(self, solver: str) -> None:
        super().__init__(solver)
        self.solved: list[tuple[str, np.ndarray]] = []

    def __call__(self, group: str, similarity: torch.Tensor) -> torch.Tensor:
        self.solved.append((group, similarity.numpy().copy()))
        return super().__call__(group, similarity)


@dataclass
class Run:
    cpu: float
    wall: float
    buckets: dict[str, float]
    profile: dict[str, float | int]
    objective: float
    perm: dict[str, torch.Tensor] = field(repr=False)

    @property
    def floor(self) -> float:
        return self.buckets.get("products", 0.0) + self.buckets.get("assignments", 0.0)


def timed_run(pair: Pair, **options: object) -> Run:
    buckets: dict[str, float] = {}
    with probes(buckets, PROBES):
        c0, w0 = time.process_time(), time.perf_counter()
        al = match_weights(pair.spec, pair.a, pair.b, seed=0, **options)  # type: ignore[arg-type]
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    return Run(cpu, wall, buckets, dict(al.profile), al.objective, al.perm)


def recorded_matrices(pair: Pair) -> list[tuple[str, np.ndarray]]:
    """The similarities one run solves, in order (the run's own solver, warm-started)."""
    recorder = Recorder(weight_mod.DEFAULT_SOLVER)
    saved = weight_mod.WarmStart
    weight_mod.WarmStart = lambda solver: recorder  # type: ignore[assignment,misc]
    try:
        match_weights(pair.spec, pair.a, pair.b, seed=0)
    finally:
        weight_mod.WarmStart = saved  # type: ignore[misc]
    return recorder.solved


def _cold(solve: Callable[[np.ndarray], object]) -> Callable[[list], list[float]]:
    def run(mats: list[tuple[str, np.ndarray]]) -> list[float]:
        out = []
        for _, s in mats:
            start = time.process_time()
            solve(s)
            out.append(time.process_time() - start)
        return out

    return run


def _warm(solver: str) -> Callable[[list], list[float]]:
    def run(mats: list[tuple[str, np.ndarray]]) -> list[float]:
        prices: dict[str, np.ndarray] = {}
        out = []
        for group, s in mats:
            start = time.process_time()
            prices[group] = solve_warm(s, prices.get(group), solver).prices
            out.append(time.process_time() - start)
        return out

    return run


def solver_table(
    mats: list[tuple[str, np.ndarray]], sample: int | None
) -> dict[str, tuple[float, int]]:
    """Mean ms per solve and the number of matrices timed, per solver."""
    import lap

    cold = mats if sample is None else mats[:sample]
    runs: dict[str, tuple[Callable[[list], list[float]], list]] = {
        "scipy": (_cold(lambda s: linear_sum_assignment(s, maximize=True)), cold),
        "lapjvh": (_cold(lambda s: lap.lapjvh(-s)), cold),
        "lapjv": (_cold(lambda s: lap.lapjv(-s)), cold if sample is None else cold[:1]),
        "lapjvh row-reduced": (_cold(lambda s: solve_assignment(s, "lapjvh")), cold),
        "lapjvh warm": (_warm("lapjvh"), mats),
        "scipy warm": (_warm("scipy"), mats),
    }
    out = {}
    for name, (run, which) in runs.items():
        if name.startswith("lapjvh") and "lapjvh" not in SOLVERS:
            continue
        times = run(which)
        out[name] = (1000 * float(np.mean(times)), len(times))
    return out


@dataclass(frozen=True)
class Reference:
    cpu: float
    objective: float
    same: bool


def reference(pair: Pair, ours: dict[str, torch.Tensor]) -> Reference:
    start = time.process_time()
    perms = reference_weight_matching(pair.a, pair.b, 3)
    cpu = time.process_time() - start
    theirs = {g: torch.as_tensor(p) for g, p in zip(pair.spec.groups, perms)}
    same = all(torch.equal(theirs[g], ours[g]) for g in pair.spec.groups)
    return Reference(cpu, objective(pair.spec, pair.a, pair.b, theirs), same)


def best_run(pair: Pair, repeats: int) -> Run:
    timed_run(pair)  # warm-up
    runs = [timed_run(pair) for _ in range(repeats)]
    return min(runs, key=lambda r: r.cpu)


# ----------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------


def print_runs(rows: list[tuple[Pair, Run, Reference | None]]) -> None:
    head = (
        f"{'pair':26} {'kind':8} {'sweeps':>6} {'solves':>6} {'skipped':>7} {'ms/solve':>8} "
        f"{'products':>8} {'assign':>7} {'other':>6} {'cpu s':>7} {'wall s':>7} "
        f"{'/floor':>6} {'ref s':>7} {'speed-up':>8} {'objective':>10} {'ref obj':>10} {'same':>5}"
    )
    print(head)
    for pair, run, ref in rows:
        prof, b = run.profile, run.buckets
        assign = b.get("assignments", 0.0)
        other = run.cpu - run.floor
        ms = 1000 * assign / max(int(prof["solves"]), 1)
        line = (
            f"{pair.name:26} {'real' if pair.real else 'permuted':8} {prof['sweeps']:>6} "
            f"{prof['solves']:>6} {prof['skipped']:>7} {ms:8.2f} {b.get('products', 0.0):8.3f} "
            f"{assign:7.3f} {other:6.3f} {run.cpu:7.3f} {run.wall:7.3f} "
            f"{run.cpu / run.floor:5.2f}x"
        )
        if ref is not None:
            line += f" {ref.cpu:7.3f} {ref.cpu / run.cpu:7.1f}x {run.objective:10.3f}"
            line += f" {ref.objective:10.3f} {'yes' if ref.same else 'no':>5}"
        else:
            line += f" {'':7} {'':8} {run.objective:10.3f}"
        print(line)


def _label(name: str, real: bool) -> str:
    """The README's name of a pair: ``digits 64-512×3-10, trained``, ``784-512×3-10,
    permuted copy``, ``MNIST-scale 784-4096×3-10, trained (2 epochs)``."""
    shape = name.split(" ", 1)[1].replace("x", "×")
    if not real:
        return f"{shape}, permuted copy"
    if name.startswith("digits"):
        return f"digits {shape}, trained"
    short = "" if shape.startswith("784-512×") else " (2 epochs)"  # pairs.py's wide recipe
    return f"MNIST-scale {shape}, trained{short}"


def report(numbers: dict) -> str:
    """The README's table from a stored run: sweeps, assignments, time against the floor
    and against the plain reference (CPU seconds of the best run)."""
    lines = ["| pair | sweeps | assignments solved / skipped | ms per assignment | total s | "
             "total / floor | reference s | speed-up |", "|---" * 8 + "|"]  # fmt: skip
    for run in numbers["runs"]:
        prof, ref = run["profile"], run["reference"]
        ms = 1000 * run["buckets"].get("assignments", 0.0) / max(int(prof["solves"]), 1)
        cells = [_label(run["pair"], run["real"]), str(prof["sweeps"]),
                 f"{prof['solves']} / {prof['skipped']}", f"{ms:.0f}" if ms >= 10 else f"{ms:.1f}",
                 f"{run['cpu_s']:.3f}" if run["cpu_s"] < 1 else f"{run['cpu_s']:.2f}",
                 f"{run['cpu_s'] / run['floor_s']:.2f}×",
                 "" if ref is None else f"{ref['cpu']:.2f}",
                 "" if ref is None else _times(ref["cpu"] / run["cpu_s"])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _times(x: float) -> str:
    return f"{x:.0f}×" if x >= 10 else f"{x:.1f}×"


def print_solvers(tables: list[tuple[Pair, dict[str, tuple[float, int]]]]) -> None:
    names = list(dict.fromkeys(k for _, t in tables for k in t))
    print(f"{'ms per solve':26} {'kind':8} " + " ".join(f"{n:>18}" for n in names))
    for pair, table in tables:
        cells = []
        for n in names:
            ms, count = table.get(n, (float("nan"), 0))
            cells.append(f"{ms:13.2f} ({count:>2})")
        print(f"{pair.name:26} {'real' if pair.real else 'permuted':8} " + " ".join(cells))


def print_tolerances(pairs: list[Pair], tolerances: list[float], seeds: list[int]) -> None:
    """Sweeps, solves, objective and barriers of each ``rtol``: the price of stopping early."""
    from modeconnect import barrier, interpolation_curve

    print(f"{'pair':26} {'rtol':>7} {'seed':>4} {'sweeps':>6} {'solves':>6} {'cpu s':>7} "
          f"{'objective':>10} {'loss barrier':>12} {'error barrier':>13}")  # fmt: skip
    for pair in pairs:
        data = test_data(pair)
        for rtol in tolerances:
            for seed in seeds:
                start = time.process_time()
                al = match_weights(pair.spec, pair.a, pair.b, seed=seed, rtol=rtol)
                cpu = time.process_time() - start
                aligned = apply_permutation(pair.b, pair.spec, al.perm)
                bar = barrier(interpolation_curve(pair.model, pair.a, aligned, data, steps=25))
                print(f"{pair.name:26} {rtol:7.0e} {seed:4d} {al.iterations:6d} "
                      f"{al.profile['solves']:6d} {cpu:7.3f} {al.objective:10.3f} "
                      f"{bar.loss:12.4f} {bar.error:13.2%}", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pairs", nargs="+", default=["digits", "mnist512", "permuted512", "permuted2048"]
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument(
        "--solver-sample", type=int, default=4, help="cold solves timed per pair above width 1024"
    )
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--tolerances", type=float, nargs="+", help="measure these rtol instead")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    add_out(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.tolerances:
        real = [by_name(n, args.cache) for n in args.pairs]
        print_tolerances([p for p in real if p.real], args.tolerances, args.seeds)
        return
    print(f"# torch {torch.__version__}, {args.threads} thread(s), best of {args.repeats} "
          f"(CPU seconds), load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    pairs = sorted((by_name(n, args.cache) for n in args.pairs), key=lambda p: not p.real)
    rows, tables = [], []
    for pair in pairs:
        width = pair.spec.groups["P0"].size
        run = best_run(pair, args.repeats if width <= 1024 else 1)
        use_ref = not args.no_reference and width <= 2048
        rows.append((pair, run, reference(pair, run.perm) if use_ref else None))
        sample = None if width <= 1024 else args.solver_sample
        tables.append((pair, solver_table(recorded_matrices(pair), sample)))
        print(f"# {pair.name} done, load average {os.getloadavg()[0]:.1f}", flush=True)
    print_runs(rows)
    print()
    print_solvers(tables)
    numbers: dict = {
        "threads": args.threads,
        "repeats": args.repeats,
        "runs": [
            {"pair": pair.name, "real": pair.real, "cpu_s": run.cpu, "wall_s": run.wall,
             "floor_s": run.floor, "objective": run.objective, "profile": run.profile,
             "buckets": run.buckets,
             "reference": None if ref is None else asdict(ref)}
            for pair, run, ref in rows
        ],
        "solvers": {pair.name: table for pair, table in tables},
    }  # fmt: skip
    print()
    print(report(numbers))
    store(args.out, numbers, seeds=args.seeds)


if __name__ == "__main__":
    main()
