"""``modeconnect.training.train_classifier``: the one seeded loop that makes study pairs."""

from __future__ import annotations

import pytest
import torch

from modeconnect.errors import ModeconnectError
from modeconnect.models import mlp
from modeconnect.training import train_classifier


def _blobs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(120) % 3
    centres = torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]])
    return centres[y] + 0.5 * torch.randn(120, 4, generator=gen), y


def _trained(seed: int, **options: object) -> torch.nn.Module:
    x, y = _blobs()
    torch.manual_seed(0)
    return train_classifier(mlp(4, [16], 3), x, y, epochs=5, lr=0.1, seed=seed, **options)  # type: ignore[arg-type]


def test_it_learns_and_returns_the_model_in_eval_mode() -> None:
    x, y = _blobs()
    model = _trained(1)
    assert not model.training
    assert (model(x).argmax(1) == y).float().mean() > 0.95


def test_the_batch_order_seed_and_the_schedule_change_the_weights() -> None:
    base = _trained(1).state_dict()
    for other in (_trained(2), _trained(1, schedule="constant"), _trained(1, optimizer="adamw")):
        assert not torch.equal(other.state_dict()["1.weight"], base["1.weight"])
    assert torch.equal(_trained(1).state_dict()["1.weight"], base["1.weight"])


def test_an_unknown_optimizer_or_schedule_is_one_line_naming_the_choices() -> None:
    for options in ({"optimizer": "adam"}, {"schedule": "step"}):
        with pytest.raises(ModeconnectError, match=r"choose an optimizer from \('sgd', 'adamw'\)"):
            _trained(1, **options)
