"""Probe inputs inferred from the model (``example_inputs``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modeconnect.errors import ModeconnectError
from modeconnect.spec import example_inputs


def test_plain_models_get_a_batch_shaped_after_their_first_layer():
    assert example_inputs(nn.Sequential(nn.Linear(7, 2)))[0].shape == (2, 7)
    assert example_inputs(nn.Sequential(nn.Conv2d(5, 2, 3)))[0].shape == (2, 5, 32, 32)
    ids = example_inputs(nn.Sequential(nn.Embedding(50, 4)))[0]
    assert ids.shape == (2, 8) and ids.dtype == torch.long and int(ids.max()) < 50


def test_integer_inputs_of_a_given_shape_cover_the_vocabulary():
    """``--input-dtype long`` used to draw ids from {0, 1} only."""
    model = nn.Sequential(nn.Embedding(1000, 4))
    ids = example_inputs(model, (4, 64), torch.long)[0]
    assert ids.dtype == torch.long and ids.shape == (4, 64)
    assert 2 < int(ids.max()) < 1000 and len(ids.unique()) > 100


def test_inputs_are_seeded():
    model = nn.Sequential(nn.Linear(3, 2))
    assert torch.equal(example_inputs(model, seed=1)[0], example_inputs(model, seed=1)[0])
    assert not torch.equal(example_inputs(model, seed=1)[0], example_inputs(model, seed=2)[0])


def test_hugging_face_models_get_ids_or_pixels_from_their_config():
    pytest.importorskip("transformers")
    from zoo_hf import VOCAB, gpt2, vit

    ids = example_inputs(gpt2()[0])[0]
    assert ids.shape == (2, 8) and int(ids.max()) < VOCAB and int(ids.max()) > 1
    assert example_inputs(vit()[0])[0].shape == (2, 3, 16, 16)


def test_unknown_first_layer_asks_for_a_shape():
    with pytest.raises(ModeconnectError, match=r"cannot infer an input shape.*--input-shape"):
        example_inputs(nn.Sequential(nn.ReLU()))
