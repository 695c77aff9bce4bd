"""Time modeconnect's evaluation against plain references measured in the same run.

Three sections, each a ratio against a reference in the same process (below 1 is faster):

1. **Curves.** The reference is what one writes by hand: for each α build
   ``(1-α)·θ_A + α·θ_B``, ``model.load_state_dict`` it, then loop over the batches
   calling ``.item()``. Compared with :func:`interpolation_curve` (mean metrics) and
   :func:`example_curve` (per-example results, what ``modeconnect barrier`` uses);
   all must agree to float tolerance.
2. **Layer-wise.** :func:`layerwise_barriers` (reusing coinciding points and the full
   curve) against recomputing every path of every group from scratch with the same
   engine; the barriers must be identical.
3. **BatchNorm reset curve.** Reference: for each α, load the interpolated weights,
   ``reset_running_stats()``, ``momentum=None``, a training-mode pass over the
   training batches, then the plain evaluation loop; against :func:`example_curves`
   with :func:`modeconnect.bn.make_correction` (``mode="reset"``).
4. **Causal language model** (needs ``transformers``): a small random GPT-2, the
   reference loop loads each α and computes ``F.cross_entropy`` on the shifted
   logits; against :func:`example_curve` with ``loss="causal_lm"``.
5. **The FLOP floor** (issue 22): every evaluation path (landscape, plane, 25-point
   curve, layer-wise barriers, BatchNorm-reset curve) on the digits pair (500
   examples), an MNIST-scale 3x512 MLP (10 000 examples) and a BatchNorm CNN, against
   the same number of forward passes with the weights already in place (a model
   loaded once, ``model(x)``, the loss and the argmax per batch; for the reset curve
   also a training-mode pass over the training batches per point), timed in the same
   run, in CPU seconds of the process (and wall seconds). The ratio to the floor is
   what modeconnect adds per point (below 1: it runs
   fewer or cheaper passes, e.g. the cached prefix of layer-wise paths); the matmul
   fraction is the model's multiply-adds per CPU second over those of a float32
   ``(batch, 512) @ (512, 512)`` GEMM timed in the same run. ``--out`` writes the
   table with :func:`modeconnect.provenance.write_result`. Evaluation passes fold
   eval-mode BatchNorm into the Conv/Linear layer feeding it
   (:mod:`modeconnect.evaluation.folding`), so the CNN's paths may run below a floor
   that keeps its BatchNorm layers; ``--fold both`` also times each path unfolded,
   interleaved with the others (``--cases cnn`` for the CNN alone). ``--rewrite`` also
   times a floor that writes every weight again (the same values, one ``copy_`` per
   tensor) before each pass: what any evaluation of distinct points adds by
   materialising each point's weights, measured apart from modeconnect.

Run from the repository root::

    python benchmarks/bench_evaluate.py [--steps 25] [--repeats 3] [--threads N] [--device cpu]
    python benchmarks/bench_evaluate.py --sections floor --out results/bench_evaluate.json
    python benchmarks/bench_evaluate.py --sections floor --cases cnn --fold both
    python benchmarks/bench_evaluate.py --sections floor --cases digits --rewrite

Each row is the best of ``--repeats`` interleaved runs.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import modeconnect as mc  # noqa: E402
from modeconnect.bn import make_correction  # noqa: E402
from modeconnect.evaluation import (  # noqa: E402
    Batch,
    corrected_path,
    example_curve,
    example_curves,
    folding,
    interpolation_curve,
    linear_path,
)
from modeconnect.layerwise import layer_groups, layerwise_barriers  # noqa: E402
from modeconnect.models import mlp  # noqa: E402
from modeconnect.provenance import write_result  # noqa: E402

Rows = list[tuple[float, float]]


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    examples: int
    batch_size: int


def _mlp(*widths: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(w_in, w_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _cnn() -> nn.Module:
    def block(c_in: int, c_out: int) -> list[nn.Module]:
        conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        return [conv, nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(*block(3, 16), *block(16, 32), nn.Flatten(), nn.Linear(32 * 4 * 4, 10))


MLP = Case("mlp 784-512-512-10", lambda: _mlp(784, 512, 512, 10), (784,), 10_000, 500)
CNN = Case("cnn 3x16x16 conv16-conv32 BN", _cnn, (3, 16, 16), 1_000, 250)
TINY = Case("tiny mlp 64-64-10, batch 32", lambda: _mlp(64, 64, 10), (64,), 8_000, 32)
CASES = (MLP, CNN, TINY)


def _state_dict(case: Case, seed: int, device: str) -> dict[str, Tensor]:
    torch.manual_seed(seed)
    model = case.build()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        stats = dict(bn.named_buffers())  # non-trivial running statistics, so buffers matter
        stats["running_mean"].normal_(0.0, 0.1)
        stats["running_var"].uniform_(0.5, 2.0)
    # Clone: state_dict() shares storage with the parameters that load_state_dict overwrites.
    return {k: v.to(device, copy=True) for k, v in model.state_dict().items()}


def _data(case: Case, device: str, seed: int = 1) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(case.examples, *case.input_shape, generator=g).to(device)
    y = torch.randint(10, (case.examples,), generator=g).to(device)
    return list(zip(x.split(case.batch_size), y.split(case.batch_size), strict=True))


def _lerp_sd(a: dict[str, Tensor], b: dict[str, Tensor], alpha: float) -> dict[str, Tensor]:
    return {k: (1 - alpha) * v + alpha * b[k] if v.is_floating_point() else v for k, v in a.items()}


def _plain_eval(model: nn.Module, batches: list[Batch]) -> tuple[float, float]:
    loss, hits, count = 0.0, 0, 0
    for x, y in batches:
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        hits += int((logits.argmax(1) == y).sum())
        count += len(y)
    return loss / count, hits / count


def reference_curve(
    model: nn.Module,
    a: dict[str, Tensor],
    b: dict[str, Tensor],
    batches: list[Batch],
    alphas: list[float],
    score: Callable[[nn.Module, list[Batch]], tuple[float, float]] = _plain_eval,
) -> Rows:
    """The hand-written loop: interpolate, load_state_dict, evaluate, for each α."""
    rows = []
    model.eval()
    with torch.no_grad():
        for alpha in alphas:
            model.load_state_dict(_lerp_sd(a, b, alpha))
            rows.append(score(model, batches))
    return rows


def _reset_on(train: list[Batch]) -> Callable[[nn.Module, list[Batch]], tuple[float, float]]:
    """A scoring that first recomputes the loaded model's BatchNorm statistics on ``train``:
    Git Re-Basin's recipe by hand (reset, momentum=None, one pass over train), then evaluate."""

    def score(model: nn.Module, batches: list[Batch]) -> tuple[float, float]:
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        model.train()
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None
        for x, _ in train:
            model(x)
        model.eval()
        return _plain_eval(model, batches)

    return score


