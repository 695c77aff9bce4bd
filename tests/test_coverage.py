"""``Coverage``: what a spec permutes and what it leaves fixed, at a glance."""

from __future__ import annotations

import torch
from torch import nn
from zoo import ZOO

from modeconnect.spec import (
    Coverage,
    Fixed,
    FixedAxis,
    Leaf,
    PermGroup,
    PermutationSpec,
    Product,
    derive_spec,
)
from modeconnect.spec.coverage import reason_op


def test_counts_units_weights_and_frozen_outputs():
    spec = PermutationSpec(
        groups={
            "H": PermGroup("H", 4, ()),
            "D": PermGroup("D", 6, (), "H"),
            "P": PermGroup("P", 10, ()),
        },  # fmt: skip
        layouts={
            "q.weight": (Product((Leaf("H", 4), Leaf("D", 6, "H"))), Leaf("P", 10)),
            "head.weight": (Fixed(3), Leaf("P", 10)),
            "norm.weight": (Leaf("P", 10),),
        },
        fixed=(
            FixedAxis("head.weight", 0, 3, "model output"),
            FixedAxis(
                "q.weight", 1, 2, "view [2, 6] -> [12]: reshape mixes dimensions", partial=True
            ),
        ),  # fmt: skip
        weight_outputs={"q.weight": (0,), "head.weight": (0,)},
    )
    cov = Coverage.of(spec)
    assert (cov.groups, cov.units, cov.weights, cov.frozen) == (3, 4 + 4 * 6 + 10, 2, 1)
    assert cov.frozen_outputs == {"head.weight": "model output"}
    assert cov.reasons == {"model output": 1, "view": 1}
    assert cov.to_dict() == {
        "groups": 3, "units": 38, "weights": 2,
        "frozen_outputs": {"head.weight": "model output"},
        "reasons": {"model output": 1, "view": 1},
    }  # fmt: skip


def test_reason_op_drops_details():
    assert reason_op("unsupported op cumsum") == "unsupported op cumsum"
    assert reason_op("attention mask: sizes 4 and 8 do not match") == "attention mask"
    assert reason_op("view [2, 6] -> [12]: reshape mixes dimensions") == "view"
    assert reason_op("constant: model.rotary_emb.inv_freq") == "constant"


def test_derived_mlp_and_resnet():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    cov = Coverage.of(derive_spec(mlp, (torch.randn(2, 4),)))
    assert (cov.units, cov.weights, dict(cov.frozen_outputs)) == (
        8,
        2,
        {"2.weight": "model output"},
    )
    model, inputs = ZOO["resnet20"]()
    cov = Coverage.of(derive_spec(model, inputs))
    assert cov.weights == 22 and dict(cov.frozen_outputs) == {"fc.weight": "model output"}
    assert cov.reasons["convolution kernel taps"] == 2 * 19  # 19 3x3 convs, two tap axes
