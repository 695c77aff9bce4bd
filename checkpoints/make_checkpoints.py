"""Regenerate the shipped example pair: two digits MLPs trained from different seeds.

Run from the repository root::

    python checkpoints/make_checkpoints.py

Writes, next to this script:

- ``digits_train.pt`` / ``digits_test.pt``: ``{"x": float32 (N, 64), "y": int64 (N,)}``,
  scikit-learn's 8x8 digits scaled to [0, 1], stratified 1297/500 split (seed 0).
- ``mlp_a.pt`` / ``mlp_b.pt``: ``{"state_dict", "model", "model_kwargs"}`` for
  ``modeconnect.models:mlp(64, [512, 512, 512], 10)``, trained with seeds 1 and 2.
- ``mlp_b.safetensors``: B's weights, with the model name and kwargs in the metadata.

It then prints the naive (unaligned) interpolation curve between A and B and its
``lerp`` barrier, which alignment should remove. Deterministic on CPU.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.func import functional_call

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from modeconnect.models import mlp  # noqa: E402
from modeconnect.training import train_classifier  # noqa: E402

MODEL = "modeconnect.models:mlp"
MODEL_KWARGS: dict[str, Any] = {"in_features": 64, "hidden": [512, 512, 512], "out_features": 10}
SPLIT_SEED = 0
TEST_SIZE = 500
SEEDS = {"a": 1, "b": 2}
# Four smaller, independently trained MLPs for the `modeconnect merge` example.
SMALL_KWARGS: dict[str, Any] = {"in_features": 64, "hidden": [128, 128, 128], "out_features": 10}
SMALL_SEEDS = [11, 12, 13, 14]
# A large step and no weight decay push A and B far from their inits into
# different basins: a clear naive barrier, which weight matching removes.
EPOCHS = 20
BATCH_SIZE = 32
LR = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 0.0
ALPHAS = [i / 10 for i in range(11)]

Data = dict[str, torch.Tensor]


def make_data() -> tuple[Data, Data]:
    """Load digits, scale pixels to [0, 1] and split stratified into train/test."""
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(
        torch.arange(len(y)).numpy(),
        test_size=TEST_SIZE,
        stratify=y.numpy(),
        random_state=SPLIT_SEED,
    )
    idx_train, idx_test = torch.as_tensor(idx_train), torch.as_tensor(idx_test)
    return {"x": x[idx_train], "y": y[idx_train]}, {"x": x[idx_test], "y": y[idx_test]}


def train(seed: int, data: Data, kwargs: dict[str, Any] = MODEL_KWARGS) -> nn.Sequential:
    """Train one MLP from ``seed`` (both its initialisation and its batch order)."""
    torch.manual_seed(seed)
    return train_classifier(
        mlp(**kwargs), data["x"], data["y"], epochs=EPOCHS, lr=LR, batch_size=BATCH_SIZE,
        seed=seed, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
    )  # fmt: skip


@torch.no_grad()
def evaluate(model: nn.Module, params: dict[str, torch.Tensor], data: Data) -> tuple[float, float]:
    """Return (mean cross-entropy in nats, accuracy) of ``model`` with ``params``."""
    logits = functional_call(model, params, (data["x"],))
    loss = F.cross_entropy(logits, data["y"]).item()
    acc = (logits.argmax(1) == data["y"]).float().mean().item()
    return loss, acc


def naive_curve(
    model: nn.Module, sd_a: dict[str, torch.Tensor], sd_b: dict[str, torch.Tensor], data: Data
) -> list[tuple[float, float, float]]:
    """Return ``(alpha, loss, acc)`` for ``(1-alpha)*A + alpha*B`` on the alpha grid."""
    rows = []
    for alpha in ALPHAS:
        params = {k: torch.lerp(sd_a[k], sd_b[k], alpha) for k in sd_a}
        rows.append((alpha, *evaluate(model, params, data)))
    return rows


def lerp_barrier(rows: list[tuple[float, float, float]]) -> float:
    """``max_alpha [L(alpha) - ((1-alpha) L(0) + alpha L(1))]`` (Entezari et al. 2022)."""
    l0, l1 = rows[0][1], rows[-1][1]
    return max(loss - ((1 - a) * l0 + a * l1) for a, loss, _ in rows)


def save_checkpoint(
    model: nn.Module, name: str, kwargs: dict[str, Any] = MODEL_KWARGS
) -> dict[str, torch.Tensor]:
    """Write ``{name}.pt`` in the documented format and return its state dict."""
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    payload = {"state_dict": sd, "model": MODEL, "model_kwargs": kwargs}
    torch.save(payload, HERE / f"{name}.pt")
    return sd


def save_safetensors(sd: dict[str, torch.Tensor], name: str) -> None:
    """Write ``{name}.safetensors`` with the model name and kwargs as metadata."""
    metadata = {"modeconnect.model": MODEL, "modeconnect.model_kwargs": json.dumps(MODEL_KWARGS)}
    path = HERE / f"{name}.safetensors"
    save_file(sd, str(path), metadata=metadata)
    path.chmod(0o644)  # save_file creates it owner-only (0600), unlike torch.save


def main() -> None:
    """Build the data, train A and B, save everything and print the naive curve."""
    torch.use_deterministic_algorithms(True)
    # One thread: faster for these small matmuls on a busy 2-core machine, and
    # the same summation order (hence the same bits) on any machine.
    torch.set_num_threads(1)
    start = time.perf_counter()
    train_data, test_data = make_data()
    torch.save(train_data, HERE / "digits_train.pt")
    torch.save(test_data, HERE / "digits_test.pt")
    sds = {}
    for name, seed in SEEDS.items():
        t0 = time.perf_counter()
        model = train(seed, train_data)
        sds[name] = save_checkpoint(model, f"mlp_{name}")
        loss, acc = evaluate(model, dict(model.named_parameters()), test_data)
        print(
            f"mlp_{name}: seed {seed}, test loss {loss:.4f}, "
            f"acc {acc:.4f} ({time.perf_counter() - t0:.1f} s)"
        )
    save_safetensors(sds["b"], "mlp_b")

    rows = naive_curve(mlp(**MODEL_KWARGS), sds["a"], sds["b"], test_data)
    print("\nnaive interpolation (1-alpha)*A + alpha*B, no alignment, test split:")
    print(" alpha    loss     acc")
    for alpha, loss, acc in rows:
        print(f"  {alpha:.1f}  {loss:7.4f}  {acc:.4f}")
    print(f"\nnaive lerp barrier (test loss): {lerp_barrier(rows):.4f} nats")

    print("\nfour 3x128 MLPs for the merge example:")
    for i, seed in enumerate(SMALL_SEEDS, start=1):
        model = train(seed, train_data, SMALL_KWARGS)
        save_checkpoint(model, f"mlp128_{i}", SMALL_KWARGS)
        loss, acc = evaluate(model, dict(model.named_parameters()), test_data)
        print(f"mlp128_{i}: seed {seed}, test loss {loss:.4f}, acc {acc:.4f}")

    print("\nfiles:")
    for path in sorted(HERE.glob("*.pt")) + sorted(HERE.glob("*.safetensors")):
        print(f"  {path.name:22s} {path.stat().st_size / 1e6:6.2f} MB")
    print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