def _best_of(repeats: int, *runs: Callable[[], Any]) -> tuple[list[float], list[Any]]:
    """Best wall time of each run; runs alternate so drift in machine load hits all alike."""
    best = [float("inf")] * len(runs)
    results: list[Any] = [None] * len(runs)
    for _ in range(repeats):
        for i, run in enumerate(runs):
            start = time.perf_counter()
            results[i] = run()
            best[i] = min(best[i], time.perf_counter() - start)
    return best, results


def _check_rows(rows: Rows, losses: Any, accuracies: Any, examples: int, rtol: float) -> None:
    want = torch.tensor(rows, dtype=torch.float64).T
    torch.testing.assert_close(
        torch.tensor(losses, dtype=torch.float64), want[0], rtol=rtol, atol=1e-6
    )
    # lerp and (1-α)a + αb round differently; a near-tie argmax may flip: allow one example.
    torch.testing.assert_close(
        torch.tensor(accuracies, dtype=torch.float64), want[1], rtol=0.0, atol=1.0 / examples
    )


# --------------------------------------------------------------------------- sections


def bench_curves(case: Case, alphas: list[float], repeats: int, device: str) -> list[float]:
    """Reference, interpolation_curve and example_curve seconds for one model."""
    a, b = _state_dict(case, 0, device), _state_dict(case, 1, device)
    batches = _data(case, device)
    model_ref, model_ours = case.build().to(device), case.build().to(device)
    times, (rows, curve, examples) = _best_of(
        repeats,
        lambda: reference_curve(model_ref, a, b, batches, alphas),
        lambda: interpolation_curve(model_ours, a, b, batches, alphas=alphas),
        lambda: example_curve(model_ours, a, b, batches, alphas=alphas),
    )
    _check_rows(rows, curve.losses, curve.accuracies, case.examples, 1e-5)
    per = examples.curve()
    _check_rows(rows, per.losses, per.accuracies, case.examples, 1e-5)
    return times


