"""Weight matching against the original Git Re-Basin code (JAX), same pairs, same run.

The reference is ``weight_matching`` of samuela/git-re-basin (Ainsworth et al. 2023,
Algorithm 1), vendored verbatim under ``benchmarks/third_party/git_re_basin/`` (its MIT
licence and source commit in the header) and run on JAX's CPU backend. jax is never a
dependency of modeconnect: ``pip install -e ".[bench-jax]"`` installs it for this script
alone. From the repository root::

    python benchmarks/bench_git_rebasin_jax.py [--seed-pairs 1 2 3 4 5 6]
        [--match-seeds 0 1 2] [--repeats 5] [--threads 1]
        [--out results/bench_git_rebasin_jax.json]

Pairs: 784-512x3-10 MLPs trained independently on the MNIST-scale stand-in of
``examples/mnist_scale_digits.py`` (its recipe), one pair per two training seeds, trained
once and cached (``benchmarks/pairs.py``). Both sides start from the identity, visit
the permutation groups in a random order drawn from the matching seed (each with its own
generator: the orders differ), and stop when a sweep no longer improves (the original:
any gain over 1e-12; modeconnect: its default ``rtol=1e-3``, and ``rtol=0`` in a row of
its own). Timed, each warm (after one untimed call, whose time is kept as ``cold``):

- *matching*: finding the permutation from weights already in each side's layout (the
  original: ``weight_matching`` on ``{Dense_i/kernel, Dense_i/bias}`` jnp arrays with a
  prebuilt spec; modeconnect: :func:`modeconnect.match_weights` on state dicts with a
  derived spec);
- *end to end*: from the two torch state dicts to B's aligned state dict, with the spec
  built on both sides (the original: torch → jnp in Flax's layout, the hand-written
  ``mlp_permutation_spec(3)``, ``weight_matching``, ``apply_permutation``, jnp → torch;
  modeconnect: :func:`modeconnect.derive_spec` tracing the model, ``match_weights``,
  ``apply_permutation``). JAX runs op by op here (the original does not ``jit``), so it has
  no tracing step of its own; its per-op compilation is in ``cold``.

The objective is computed here, the same way for both: ``Σ_W ⟨W_A, π(W_B)⟩`` over every
tensor in float64, one value per matching seed. Medians of ``--repeats`` runs per side,
interleaved so that a change of load hits every side, in wall-clock and CPU seconds (on
a shared machine CPU seconds are the steadier measure); ratios are the original's time
over modeconnect's, measured in the same run. One thread on both sides (torch, XLA).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_rebasin import inner  # noqa: E402
from pairs import CACHE, Pair, mnist  # noqa: E402
from stored import add_out, store  # noqa: E402

from modeconnect.matching import match_weights  # noqa: E402
from modeconnect.spec import apply_permutation, derive_spec  # noqa: E402

StateDict = dict[str, torch.Tensor]
SOURCE = "samuela/git-re-basin@ef40098257ab97243930eba737d6dcb8edd5863e src/weight_matching.py"
REFERENCE = "git-re-basin (JAX)"
LAYERS = ("1", "3", "5", "7")  # modeconnect.models.mlp's Linear layers (0 is Flatten)


def load_reference(threads: int) -> Any:
    """The vendored original, imported with XLA held to ``threads`` threads."""
    if threads == 1:
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
    try:
        import jax
    except ImportError as err:
        raise SystemExit(
            f'{err}: pip install -e ".[bench-jax]" installs jax for this script'
        ) from None
    jax.config.update("jax_platforms", "cpu")
    sys.path.insert(0, str(HERE / "third_party" / "git_re_basin"))
    import weight_matching

    return weight_matching


def to_flax(sd: StateDict) -> dict[str, Any]:
    """A modeconnect ``mlp`` state dict in the original's layout (``Dense_i/kernel`` = Wᵀ)."""
    import jax.numpy as jnp

    params = {}
    for i, layer in enumerate(LAYERS):
        params[f"Dense_{i}/kernel"] = jnp.asarray(sd[f"{layer}.weight"].numpy().T)
        params[f"Dense_{i}/bias"] = jnp.asarray(sd[f"{layer}.bias"].numpy())
    return params


def from_flax(params: dict[str, Any]) -> StateDict:
    """The inverse of :func:`to_flax`."""
    sd = {}
    for i, layer in enumerate(LAYERS):
        sd[f"{layer}.weight"] = torch.from_numpy(np.array(params[f"Dense_{i}/kernel"]).T.copy())
        sd[f"{layer}.bias"] = torch.from_numpy(np.array(params[f"Dense_{i}/bias"]))
    return sd


