"""Weight-matching time against a plain reference implementation, in the same run.

The reference is Git Re-Basin's Algorithm 1 as usually written: float64 NumPy
products over a hand-written MLP spec, `scipy.optimize.linear_sum_assignment`,
every neighbouring weight re-permuted at every step. modeconnect derives the spec
from the graph, computes the products in float32 with float64 accumulation of the
scores, and solves with lapx's Jonker-Volgenant (`lapjvh`).

B is a randomly permuted copy of A with Gaussian noise added (noise std = 0.5 × the
weight scale), so the assignment problems look like those of independently trained
nets (a clear but noisy optimum) and both implementations must find the same
permutation. Run: ``python benchmarks/bench_weight_matching.py [--sizes 512 2048]``.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from modeconnect.graph import derive_spec
from modeconnect.matching import match_weights
from modeconnect.models import mlp
from modeconnect.spec import apply_permutation, random_permutation


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


def make_pair(width: int, depth: int = 3, noise: float = 0.5, seed: int = 0):
    torch.manual_seed(seed)
    model = mlp(784, [width] * depth, 10)
    spec = derive_spec(model, (torch.randn(2, 784),))
    a = {k: v.detach().clone() for k, v in model.state_dict().items()}
    b = apply_permutation(a, spec, random_permutation(spec, seed + 1))
    gen = torch.Generator().manual_seed(seed + 2)
    b = {k: v + noise * v.std() * torch.randn(v.shape, generator=gen) for k, v in b.items()}
    return model, spec, a, b


def best_of(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for width in args.sizes:
        model, spec, a, b = make_pair(width)
        repeats = args.repeats if width <= 1024 else 1
        t_ref, perms = best_of(partial(reference_weight_matching, a, b, 3), repeats)
        t_mc, result = best_of(partial(match_weights, spec, a, b), repeats)
        ours = [result.perm[g].numpy() for g in spec.groups]
        same = all(np.array_equal(p, q) for p, q in zip(perms, ours))
        rows.append((f"784-{width}x3-10", t_ref, t_mc, t_ref / t_mc, result.iterations, same))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    head = ("model", "reference s", "modeconnect s", "speed-up", "sweeps", "same perm")
    print(f"{head[0]:18} {head[1]:>12} {head[2]:>14} {head[3]:>9} {head[4]:>7} {head[5]:>10}")
    for name, t_ref, t_mc, ratio, sweeps, same in rows:
        line = f"{name:18} {t_ref:12.3f} {t_mc:14.3f} {ratio:8.2f}x {sweeps:7d} {str(same):>10}"
        print(line)


if __name__ == "__main__":
    main()
