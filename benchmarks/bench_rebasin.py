"""Weight matching against the PyPI ``rebasin`` package (0.0.47), same pairs, same run.

rebasin is never a dependency of modeconnect: it runs in its own virtual environment,
in a subprocess of that environment's Python, on the same state dicts and with the
same thread count. Set the environment up once (outside the repository)::

    python -m venv /tmp/rebasin-venv
    /tmp/rebasin-venv/bin/pip install torch==2.13.0 numpy scipy
    /tmp/rebasin-venv/bin/pip install --no-deps rebasin==0.0.47 torchview tqdm graphviz

(``torch==2.13.0`` is the CPU build this project pins; ``graphviz`` is the Python
package, which torchview imports.) Then, from the repository root::

    python benchmarks/bench_rebasin.py [--rebasin-python /tmp/rebasin-venv/bin/python]
        [--pairs digits mnist512] [--repeats 5] [--threads 1]

Both sides run Git Re-Basin weight matching (Ainsworth et al. 2023, Alg. 1) on the
same pair: rebasin's ``PermutationCoordinateDescent`` (graph from torchview, SciPy's
Hungarian solver, float32 cost matrices, a random group order from torch's global
generator, seeded 0) and :func:`modeconnect.match_weights` (seed 0) with its default
relative tolerance and in exact mode (``rtol=0``). Timed: finding the permutation
and applying it to B (rebasin: ``calculate_permutations`` + ``apply_permutations``;
modeconnect: ``match_weights`` + ``apply_permutation``); setting up (rebasin's
``PermutationCoordinateDescent(...)``, modeconnect's ``derive_spec``) is reported
apart. Both objectives are computed here, the same way: ``Σ_W ⟨W_A, π(W_B)⟩`` over
every tensor, in float64. Each side is timed ``--repeats`` times (interleaved with
the other), best of them, in wall-clock and CPU seconds: on a shared machine CPU
seconds are the steadier measure. The load average is printed with the table.

The MNIST-scale pair is trained once and cached (``benchmarks/pairs.py``).
Without the rebasin environment, the script says so and times modeconnect alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pairs import CACHE, Pair, by_name  # noqa: E402
from stored import add_out, store  # noqa: E402

from modeconnect.matching import match_weights  # noqa: E402
from modeconnect.spec import apply_permutation  # noqa: E402

DEFAULT_VENV_PYTHON = Path("/tmp/rebasin-venv/bin/python")

CHILD = r"""
import json, sys, time
import torch
from torch import nn
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
from rebasin import PermutationCoordinateDescent

def mlp(n_in, width, n_out=10):  # the layout of modeconnect.models.mlp: keys 1, 3, 5, 7
    layers, w = [nn.Flatten()], n_in
    for _ in range(3):
        layers += [nn.Linear(w, width), nn.ReLU()]
        w = width
    layers.append(nn.Linear(w, n_out))
    return nn.Sequential(*layers)

sa, sb = torch.load(args["a"], weights_only=True), torch.load(args["b"], weights_only=True)
rows = []
for _ in range(args["repeats"]):
    ma, mb = mlp(args["n_in"], args["width"]), mlp(args["n_in"], args["width"])
    ma.load_state_dict(sa)
    mb.load_state_dict(sb)
    torch.manual_seed(args["seed"])
    w0, c0 = time.perf_counter(), time.process_time()
    pcd = PermutationCoordinateDescent(ma, mb, torch.randn(2, args["n_in"]))
    w1, c1 = time.perf_counter(), time.process_time()
    pcd.calculate_permutations()
    pcd.apply_permutations()
    w2, c2 = time.perf_counter(), time.process_time()
    rows.append({"setup_wall": w1 - w0, "setup_cpu": c1 - c0, "wall": w2 - w1, "cpu": c2 - c1})