def reference_runs(wm: Any, pair: Pair, seed: int) -> dict[str, Callable[[], Any]]:
    """The original's matching (prepared inputs) and end to end (torch in, torch out)."""
    import jax
    from jax import random

    spec, pa, pb = wm.mlp_permutation_spec(3), to_flax(pair.a), to_flax(pair.b)

    def matching() -> Any:
        perm = wm.weight_matching(random.PRNGKey(seed), spec, pa, pb, silent=True)
        return jax.block_until_ready(perm)

    def end_to_end() -> StateDict:
        a, b, ps = to_flax(pair.a), to_flax(pair.b), wm.mlp_permutation_spec(3)
        perm = wm.weight_matching(random.PRNGKey(seed), ps, a, b, silent=True)
        return from_flax(wm.apply_permutation(ps, perm, b))

    return {"matching": matching, "end_to_end": end_to_end}


def modeconnect_runs(pair: Pair, seed: int, rtol: float) -> dict[str, Callable[[], Any]]:
    """modeconnect's matching (derived spec) and end to end (tracing included)."""
    example = (torch.randn(2, pair.a["1.weight"].shape[1]),)

    def matching() -> Any:
        return match_weights(pair.spec, pair.a, pair.b, seed=seed, rtol=rtol)

    def end_to_end() -> StateDict:
        spec = derive_spec(pair.model, example)
        alignment = match_weights(spec, pair.a, pair.b, seed=seed, rtol=rtol)
        return apply_permutation(pair.b, spec, alignment.perm)

    return {"matching": matching, "end_to_end": end_to_end}


def reference_sweeps(wm: Any, pair: Pair, seed: int) -> int:
    """Sweeps the original made: it prints one line per group visited when not silent."""
    import contextlib
    import io

    from jax import random

    spec, pa, pb = wm.mlp_permutation_spec(3), to_flax(pair.a), to_flax(pair.b)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        wm.weight_matching(random.PRNGKey(seed), spec, pa, pb, silent=False)
    return len({line.split("/")[0] for line in out.getvalue().splitlines()})