def naive_layerwise(
    model: nn.Module, a: dict, b: dict, batches: list[Batch], alphas: list[float]
) -> list:
    """Every path of every group evaluated from scratch (same engine, no reuse)."""
    groups = layer_groups(a)
    full = example_curve(model, a, b, batches, alphas=alphas).curve()
    curves, moved = [], []
    for g in groups:
        moved += list(g.keys)
        for start, end in (
            (a, {**a, **{k: b[k] for k in g.keys}}),
            ({**b, **{k: a[k] for k in g.keys}}, b),
            (a, {**a, **{k: b[k] for k in moved}}),
        ):
            curves.append(example_curve(model, start, end, batches, alphas=alphas).curve())
    return [full, *curves]


def bench_layerwise(case: Case, alphas: list[float], repeats: int, device: str) -> tuple:
    a, b = _state_dict(case, 0, device), _state_dict(case, 1, device)
    batches = _data(case, device)
    model = case.build().to(device)
    times, (naive, ours) = _best_of(
        repeats,
        lambda: naive_layerwise(model, a, b, batches, alphas),
        lambda: layerwise_barriers(model, a, b, batches, alphas=alphas),
    )
    got = [
        c
        for layer in ours.layers
        for c in (layer.from_a.curve, layer.from_b.curve, layer.cumulative.curve)
    ]
    for want, have in zip(naive[1:], got, strict=True):
        torch.testing.assert_close(have.losses, want.losses, rtol=1e-6, atol=1e-9)
    evaluated = len(naive) * len(alphas)
    return times, ours.evaluated, evaluated


def bench_reset(case: Case, alphas: list[float], repeats: int, device: str) -> list[float]:
    a, b = _state_dict(case, 0, device), _state_dict(case, 1, device)
    test, train = _data(case, device), _data(case, device, seed=2)
    model_ref, model_ours = case.build().to(device), copy.deepcopy(case.build()).to(device)

    def ours() -> Any:
        correct = make_correction(model_ours, a, b, train, mode="reset")
        path = linear_path(a, b)
        return example_curves(model_ours, lambda t: correct(path(t), t), alphas, {"test": test})

    times, (rows, curves) = _best_of(
        repeats, lambda: reference_curve(model_ref, a, b, test, alphas, _reset_on(train)), ours
    )
    curve = curves["test"].curve()
    _check_rows(rows, curve.losses, curve.accuracies, case.examples, 1e-4)
    return times


