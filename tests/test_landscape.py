"""Loss planes and filter-normalised landscapes: an orthonormal basis in which the three
models land at their coordinates, directions whose filters have the model's norms, and
grids whose points are evaluated exactly as ``modeconnect.evaluation`` evaluates them."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import evaluate_examples, linear_path
from modeconnect.landscape import (
    filter_normalized_direction,
    plane_basis,
    plane_grid,
    slice_1d,
    surface_2d,
)
from modeconnect.models import conv_net, mlp


def _states(seed: int, dtype=torch.float32) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    shapes = {"fc.weight": (4, 3), "fc.bias": (4,), "conv.weight": (2, 3, 3, 3)}
    return [
        {k: torch.randn(s, generator=gen, dtype=dtype) for k, s in shapes.items()}
        | {"n": torch.tensor(7)}
        for _ in range(3)
    ]


def _dot(x: dict, y: dict) -> float:
    return float(sum((x[k].double() * y[k].double()).sum() for k in x))


# --------------------------------------------------------------------------- plane basis


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_plane_basis_is_orthonormal_and_the_models_land_at_their_coordinates(seed):
    a, b, c = _states(seed, torch.float64)
    basis = plane_basis(a, b, c)
    assert _dot(basis.u, basis.u) == pytest.approx(1.0, abs=1e-12)
    assert _dot(basis.v, basis.v) == pytest.approx(1.0, abs=1e-12)
    assert _dot(basis.u, basis.v) == pytest.approx(0.0, abs=1e-12)
    (xa, ya), (xb, yb), (xc, yc) = basis.coordinates
    assert (xa, ya, yb) == (0.0, 0.0, 0.0) and xb > 0 and yc > 0
    for state, xy in zip((a, b, c), basis.coordinates, strict=True):
        assert basis.project(state) == pytest.approx(xy, abs=1e-12)
        assert basis.distance(state) == pytest.approx(0.0, abs=1e-10)
        point = basis.point(*xy)
        for k, v in state.items():
            torch.testing.assert_close(point[k], v if k != "n" else a["n"])
    distance_ab = math.sqrt(sum(float(((b[k] - a[k]) ** 2).sum()) for k in basis.keys))
    assert xb == pytest.approx(distance_ab, rel=1e-12)


def test_the_origin_is_a_itself_and_points_off_the_plane_have_a_distance():
    a, b, c = _states(1)
    basis = plane_basis(a, b, c)
    origin = basis.point(0.0, 0.0)
    assert all(origin[k] is a[k] for k in a)
    assert basis.keys == ("fc.weight", "fc.bias", "conv.weight")  # floating tensors only
    d, *_ = _states(2)
    assert basis.distance(d) > 0.1


def test_degenerate_planes_are_refused():
    a, b, c = _states(3)
    with pytest.raises(ModeconnectError, match="A and B are the same point"):
        plane_basis(a, a, c)
    mid = {k: (a[k] + b[k]) / 2 if v.is_floating_point() else v for k, v in a.items()}
    with pytest.raises(ModeconnectError, match="C lies on the line through A and B"):
        plane_basis(a, b, mid)
    with pytest.raises(ModeconnectError, match="model C has"):
        plane_basis(a, b, {**c, "fc.bias": torch.zeros(5)})


# --------------------------------------------------------------------------- filter normalisation


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.01, 100.0))
def test_filter_normalized_directions_have_the_models_filter_norms(seed, scale):
    a, _, _ = _states(seed)
    a = {k: v * scale if v.is_floating_point() else v for k, v in a.items()}
    a["conv.weight"][1] = 0.0  # a dead filter stays dead
    d = filter_normalized_direction(a, seed=seed)
    assert set(d) == {"fc.weight", "fc.bias", "conv.weight"}
    for key in ("fc.weight", "conv.weight"):
        torch.testing.assert_close(d[key].flatten(1).norm(dim=1), a[key].flatten(1).norm(dim=1))
    assert torch.equal(d["conv.weight"][1], torch.zeros_like(d["conv.weight"][1]))
    assert torch.equal(d["fc.bias"], torch.zeros(4))  # biases (and BatchNorm) do not move


def test_directions_follow_the_seed_and_the_keys():
    a, _, _ = _states(4)
    first, again = filter_normalized_direction(a, seed=1), filter_normalized_direction(a, seed=1)
    other = filter_normalized_direction(a, seed=2)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["fc.weight"], other["fc.weight"])
    only_fc = filter_normalized_direction(a, seed=1, keys=["fc.weight"])
    assert torch.equal(only_fc["conv.weight"], torch.zeros(2, 3, 3, 3))
    with pytest.raises(ModeconnectError, match="not floating tensors"):
        filter_normalized_direction(a, keys=["n"])


def test_filter_normalization_removes_the_scale_of_each_filter():
    # Li et al.'s point: scaling a filter scales its direction, so a plot cannot
    # tell a rescaled (same-function) network from the original.
    a, _, _ = _states(5)
    c = torch.tensor([3.0, 0.5, 10.0, 1.0])
    scaled = {**a, "fc.weight": a["fc.weight"] * c[:, None]}
    d, ds = filter_normalized_direction(a, seed=0), filter_normalized_direction(scaled, seed=0)
    torch.testing.assert_close(ds["fc.weight"], d["fc.weight"] * c[:, None])


# --------------------------------------------------------------------------- grids


@pytest.fixture(scope="module")
def digits():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 64, generator=gen)
    y = torch.randint(0, 10, (60,), generator=gen)
    return [(x[:30], y[:30]), (x[30:], y[30:])]


def _net(seed: int, model: nn.Module) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    for p in model.parameters():
        nn.init.normal_(p, std=0.3)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_plane_grid_values_are_evaluations_of_the_plane_points(digits):
    model = mlp(64, [8], 10)
    a, b, c = (_net(s, model) for s in (1, 2, 3))
    grid = plane_grid(model, a, b, c, digits, resolution=4, margin=0.1,
                      paths={"line": linear_path(a, b)}, path_steps=3)  # fmt: skip
    basis = plane_basis(a, b, c)
    assert grid.points["B"] == pytest.approx(basis.coordinates[1])
    x0 = min(basis.coordinates[i][0] for i in range(3))
    width = max(basis.coordinates[i][0] for i in range(3)) - x0
    assert grid.xs[0] == pytest.approx(x0 - 0.1 * width)
    want = evaluate_examples(model, basis.point(grid.xs[2], grid.ys[1]), digits).metrics()
    assert grid.loss[1][2] == pytest.approx(want.loss, rel=1e-6)
    assert grid.accuracy[1][2] == pytest.approx(want.accuracy)
    line = grid.paths["line"]
    assert line[0] == pytest.approx((0.0, 0.0), abs=1e-6)
    assert line[1] == pytest.approx((basis.coordinates[1][0] / 2, 0.0), abs=1e-5)
    record = grid.to_dict()
    assert len(record["loss"]) == 4 and len(record["loss"][0]) == 4
    assert record["points"]["C"] == pytest.approx(list(basis.coordinates[2]))


def test_batchnorm_planes_need_training_data(digits):
    model = conv_net(1, [2], 10)
    a, b, c = (_net(s, model) for s in (1, 2, 3))
    with pytest.raises(ModeconnectError, match="pass training data"):
        plane_grid(model, a, b, c, digits, resolution=2)
    grid = plane_grid(model, a, b, c, digits, resolution=2, train=digits)
    assert all(math.isfinite(v) for row in grid.loss for v in row)


def test_slices_and_surfaces_pass_through_the_model(digits):
    model = mlp(64, [8], 10)
    state = _net(4, model)
    own = evaluate_examples(model, state, digits).metrics()
    line = slice_1d(model, state, digits, steps=5, span=(-0.5, 0.5))
    assert line.xs == (-0.5, -0.25, 0.0, 0.25, 0.5)
    assert line.loss[2] == own.loss and line.accuracy[2] == own.accuracy
    assert line.loss[0] != own.loss
    surface = surface_2d(model, state, digits, resolution=3, seed=7)
    assert surface.loss[1][1] == own.loss
    assert surface.kind == "filter_normalized" and surface.params["seed"] == 7
    again = surface_2d(model, state, digits, resolution=3, seed=7)
    assert again.loss == surface.loss
    gen = torch.Generator().manual_seed(7)
    d1 = filter_normalized_direction(state, generator=gen)
    moved = {k: state[k] + d1[k] for k in state}
    want = evaluate_examples(model, moved, digits).metrics()
    assert surface.loss[1][2] == pytest.approx(want.loss, rel=1e-6)


def test_grid_errors(digits):
    model = mlp(64, [8], 10)
    state = _net(4, model)
    with pytest.raises(
        ModeconnectError, match=r"slice_1d: span=\(1.0, -1.0\) is not two finite numbers"
    ):
        slice_1d(model, state, digits, span=(1.0, -1.0))
    with pytest.raises(ModeconnectError, match="one-shot iterator"):
        slice_1d(model, state, iter(digits), steps=3)
    with pytest.raises(ModeconnectError, match="unknown bn 'repair'"):
        surface_2d(model, state, digits, bn="repair")
    with pytest.raises(ModeconnectError, match="resolution=1 must be >= 2"):
        plane_grid(model, state, _net(5, model), _net(6, model), digits, resolution=1)


# --------------------------------------------------------------------------- grid points


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    directions=st.integers(1, 2),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    chunks=st.lists(
        st.lists(st.tuples(st.sampled_from([0.0, 0.5, -1.25, 2.0]),
                           st.sampled_from([0.0, -0.75, 1.5])), min_size=1, max_size=4),
        min_size=1, max_size=5,
    ),
)  # fmt: skip
def test_grid_rows_build_the_points_of_shifts_to_the_bit(seed, directions, dtype, chunks):
    """``_RowPoints`` (a row's sum kept, buffers reused) gives what ``_Shifts`` gives per
    point, exactly; a tensor no direction moves stays the origin's own tensor."""
    from modeconnect.landscape import _RowPoints, _Shifts

    origin, *moves = _states(seed, dtype)
    moves = [dict(m) for m in moves[:directions]]
    for m in moves:
        m.pop("n")
    moves[0]["fc.bias"] = torch.zeros(4, dtype=dtype)  # a zero direction moves nothing
    shifts = _Shifts(origin, moves)
    rows = _RowPoints(shifts)
    for chunk in chunks:
        got = rows(chunk)
        moving = [s["fc.weight"] for s, c in zip(got, chunk, strict=True) if c[0] != 0.0]
        assert len({id(t) for t in moving}) == len(moving)  # one buffer per point of a call
        for coefficients, state in zip(chunk, got, strict=True):
            want = shifts(*coefficients)
            assert set(state) == set(want) == set(origin)
            for key in want:
                assert state[key].dtype == origin[key].dtype
                assert torch.equal(state[key], want[key]), (key, coefficients)
            assert state["n"] is origin["n"]
            if directions == 1 or coefficients == (0.0, 0.0):
                assert state["fc.bias"] is origin["fc.bias"]


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 6), resolution=st.integers(2, 5))
def test_grids_k_points_per_pass_are_the_evaluations_of_their_points(seed, k, resolution):
    """Every grid point, however many share a pass, is the evaluation of ``point(x, y)``."""
    model = mlp(5, [7, 6], 3)
    a, b, c = (_net(seed + s, model) for s in range(3))
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(40, 5, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    data = [(x[:24], y[:24]), (x[24:], y[24:])]
    grid = plane_grid(model, a, b, c, data, resolution=resolution, points_per_pass=k)
    basis = plane_basis(a, b, c)
    for j, yj in enumerate(grid.ys):
        for i, xi in enumerate(grid.xs):
            want = evaluate_examples(model, basis.point(xi, yj), data).metrics()
            assert grid.loss[j][i] == pytest.approx(want.loss, rel=1e-5, abs=1e-7)
            if k == 1:  # the same forward passes: exactly
                assert (grid.loss[j][i], grid.accuracy[j][i]) == (want.loss, want.accuracy)
