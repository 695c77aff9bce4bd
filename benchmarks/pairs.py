"""Model pairs for the weight-matching benchmarks: independently trained, and permuted copies.

- ``digits``: the shipped pair ``checkpoints/mlp_a.pt`` / ``mlp_b.pt`` (64-512x3-10,
  trained on scikit-learn's 8x8 digits from seeds 1 and 2).
- ``mnist<W>`` (``mnist512``, ``mnist4096``, ...): 784-Wx3-10 MLPs trained from seeds
  1 and 2 (other seed pairs through :func:`mnist`'s ``seeds``) on the MNIST-scale
  stand-in of ``examples/mnist_scale_digits.py`` (20k jittered 28x28 digits). Width
  512 uses the example's recipe (SGD, 10 epochs, batch 64), so it is the example's
  pair. Wider nets get a shorter recipe (2 epochs, batch 128; about 3 minutes a model
  at 4096 on one core): a realistic stand-in whose similarity matrices are those of
  independently trained nets, not a near-diagonal permuted copy. Trained once and
  cached in ``benchmarks/.cache/`` (which ignores itself in git); ``--cache DIR`` in
  the scripts puts it elsewhere.
- ``permuted<W>``: a 784-Wx3-10 MLP at random initialisation and a randomly permuted
  copy with Gaussian noise (std 0.5 x each tensor's std): the easy case, nearly
  diagonal similarity matrices.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from modeconnect.models import mlp  # noqa: E402
from modeconnect.spec import (  # noqa: E402
    PermutationSpec,
    apply_permutation,
    derive_spec,  # noqa: E402
    random_permutation,
)
from modeconnect.training import train_classifier  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache"
StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Pair:
    """Two state dicts of one MLP architecture and its permutation spec."""

    name: str
    model: torch.nn.Module
    spec: PermutationSpec
    a: StateDict
    b: StateDict
    real: bool  # independently trained (True) or a permuted, noised copy (False)


def digits() -> Pair:
    """The shipped digits pair (3x512)."""
    sds = [_load(ROOT / "checkpoints" / f"mlp_{x}.pt") for x in "ab"]
    return _pair("digits 64-512x3-10", 64, 512, sds[0], sds[1], real=True)


def mnist(width: int, cache: Path = CACHE, seeds: tuple[int, int] = (1, 2)) -> Pair:
    """784-``width``x3-10 MLPs trained from ``seeds`` on the MNIST-scale stand-in."""
    tag = "" if seeds == (1, 2) else f"_seeds{seeds[0]}-{seeds[1]}"
    folder = cache / f"mnist_{width}{tag}"
    paths = [folder / f"mlp_{x}.pt" for x in "ab"]
    if not all(p.exists() for p in paths):
        _train_pair(width, paths, seeds)
    a, b = (_load(p) for p in paths)
    return _pair(f"mnist 784-{width}x3-10{tag.replace('_', ' ')}", 784, width, a, b, real=True)


def permuted(width: int, noise: float = 0.5, seed: int = 0) -> Pair:
    """A random-init MLP and a permuted copy with noise ``noise`` x each tensor's std."""
    torch.manual_seed(seed)
    a = {k: v.detach().clone() for k, v in mlp(784, [width] * 3, 10).state_dict().items()}
    pair = _pair(f"permuted 784-{width}x3-10", 784, width, a, a, real=False)
    b = apply_permutation(a, pair.spec, random_permutation(pair.spec, seed + 1))
    gen = torch.Generator().manual_seed(seed + 2)
    b = {k: v + noise * v.std() * torch.randn(v.shape, generator=gen) for k, v in b.items()}
    return Pair(pair.name, pair.model, pair.spec, a, b, real=False)


def test_data(pair: Pair, batch_size: int = 1000) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The pair's test split as batches: the digits test set, or the MNIST-scale one (5k)."""
    if pair.a["1.weight"].shape[1] == 64:
        data = torch.load(ROOT / "checkpoints" / "digits_test.pt", weights_only=True)
    else:
        sys.path.insert(0, str(ROOT / "examples"))
        import mnist_scale_digits as example

        _, data = example.make_data()
    x, y = data["x"], data["y"]
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size)]


def by_name(name: str, cache: Path = CACHE) -> Pair:
    """``digits``, ``mnist<W>`` or ``permuted<W>``."""
    if name == "digits":
        return digits()
    for prefix, make in (("mnist", mnist), ("permuted", permuted)):
        if name.startswith(prefix) and name[len(prefix) :].isdigit():
            width = int(name[len(prefix) :])
            return make(width, cache) if make is mnist else make(width)
    raise SystemExit(f"unknown pair {name!r}: use digits, mnist<W> or permuted<W>")


def _pair(name: str, n_in: int, width: int, a: StateDict, b: StateDict, *, real: bool) -> Pair:
    model = mlp(n_in, [width] * 3, 10)
    spec = derive_spec(model, (torch.randn(2, n_in),))
    return Pair(name, model, spec, a, b, real)


def _load(path: Path) -> StateDict:
    obj = torch.load(path, weights_only=True)
    return dict(obj.get("state_dict", obj))


def _train_pair(width: int, paths: list[Path], seeds: tuple[int, int] = (1, 2)) -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    import mnist_scale_digits as example

    paths[0].parent.mkdir(parents=True, exist_ok=True)
    (paths[0].parent.parent / ".gitignore").write_text("*\n")
    train_data, _ = example.make_data()
    for seed, path in zip(seeds, paths):
        start = time.perf_counter()
        if width == 512:  # the example's own recipe and pair
            sd = example.train(seed, train_data, epochs=10, batch_size=64)
        else:
            sd = _train_wide(seed, width, train_data)
        torch.save(sd, path)
        print(f"# trained {path} in {time.perf_counter() - start:.0f} s", file=sys.stderr)


def _train_wide(seed: int, width: int, data: dict[str, torch.Tensor]) -> StateDict:
    """SGD (momentum 0.9, lr 0.05, cosine), batch 128, 2 epochs: enough for distinct basins."""
    torch.manual_seed(seed)
    net = train_classifier(mlp(784, [width] * 3, 10), data["x"], data["y"], epochs=2, lr=0.05,
                           batch_size=128, seed=seed)  # fmt: skip
    return {k: v.detach().clone() for k, v in net.state_dict().items()}
