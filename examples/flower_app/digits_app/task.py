"""Data, model and local training shared by the ServerApp, the ClientApp and the study.

The data are scikit-learn's 8x8 digits (shipped inside the scikit-learn wheel, so
nothing is downloaded), pixels scaled to [0, 1] and split stratified into 1297
training and 500 test images with seed 0: the same split as
``checkpoints/digits_train.pt`` / ``digits_test.pt``.

Non-IID shares follow the usual Dirichlet recipe (Hsu et al. 2019): for every class
``c`` draw proportions ``p_c ~ Dir(α·1_K)`` over the ``K`` partitions and deal out the
class's examples in those proportions. A partition's test share uses the same
``p_c``, so a client evaluates on data distributed like its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modeconnect.models import mlp

IN_FEATURES = 64
NUM_CLASSES = 10
TEST_SIZE = 500
SPLIT_SEED = 0
BATCH_SIZE = 32
MOMENTUM = 0.9
MODEL_REF = "modeconnect.models:mlp"


@dataclass(frozen=True)
class Split:
    """Images ``x`` (N, 64) float32 and labels ``y`` (N,) int64."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: Tensor) -> Split:
        return Split(self.x[idx], self.y[idx])


@dataclass(frozen=True)
class Settings:
    """What a run is: the ``[tool.flwr.app.config]`` keys of the App, typed.

    ``hidden`` gives the MLP's hidden widths; ``alpha`` the Dirichlet concentration
    (small: each client sees few classes); ``seed`` fixes the initial model, the
    partition and every client's batch order.
    """

    num_server_rounds: int = 3
    local_epochs: int = 5
    lr: float = 0.05
    hidden: tuple[int, ...] = (128, 128, 128)
    alpha: float = 0.5
    seed: int = 0
    method: str = "weight"
    fraction_evaluate: float = 1.0
    min_nodes: int = 4
    round_timeout: float = 600.0
    result_dir: str = ""

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> Settings:
        """Read the run config (keys with dashes, as in ``pyproject.toml``)."""

        def get(key: str, default: Any) -> Any:
            return config.get(key.replace("_", "-"), default)

        d = cls()
        return cls(
            num_server_rounds=int(get("num_server_rounds", d.num_server_rounds)),
            local_epochs=int(get("local_epochs", d.local_epochs)),
            lr=float(get("lr", d.lr)),
            hidden=parse_hidden(str(get("hidden", ",".join(map(str, d.hidden))))),
            alpha=float(get("alpha", d.alpha)),
            seed=int(get("seed", d.seed)),
            method=str(get("method", d.method)),
            fraction_evaluate=float(get("fraction_evaluate", d.fraction_evaluate)),
            min_nodes=int(get("min_nodes", d.min_nodes)),
            round_timeout=float(get("round_timeout", d.round_timeout)),
            result_dir=str(get("result_dir", d.result_dir)),
        )

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return {
            "in_features": IN_FEATURES,
            "hidden": list(self.hidden),
            "out_features": NUM_CLASSES,
        }


def as_int(value: object, what: str) -> int:
    """``value`` as an int, or a ValueError that names ``what`` (a config entry)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{what}={value!r} must be an integer")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{what}={value!r} must be an integer") from None


def parse_hidden(text: str) -> tuple[int, ...]:
    """``"128,128"`` -> ``(128, 128)``; the run config holds no lists."""
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        widths = ()
    if not widths or min(widths) < 1:
        raise ValueError(
            f"run config hidden={text!r}: give positive hidden widths separated by "
            "commas, e.g. hidden='128,128'"
        )
    return widths


def build_model(hidden: Sequence[int]) -> nn.Sequential:
    """``Flatten -> (Linear -> ReLU) * len(hidden) -> Linear``, 64 inputs, 10 classes."""
    return mlp(IN_FEATURES, list(hidden), NUM_CLASSES)


@cache
def load_digits_split() -> tuple[Split, Split]:
    """(train, test): the stratified 1297/500 split of ``checkpoints/make_checkpoints.py``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=TEST_SIZE, stratify=y.numpy(), random_state=SPLIT_SEED
    )
    data = Split(x, y)
    return data.subset(torch.as_tensor(idx_train)), data.subset(torch.as_tensor(idx_test))


def class_proportions(num_partitions: int, alpha: float, seed: int) -> np.ndarray:
    """``p[c, k]``: the share of class ``c`` that partition ``k`` gets, ``p_c ~ Dir(α·1)``."""
    rng = np.random.default_rng([seed, 1])
    return rng.dirichlet([alpha] * num_partitions, size=NUM_CLASSES)


def dirichlet_partition(
    labels: Tensor, num_partitions: int, alpha: float, seed: int
) -> list[Tensor]:
    """Indices of each partition: every class dealt out with proportions ``p_c``.

    Disjoint and covering; the same ``(num_partitions, alpha, seed)`` gives the same
    proportions for any label vector (train and test shares are alike).
    """
    props = class_proportions(num_partitions, alpha, seed)
    gen = torch.Generator().manual_seed(seed)
    parts: list[list[Tensor]] = [[] for _ in range(num_partitions)]
    for c in range(NUM_CLASSES):
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        cuts = np.round(np.cumsum(props[c]) * len(idx)).astype(int)[:-1]
        for k, piece in enumerate(torch.tensor_split(idx, cuts.tolist())):
            parts[k].append(piece)
    return [torch.cat(p).sort().values for p in parts]


def client_data(
    partition_id: int, num_partitions: int, alpha: float, seed: int
) -> tuple[Split, Split]:
    """(train share, test share) of partition ``partition_id``."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"node config partition-id={partition_id} is outside 0..{num_partitions - 1}; "
            "start each SuperNode with --node-config 'partition-id=K num-partitions=N'"
        )
    train, test = load_digits_split()
    train_idx = dirichlet_partition(train.y, num_partitions, alpha, seed)[partition_id]
    test_idx = dirichlet_partition(test.y, num_partitions, alpha, seed)[partition_id]
    return train.subset(train_idx), test.subset(test_idx)


def train(model: nn.Module, data: Split, epochs: int, lr: float, seed: int) -> float:
    """SGD with momentum 0.9, batch 32, ``epochs`` passes over ``data``; mean loss.

    The optimiser starts fresh (no momentum carried over between rounds), as in
    FedAvg (McMahan et al. 2017). ``seed`` fixes the batch order.
    """
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    total, seen = 0.0, 0
    for _ in range(epochs):
        for batch in torch.randperm(len(data), generator=gen).split(BATCH_SIZE):
            loss = F.cross_entropy(model(data.x[batch]), data.y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
            seen += len(batch)
    return total / max(seen, 1)


def client_seed(seed: int, server_round: int, partition_id: int) -> int:
    """One batch-order seed per (run seed, round, client)."""
    return seed * 1_000_003 + server_round * 1_009 + partition_id
