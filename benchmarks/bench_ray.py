"""Wall time of a landscape grid on a local Ray cluster against the single-process run.

The grid is :func:`modeconnect.surface_2d` (filter-normalised, seed 0) of one model on
its data, evaluated here (``cluster=None``) and on a local Ray cluster of 1 and 2
workers (one torch thread each, one grid row per task). Every cluster result must equal
the local one to the bit; the benchmark stops otherwise.

Times, each the best of ``--repeats``:

* ``local_threads_N``: the single-process grid with N torch threads;
* ``ray_workers_N``: the grid on a warm cluster of N workers (each worker has already
  run one grid, so torch is imported and the model and data are in its memory); the
  first grid on a fresh cluster (``ray_workers_N_cold``) and starting the cluster
  (``ray_start_N``) are reported apart;
* ``local_threads_1_beside_N_idle_workers``: the single-process grid again while the
  cluster of N workers is up and idle (what Ray's own processes cost the machine);
* ratios ``ray_workers_N / local_threads_1`` and ``ray_workers_2 / local_threads_2``.

Two cases: ``digits`` (the shipped digits MLP, 500 test examples, 21 x 21) and
``wide`` (a random 64-512-512-512-10 MLP on 2 000 random examples, 11 x 11), where
each point costs more and the per-task overhead matters less.

Run from the repository root::

    python benchmarks/bench_ray.py [--repeats 3] [--out results/bench_ray.json]
"""

from __future__ import annotations

import argparse
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
    for threads in (1, 2):
        torch.set_num_threads(threads)
        out[f"local_threads_{threads}"], reference = best(grid, repeats, None)
    torch.set_num_threads(1)
    for workers in WORKERS:
        start = time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                 _temp_dir=tempfile.mkdtemp(prefix="mcbench"))  # fmt: skip
        out[f"ray_start_{workers}"] = time.perf_counter() - start
        cluster = Cluster(workers=workers, threads=1)
        try:
            out[f"ray_workers_{workers}_cold"], first = best(grid, 1, cluster)
            out[f"ray_workers_{workers}"], again = best(grid, repeats, cluster)
            # The same local grid while the idle cluster's processes run beside it.
            out[f"local_threads_1_beside_{workers}_idle_workers"], _ = best(grid, repeats, None)
        finally:
            ray.shutdown()
        if first != reference or again != reference:
            raise SystemExit(
                f"{name}: the grid on {workers} Ray workers differs from the local one"
            )
    out["identical_to_local"] = True
    for workers in WORKERS:
        out[f"ratio_ray_{workers}_vs_local_1"] = (
            out[f"ray_workers_{workers}"] / out["local_threads_1"]
        )
    out["ratio_ray_2_vs_local_2"] = out["ray_workers_2"] / out["local_threads_2"]
    return out


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
    write_result(args.out, numbers, seeds=[0])
    return numbers


if __name__ == "__main__":
    main()
