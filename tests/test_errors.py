"""Typed errors: what a library user catches, each still a one-line ModeconnectError."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import modeconnect as mc
from modeconnect.errors import ModeconnectError, NotEquivalent, OutputConflict, ShapeMismatch
from modeconnect.guard import require_equivalence
from modeconnect.io.targets import Outputs
from modeconnect.models import mlp

ROOT = Path(__file__).resolve().parents[1]


def test_every_typed_error_is_a_modeconnect_error() -> None:
    for cls in (mc.UntrustedReference, mc.ShapeMismatch, mc.NotFinite, mc.OutputConflict,
                mc.NotEquivalent):  # fmt: skip
        assert issubclass(cls, ModeconnectError)
        assert "\n" not in str(cls("a\nb"))  # one line, whatever a message quotes


def test_an_existing_output_is_an_output_conflict(tmp_path: Path) -> None:
    (tmp_path / "o.pt").write_bytes(b"x")
    with pytest.raises(OutputConflict, match="already exists"):
        Outputs.plan([("--out", tmp_path / "o.pt", "checkpoint")], inputs=())


def test_a_checkpoint_of_another_width_is_a_shape_mismatch() -> None:
    from modeconnect.io.checkpoints import check_state_dict

    ckpt = mc.load(ROOT / "checkpoints" / "mlp_a.pt")
    narrower = mlp(in_features=64, hidden=[256, 512, 512], out_features=10)
    with pytest.raises(ShapeMismatch, match=r"'1.weight' has shape \(512, 64\)"):
        check_state_dict(narrower, ckpt)


def test_a_wrong_permutation_is_not_equivalent() -> None:
    torch.manual_seed(0)
    model = mlp(in_features=4, hidden=[8, 8], out_features=3)
    x = torch.randn(16, 4)
    a = model.state_dict()
    b = {**a, "1.weight": a["1.weight"].flip(0)}  # one layer's units moved alone
    with pytest.raises(NotEquivalent, match="equivalence check"):
        require_equivalence(mc.check_equivalence(model, a, b, (x,)))