def _gpt2() -> nn.Module:
    import transformers

    config = transformers.GPT2Config(
        vocab_size=1000, n_positions=32, n_embd=64, n_layer=2, n_head=4, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def _tokens(device: str, examples: int = 128, length: int = 32, size: int = 32) -> list[Batch]:
    ids = torch.randint(1000, (examples, length), generator=torch.Generator().manual_seed(1))
    return [(x, x) for x in ids.to(device).split(size)]


def _plain_lm_eval(model: nn.Module, batches: list[Batch]) -> tuple[float, float]:
    """Next-token cross-entropy and accuracy on the shifted logits, by hand."""
    loss, hits, count = 0.0, 0, 0
    for ids, _ in batches:
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
        target = ids[:, 1:]
        loss += F.cross_entropy(logits.transpose(1, 2), target, reduction="sum").item()
        hits += int((logits.argmax(-1) == target).sum())
        count += target.numel()
    return loss / count, hits / count


def bench_causal_lm(alphas: list[float], repeats: int, device: str) -> list[float] | None:
    try:
        torch.manual_seed(0)
        model_ref = _gpt2().to(device)
    except ImportError:
        return None
    torch.manual_seed(1)
    other = _gpt2().to(device)
    a = {k: v.clone() for k, v in model_ref.state_dict().items()}
    b = {k: v.clone() for k, v in other.state_dict().items()}
    batches = _tokens(device)
    times, (rows, curve) = _best_of(
        repeats,
        lambda: reference_curve(model_ref, a, b, batches, alphas, _plain_lm_eval),
        lambda: example_curve(other, a, b, batches, alphas=alphas, loss="causal_lm"),
    )
    per = curve.curve()
    _check_rows(rows, per.losses, per.accuracies, 128 * 31, 1e-5)
    return times


# --------------------------------------------------------------------------- 5. the floor

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class FloorCase:
    """A model pair and its data for the floor section; ``grid``: points per landscape axis."""

    name: str
    model: nn.Module
    a: dict[str, Tensor]
    b: dict[str, Tensor]
    test: list[Batch]
    train: list[Batch]
    grid: int


def _digits_case(grid: int) -> FloorCase:
    ckpt = {n: torch.load(ROOT / f"checkpoints/mlp_{n}.pt", weights_only=True) for n in "ab"}
    data = {n: torch.load(ROOT / f"checkpoints/digits_{n}.pt", weights_only=True)
            for n in ("test", "train")}  # fmt: skip
    model = mlp(**ckpt["a"]["model_kwargs"])
    test = [(data["test"]["x"], data["test"]["y"])]
    train = list(zip(data["train"]["x"].split(500), data["train"]["y"].split(500), strict=True))
    a, b = (ckpt[n]["state_dict"] for n in "ab")
    return FloorCase("digits 64-512x3-10, 500 ex", model, a, b, test, train, grid)


def _random_case(name: str, case: Case, grid: int) -> FloorCase:
    a, b = _state_dict(case, 0, "cpu"), _state_dict(case, 1, "cpu")
    return FloorCase(name, case.build(), a, b, _data(case, "cpu"), _data(case, "cpu", 2), grid)


MNIST_SCALE = Case("mnist-scale", lambda: _mlp(784, 512, 512, 512, 10), (784,), 10_000, 500)


def _floor_pass(model: nn.Module, batches: list[Batch]) -> None:
    for x, y in batches:
        out = model(x)
        F.cross_entropy(out, y, reduction="none")
        out.argmax(1)


def _floor(
    model: nn.Module,
    state: dict[str, Tensor],
    test: list[Batch],
    points: int,
    train: list[Batch] | None = None,
    rewrite: bool = False,
) -> float:
    """Seconds for ``points`` evaluations (and training-mode passes) with weights in place.

    Convolutions evaluate channels-last, as modeconnect's evaluation passes do
    (:func:`modeconnect.forward.channels_last`); training-mode passes (a BatchNorm reset)
    keep the plain layout, as modeconnect's do, and hand their statistics to the
    evaluating copy. ``rewrite``: before every evaluation, write each floating tensor
    of the model again in place, from a copy of the same values (one ``copy_`` each):
    the least that evaluating a new point's weights adds, whatever builds them.
    """
    model.load_state_dict(state)
    evaluating = model
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        evaluating = copy.deepcopy(model).to(memory_format=torch.channels_last)
    # Rewritten: the tensors the passes read (the training copy's too, for a reset).
    owners = [evaluating] if train is None or evaluating is model else [model, evaluating]
    tensors = [t for m in owners for t in (*m.parameters(), *m.buffers())]
    sources = [(t, t.clone()) for t in tensors if rewrite and t.is_floating_point()]
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(points):
            for t, source in sources:
                t.copy_(source)
            if train is not None:
                model.train()
                _floor_pass(model, train)
                if evaluating is not model:
                    for mine, theirs in zip(evaluating.buffers(), model.buffers(), strict=True):
                        mine.copy_(theirs)
            evaluating.eval()
            _floor_pass(evaluating, test)
    return time.perf_counter() - start


def _macs(model: nn.Module, x: Tensor) -> int:
    """Multiply-adds of one forward pass on ``x`` (Linear and Conv layers)."""
    total = [0]

    def hook(module: nn.Module, args: Any, out: Tensor) -> None:
        if isinstance(module, nn.Linear):
            total[0] += out.numel() * module.in_features
        elif isinstance(module, nn.Conv2d):
            k = module.in_channels // module.groups * math.prod(module.kernel_size)
            total[0] += out.numel() * k

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return total[0]


def _matmul_rate(rows: int, seconds: float = 1.0) -> float:
    """Multiply-adds per CPU second of a float32 GEMM ``(rows, 512) @ (512, 512)``."""
    x, w = torch.randn(rows, 512), torch.randn(512, 512)
    x @ w
    count, start = 0, time.process_time()
    while time.process_time() - start < seconds:
        x @ w
        count += 1
    return count * rows * 512 * 512 / (time.process_time() - start)


def _best_cpu_of(repeats: int, *runs: Callable[[], Any]) -> tuple[list[float], list[float]]:
    """Best CPU seconds (this process, all threads) and best wall seconds of each run.

    CPU time is what a run costs; on a machine shared with other jobs it moves far
    less with their load than wall time, which waits for the cores.
    """
    cpu, wall = [float("inf")] * len(runs), [float("inf")] * len(runs)
    for _ in range(repeats):
        for i, run in enumerate(runs):
            start, clock = time.process_time(), time.perf_counter()
            run()
            cpu[i] = min(cpu[i], time.process_time() - start)
            wall[i] = min(wall[i], time.perf_counter() - clock)
    return cpu, wall


Timed = tuple[Callable[[], Any], int, bool]
"""(run the path, points evaluated, whether each point also makes a training pass)."""


def _paths(case: FloorCase, steps: int, layer_steps: int) -> dict[str, Timed]:
    model, a, b, test, train, grid = case.model, case.a, case.b, case.test, case.train, case.grid
    alphas = [i / (steps - 1) for i in range(steps)]
    layer_alphas = [i / (layer_steps - 1) for i in range(layer_steps)]
    g = torch.Generator().manual_seed(0)
    c = {k: v + 0.5 * (b[k] - v) + 0.01 * torch.randn(v.shape, generator=g)
         if v.is_floating_point() else v for k, v in a.items()}  # fmt: skip

    def landscape() -> Any:
        return mc.surface_2d(model, a, test, resolution=grid, seed=0)

    def plane() -> Any:
        return mc.plane_grid(model, a, b, c, test, resolution=grid, bn="none")

    def curve() -> Any:
        return example_curve(model, a, b, test, alphas=alphas, alpha_batch=None)

    def layerwise() -> Any:
        return layerwise_barriers(model, a, b, test, alphas=layer_alphas, alpha_batch=None)

    def reset_curve() -> Any:
        correct = make_correction(model, a, b, train, mode="reset")
        path = corrected_path(linear_path(a, b), correct)
        return example_curves(model, path, alphas, {"test": test}, alpha_batch=None)

    paths = {
        "landscape": (landscape, grid * grid, False),
        "plane": (plane, grid * grid, False),
        f"curve {steps}": (curve, steps, False),
        f"layer-wise {layer_steps}": (layerwise, layerwise().evaluated, False),
    }
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        paths[f"bn-reset curve {steps}"] = (reset_curve, steps, True)
    return paths


def _unfolded(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` with evaluation passes unfolded (:data:`modeconnect.evaluation.folding.ENABLED`)."""

    def run() -> Any:
        folding.ENABLED = False
        try:
            return fn()
        finally:
            folding.ENABLED = True

    return run


def bench_floor(
    cases: list[FloorCase],
    steps: int,
    layer_steps: int,
    repeats: int,
    done: Callable[[list[dict[str, Any]]], None] = lambda rows: None,
    fold_ab: bool = False,
    rewrite: bool = False,
) -> list[dict[str, Any]]:
    """Every path of every case against its floor; one row each (``done(rows)`` after each).

    ``fold_ab``: also time each path with BatchNorm folding switched off, interleaved
    with the other two runs (``unfolded_cpu_s``, ``fold_ratio`` = folded / unfolded).
    ``rewrite``: also time the floor that writes its weights again before every pass,
    interleaved (``rewrite_cpu_s``; ``write_cost`` = rewriting floor / floor;
    ``rewrite_ratio`` = modeconnect / rewriting floor).
    """
    rows: list[dict[str, Any]] = []
    for case in cases:
        x = case.test[0][0]
        macs = _macs(case.model, x[:1]) * sum(len(t[0]) for t in case.test)
        train_macs = _macs(case.model, x[:1]) * sum(len(t[0]) for t in case.train)
        rate = _matmul_rate(len(x))
        for name, (fn, points, training) in _paths(case, steps, layer_steps).items():
            ref = copy.deepcopy(case.model)
            train = case.train if training else None
            floor = functools.partial(_floor, ref, case.a, case.test, points, train)
            runs = (floor, fn, _unfolded(fn)) if fold_ab else (floor, fn)
            if rewrite:
                runs += (functools.partial(floor, rewrite=True),)
            cpu, wall = _best_cpu_of(repeats, *runs)
            (c_floor, c_ours), (t_floor, t_ours) = cpu[:2], wall[:2]
            work = (macs + (train_macs if training else 0)) * points
            row = {
                "case": case.name, "path": name, "points": points,
                "floor_cpu_s": c_floor, "modeconnect_cpu_s": c_ours, "ratio": c_ours / c_floor,
                "floor_wall_s": t_floor, "modeconnect_wall_s": t_ours,
                "wall_ratio": t_ours / t_floor,
                "matmul_fraction": work / c_ours / rate,
                "floor_matmul_fraction": work / c_floor / rate,
                "gemm_macs_per_cpu_s": rate,
            }  # fmt: skip
            ab = ""
            if fold_ab:
                row.update(unfolded_cpu_s=cpu[2], unfolded_ratio=cpu[2] / c_floor,
                           fold_ratio=c_ours / cpu[2])  # fmt: skip
                ab = f" {cpu[2] / c_floor:>9.2f}"
            if rewrite:
                c_write = cpu[-1]
                row.update(rewrite_cpu_s=c_write, write_cost=c_write / c_floor,
                           rewrite_ratio=c_ours / c_write)  # fmt: skip
                ab += f" {c_write / c_floor:>7.2f} {c_ours / c_write:>7.2f}"
            rows.append(row)
            done(rows)
            ratio, fraction = c_ours / c_floor, work / c_ours / rate
            print(f"{case.name:<36} {name:<20} {points:>6} {c_floor:>8.2f} {c_ours:>8.2f} "
                  f"{ratio:>6.2f} {t_ours / t_floor:>6.2f} {fraction:>8.2f}{ab}",
                  flush=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Time modeconnect's evaluation against plain loops."
    )
    parser.add_argument("--steps", type=int, default=25, help="alphas per curve (default 25)")
    parser.add_argument("--repeats", type=int, default=3, help="best of N (default 3)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument(
        "--sections",
        default="curves,layerwise,reset,lm,floor",
        help="comma-separated: curves, layerwise, reset, lm, floor",
    )
    parser.add_argument(
        "--grid",
        type=int,
        nargs=3,
        default=[21, 5, 5],
        metavar="N",
        help="landscape/plane points per axis: digits, mnist-scale, cnn",
    )
    parser.add_argument("--floor-repeats", type=int, default=1, help="best of N in section 5")
    parser.add_argument(
        "--mnist-examples",
        type=int,
        default=10_000,
        help="examples of section 5's MNIST-scale case (default 10 000)",
    )
    parser.add_argument(
        "--layer-steps",
        type=int,
        default=25,
        help="alphas of section 5's layer-wise barriers (default 25)",
    )
    parser.add_argument(
        "--cases",
        default="digits,mnist_scale,cnn",
        help="comma-separated models of section 5: digits, mnist_scale, cnn (default all)",
    )
    parser.add_argument(
        "--fold",
        choices=("on", "both"),
        default="on",
        help="section 5: on (default), or both: also time every path with the BatchNorm fold "
        "off, interleaved (the unfolded ratio in the last column)",
    )
    parser.add_argument(
        "--rewrite",
        action="store_true",
        help="section 5: also time the floor that writes its weights again before every "
        "pass (write: its time over the floor's; vs write: modeconnect's over it)",
    )
    parser.add_argument("--out", type=Path, help="write the sections' numbers here (JSON)")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)
    alphas = [i / (args.steps - 1) for i in range(args.steps)]
    print(
        f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, "
        f"{args.steps} alphas, best of {args.repeats}"
    )
    loops: dict[str, Any] = {}  # sections 1-4: {section: rows}, stored with section 5's
    if "curves" in sections:
        loops["curves"] = _section_curves(alphas, args.repeats, args.device)
    if "layerwise" in sections:
        loops["layerwise"] = _section_layerwise(alphas, args.repeats, args.device)
    if "reset" in sections:
        loops["reset"] = _section_reset(alphas, args.repeats, args.device)
    if "lm" in sections:
        loops["lm"] = _section_lm(alphas, args.repeats, args.device)
    if "floor" in sections:
        _section_floor(args, loops)
    elif args.out is not None:
        numbers = {"loops": loops, "threads": torch.get_num_threads(), "steps": args.steps,
                   "repeats": args.repeats, "load_average": os.getloadavg()}  # fmt: skip
        write_result(args.out, numbers, seeds=(0, 1, 2), command=["python", *sys.argv])
        print(f"wrote {args.out}")


def loops_ratio_range(numbers: dict[str, Any]) -> list[float]:
    """Smallest and largest modeconnect / hand-written-loop time ratio of sections 1, 3, 4
    (curves: mean and per-example curves; the BatchNorm reset curve; the causal LM)."""
    loops = numbers["loops"]
    ratios = [r[k] for r in loops["curves"] for k in ("curve_ratio", "examples_ratio")]
    ratios += [r["ratio"] for section in ("reset", "lm") for r in loops[section]]
    return [min(ratios), max(ratios)]


def _section_floor(args: argparse.Namespace, loops: dict[str, Any]) -> None:
    print("\n5. every path against the FLOP floor (same forward passes, weights in place)")
    unfolded = " unfolded" if args.fold == "both" else ""
    note = "; unfolded: the ratio with the BatchNorm fold off" if unfolded else ""
    if args.rewrite:
        unfolded += "   write vs write"
        note += "; write: the floor rewriting its weights per pass, over the floor"
    print(f"{'model':<36} {'path':<20} {'points':>6} {'floor':>8} {'ours':>8} {'ratio':>6} "
          f"{'wall':>6} {'matmul':>8}{unfolded}   "
          f"(CPU seconds; wall: the wall-time ratio{note})")  # fmt: skip
    digits, mnist, cnn = args.grid
    scale = dataclasses.replace(MNIST_SCALE, examples=args.mnist_examples)
    chosen = set(args.cases.split(","))
    makers = {
        "digits": lambda: _digits_case(digits),
        "mnist_scale": lambda: _random_case(
            f"mnist-scale 784-512x3-10, {scale.examples} ex", scale, mnist
        ),
        "cnn": lambda: _random_case("cnn 3x16x16 conv16-conv32 BN, 1k ex", CNN, cnn),
    }
    cases = [make() for name, make in makers.items() if name in chosen]
    grids = {"digits": digits, "mnist_scale": mnist, "cnn": cnn}

    def write(rows: list[dict[str, Any]]) -> None:
        if args.out is None:
            return
        numbers = {"rows": rows, "threads": torch.get_num_threads(), "steps": args.steps,
                   "layer_steps": args.layer_steps, "load_average": os.getloadavg(),
                   "mnist_scale_examples": scale.examples, "grid": grids,
                   "cases": sorted(chosen), "rewrite": args.rewrite}  # fmt: skip
        if loops:
            numbers["loops"] = loops
        write_result(args.out, numbers, seeds=(0, 1, 2), command=sys.argv)

    bench_floor(cases, args.steps, args.layer_steps, args.floor_repeats, write,
                fold_ab=args.fold == "both", rewrite=args.rewrite)  # fmt: skip
    if args.out is not None:
        print(f"wrote {args.out}")


def _section_curves(alphas: list[float], repeats: int, device: str) -> list[dict[str, Any]]:
    print(
        "\n1. curves: reference loop vs interpolation_curve (mean) and example_curve (per example)"
    )
    print(f"{'model':<30} {'reference s':>12} {'curve s':>8} {'ratio':>6} {'examples s':>11} ratio")
    rows = []
    for case in CASES:
        t_ref, t_curve, t_ex = bench_curves(case, alphas, repeats, device)
        ratios = f"{t_curve:>8.3f} {t_curve / t_ref:>6.2f} {t_ex:>11.3f} {t_ex / t_ref:>6.2f}"
        print(f"{case.name:<30} {t_ref:>12.3f} {ratios}")
        rows.append({"model": case.name, "reference_s": t_ref, "curve_s": t_curve,
                     "examples_s": t_ex, "curve_ratio": t_curve / t_ref,
                     "examples_ratio": t_ex / t_ref})  # fmt: skip
    return rows


def _section_layerwise(alphas: list[float], repeats: int, device: str) -> list[dict[str, Any]]:
    print("\n2. layer-wise (from_a, from_b, cumulative per module): recompute all vs reuse")
    print(f"{'model':<30} {'naive s':>8} {'reuse s':>8} {'ratio':>6} {'points evaluated':>20}")
    rows = []
    for case in (MLP, CNN):
        (t_naive, t_ours), used, total = bench_layerwise(case, alphas, repeats, device)
        points = f"{used} of {total}"
        print(
            f"{case.name:<30} {t_naive:>8.3f} {t_ours:>8.3f} {t_ours / t_naive:>6.2f} {points:>20}"
        )
        rows.append({"model": case.name, "naive_s": t_naive, "reuse_s": t_ours,
                     "ratio": t_ours / t_naive, "points": used, "of": total})  # fmt: skip
    return rows


def _section_reset(alphas: list[float], repeats: int, device: str) -> list[dict[str, Any]]:
    print("\n3. BatchNorm reset at every alpha: hand-written loop vs example_curves + bn reset")
    print(f"{'model':<30} {'reference s':>12} {'modeconnect s':>14} {'ratio':>6}")
    t_ref, t_ours = bench_reset(CNN, alphas, repeats, device)
    print(f"{CNN.name:<30} {t_ref:>12.3f} {t_ours:>14.3f} {t_ours / t_ref:>6.2f}")
    return [{"model": CNN.name, "reference_s": t_ref, "modeconnect_s": t_ours,
             "ratio": t_ours / t_ref}]  # fmt: skip


def _section_lm(alphas: list[float], repeats: int, device: str) -> list[dict[str, Any]]:
    print("\n4. causal LM: hand-written loop vs example_curve(loss='causal_lm')")
    lm = bench_causal_lm(alphas, repeats, device)
    rows = []
    if lm is None:
        print("skipped: transformers is not installed")
    else:
        name = "gpt2 2x64, 128 x 32 tokens"
        print(f"{'model':<30} {'reference s':>12} {'modeconnect s':>14} {'ratio':>6}")
        print(f"{name:<30} {lm[0]:>12.3f} {lm[1]:>14.3f} {lm[1] / lm[0]:>6.2f}")
        rows.append({"model": name, "reference_s": lm[0], "modeconnect_s": lm[1],
                     "ratio": lm[1] / lm[0]})  # fmt: skip
    print("\nall agree with their references (losses to rtol 1e-5 / 1e-4, accuracies to 1 example)")
    return rows


if __name__ == "__main__":
    main()
