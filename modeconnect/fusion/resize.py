"""A model's widths read from a state dict, and a copy of a model at those widths.

Federated fusion (:mod:`modeconnect.integrations.flower`) receives clients' arrays, not
their models: :func:`state_widths` reads which width every group of the global model's
spec has in a client's arrays (refusing arrays of another family in one line), and
:func:`resized_model` builds the module that runs them, a copy of the global model whose
parameters and buffers take the arrays' shapes (the standard layers' size attributes
follow), checked by running it on the probe.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ModeconnectError
from ..spec import Leaf, PermutationSpec
from .maps import target_shapes

__all__ = ["resized_model", "state_widths"]


def state_widths(
    spec: PermutationSpec, free: Sequence[str], sd: Mapping[str, Tensor]
) -> dict[str, int]:
    """The width of every group of ``spec`` in ``sd``: groups in ``free`` (those that can
    change width) are read from ``sd``, the others keep ``spec``'s sizes. Raises
    :class:`~modeconnect.ModeconnectError` (one line) if ``sd`` is not the model of
    ``spec`` at some widths: other keys, other ranks, or other sizes off the width axes.

    >>> from modeconnect.models import mlp
    >>> from modeconnect.spec import derive_spec
    >>> spec = derive_spec(mlp(4, [8, 6], 3), (torch.randn(2, 4),))
    >>> state_widths(spec, ("P0", "P1"), mlp(4, [5, 9], 3).state_dict())
    {'P0': 5, 'P1': 9}
    """
    missing, extra = (
        sorted(spec.layouts.keys() - sd.keys()),
        sorted(sd.keys() - spec.layouts.keys()),
    )
    if missing or extra:
        raise ModeconnectError(
            f"its arrays are not of the model's family (missing {missing[:3]}, unexpected "
            f"{extra[:3]})"
        )
    widths = spec.group_sizes()
    for key, layouts in spec.layouts.items():
        if sd[key].dim() != len(layouts):
            raise ModeconnectError(
                f"its arrays are not of the model's family: {key!r} has {sd[key].dim()} "
                f"dimensions, the model's {len(layouts)}"
            )
        for axis, layout in enumerate(layouts):
            if isinstance(layout, Leaf) and layout.group in free and layout.over is None:
                widths[layout.group] = int(sd[key].shape[axis])
    for key, shape in target_shapes(spec, widths).items():
        if tuple(sd[key].shape) != shape:
            raise ModeconnectError(
                f"its arrays are not of the model's family: {key!r} has shape "
                f"{tuple(sd[key].shape)}, the model at widths {widths} has {shape}"
            )
    return widths


_SIZES: tuple[tuple[type[nn.Module], Any], ...] = (
    (nn.Linear, lambda m: {"out_features": m.weight.shape[0], "in_features": m.weight.shape[1]}),
    (
        nn.modules.conv._ConvNd,
        lambda m: {"out_channels": m.weight.shape[0], "in_channels": m.weight.shape[1] * m.groups},
    ),
    (
        nn.modules.batchnorm._NormBase,
        lambda m: (
            {"num_features": m.running_mean.shape[0]}
            if m.running_mean is not None
            else {"num_features": m.weight.shape[0]}
        ),
    ),  # fmt: skip
    (
        nn.LayerNorm,
        lambda m: {"normalized_shape": tuple(m.weight.shape)} if m.weight is not None else {},
    ),  # fmt: skip
    (nn.GroupNorm, lambda m: {"num_channels": m.weight.shape[0]} if m.weight is not None else {}),
    (
        nn.Embedding,
        lambda m: {"num_embeddings": m.weight.shape[0], "embedding_dim": m.weight.shape[1]},
    ),
)


def resized_model(model: nn.Module, sd: Mapping[str, Tensor], probe: Sequence[Any]) -> nn.Module:
    """A copy of ``model`` holding ``sd``, whose tensors may be wider or narrower than
    ``model``'s: each parameter and buffer takes ``sd``'s shape, and Linear, conv, norm
    and Embedding layers their size attributes. The copy must run on ``probe`` and give
    ``model``'s output shape; otherwise one line says so. ``model`` is left as it is.

    >>> from modeconnect.models import mlp
    >>> wide = mlp(4, [9], 3)
    >>> out = resized_model(mlp(4, [6], 3), wide.state_dict(), (torch.randn(2, 4),))
    >>> out[1], torch.equal(out(torch.ones(1, 4)), wide(torch.ones(1, 4)))
    (Linear(in_features=4, out_features=9, bias=True), True)
    """
    was_training = model.training
    out = copy.deepcopy(model)
    for key, value in sd.items():
        owner_name, _, leaf = key.rpartition(".")
        owner = out.get_submodule(owner_name) if owner_name else out
        old = owner._parameters.get(leaf)
        old_buffer = owner._buffers.get(leaf)
        if old is not None:
            owner._parameters[leaf] = nn.Parameter(
                torch.empty(value.shape, dtype=old.dtype, device=old.device),
                requires_grad=old.requires_grad,
            )
        elif old_buffer is not None:
            owner._buffers[leaf] = torch.empty(
                value.shape, dtype=old_buffer.dtype, device=old_buffer.device
            )
    for module in out.modules():
        for kind, sizes in _SIZES:
            if isinstance(module, kind):
                for name, size in sizes(module).items():
                    setattr(module, name, size)
    try:
        out.load_state_dict(dict(sd))
        with torch.no_grad():
            got, want = out.eval()(*probe), model.eval()(*probe)
        if isinstance(got, Tensor) and isinstance(want, Tensor) and got.shape != want.shape:
            raise RuntimeError(
                f"it gives outputs of shape {tuple(got.shape)}, not {tuple(want.shape)}"
            )
    except (RuntimeError, ValueError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModeconnectError(
            f"{type(model).__name__} could not be rebuilt at the arrays' widths ({reason}); "
            "pass model_for=, a function that builds the model for a state dict"
        ) from None
    finally:
        model.train(was_training)
    out.train(was_training)
    return out
