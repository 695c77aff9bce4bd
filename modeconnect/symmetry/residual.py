"""The residual stream's symmetry class, read from the model's traced graph.

Permutation groups come from :func:`~modeconnect.spec.derive_spec`. A transformer's
residual stream is one of them: the group that holds the embeddings' columns, every
layer that writes into the stream (its rows and bias) and every layer that reads it
(its columns), and the weights (and biases) of the norms that normalise it. Such a
stream is equivariant under far more than permutations (SliceGPT's computational
invariance, Ashkboos et al. 2024; Theus et al. 2025):

* **RMSNorm** ``x / rms(x) * g``: ``rms(Qx) = rms(x)`` for any orthogonal ``Q``, so once
  ``g`` is folded into the layers that read the norm (``W -> W diag(g)``, ``g -> 1``)
  every orthogonal map of the stream leaves the function unchanged;
* **LayerNorm** ``(x - mean x) / std(x) * g + b``: the same holds for the orthogonal
  maps that fix the all-ones direction (they commute with the mean subtraction); the
  bias is carried through the map, divided by the folded weight (``b -> Q (b / g)``).

:func:`residual_streams` finds, for every group, whether it is such a stream, from the
ops that use each of its tensors in the exported graph:

* every tensor axis of the group is a whole axis (no heads or concatenations) of a
  ``linear``/``addmm`` weight or bias, an ``embedding`` table, or the weight/bias of a
  norm over the last dimension: ``layer_norm``, ``rms_norm``, or Hugging Face's RMSNorm
  (``g * (x * rsqrt(mean(x**2) + eps))``);
* each norm's output reaches only ``linear``/``addmm`` layers (through casts, views and
  dropout): its *readers*, into which its weight is folded;
* a norm read by a weight that is also an embedding table (tied embeddings) cannot be
  folded without changing the table: it must have a constant weight (checked on the
  weights, by :func:`foldable`).

A group that passes is of class ``orthogonal`` (only RMSNorms) or ``orthogonal-ones``
(a LayerNorm: maps fixing the all-ones direction); any other group keeps the class
``permutation`` with the reason. Folding needs weights without zero entries
(:func:`foldable`). Whatever the analysis misses (an op on the stream that is not
rotation-equivariant) the equivalence guard catches, and :func:`~modeconnect.symmetry.
align_full` checks a random rotation before it trusts the class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..spec import Leaf, PermutationSpec
from ..spec.trace import Inputs, Traced, trace

ORTHOGONAL = "orthogonal"
"""Any orthogonal map of the stream (RMSNorm only)."""
ORTHOGONAL_ONES = "orthogonal-ones"
"""Orthogonal maps that fix the all-ones direction (LayerNorm)."""
PERMUTATION = "permutation"
"""The spec's own class: permutations only."""

_PASS = {
    "aten.to.dtype", "aten.to.dtype_layout", "aten.to.device", "aten._to_copy.default",
    "aten.clone.default", "aten.contiguous.default", "aten.dropout.default",
    "aten.alias.default", "aten.detach.default", "aten.view.default", "aten.reshape.default",
    "aten._unsafe_view.default",
}  # fmt: skip
"""Ops that carry the stream's last axis through unchanged (casts, views, dropout)."""
_IGNORED = {"aten._assert_tensor_metadata.default"}
_CONV = {"aten.conv1d.default", "aten.conv2d.default", "aten.conv3d.default",
         "aten.convolution.default"}  # fmt: skip
"""Convolutions: a weight (position 1) or bias (2) whose output channels are the stream."""
_ADDITIVE = {"aten.add.Tensor", "aten.expand.default", "aten.cat.default"}
"""Ops through which a parameter whose last axis is the stream enters it as a summand or
a token (ViT's class token and learned positions)."""
_TOKENS = {"aten.select.int", "aten.slice.Tensor"}
"""Ops that pick tokens: they carry the stream when they act on another axis than the last."""


@dataclass(frozen=True)
class Norm:
    """One norm of the stream: its weight (and LayerNorm bias) and the weights that read it.

    ``readers`` are ``(key, axis)``: the weight's input axis, into which ``weight`` folds.
    ``tied`` says a reader is also an embedding table: the norm stays unfolded.
    """

    weight: str
    bias: str | None
    kind: str
    readers: tuple[tuple[str, int], ...]
    tied: bool = False


