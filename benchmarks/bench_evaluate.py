"""Time ``interpolation_curve`` against a plain loop measured in the same run.

The reference is what one writes by hand: for each α build ``(1-α)·θ_A + α·θ_B``,
``model.load_state_dict`` it, then loop over the batches calling ``.item()``.
Both must give the same losses and accuracies (to float tolerance). Run from the
repository root::

    python benchmarks/bench_evaluate.py [--steps 9] [--repeats 3] [--threads N] [--device cpu]

Prints one row per model: reference seconds, modeconnect seconds and their ratio
(modeconnect / reference; below 1 is faster), best of ``--repeats`` interleaved runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeconnect.evaluate import Batch, Curve, interpolation_curve  # noqa: E402

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


CASES = (
    Case("mlp 784-512-512-10", lambda: _mlp(784, 512, 512, 10), (784,), 10_000, 500),
    Case("cnn 3x16x16 conv16-conv32 BN", _cnn, (3, 16, 16), 1_000, 250),
    Case("tiny mlp 64-64-10, batch 32", lambda: _mlp(64, 64, 10), (64,), 8_000, 32),
)


def _state_dict(case: Case, seed: int, device: str) -> dict[str, Tensor]:
    torch.manual_seed(seed)
    model = case.build()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        stats = dict(bn.named_buffers())  # non-trivial running statistics, so buffers matter
        stats["running_mean"].normal_(0.0, 0.1)
        stats["running_var"].uniform_(0.5, 2.0)
    # Clone: state_dict() shares storage with the parameters that load_state_dict overwrites.
    return {k: v.to(device, copy=True) for k, v in model.state_dict().items()}


def _data(case: Case, device: str) -> list[Batch]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(case.examples, *case.input_shape, generator=g).to(device)
    y = torch.randint(10, (case.examples,), generator=g).to(device)
    return list(zip(x.split(case.batch_size), y.split(case.batch_size), strict=True))


def reference_curve(
    model: nn.Module,
    a: dict[str, Tensor],
    b: dict[str, Tensor],
    batches: list[Batch],
    alphas: list[float],
) -> Rows:
    """The hand-written loop: interpolate, load_state_dict, evaluate, for each α."""
    rows = []
    model.eval()
    with torch.no_grad():
        for alpha in alphas:
            sd = {
                k: (1 - alpha) * v + alpha * b[k] if v.is_floating_point() else v
                for k, v in a.items()
            }
            model.load_state_dict(sd)
            loss, hits, count = 0.0, 0, 0
            for x, y in batches:
                logits = model(x)
                loss += F.cross_entropy(logits, y, reduction="sum").item()
                hits += int((logits.argmax(1) == y).sum())
                count += len(y)
            rows.append((loss / count, hits / count))
    return rows


def _best_of(repeats: int, reference: Callable[[], Rows], ours: Callable[[], Curve]) -> tuple:
    """Best wall time of each; runs alternate so drift in machine load hits both alike."""
    t_ref = t_ours = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        rows = reference()
        middle = time.perf_counter()
        curve = ours()
        t_ref, t_ours = min(t_ref, middle - start), min(t_ours, time.perf_counter() - middle)
    return t_ref, t_ours, rows, curve


def run_case(case: Case, steps: int, repeats: int, device: str) -> tuple[float, float]:
    """Time both curves for one model and check that they agree."""
    a, b = _state_dict(case, 0, device), _state_dict(case, 1, device)
    batches = _data(case, device)
    alphas = [i / (steps - 1) for i in range(steps)]
    model_ref, model_ours = case.build().to(device), case.build().to(device)
    t_ref, t_ours, rows, curve = _best_of(
        repeats,
        lambda: reference_curve(model_ref, a, b, batches, alphas),
        lambda: interpolation_curve(model_ours, a, b, batches, alphas=alphas),
    )
    want = torch.tensor(rows, dtype=torch.float64).T
    got = torch.tensor([curve.losses, curve.accuracies], dtype=torch.float64)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    # lerp and (1-α)a + αb round differently; a near-tie argmax may flip: allow one example.
    torch.testing.assert_close(got[1], want[1], rtol=0.0, atol=1.0 / case.examples)
    return t_ref, t_ours


def main() -> None:
    parser = argparse.ArgumentParser(description="Time interpolation_curve against a plain loop.")
    parser.add_argument("--steps", type=int, default=9, help="alphas per curve (default 9)")
    parser.add_argument("--repeats", type=int, default=3, help="best of N (default 3)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    print(
        f"torch {torch.__version__}, {args.device}, {threads} threads, {args.steps} alphas, "
        f"best of {args.repeats}"
    )
    print(f"{'model':<30} {'reference s':>12} {'modeconnect s':>14} {'ratio':>6}")
    for case in CASES:
        t_ref, t_ours = run_case(case, args.steps, args.repeats, args.device)
        print(f"{case.name:<30} {t_ref:>12.3f} {t_ours:>14.3f} {t_ours / t_ref:>6.2f}")
    print("curves agree: losses to rtol 1e-5, accuracies to one example")


if __name__ == "__main__":
    main()
