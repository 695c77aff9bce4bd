"""Which constructor keywords set which widths, and the keywords of a model at other widths.

A fused model, or a federated global model of other widths, must name its constructor with
its own widths so that it loads back: :func:`width_slots` finds, by building the model (on
the meta device), which int keyword (a ``config`` dict's for Hugging Face models) sets
which groups' widths, and :func:`fused_kwargs` writes the keywords for chosen widths.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

from torch import nn

from ..errors import ModeconnectError
from ..spec import PermutationSpec
from .maps import target_shapes

__all__ = ["HEAD_COUNTS", "Slot", "fused_kwargs", "width_slots"]


Slot = tuple[Any, ...]
"""Where an int sits in the constructor keywords: a path of keys and list indices."""


def _int_slots(value: Any, path: Slot = ()) -> list[tuple[Slot, int]]:
    """Every int in ``value`` (keywords, a Hugging Face ``config`` dict, lists), with its path."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [(path, value)]
    if isinstance(value, Mapping):
        return [s for k, v in value.items() for s in _int_slots(v, (*path, k))]
    if isinstance(value, (list, tuple)):
        return [s for i, v in enumerate(value) for s in _int_slots(v, (*path, i))]
    return []


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_copy(v) for v in value]
    return value


def _with(kwargs: Mapping[str, Any], slot: Slot, value: int) -> dict[str, Any]:
    """A copy of ``kwargs`` (containers copied) with the int at ``slot`` set to ``value``."""
    out = _copy(kwargs)
    inner = out
    for step in slot[:-1]:
        inner = inner[step]
    inner[slot[-1]] = value
    return out


HEAD_COUNTS = (("num_attention_heads", "num_key_value_heads"), ("n_embd", "n_head"),
               ("num_attention_heads",), ("num_heads",))  # fmt: skip
"""Hugging Face config keys that count heads, with what is tied to them: key/value heads
(GQA), or the hidden size where it is heads × head dimension (GPT-2). A head count and a
head dimension scale a model's tensors alike, so head counts are found by name and
then checked by building the model."""


def _grows(
    build: Callable[[Mapping[str, Any]], nn.Module],
    kwargs: Mapping[str, Any],
    spec: PermutationSpec,
    base: Mapping[str, tuple[int, ...]],
    scale: Fraction,
    heads: bool = False,
) -> tuple[str, ...] | None:
    """The groups that, scaled by ``scale``, give exactly the shapes of the model built with
    ``kwargs`` (``None`` if the build fails or no such groups exist). Groups of whole
    blocks (heads) count only with ``heads``: more heads and longer heads give the same
    shapes, so head counts are known by name (:data:`HEAD_COUNTS`)."""
    try:
        model = build(kwargs)
    except (ModeconnectError, TypeError, ValueError, RuntimeError, AttributeError, KeyError):
        return None
    grown = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if grown.keys() != base.keys():
        return None
    moved = {(k, ax) for k in base for ax, (x, y) in enumerate(zip(base[k], grown[k])) if x != y}
    groups = tuple(
        g.name
        for g in spec.groups.values()
        if g.batch_over is None and any((m.key, m.axis) in moved for m in g.members)
    )
    blocks = {g.batch_over for g in spec.groups.values()}
    if not heads and blocks & set(groups):
        return None
    widths = {}
    for g in groups:
        width = spec.groups[g].size * scale
        if width.denominator != 1:
            return None
        widths[g] = int(width)
    expected = target_shapes(spec, widths)
    shape = {k: expected.get(spec.aliases.get(k, k), base[k]) for k in base}  # tied: its source's
    if not groups or any(shape[k] != grown[k] for k in base):
        return None
    return groups