def clock(run: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall and CPU seconds of one call, and what it returned."""
    w0, c0 = time.perf_counter(), time.process_time()
    value = run()
    return time.perf_counter() - w0, time.process_time() - c0, value


def measure_pair(wm: Any, pair: Pair, seeds: list[int], repeats: int) -> dict[str, Any]:
    """Per side: cold and median warm times of each mode, sweeps and objective per seed."""
    sides: dict[str, Callable[[int], dict[str, Callable[[], Any]]]] = {
        REFERENCE: lambda s: reference_runs(wm, pair, s),
        "modeconnect": lambda s: modeconnect_runs(pair, s, 1e-3),
        "modeconnect rtol=0": lambda s: modeconnect_runs(pair, s, 0.0),
    }
    found: dict[str, dict[str, Any]] = {
        side: {"objective": [], "sweeps": [], "wall": {}, "cpu": {}, "cold": {}} for side in sides
    }
    for seed in seeds:
        runs = {side: make(seed) for side, make in sides.items()}
        for side, modes in runs.items():  # the untimed first calls, and the objective
            for mode, run in modes.items():
                wall, cpu, value = clock(run)
                found[side]["cold"].setdefault(mode, []).append(wall)
                if mode == "end_to_end":
                    found[side]["objective"].append(inner(pair.a, value))
        found[REFERENCE]["sweeps"].append(reference_sweeps(wm, pair, seed))
        for side in ("modeconnect", "modeconnect rtol=0"):
            found[side]["sweeps"].append(runs[side]["matching"]().iterations)
        for _ in range(repeats):
            for side, modes in runs.items():
                for mode, run in modes.items():
                    wall, cpu, _value = clock(run)
                    found[side]["wall"].setdefault(mode, []).append(wall)
                    found[side]["cpu"].setdefault(mode, []).append(cpu)
    for data in found.values():
        for key in ("wall", "cpu"):
            data[f"{key}_median"] = {m: statistics.median(v) for m, v in data[key].items()}
    return found


def ratios(data: dict[str, Any], side: str) -> dict[str, float]:
    """The original's median time over ``side``'s, per mode and clock."""
    ref, ours = data[REFERENCE], data[side]
    return {f"{mode} {key}": ref[f"{key}_median"][mode] / ours[f"{key}_median"][mode]
            for key in ("cpu", "wall") for mode in ("matching", "end_to_end")}  # fmt: skip


def report(numbers: dict[str, Any]) -> str:
    """The table of medians, objectives and ratios (the original's time over each side's)."""
    lines = ["| pair (training seeds) | run | matching s (CPU / wall) | end to end s (CPU / "
             "wall) | sweeps | objective, mean (min–max) | original / this, CPU: "
             "matching, end to end |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, data in numbers["pairs"].items():
        for side, row in data.items():
            cpu, wall = row["cpu_median"], row["wall_median"]
            obj = row["objective"]
            r = ratios(data, side)
            lines.append(
                f"| {name} | {side} | {cpu['matching']:.3f} / {wall['matching']:.3f} | "
                f"{cpu['end_to_end']:.3f} / {wall['end_to_end']:.3f} | "
                f"{min(row['sweeps'])}–{max(row['sweeps'])} | {statistics.mean(obj):.2f} "
                f"({min(obj):.2f}–{max(obj):.2f}) | {r['matching cpu']:.1f}× / "
                f"{r['end_to_end cpu']:.1f}× |"
            )
    return "\n".join(lines)


def summary(numbers: dict[str, Any], side: str = "modeconnect") -> dict[str, list[float]]:
    """Ranges over the pairs for ``side``: CPU and wall ratios (original / ``side``) per
    mode, the original's and ``side``'s median seconds, and the objective gap (``side``
    minus the original, means over matching seeds) against the spread over seeds of
    either side (largest max − min)."""
    found: dict[str, list[float]] = {}
    for data in numbers["pairs"].values():
        for key, value in ratios(data, side).items():
            found.setdefault(key, []).append(value)
        for name, label in ((REFERENCE, "original"), (side, side)):
            for key in ("cpu", "wall"):
                for mode in ("matching", "end_to_end"):
                    med = data[name][f"{key}_median"][mode]
                    found.setdefault(f"{label} {mode} {key} s", []).append(med)
        ref, ours = data[REFERENCE]["objective"], data[side]["objective"]
        found.setdefault("objective gap", []).append(statistics.mean(ours) - statistics.mean(ref))
        spread = max(max(v) - min(v) for v in (ref, ours))
        found.setdefault("objective spread", []).append(spread)
    return {k: [min(v), max(v)] for k, v in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed-pairs", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6],
                        help="training seeds, two per pair")  # fmt: skip
    parser.add_argument("--match-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--cache", type=Path, default=CACHE)
    add_out(parser)
    args = parser.parse_args()
    if len(args.seed_pairs) % 2:
        parser.error("--seed-pairs takes an even number of seeds (two per pair)")
    torch.set_num_threads(args.threads)
    wm = load_reference(args.threads)
    numbers: dict[str, Any] = {
        "reference": {"source": SOURCE, "jax": metadata.version("jax"),
                      "jaxlib": metadata.version("jaxlib")},
        "threads": args.threads, "repeats": args.repeats, "match_seeds": args.match_seeds,
        "load_average": [], "pairs": {},
    }  # fmt: skip
    print(f"# torch {torch.__version__}, jax {numbers['reference']['jax']}, "
          f"{args.threads} thread(s), median of {args.repeats}")  # fmt: skip
    seed_pairs = list(zip(args.seed_pairs[::2], args.seed_pairs[1::2]))
    for seeds in seed_pairs:
        pair = mnist(args.width, args.cache, seeds=seeds)
        name = f"784-{args.width}x3-10 ({seeds[0]}, {seeds[1]})"
        numbers["load_average"].append(os.getloadavg()[0])
        numbers["pairs"][name] = measure_pair(wm, pair, args.match_seeds, args.repeats)
        print(f"# {name} done, load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
    numbers["summary"] = summary(numbers)
    numbers["summary_rtol0"] = summary(numbers, "modeconnect rtol=0")
    print(report(numbers))
    for side in ("summary", "summary_rtol0"):
        for key, (lo, hi) in numbers[side].items():
            print(f"# {side} {key}: {lo:.3f}–{hi:.3f}")
    print(f"# load average during the run: {min(numbers['load_average']):.1f}–"
          f"{max(numbers['load_average']):.1f}")  # fmt: skip
    store(args.out, numbers, seeds=[*args.seed_pairs, *args.match_seeds])


if __name__ == "__main__":
    main()
