"""Probe inputs inferred from the model: what to trace and check with when no data is given.

A plain model gets a batch shaped after its first layer: ``(2, in_features)`` for a
``Linear``, ``(2, C, 32, 32)`` for a convolution, token ids for an ``Embedding``. A
Hugging Face model gets what its main input needs: token ids drawn uniformly from
its vocabulary (never past its position limit), or pixel values at its configured
image size. Integer inputs of a given shape are token ids too: drawn from the whole
vocabulary, since ids from ``{0, 1}`` would leave most embedding rows unexercised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ModeconnectError
from ..forward import is_hugging_face

BATCH = 2
TOKENS = 8


def example_inputs(
    model: nn.Module,
    input_shape: Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
    *,
    seed: int = 0,
) -> tuple[torch.Tensor, ...]:
    """A random input batch for tracing and probing, from ``input_shape`` or the model.

    Infers ``(2, in_features)`` for a first ``Linear``, ``(2, C, 32, 32)`` for a first
    convolution, token ids for a first ``Embedding`` or a Hugging Face text model, and
    pixel values for a Hugging Face vision model.
    """
    gen = torch.Generator().manual_seed(seed)
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        if dtype is not None and not dtype.is_floating_point:
            high = vocabulary_size(model) or 2
            return (torch.randint(0, high, shape, generator=gen, dtype=dtype),)
        return (torch.randn(shape, generator=gen, dtype=dtype or torch.float32),)
    if is_hugging_face(model):
        found = _hugging_face_inputs(model, gen)
        if found is not None:
            return found
    for module in model.modules():
        if isinstance(module, nn.Linear):
            return (torch.randn(BATCH, module.in_features, generator=gen),)
        if isinstance(module, nn.modules.conv._ConvNd):
            spatial = (32,) * (module.weight.dim() - 2)
            return (torch.randn(BATCH, module.in_channels, *spatial, generator=gen),)
        if isinstance(module, nn.Embedding):
            ids = (BATCH, TOKENS)
            return (torch.randint(0, module.num_embeddings, ids, generator=gen),)
    raise ModeconnectError(
        f"example inputs: cannot infer an input shape for {type(model).__name__}; pass "
        "--input-shape (e.g. --input-shape 1,3,32,32) or --data"
    )


def vocabulary_size(model: nn.Module) -> int | None:
    """The number of token ids the model takes: its config's ``vocab_size``, else the
    size of its first ``Embedding``."""
    config = getattr(model, "config", None)
    size = _config_int(config, "vocab_size")
    if size is not None:
        return size
    first = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    return first.num_embeddings if first is not None else None


def _hugging_face_inputs(model: nn.Module, gen: torch.Generator) -> tuple[torch.Tensor, ...] | None:
    config = getattr(model, "config", None)
    main = str(getattr(model, "main_input_name", "input_ids"))
    if main == "input_ids":
        vocab = vocabulary_size(model)
        if vocab is None:
            return None
        limit = _config_int(config, "max_position_embeddings", "n_positions")
        tokens = min(TOKENS, limit) if limit else TOKENS
        return (torch.randint(0, vocab, (BATCH, tokens), generator=gen),)
    if main == "pixel_values":
        vision = getattr(config, "vision_config", None) or config
        size = _config_int(vision, "image_size")
        channels = _config_int(vision, "num_channels") or 3
        if size is None:
            return None
        return (torch.randn(BATCH, channels, size, size, generator=gen),)
    return None


def _config_int(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, (list, tuple)) and value:
            value = value[0]
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    text = getattr(config, "text_config", None)
    return _config_int(text, *names) if text is not None and text is not config else None
