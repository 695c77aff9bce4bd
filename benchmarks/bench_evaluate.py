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

Run from the repository root::

    python benchmarks/bench_evaluate.py [--steps 25] [--repeats 3] [--threads N] [--device cpu]

Each row is the best of ``--repeats`` interleaved runs.
"""

from __future__ import annotations

import argparse
import copy
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from stored import add_out, store  # noqa: E402

from modeconnect.bn import make_correction  # noqa: E402
from modeconnect.evaluation import (  # noqa: E402
    Batch,
    example_curve,
    example_curves,
    interpolation_curve,
    linear_path,
)
from modeconnect.layerwise import layer_groups, layerwise_barriers  # noqa: E402

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


def reference_reset_curve(
    model: nn.Module,
    a: dict[str, Tensor],
    b: dict[str, Tensor],
    train: list[Batch],
    test: list[Batch],
    alphas: list[float],
) -> Rows:
    """Git Re-Basin's recipe by hand: load, reset BN stats (momentum=None) on train, evaluate."""
    rows = []
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for alpha in alphas:
            model.load_state_dict(_lerp_sd(a, b, alpha))
            model.train()
            for bn in norms:
                bn.reset_running_stats()
                bn.momentum = None
            for x, _ in train:
                model(x)
            model.eval()
            rows.append(_plain_eval(model, test))
    return rows


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
        repeats, lambda: reference_reset_curve(model_ref, a, b, train, test, alphas), ours
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Time modeconnect's evaluation against plain loops."
    )
    parser.add_argument("--steps", type=int, default=25, help="alphas per curve (default 25)")
    parser.add_argument("--repeats", type=int, default=3, help="best of N (default 3)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    add_out(parser)
    args = parser.parse_args()
    numbers: dict[str, Any] = {"threads": torch.get_num_threads(), "steps": args.steps,
                               "repeats": args.repeats, "device": args.device}  # fmt: skip
    if args.threads:
        torch.set_num_threads(args.threads)
    alphas = [i / (args.steps - 1) for i in range(args.steps)]
    print(
        f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, "
        f"{args.steps} alphas, best of {args.repeats}"
    )
    print(
        "\n1. curves: reference loop vs interpolation_curve (mean) and example_curve (per example)"
    )
    print(f"{'model':<30} {'reference s':>12} {'curve s':>8} {'ratio':>6} {'examples s':>11} ratio")
    for case in CASES:
        t_ref, t_curve, t_ex = bench_curves(case, alphas, args.repeats, args.device)
        numbers.setdefault("curves", {})[case.name] = {
            "reference_s": t_ref, "curve_s": t_curve, "examples_s": t_ex
        }  # fmt: skip
        ratios = f"{t_curve:>8.3f} {t_curve / t_ref:>6.2f} {t_ex:>11.3f} {t_ex / t_ref:>6.2f}"
        print(f"{case.name:<30} {t_ref:>12.3f} {ratios}")
    print("\n2. layer-wise (from_a, from_b, cumulative per module): recompute all vs reuse")
    print(f"{'model':<30} {'naive s':>8} {'reuse s':>8} {'ratio':>6} {'points evaluated':>20}")
    for case in (MLP, CNN):
        (t_naive, t_ours), used, total = bench_layerwise(case, alphas, args.repeats, args.device)
        numbers.setdefault("layerwise", {})[case.name] = {
            "naive_s": t_naive, "reuse_s": t_ours, "points": [used, total]
        }  # fmt: skip
        points = f"{used} of {total}"
        print(
            f"{case.name:<30} {t_naive:>8.3f} {t_ours:>8.3f} {t_ours / t_naive:>6.2f} {points:>20}"
        )
    print("\n3. BatchNorm reset at every alpha: hand-written loop vs example_curves + bn reset")
    print(f"{'model':<30} {'reference s':>12} {'modeconnect s':>14} {'ratio':>6}")
    t_ref, t_ours = bench_reset(CNN, alphas, args.repeats, args.device)
    numbers["bn_reset"] = {CNN.name: {"reference_s": t_ref, "modeconnect_s": t_ours}}
    print(f"{CNN.name:<30} {t_ref:>12.3f} {t_ours:>14.3f} {t_ours / t_ref:>6.2f}")
    print("\n4. causal LM: hand-written loop vs example_curve(loss='causal_lm')")
    lm = bench_causal_lm(alphas, args.repeats, args.device)
    if lm is None:
        print("skipped: transformers is not installed")
    else:
        name = "gpt2 2x64, 128 x 32 tokens"
        print(f"{'model':<30} {'reference s':>12} {'modeconnect s':>14} {'ratio':>6}")
        print(f"{name:<30} {lm[0]:>12.3f} {lm[1]:>14.3f} {lm[1] / lm[0]:>6.2f}")
        numbers["causal_lm"] = {name: {"reference_s": lm[0], "modeconnect_s": lm[1]}}
    print("\nall agree with their references (losses to rtol 1e-5 / 1e-4, accuracies to 1 example)")
    store(args.out, numbers)


if __name__ == "__main__":
    main()
