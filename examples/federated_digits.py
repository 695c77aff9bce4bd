"""One-shot federated merge on the digits data: plain FedAvg vs aligned FedAvg.

Four clients each hold a non-IID share of ``checkpoints/digits_train.pt`` (class
proportions drawn from a Dirichlet(0.5) distribution, so every client sees some
digits often and others rarely) and train an MLP from their own random
initialisation (as models trained apart, without a shared global model, would).
The server then merges the four models once, weighting each by its number of
examples (FedAvg, McMahan et al. 2017):

- plain FedAvg averages the weights as they are;
- aligned FedAvg first permutes every client's hidden units into a common basis
  (MergeMany with weight matching, Ainsworth et al. 2023), then averages.

Run it (about 5 s on one CPU core)::

    python examples/federated_digits.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from modeconnect.evaluation import evaluate  # noqa: E402
from modeconnect.federated import aligned_fedavg, fedavg  # noqa: E402
from modeconnect.models import mlp  # noqa: E402
from modeconnect.provenance import write_result  # noqa: E402
from modeconnect.training import train_classifier  # noqa: E402

CLIENTS = 4
HIDDEN = [128, 128, 128]
DIRICHLET_ALPHA = 0.5
EPOCHS = 20
SEED = 0


def split_non_iid(y: torch.Tensor, clients: int, alpha: float, seed: int) -> list[torch.Tensor]:
    """Indices per client: each class is shared out with Dirichlet(alpha) proportions."""
    rng = np.random.default_rng(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in range(clients)]
    for c in range(int(y.max()) + 1):
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.from_numpy(rng.permutation(len(idx)))]
        cuts = np.round(np.cumsum(rng.dirichlet([alpha] * clients)) * len(idx)).astype(int)
        for k, piece in enumerate(torch.tensor_split(idx, cuts[:-1].tolist())):
            parts[k].append(piece)
    return [torch.cat(p) for p in parts]


def train_client(x: torch.Tensor, y: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """SGD with momentum from the client's own initialisation; returns the state dict."""
    torch.manual_seed(seed)
    net = train_classifier(mlp(64, HIDDEN, 10), x, y, epochs=EPOCHS, lr=0.1, seed=seed,
                           schedule="constant")  # fmt: skip
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train the clients, merge them both ways, print and return the test accuracies.

    ``--out results/federated_digits.json`` also stores them with provenance."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="store the numbers here (results/NAME.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest on a small CPU
    start = time.perf_counter()
    train = torch.load(ROOT / "checkpoints" / "digits_train.pt", weights_only=True)
    test = torch.load(ROOT / "checkpoints" / "digits_test.pt", weights_only=True)
    test_batches = [(test["x"], test["y"])]
    net = mlp(64, HIDDEN, 10)

    shares = split_non_iid(train["y"], CLIENTS, DIRICHLET_ALPHA, SEED)
    clients, counts, client_accuracies = [], [], []
    for k, idx in enumerate(shares):
        clients.append(train_client(train["x"][idx], train["y"][idx], seed=SEED + k + 1))
        counts.append(len(idx))
        acc = evaluate(net, clients[-1], test_batches).accuracy
        client_accuracies.append(acc)
        hist = torch.bincount(train["y"][idx], minlength=10).tolist()
        print(f"client {k}: {len(idx):4d} examples, per class {hist}, test acc {acc:6.2%}")

    plain = evaluate(net, fedavg(clients, counts), test_batches).accuracy
    aligned_sd = aligned_fedavg(net, clients, counts, reference=None)
    aligned = evaluate(net, aligned_sd, test_batches).accuracy
    print(f"\nplain FedAvg    test acc {plain:6.2%}")
    print(f"aligned FedAvg  test acc {aligned:6.2%}   (MergeMany, weight matching)")
    print(f"done in {time.perf_counter() - start:.1f} s")
    numbers = {"plain": plain, "aligned": aligned, "clients": client_accuracies}
    if args.out is not None:
        seeds = [SEED, *(SEED + k + 1 for k in range(CLIENTS))]
        write_result(args.out, numbers, seeds=seeds, command=["python", *sys.argv])
    return {"plain": plain, "aligned": aligned}


if __name__ == "__main__":
    main()
