"""Layouts and permutations as algebra: random layouts (concatenations, products with
per-block groups, shuffles) and random permutations compose, invert and gather exactly."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from modeconnect.spec import (
    Concat,
    Fixed,
    Layout,
    Leaf,
    PermGroup,
    PermutationSpec,
    Product,
    Shuffle,
    apply_permutation,
    axis_index,
    derive_spec,
    invert_permutation,
    random_permutation,
)

SIZES = {"A": 2, "B": 3, "H": 2, "D": 3}


def _leaf(name: str) -> Leaf:
    return Leaf(name, SIZES[name], "H" if name == "D" else None)


@st.composite
def layouts(draw, depth: int = 2) -> Layout:
    """Layouts over plain groups A, B and heads H with per-head dims D (always under H)."""
    options = ["fixed", "leaf", "heads"] + (["concat", "shuffle"] if depth else [])
    kind = draw(st.sampled_from(options))
    if kind == "fixed":
        return Fixed(draw(st.integers(1, 3)))
    if kind == "leaf":
        return _leaf(draw(st.sampled_from(["A", "B"])))
    if kind == "heads":  # heads x (per-head dims, maybe beside a fixed part)
        inner: Layout = _leaf("D")
        if draw(st.booleans()):
            inner = Concat((Fixed(2), inner))
        return Product((_leaf("H"), inner))
    if kind == "concat":
        return Concat(tuple(draw(st.lists(layouts(depth - 1), min_size=1, max_size=3))))
    inner = draw(layouts(depth - 1))
    order = draw(st.permutations(range(inner.size)))
    return Shuffle(inner, tuple(order))


def _spec(layout: Layout) -> PermutationSpec:
    groups = {n: PermGroup(n, s, (), "H" if n == "D" else None) for n, s in SIZES.items()}
    return PermutationSpec(groups, {"w": (layout,)})


@settings(max_examples=60, deadline=None)
@given(layout=layouts(), seed=st.integers(0, 10_000))
def test_gather_index_is_a_permutation_and_inverts(layout, seed):
    spec = _spec(layout)
    perm = random_permutation(spec, seed)
    index = axis_index(layout, perm)
    assert sorted(index.tolist()) == list(range(layout.size))
    w = {"w": torch.arange(layout.size)}
    moved = apply_permutation(w, spec, perm)
    back = apply_permutation(moved, spec, invert_permutation(spec, perm))
    assert torch.equal(back["w"], w["w"])


@settings(max_examples=60, deadline=None)
@given(layout=layouts(), s1=st.integers(0, 10_000), s2=st.integers(0, 10_000))
def test_permutations_compose(layout, s1, s2):
    """Applying p1 then p2 is applying their composition (blocks of per-head groups too)."""
    spec = _spec(layout)
    p1, p2 = random_permutation(spec, s1), random_permutation(spec, s2)
    both = {n: p1[n][p2[n]] for n in ("A", "B", "H")}
    both["D"] = torch.gather(p1["D"][p2["H"]], 1, p2["D"])  # block b: old block p1H[p2H[b]]
    w = {"w": torch.arange(layout.size)}
    twice = apply_permutation(apply_permutation(w, spec, p1), spec, p2)
    assert torch.equal(twice["w"], apply_permutation(w, spec, both)["w"])


@settings(max_examples=40, deadline=None)
@given(order=st.permutations(range(5)), seed=st.integers(0, 10_000))
def test_shuffle_gathers_the_shuffled_positions_of_its_inner_axis(order, seed):
    """Position i of a shuffled axis holds inner position order[i], before and after."""
    inner = Concat((Leaf("A", 2), Leaf("B", 3)))
    spec = PermutationSpec(
        {"A": PermGroup("A", 2, ()), "B": PermGroup("B", 3, ())},
        {"u": (inner,), "t": (Shuffle(inner, tuple(order)),)},
    )
    u = torch.randn(5)
    state = {"u": u, "t": u[list(order)]}
    moved = apply_permutation(state, spec, random_permutation(spec, seed))
    assert torch.equal(moved["t"], moved["u"][list(order)])


@settings(max_examples=25, deadline=None)
@given(
    widths=st.lists(st.integers(2, 6), min_size=1, max_size=3),
    conv=st.booleans(),
    s1=st.integers(0, 10_000),
    s2=st.integers(0, 10_000),
)
def test_random_mlp_and_cnn_specs_compose_and_invert(widths, conv, s1, s2):
    layers: list[nn.Module] = []
    prev = 3
    for w in widths:
        layers += [nn.Conv2d(prev, w, 3, padding=1) if conv else nn.Linear(prev, w), nn.ReLU()]
        prev = w
    if conv:
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    model = nn.Sequential(*layers, nn.Linear(prev, 2)).eval()
    x = torch.randn(2, 3, 4, 4) if conv else torch.randn(2, 3)
    spec = derive_spec(model, (x,))
    state = model.state_dict()
    p1, p2 = random_permutation(spec, s1), random_permutation(spec, s2)
    both = {n: p1[n][p2[n]] for n in p1}
    twice = apply_permutation(apply_permutation(state, spec, p1), spec, p2)
    once = apply_permutation(state, spec, both)
    back = apply_permutation(once, spec, invert_permutation(spec, both))
    for k in state:
        assert torch.equal(twice[k], once[k]) and torch.equal(back[k], state[k])