@dataclass(frozen=True)
class ResidualStream:
    """A group with its symmetry class: the tensors it rotates and the norms it folds.

    ``rotated`` lists ``(key, axis)`` of every tensor axis the map acts on as a vector
    space (weights, biases, embeddings, norm biases); ``norms`` the norms whose weight
    folds into their readers. ``cls`` is :data:`ORTHOGONAL`, :data:`ORTHOGONAL_ONES` or
    :data:`PERMUTATION`; ``reason`` says why a group is no larger than it is.
    """

    group: str
    size: int
    cls: str
    reason: str
    rotated: tuple[tuple[str, int], ...] = ()
    norms: tuple[Norm, ...] = ()

    @property
    def fixes_ones(self) -> bool:
        """Whether the maps must fix the all-ones direction (a LayerNorm reads the stream)."""
        return self.cls == ORTHOGONAL_ONES

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "size": self.size, "class": self.cls, "reason": self.reason,
                "norms": [n.weight for n in self.norms]}  # fmt: skip

    def refused(self, reason: str) -> ResidualStream:
        """This group kept at :data:`PERMUTATION`, with ``reason``."""
        return ResidualStream(self.group, self.size, PERMUTATION, reason)


def residual_streams(
    model: nn.Module, inputs: Inputs, spec: PermutationSpec, traced: Traced | None = None
) -> dict[str, ResidualStream]:
    """Every group of ``spec`` that holds a norm, with its class (module docstring).

    Groups without a norm are left out: they stay permutations, as the spec says.
    """
    traced = traced if traced is not None else trace(model, inputs)
    uses, names = _param_uses(traced, spec.aliases)
    found: dict[str, ResidualStream] = {}
    for name, group in spec.groups.items():
        norm_keys = [m.key for m in group.members if _norm_use(uses.get(m.key, ())) is not None]
        if not norm_keys or group.batch_over is not None:
            continue
        found[name] = _classify(name, group.size, spec, uses, names)
    return found


Use = tuple[torch.fx.Node, int]
"""A node that takes a parameter, and the position of the parameter in its arguments."""


def _param_uses(
    traced: Traced, aliases: Mapping[str, str]
) -> tuple[dict[str, list[Use]], dict[str, str]]:
    """State-dict key (tied weights by their first name) -> the nodes that take it; and
    placeholder name -> key."""
    uses: dict[str, list[Use]] = {}
    names: dict[str, str] = {}
    for node in traced.program.graph.nodes:
        if node.op != "placeholder":
            continue
        key = traced.keys.get(node.name) or traced.keys.get(str(node.target))
        if key is None:
            continue
        key = names[node.name] = aliases.get(key, key)
        for user in node.users:
            if str(user.target) in _IGNORED:
                continue
            where = next((i for i, a in enumerate(user.args) if a is node), -1)
            uses.setdefault(key, []).append((user, where))
    return uses, names


def _norm_use(uses: Any) -> tuple[str, torch.fx.Node, str] | None:
    """``(kind, output node, role)`` when the parameter is a norm's weight or bias."""
    for node, where in uses:
        target = str(node.target)
        if target == "aten.layer_norm.default" and where in (2, 3):
            return "layernorm", node, "weight" if where == 2 else "bias"
        if target == "aten.rms_norm.default" and where == 2:
            return "rmsnorm", node, "weight"
        if target == "aten.mul.Tensor" and _is_rms(
            node.args[1 - where] if where in (0, 1) else None
        ):
            return "rmsnorm", node, "weight"
    return None


def _is_rms(arg: Any) -> bool:
    """Whether ``arg`` is ``x * rsqrt(...)`` (through casts): Hugging Face's RMSNorm body."""
    while isinstance(arg, torch.fx.Node) and str(arg.target) in _PASS:
        arg = arg.args[0]
    if not isinstance(arg, torch.fx.Node) or str(arg.target) != "aten.mul.Tensor":
        return False
    return any(isinstance(a, torch.fx.Node) and str(a.target) == "aten.rsqrt.default"
               for a in arg.args)  # fmt: skip


