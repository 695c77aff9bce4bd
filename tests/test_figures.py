"""Every figure renders to a PNG from a small result of the library function it draws."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from modeconnect.curvature import sharpness_study
from modeconnect.curve_fitting import curve_study
from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import linear_path
from modeconnect.figures import curve_figure, sharpness_figure, slice_figure, surface_figure
from modeconnect.landscape import plane_grid, slice_1d, surface_2d

pytest.importorskip("matplotlib")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    return buf.getvalue()


@pytest.fixture(scope="module")
def setup():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=gen)
    y = torch.randint(0, 3, (40,), generator=gen)
    data = [(x[:20], y[:20]), (x[20:], y[20:])]
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    states = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        states.append({k: torch.randn_like(v) for k, v in model.state_dict().items()})
    return model, states, data


def test_every_figure_renders(setup):
    model, (a, b, c), data = setup
    study = curve_study(model, a, b, train=data, test=data, epochs=1, steps=3, batch_size=10)
    plane = plane_grid(model, a, b, c, data, resolution=3, paths={"line": linear_path(a, b)})
    figures = [
        curve_figure(study),
        surface_figure(plane),
        surface_figure(plane, metric="error"),
        surface_figure(surface_2d(model, a, data, resolution=3)),
        slice_figure(slice_1d(model, a, data, steps=3)),
        sharpness_figure(sharpness_study(model, {"A": a, "B": b}, data, trace_samples=2,
                                         ascent_steps=1, iterations=3)),
    ]  # fmt: skip
    for fig in figures:
        assert _png(fig).startswith(b"\x89PNG")
    with pytest.raises(
        ModeconnectError, match="surface_figure: metric='accuracy' is not 'loss' or 'error'"
    ):
        surface_figure(plane, metric="accuracy")
