"""A model's widths read from a state dict, and a copy of a model at those widths.

Federated fusion (:mod:`modeconnect.integrations.flower`) receives clients' arrays, not
their models: :func:`state_widths` reads which width every group of the global model's
spec has in a client's arrays, head counts included (refusing arrays of another family
in one line), and :func:`rebuilt_model` builds the module that runs them. A Hugging Face
model is built again from its config with the arrays' widths written in (``hidden_size``,
head counts, ``intermediate_size``: the keywords :func:`~modeconnect.fusion.slots.width_slots`
finds, as ``merge --width`` writes a fused directory's config), so it saves and loads
with ``save_pretrained`` / ``from_pretrained``; any other model is
:func:`resized_model`, a copy whose parameters and buffers take the arrays' shapes (the
standard layers' size attributes follow), checked by running it on the probe.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ModeconnectError
from ..spec import Fixed, Leaf, PermutationSpec, Product
from .maps import target_shapes
from .slots import fused_kwargs, width_slots

__all__ = ["model_builder", "rebuilt_model", "resized_model", "state_widths"]


def state_widths(
    spec: PermutationSpec, free: Sequence[str], sd: Mapping[str, Tensor]
) -> dict[str, int]:
    """The width of every group of ``spec`` in ``sd``: groups in ``free`` (those that can
    change width) are read from ``sd``, the others keep ``spec``'s sizes. A group of whole
    blocks (attention heads) is counted where it is the outer factor of an axis holding
    blocks of fixed size (a head count is that axis over the head's size). A tied tensor
    (``spec.aliases``, GPT-2's ``lm_head.weight``) may be present or not; present, it has
    its source's shape. Raises :class:`~modeconnect.ModeconnectError` (one line) if ``sd``
    is not the model of ``spec`` at some widths: other keys, other ranks, or other sizes
    off the width axes.

    >>> from modeconnect.models import mlp
    >>> from modeconnect.spec import derive_spec
    >>> spec = derive_spec(mlp(4, [8, 6], 3), (torch.randn(2, 4),))
    >>> state_widths(spec, ("P0", "P1"), mlp(4, [5, 9], 3).state_dict())
    {'P0': 5, 'P1': 9}
    """
    tied = {k: v for k, v in spec.aliases.items() if k in sd and k not in spec.layouts}
    missing = sorted(spec.layouts.keys() - sd.keys())
    extra = sorted(sd.keys() - spec.layouts.keys() - tied.keys())
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
            count = _block_count(layout, free, int(sd[key].shape[axis]))
            if count is not None:
                widths[layout.factors[0].group] = count  # type: ignore[union-attr]
    shapes = target_shapes(spec, widths)
    for key, source in [*((k, k) for k in spec.layouts), *tied.items()]:
        if tuple(sd[key].shape) != shapes[source]:
            raise ModeconnectError(
                f"its arrays are not of the model's family: {key!r} has shape "
                f"{tuple(sd[key].shape)}, the model at widths {widths} has {shapes[source]}"
            )
    return widths


def _block_count(layout: Any, free: Sequence[str], size: int) -> int | None:
    """The number of blocks on an axis of whole blocks of a free group (heads × their own
    axes of fixed size), or ``None`` where the axis is not one (or does not divide)."""
    if not isinstance(layout, Product) or not isinstance(layout.factors[0], Leaf):
        return None
    outer = layout.factors[0]
    if outer.group not in free or outer.over is not None or len(layout.factors) < 2:
        return None
    block = 1
    for factor in layout.factors[1:]:
        if not (isinstance(factor, Fixed) or (isinstance(factor, Leaf) and factor.over)):
            return None
        block *= factor.size
    return size // block if size % block == 0 else None


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


def rebuilt_model(
    model: nn.Module, sd: Mapping[str, Tensor], probe: Sequence[Any], spec: PermutationSpec
) -> nn.Module:
    """A model of ``model``'s family holding ``sd``, whose widths (head counts and hidden
    size included) may differ from ``model``'s; ``spec`` is ``model``'s. A Hugging Face
    model (one with a ``config``) is built again, as ``type(model)``, from its config with
    the width keywords set to ``sd``'s widths (:func:`~modeconnect.fusion.slots.fused_kwargs`),
    so ``save_pretrained`` writes a directory that ``from_pretrained`` loads; a config
    that cannot hold those widths is refused in one line. Any other model is
    :func:`resized_model`. ``model`` is left as it is. :func:`model_builder` finds the
    config's width keywords once for many state dicts.

    >>> from modeconnect.models import mlp
    >>> from modeconnect.spec import derive_spec
    >>> x = torch.randn(2, 4)
    >>> base, wide = mlp(4, [6], 3), mlp(4, [9], 3)
    >>> out = rebuilt_model(base, wide.state_dict(), (x,), derive_spec(base, (x,)))
    >>> torch.equal(out(x), wide(x))
    True
    """
    return model_builder(model, probe, spec)(sd)


def model_builder(
    model: nn.Module, probe: Sequence[Any], spec: PermutationSpec
) -> Callable[[Mapping[str, Tensor]], nn.Module]:
    """:func:`rebuilt_model` for ``model`` as a function of the state dict, the width
    keywords of a Hugging Face config found once (by building it on the meta device)."""
    from .core import width_groups

    found = config_slots(model, spec)
    if found is None:
        return lambda sd: resized_model(model, sd, probe)
    kwargs, slots, built = found
    free, own, name = width_groups(spec), spec.group_sizes(), type(model).__name__

    def build(sd: Mapping[str, Tensor]) -> nn.Module:
        widths = state_widths(spec, free, sd)
        try:
            out = built(fused_kwargs(kwargs, slots, widths, own))
            out.load_state_dict(dict(sd))
        except (RuntimeError, ValueError, TypeError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            changed = {g: w for g, w in widths.items() if w != own[g]}
            raise ModeconnectError(
                f"{name} could not be built from its config at widths {changed} "
                f"({reason[:200]}); pass model_for=, a function that builds the model for a "
                "state dict"
            ) from None
        return out.train(model.training)

    return build


def config_slots(model: nn.Module, spec: PermutationSpec) -> tuple[Any, Any, Any] | None:
    """For a Hugging Face model (one with a ``config``): its keywords ``{"config": dict}``,
    their width slots (:func:`~modeconnect.fusion.slots.width_slots`, ``spec`` being
    ``model``'s) and ``built(keywords)``, the model built from such keywords (a config
    that refuses them raises one line). ``None`` for any other model."""
    config: Any = getattr(model, "config", None)
    if not (hasattr(config, "to_dict") and hasattr(type(config), "from_dict")):
        return None
    kwargs = {"config": config.to_dict()}

    def built(kw: Mapping[str, Any]) -> nn.Module:
        try:  # a config's own checks raise their own classes (huggingface_hub's, ...)
            settings = type(config).from_dict(dict(kw["config"]))
        except Exception as exc:
            reason = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else ""
            raise ModeconnectError(f"{type(config).__name__} refuses it ({reason})") from None
        return type(model)(settings)

    def on_meta(kw: Mapping[str, Any]) -> nn.Module:
        with torch.device("meta"):
            return built(kw)

    return kwargs, width_slots(on_meta, kwargs, spec), built