def _classify(
    name: str,
    size: int,
    spec: PermutationSpec,
    uses: Mapping[str, list[Use]],
    names: Mapping[str, str],
) -> ResidualStream:
    base = ResidualStream(name, size, PERMUTATION, "")
    rotated: list[tuple[str, int]] = []
    norms: dict[str, dict[str, Any]] = {}
    embeddings: set[str] = set()
    for member in spec.groups[name].members:
        key, axis = member.key, member.axis
        layout = spec.layouts[key][axis]
        if not isinstance(layout, Leaf):
            return base.refused(f"{key} axis {axis} holds the group inside heads or parts")
        use = uses.get(key, [])
        norm = _norm_use(use)
        if norm is not None:
            kind, node, role = norm
            entry = norms.setdefault(node.name, {"kind": kind, "node": node})
            entry[role] = key
            if role == "bias":
                rotated.append((key, axis))
            if not _last_axis_norm(node, kind):
                return base.refused(f"{kind} of {key} normalises more than the last axis")
            continue
        ndim = _ndim(_traced_value(use))
        for node, where in use:
            target = str(node.target)
            if target == "aten.embedding.default" and where == 0:
                embeddings.add(key)
            elif target in _CONV and where in (1, 2) and axis == 0:
                continue  # a convolution's output channels (a patch embedding) write it
            elif target in _ADDITIVE and ndim is not None and axis == ndim - 1:
                continue  # added (or concatenated) along the tokens: a class token, positions
            elif target not in ("aten.linear.default", "aten.addmm.default"):
                return base.refused(
                    f"{key} is used by {target}, which a rotation does not commute with"
                )
        rotated.append((key, axis))
    out: list[Norm] = []
    for entry in norms.values():
        if "weight" not in entry:
            return base.refused("a norm has a bias but no weight to fold")
        readers = _readers(entry["node"])
        if isinstance(readers, str):
            return base.refused(f"{entry['weight']}: {readers}")
        keyed = [(names.get(getattr(w, "name", "")), axis) for w, axis in readers]
        if any(k is None for k, _ in keyed):
            return base.refused(f"{entry['weight']} is read by a layer whose weight is not saved")
        stray = [f"{k} axis {a}" for k, a in keyed if (k, a) not in rotated]
        if stray:
            return base.refused(f"{entry['weight']} is read by {stray[0]}, outside the stream")
        tied = any(k in embeddings for k, _ in keyed)
        out.append(Norm(entry["weight"], entry.get("bias"), entry["kind"],
                        tuple((str(k), a) for k, a in keyed), tied))  # fmt: skip
    cls = ORTHOGONAL_ONES if any(n.kind == "layernorm" for n in out) else ORTHOGONAL
    why = ("LayerNorm subtracts the mean: only maps fixing the all-ones direction commute"
           if cls == ORTHOGONAL_ONES else "RMSNorm weights fold into their readers")  # fmt: skip
    return ResidualStream(name, size, cls, why, tuple(rotated), tuple(out))


def _last_axis_norm(node: torch.fx.Node, kind: str) -> bool:
    if kind == "rmsnorm" and str(node.target) == "aten.mul.Tensor":
        return True  # the Hugging Face body reduces the last axis (mean over -1)
    shape = node.args[1]
    return isinstance(shape, (list, tuple)) and len(shape) == 1


def _readers(out: torch.fx.Node) -> list[tuple[torch.fx.Node, int]] | str:
    """The weight nodes of the layers ``out`` feeds (through pass-through ops), with the
    input axis of each; or why a use is not a linear layer."""
    found: list[tuple[torch.fx.Node, int]] = []
    stack = [out]
    while stack:
        node = stack.pop()
        for user in node.users:
            target = str(user.target)
            if target in _IGNORED:
                continue
            if target in _PASS and user.args[0] is node:
                stack.append(user)
            elif target in _TOKENS and user.args[0] is node and _not_last(node, user.args[1]):
                stack.append(user)  # the class token's row (a ViT's pooling)
            elif target == "aten.linear.default" and user.args[0] is node:
                found.append((user.args[1], 1))  # type: ignore[arg-type]
            elif target == "aten.addmm.default" and user.args[1] is node:
                found.append((user.args[2], 0))  # type: ignore[arg-type]
            else:
                return f"its output feeds {target}, not only linear layers"
    return found


def _traced_value(uses: Any) -> Any:
    """The parameter's traced value (``meta["val"]``) from one of its uses, or ``None``."""
    for node, where in uses:
        arg = node.args[where] if 0 <= where < len(node.args) else None
        if isinstance(arg, torch.fx.Node) and "val" in arg.meta:
            return arg.meta["val"]
    return None


def _ndim(value: Any) -> int | None:
    return value.ndim if isinstance(value, torch.Tensor) else None


def _not_last(node: torch.fx.Node, dim: Any) -> bool:
    """Whether ``dim`` of ``node``'s traced value is another axis than its last."""
    ndim = _ndim(node.meta.get("val"))
    return isinstance(dim, int) and ndim is not None and dim not in (-1, ndim - 1)


@dataclass(frozen=True)
class ClassifiedSpec(PermutationSpec):
    """A spec with each residual stream's class from the graph (``modeconnect spec``).

    ``classes`` maps a group to ``{"class", "reason"}``; groups not listed are
    permutations. The weights' own checks (zero norm entries, a tied head behind a
    varying norm) come at alignment.
    """

    classes: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


def classified(spec: PermutationSpec, model: nn.Module, inputs: Inputs) -> ClassifiedSpec:
    """``spec`` with the classes :func:`residual_streams` reads from ``model``'s graph."""
    streams = residual_streams(model, inputs, spec)
    classes = {g: {"class": s.cls, "reason": s.reason} for g, s in streams.items()}
    fields = {f: getattr(spec, f) for f in spec.__dataclass_fields__}
    return ClassifiedSpec(**fields, classes=classes)