torch.save({k: v.detach().clone() for k, v in mb.state_dict().items()}, args["out"])
print(json.dumps(rows))
"""


@dataclass(frozen=True)
class Timing:
    wall: float
    cpu: float
    objective: float
    setup_wall: float = 0.0
    sweeps: int | None = None


def inner(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """``Σ_W ⟨W_A, W_B⟩`` over every tensor, in float64 (B already permuted)."""
    return sum(float((a[k].double() * b[k].double()).sum()) for k in a)


def time_modeconnect(pair: Pair, **options: float) -> Timing:
    w0, c0 = time.perf_counter(), time.process_time()
    al = match_weights(pair.spec, pair.a, pair.b, seed=0, **options)
    aligned = apply_permutation(pair.b, pair.spec, al.perm)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return Timing(wall, cpu, inner(pair.a, aligned), sweeps=al.iterations)


def time_rebasin(python: Path, pair: Pair, repeats: int, threads: int) -> Timing:
    """Best of ``repeats`` runs in one subprocess of rebasin's environment."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = {x: str(Path(tmp) / f"{x}.pt") for x in ("a", "b", "out")}
        torch.save(pair.a, paths["a"])
        torch.save(pair.b, paths["b"])
        width, n_in = pair.a["1.weight"].shape
        args = {**paths, "n_in": n_in, "width": width, "repeats": repeats, "seed": 0}
        env = {**os.environ, **thread_env(threads)}
        out = subprocess.run(
            [str(python), "-c", CHILD, json.dumps({**args, "threads": threads})],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        if out.returncode != 0:
            raise SystemExit(f"rebasin run failed:\n{out.stderr[-2000:]}")
        rows = json.loads(out.stdout.strip().splitlines()[-1])
        aligned = torch.load(paths["out"], weights_only=True)
    best = min(rows, key=lambda r: r["cpu"])
    return Timing(best["wall"], best["cpu"], inner(pair.a, aligned), best["setup_wall"])


def compare(pair: Pair, python: Path | None, repeats: int, threads: int) -> dict[str, Timing]:
    """Best (by CPU seconds) of ``repeats`` rounds; each round runs every side once."""
    runs: dict[str, Callable[[], Timing]] = {
        "modeconnect": partial(time_modeconnect, pair),
        "modeconnect rtol=0": partial(time_modeconnect, pair, rtol=0.0),
    }
    if python is not None:
        runs["rebasin 0.0.47"] = partial(time_rebasin, python, pair, 2, threads)
    time_modeconnect(pair)  # warm-up
    best: dict[str, Timing] = {}
    for _ in range(repeats):  # interleaved, so a change of load hits every side
        for label, run in runs.items():
            t = run()
            if label not in best or t.cpu < best[label].cpu:
                best[label] = t
    return best


def thread_env(threads: int) -> dict[str, str]:
    return {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rebasin-python", type=Path, default=DEFAULT_VENV_PYTHON)
    parser.add_argument("--pairs", nargs="+", default=["digits", "mnist512"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=CACHE)
    add_out(parser)
    args = parser.parse_args()
    numbers: dict[str, Any] = {"threads": args.threads, "repeats": args.repeats, "pairs": {}}
    torch.set_num_threads(args.threads)
    have_rebasin = args.rebasin_python.exists()
    if not have_rebasin:
        print(f"# rebasin skipped: {args.rebasin_python} not found; set it up as in this "
              "script's docstring and pass --rebasin-python")  # fmt: skip
    print(f"# torch {torch.__version__}, {args.threads} thread(s), best of {args.repeats}, "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    head = f"{'pair':24} {'run':22} {'wall s':>8} {'cpu s':>8} {'sweeps':>6} {'objective':>10}"
    print(head + f" {'cpu ratio':>9} {'wall ratio':>10}")
    for name in args.pairs:
        pair = by_name(name, args.cache)
        start = time.perf_counter()
        python = args.rebasin_python if have_rebasin else None
        rows = compare(pair, python, args.repeats, args.threads)
        ref = rows.get("rebasin 0.0.47")
        numbers["pairs"][pair.name] = {label: asdict(t) for label, t in rows.items()}
        for label, t in rows.items():
            ratio = f"{ref.cpu / t.cpu:8.1f}x {ref.wall / t.wall:9.1f}x" if ref else ""
            sweeps = "" if t.sweeps is None else str(t.sweeps)
            print(f"{pair.name:24} {label:22} {t.wall:8.3f} {t.cpu:8.3f} {sweeps:>6} "
                  f"{t.objective:10.3f} {ratio}")  # fmt: skip
        print(f"# {pair.name}: {time.perf_counter() - start:.0f} s, "
              f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    numbers["rebasin_measured"] = have_rebasin
    store(args.out, numbers)


if __name__ == "__main__":
    main()
