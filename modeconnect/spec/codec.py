"""A permutation spec as JSON-ready data, and back: an exact round trip, checked on the way in.

Spec data read back (a cache file) is untrusted: it is only ever parsed as data,
and :func:`spec_from_dict` checks every field's type, every size, that each leaf
names a group of its size (and that group's outer group), that shuffle orders are
permutations, and that members, aliases and sites refer to what exists. Anything
else raises :class:`~modeconnect.ModeconnectError`.

Layouts are nested lists: ``["fixed", n]``, ``["leaf", group, n, outer]``,
``["concat", [parts]]``, ``["product", [factors]]``, ``["shuffle", inner, order]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from ..errors import ModeconnectError
from .layout import (
    ActivationSite,
    Concat,
    Fixed,
    FixedAxis,
    Layout,
    Leaf,
    Member,
    PermGroup,
    PermutationSpec,
    Product,
    Shuffle,
    leaves,
)

FORMAT = 1
_MAX_DEPTH = 32


def spec_to_dict(spec: PermutationSpec) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "groups": [
            [g.name, g.size, g.batch_over, [[m.key, m.axis] for m in g.members]]
            for g in spec.groups.values()
        ],
        "layouts": {key: [layout_to_data(a) for a in axes] for key, axes in spec.layouts.items()},
        "fixed": [[f.key, f.axis, f.size, f.reason, f.partial] for f in spec.fixed],
        "aliases": dict(spec.aliases),
        "sites": {
            group: [[s.node, s.dim, layout_to_data(s.layout)] for s in sites]
            for group, sites in spec.sites.items()
        },
        "weight_outputs": {key: list(axes) for key, axes in spec.weight_outputs.items()},
    }


def layout_to_data(layout: Layout) -> list[Any]:
    if isinstance(layout, Fixed):
        return ["fixed", layout.size]
    if isinstance(layout, Leaf):
        return ["leaf", layout.group, layout.size, layout.over]
    if isinstance(layout, Concat):
        return ["concat", [layout_to_data(p) for p in layout.parts]]
    if isinstance(layout, Product):
        return ["product", [layout_to_data(f) for f in layout.factors]]
    return ["shuffle", layout_to_data(layout.inner), list(layout.order)]


def spec_from_dict(data: Any) -> PermutationSpec:
    """The spec ``data`` describes; raises :class:`ModeconnectError` if it is malformed."""
    root = _mapping(data, "spec")
    if root.get("format") != FORMAT:
        _fail(f"format {root.get('format')!r} is not {FORMAT}")
    groups = {}
    for item in _list(root.get("groups"), "groups"):
        name, size, outer, members = _fields(item, 4, "group")
        g = PermGroup(_str(name, "group name"), _count(size, "group size"),
                      tuple(_member(m) for m in _list(members, "members")),
                      None if outer is None else _str(outer, "outer group"))  # fmt: skip
        if g.name in groups:
            _fail(f"group {g.name!r} appears twice")
        groups[g.name] = g
    layouts = {
        _str(key, "key"): tuple(layout_from_data(a, groups) for a in _list(axes, "axes"))
        for key, axes in _mapping(root.get("layouts"), "layouts").items()
    }
    aliases = _mapping(root.get("aliases"), "aliases")
    sites = _mapping(root.get("sites"), "sites")
    outputs = _mapping(root.get("weight_outputs"), "weight_outputs")
    spec = PermutationSpec(
        groups,
        layouts,
        tuple(_fixed(f) for f in _list(root.get("fixed"), "fixed")),
        {_str(k, "alias"): _str(v, "alias") for k, v in aliases.items()},
        {g: tuple(_site(s, groups) for s in _list(v, "sites")) for g, v in sites.items()},
        {k: tuple(_index(a, "weight axis") for a in _list(v, "axes")) for k, v in outputs.items()},
    )
    check_consistent(spec)
    return spec


def layout_from_data(data: Any, groups: Mapping[str, PermGroup], depth: int = 0) -> Layout:
    if depth > _MAX_DEPTH:
        _fail("layout nested too deeply")
    item = _list(data, "layout")
    kind = item[0] if item else None
    if kind == "fixed":
        return Fixed(_index(_fields(item, 2, "fixed layout")[1], "size"))
    if kind == "leaf":
        _, name, size, outer = _fields(item, 4, "leaf layout")
        leaf = Leaf(_str(name, "group"), _count(size, "size"),
                    None if outer is None else _str(outer, "outer"))  # fmt: skip
        g = groups.get(leaf.group)
        if g is None or g.size != leaf.size or g.batch_over != leaf.over:
            _fail(f"leaf {leaf} does not match its group")
        return leaf
    if kind in ("concat", "product"):
        children = tuple(
            layout_from_data(c, groups, depth + 1)
            for c in _list(_fields(item, 2, f"{kind} layout")[1], kind)
        )
        if not children:
            _fail(f"empty {kind}")
        return Concat(children) if kind == "concat" else Product(children)
    if kind == "shuffle":
        _, inner, order = _fields(item, 3, "shuffle layout")
        shuffled = Shuffle(layout_from_data(inner, groups, depth + 1),
                           tuple(_index(i, "order") for i in _list(order, "order")))  # fmt: skip
        if sorted(shuffled.order) != list(range(shuffled.inner.size)):
            _fail("a shuffle order is not a permutation of its inner positions")
        return shuffled
    return _fail(f"unknown layout kind {kind!r}")


def check_consistent(spec: PermutationSpec) -> None:
    """Members, aliases, outer groups, sites and weight axes refer to what exists."""
    for g in spec.groups.values():
        outer = spec.groups.get(g.batch_over) if g.batch_over is not None else None
        if g.batch_over is not None and (outer is None or outer.batch_over is not None):
            _fail(f"group {g.name} is batched over {g.batch_over!r}, which is not a plain group")
        for m in g.members:
            axes = spec.layouts.get(m.key, ())
            if m.axis >= len(axes) or g.name not in {lf.group for lf in leaves(axes[m.axis])}:
                _fail(f"group {g.name} lists {m.key} axis {m.axis}, whose layout lacks it")
    for key, source in spec.aliases.items():
        if source not in spec.layouts and key in spec.layouts:
            _fail(f"alias {key} -> {source} has no source layout")
    for key, outputs in spec.weight_outputs.items():
        if not outputs or max(outputs) >= len(spec.layouts.get(key, ())):
            _fail(f"weight {key} has no axes {list(outputs)}")
    for f in spec.fixed:
        if f.axis >= len(spec.layouts.get(f.key, ())):
            _fail(f"fixed axis {f.key} {f.axis} has no layout")


def _member(item: Any) -> Member:
    key, axis = _fields(item, 2, "member")
    return Member(_str(key, "member key"), _index(axis, "member axis"))


def _fixed(item: Any) -> FixedAxis:
    key, axis, size, reason, partial = _fields(item, 5, "fixed axis")
    if not isinstance(partial, bool):
        _fail("fixed axis: partial is not a boolean")
    return FixedAxis(_str(key, "key"), _index(axis, "axis"), _count(size, "size"),
                     _str(reason, "reason"), partial)  # fmt: skip


def _site(item: Any, groups: Mapping[str, PermGroup]) -> ActivationSite:
    node, dim, layout = _fields(item, 3, "site")
    return ActivationSite(_str(node, "node"), _index(dim, "dim"), layout_from_data(layout, groups))


def _fields(item: Any, n: int, what: str) -> list[Any]:
    if not isinstance(item, list) or len(item) != n:
        _fail(f"{what} is not a list of {n} fields")
    return item


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        _fail(f"{what} is not a list")
    return value


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        _fail(f"{what} is not an object")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        _fail(f"{what} is not a string")
    return value


def _index(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        _fail(f"{what} is not a non-negative integer")
    return value


def _count(value: Any, what: str) -> int:
    if _index(value, what) == 0:
        _fail(f"{what} is zero")
    return value


def _fail(what: str) -> NoReturn:
    raise ModeconnectError(f"spec data: {what}; derive the spec again")
