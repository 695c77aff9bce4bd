"""Small example architectures, addressable as ``modeconnect.models:NAME``.

They exist for the quick start, the shipped checkpoints in ``checkpoints/`` and
the tests. Every constructor takes only JSON-serialisable keyword arguments
(ints and lists of ints), because checkpoints store them as ``model_kwargs``.

- :func:`mlp`: ``Flatten`` then a ``Linear``/``ReLU`` stack, as ``nn.Sequential``.
- :class:`MLP`: the same network as a class with named layers ``fc1 .. fcN`` and
  functional activations (``F.relu`` in ``forward``).
- :func:`conv_net`: a small CNN (``Conv``-``BatchNorm``-``ReLU`` stacks, one
  max-pool, ``Flatten``, ``Linear`` head) for the 8x8 digits images.
- :func:`permuted_pair`: a small :func:`mlp` and a copy of it with its hidden units
  permuted, the smallest alignment problem with a known answer (the docstring examples
  start from it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from modeconnect.errors import ModeconnectError
from modeconnect.spec import PermutationSpec, apply_permutation, derive_spec, random_permutation

__all__ = ["MLP", "PermutedPair", "ToImage", "conv_net", "mlp", "permuted_pair"]


def _check_sizes(name: str, **sizes: int | Sequence[int]) -> None:
    """Raise a :class:`ModeconnectError` unless every size is a positive int."""
    for key, value in sizes.items():
        values = [value] if isinstance(value, int) else list(value)
        if not all(isinstance(v, int) and v > 0 for v in values):
            raise ModeconnectError(
                f"{name}: {key}={value!r} must be a positive int or a sequence of positive ints."
            )


def mlp(
    in_features: int = 64,
    hidden: Sequence[int] = (512, 512, 512),
    out_features: int = 10,
) -> nn.Sequential:
    """Build ``Flatten -> (Linear -> ReLU) * len(hidden) -> Linear``.

    Input: ``(N, in_features)`` or any shape ``(N, ...)`` whose trailing
    dimensions multiply to ``in_features`` (e.g. ``(N, 1, 8, 8)`` images).
    Output: ``(N, out_features)`` logits.

    State-dict keys are ``"1.weight"``, ``"1.bias"``, ``"3.weight"``, ... (the
    ``Flatten`` is index 0 and each ``ReLU`` takes one index).

    Examples
    --------
    >>> import torch
    >>> from modeconnect.models import mlp
    >>> model = mlp(in_features=4, hidden=[8], out_features=3)
    >>> model(torch.randn(5, 1, 2, 2)).shape
    torch.Size([5, 3])
    >>> list(model.state_dict())
    ['1.weight', '1.bias', '3.weight', '3.bias']
    """
    _check_sizes("mlp", in_features=in_features, hidden=hidden, out_features=out_features)
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


class MLP(nn.Module):
    """The network of :func:`mlp` as a class with layers ``fc1 .. fc{len(hidden)+1}``.

    Activations are functional (``F.relu``) so they do not appear as modules;
    a tracer must still see them between the linear layers.

    Input: ``(N, ...)`` flattened to ``(N, in_features)``. Output: ``(N, out_features)``.
    State-dict keys: ``"fc1.weight"``, ``"fc1.bias"``, ..., ``"fc{L}.bias"``.

    Examples
    --------
    The same function as :func:`mlp` with the same weights:

    >>> import torch
    >>> from modeconnect.models import MLP, mlp
    >>> sequential = mlp(in_features=4, hidden=[8], out_features=3)
    >>> model = MLP(in_features=4, hidden=[8], out_features=3)
    >>> list(model.state_dict())
    ['fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias']
    >>> model.load_state_dict(dict(zip(model.state_dict(), sequential.state_dict().values())))
    <All keys matched successfully>
    >>> x = torch.randn(5, 4)
    >>> torch.equal(model(x), sequential(x))
    True
    """

    def __init__(
        self,
        in_features: int = 64,
        hidden: Sequence[int] = (512, 512, 512),
        out_features: int = 10,
    ) -> None:
        super().__init__()
        _check_sizes("MLP", in_features=in_features, hidden=hidden, out_features=out_features)
        widths = [in_features, *hidden, out_features]
        self.num_layers = len(widths) - 1
        for i in range(self.num_layers):
            setattr(self, f"fc{i + 1}", nn.Linear(widths[i], widths[i + 1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(N, out_features)`` for input ``(N, ...)``."""
        x = torch.flatten(x, 1)
        for i in range(1, self.num_layers):
            x = F.relu(getattr(self, f"fc{i}")(x))
        return getattr(self, f"fc{self.num_layers}")(x)


