"""Wall time of a landscape grid on a local Ray cluster against the single-process run.

The grid is :func:`modeconnect.surface_2d` (filter-normalised, seed 0) of one model on
its data, evaluated here (``cluster=None``) and on a local Ray cluster of 1 and 2
workers (one torch thread each, one grid row per task). Every cluster result must equal
the local one to the bit; the benchmark stops otherwise.

The machine is shared and its load changes by the minute, so every cluster run is
paired with a single-process run (1 torch thread) just before it, ``--repeats`` pairs:

* ``ratio_ray_N_vs_local_1``: the median over pairs of (grid on N warm workers) /
  (grid here, 1 thread); ``ratios_..._each`` the pairs' ratios;
* ``ray_workers_N``, ``local_threads_1_beside_N``: the best of each side;
* ``ray_workers_N_cold`` (the first grid on a fresh cluster: workers import torch and
  read the model and data), ``ray_start_N`` (starting the cluster);
* ``local_threads_2_once``: one single-process grid with 2 torch threads (on a loaded
  2-core machine this oversubscribes: see the issue's note on load);
* ``speedup_2_vs_1_workers``: best grid time on 1 worker / on 2 workers.

Two cases: ``digits`` (the shipped digits MLP, 500 test examples, 21 x 21) and
``wide`` (a random 64-512-512-512-10 MLP on 2 000 random examples, 11 x 11), where
each point costs more and the per-task overhead matters less.

Run from the repository root::

    python benchmarks/bench_ray.py [--repeats 3] [--out results/bench_ray.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import modeconnect as mc  # noqa: E402
from modeconnect.distributed import Cluster  # noqa: E402
from modeconnect.models import mlp  # noqa: E402
from modeconnect.provenance import write_result  # noqa: E402

WORKERS = (1, 2)


def digits_case() -> tuple[Any, Any, list, int]:
    ckpt = mc.load(ROOT / "checkpoints" / "mlp_a.pt")
    model = mc.resolve_model([ckpt]).model
    test = torch.load(ROOT / "checkpoints" / "digits_test.pt", weights_only=True)
    x, y = test["x"][:500], test["y"][:500]
    return model, dict(ckpt.state_dict), [(x, y)], 21


def wide_case() -> tuple[Any, Any, list, int]:
    torch.manual_seed(0)
    model = mlp(64, [512, 512, 512], 10)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2000, 64, generator=g)
    y = torch.randint(0, 10, (2000,), generator=g)
    return (
        model,
        model.state_dict(),
        [(x[i : i + 1000], y[i : i + 1000]) for i in range(0, 2000, 1000)],
        11,
    )


def best(fn: Callable[..., Any], repeats: int, *args: Any) -> tuple[float, Any]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn(*args)
        times.append(time.perf_counter() - start)
    return min(times), value


def run_case(name: str, case: tuple[Any, Any, list, int], repeats: int) -> dict[str, Any]:
    import ray

    model, state, data, resolution = case

    def grid(cluster: Cluster | None) -> Any:
        return mc.surface_2d(model, state, data, resolution=resolution, seed=0, cluster=cluster)

    out: dict[str, Any] = {"points": resolution**2, "examples": sum(len(b[1]) for b in data)}
    torch.set_num_threads(2)
    out["local_threads_2_once"], _ = best(grid, 1, None)
    torch.set_num_threads(1)
    out["local_threads_1_once"], reference = best(grid, 1, None)
    for workers in WORKERS:
        start = time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                 _temp_dir=tempfile.mkdtemp(prefix="mcbench"))  # fmt: skip
        out[f"ray_start_{workers}"] = time.perf_counter() - start
        cluster = Cluster(workers=workers, threads=1)
        try:
            out[f"ray_workers_{workers}_cold"], first = best(grid, 1, cluster)
            local, remote, ratios = [], [], []
            for _ in range(repeats):  # side by side: the load changes by the minute
                t_local, again_local = best(grid, 1, None)
                t_ray, again = best(grid, 1, cluster)
                if first != reference or again != reference or again_local != reference:
                    raise SystemExit(f"{name}: the grid on {workers} workers differs from here")
                local.append(t_local)
                remote.append(t_ray)
                ratios.append(t_ray / t_local)
        finally:
            ray.shutdown()
        out[f"local_threads_1_beside_{workers}"] = min(local)
        out[f"ray_workers_{workers}"] = min(remote)
        out[f"ratio_ray_{workers}_vs_local_1"] = statistics.median(ratios)
        out[f"ratios_ray_{workers}_vs_local_1_each"] = ratios
    out["identical_to_local"] = True
    out["speedup_2_vs_1_workers"] = out["ray_workers_1"] / out["ray_workers_2"]
    return out


CASES = {"digits": "digits MLP", "wide": "64-512-512-512-10"}


def report(numbers: dict[str, Any]) -> str:
    """The table of ``docs/architecture.md`` (Past one machine) from the stored result."""
    header = ["row", "1 worker / local (best of 3 pairs)", "1 worker: median ratio (pairs)",
              "2 workers / local (best)", "2 workers: median ratio (pairs)"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for case, label in CASES.items():
        if case not in numbers:
            continue
        r, cells = numbers[case], [label]
        for n in WORKERS:
            each = r[f"ratios_ray_{n}_vs_local_1_each"]
            cells += [
                f"{r[f'ray_workers_{n}']:.1f} s / {r[f'local_threads_1_beside_{n}']:.1f} s",
                f"{r[f'ratio_ray_{n}_vs_local_1']:.2f}× ({min(each):.2f}–{max(each):.2f})",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench_ray.json")
    p.add_argument("--cases", default="digits,wide")
    args = p.parse_args(argv)
    cases = {"digits": digits_case, "wide": wide_case}
    numbers: dict[str, Any] = {
        "note": "2-core machine shared with other jobs (loaded); ratios are side by side, one run",
    }
    for name in args.cases.split(","):
        numbers[name] = run_case(name, cases[name](), args.repeats)
        print(
            name, {k: round(v, 3) if isinstance(v, float) else v for k, v in numbers[name].items()}
        )
    write_result(args.out, numbers, seeds=[0], command=["python", *sys.argv])
    print(report(numbers))
    return numbers


if __name__ == "__main__":
    main()