def width_slots(
    build: Callable[[Mapping[str, Any]], nn.Module],
    kwargs: Mapping[str, Any],
    spec: PermutationSpec,
) -> dict[tuple[Slot, ...], tuple[str, ...]]:
    """Which constructor keywords set which groups' widths, found by building the model
    (on the meta device): an int keyword ``v`` set to ``v + 1`` (else ``2v``) is a width
    slot if the model's shapes are exactly those of some groups scaled by ``(v + 1) / v``
    (``2``); it sets those groups, never head counts. A Hugging Face ``config``'s head
    counts (:data:`HEAD_COUNTS`, doubled together) are a slot of the head groups when the
    shapes are those of the heads doubled (the head dimension stays)."""
    base = {k: tuple(v.shape) for k, v in build(kwargs).state_dict().items()}
    slots: dict[tuple[Slot, ...], tuple[str, ...]] = {}
    for slot, value in _int_slots(kwargs):
        for new in (value + 1, 2 * value) if value > 0 else ():
            # one larger; doubled where a config wants multiples (hidden size of the heads)
            grown = _grows(build, _with(kwargs, slot, new), spec, base, Fraction(new, value))
            if grown is not None:
                slots[(slot,)] = grown
                break
    config = kwargs.get("config")
    if isinstance(config, Mapping):
        for names in HEAD_COUNTS:
            keys = tuple(("config", n) for n in names)
            if all(isinstance(config.get(n), int) and config[n] > 0 for n in names):
                doubled = dict(kwargs)
                for slot in keys:
                    doubled = _with(doubled, slot, 2 * _value(kwargs, slot))
                grown = _grows(build, doubled, spec, base, Fraction(2), heads=True)
                if grown is not None:
                    slots[keys] = grown
                    break
    return slots


def _value(kwargs: Mapping[str, Any], slot: Slot) -> Any:
    inner: Any = kwargs
    for step in slot:
        inner = inner[step]
    return inner


def fused_kwargs(
    kwargs: Mapping[str, Any],
    slots: Mapping[tuple[Slot, ...], Sequence[str]],
    widths: Mapping[str, int],
    own: Mapping[str, int],
) -> dict[str, Any]:
    """Model 0's constructor keywords (its group widths ``own``) with each width slot whose
    groups change scaled by their one ratio ``widths[g] / own[g]`` (a keyword that is the
    width itself becomes the fused width; a head count tied to another scales with it).

    >>> fused_kwargs({"hidden": [64, 64], "in_features": 64}, {(("hidden", 0),): ["P0"],
    ...              (("hidden", 1),): ["P1"]}, {"P0": 48, "P1": 40}, {"P0": 64, "P1": 64})
    {'hidden': [48, 40], 'in_features': 64}
    >>> fused_kwargs({"c": {"heads": 4, "kv": 2}}, {(("c", "heads"), ("c", "kv")): ["P1"]},
    ...              {"P1": 3}, {"P1": 2})
    {'c': {'heads': 6, 'kv': 3}}
    """
    out = _copy(kwargs)
    for keys, groups in slots.items():
        if all(widths[g] == own[g] for g in groups):
            continue  # its groups keep model 0's sizes
        name = "+".join(".".join(str(step) for step in slot) for slot in keys)
        ratios = sorted({Fraction(widths[g], own[g]) for g in groups})
        if len(ratios) != 1:
            pairs = ", ".join(f"{g} {own[g]}->{widths[g]}" for g in groups)
            raise ModeconnectError(
                f"model keyword {name} sets the width of groups {list(groups)} together, but "
                f"they change by different ratios ({pairs}); give them widths in one ratio "
                "(--width)"
            )
        for slot in keys:
            value = _value(kwargs, slot) * ratios[0]
            if value.denominator != 1:
                raise ModeconnectError(
                    f"model keyword {name} scales with groups {list(groups)} by {ratios[0]}, "
                    f"which makes {'.'.join(map(str, slot))} {float(value):g}, not a whole "
                    "number; choose widths (--width) that keep it whole"
                )
            out = _with(out, slot, int(value))
    return out