class ToImage(nn.Module):
    """Reshape ``(N, C*H*W)`` or ``(N, C, H, W)`` input to ``(N, C, H, W)``.

    Stateless and branch-free, so ``torch.fx`` and ``torch.export`` both trace it.
    """

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        self.shape = (channels, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` as a batch of images ``(N, C, H, W)``."""
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return "channels={}, height={}, width={}".format(*self.shape)


def conv_net(
    in_channels: int = 1,
    channels: Sequence[int] = (32, 64),
    num_classes: int = 10,
    image_size: int = 8,
) -> nn.Sequential:
    """Build a small CNN: ``(Conv3x3 -> BatchNorm -> ReLU) * len(channels)``,
    ``MaxPool2d(2)`` after the first block, then ``Flatten -> Linear``.

    Input: ``(N, in_channels, image_size, image_size)``; a flat
    ``(N, in_channels * image_size**2)`` batch (such as ``digits_*.pt``) is also
    accepted: a leading :class:`ToImage` reshapes either to images, so the
    conv weights are keys ``"1.weight"``, ``"2.weight"`` (BatchNorm), ...
    Output: ``(N, num_classes)`` logits.

    The ``Flatten`` after the last conv repeats its channel permutation over the
    ``(image_size // 2) ** 2`` spatial positions in the head's input axis
    (the pool floors odd sizes).

    Examples
    --------
    Flat rows and images give the same logits:

    >>> import torch
    >>> from modeconnect.models import conv_net
    >>> model = conv_net(in_channels=1, channels=[4, 8], num_classes=3, image_size=8).eval()
    >>> images = torch.randn(5, 1, 8, 8)
    >>> model(images).shape
    torch.Size([5, 3])
    >>> torch.equal(model(images.flatten(1)), model(images))
    True
    >>> list(model.state_dict())[:4]
    ['1.weight', '1.bias', '2.weight', '2.bias']
    """
    _check_sizes(
        "conv_net",
        in_channels=in_channels,
        channels=channels,
        num_classes=num_classes,
        image_size=image_size,
    )
    if not channels:
        raise ModeconnectError("conv_net: channels=[] must list at least one conv width.")
    layers: list[nn.Module] = [ToImage(in_channels, image_size, image_size)]
    width = in_channels
    for i, c in enumerate(channels):
        layers += [nn.Conv2d(width, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
        if i == 0:
            layers.append(nn.MaxPool2d(2))
        width = c
    spatial = (image_size // 2) ** 2
    layers += [nn.Flatten(), nn.Linear(width * spatial, num_classes)]
    return nn.Sequential(*layers)


class PermutedPair(NamedTuple):
    """A model, example inputs, its spec, its weights ``a`` and their permuted copy ``b``."""

    model: nn.Sequential
    inputs: torch.Tensor
    spec: PermutationSpec
    a: dict[str, torch.Tensor]
    b: dict[str, torch.Tensor]
    perm: dict[str, torch.Tensor]


def permuted_pair(
    in_features: int = 4,
    hidden: Sequence[int] = (8, 8),
    out_features: int = 3,
    *,
    examples: int = 16,
    seed: int = 0,
) -> PermutedPair:
    """A random :func:`mlp` (``torch.manual_seed(seed)``), ``examples`` random inputs, the
    spec derived from them, the weights ``a`` and ``b = perm(a)`` for a random ``perm``
    (seeded by ``seed + 1``): two weight sets of one function, far apart in weight space.

    Examples
    --------
    >>> import torch
    >>> from modeconnect.models import permuted_pair
    >>> pair = permuted_pair()
    >>> torch.equal(pair.a["1.weight"], pair.b["1.weight"])
    False
    >>> twin = permuted_pair().model
    >>> _ = twin.load_state_dict(pair.b)
    >>> torch.allclose(twin(pair.inputs), pair.model(pair.inputs), atol=1e-6)
    True
    """
    torch.manual_seed(seed)
    model = mlp(in_features, hidden, out_features)
    inputs = torch.randn(examples, in_features)
    spec = derive_spec(model, (inputs,))
    a = model.state_dict()
    perm = random_permutation(spec, seed=seed + 1)
    return PermutedPair(model, inputs, spec, a, apply_permutation(a, spec, perm), perm)
