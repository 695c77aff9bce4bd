"""Scorings: how a batch becomes model inputs, targets, per-entry losses and top-1 hits.

A scoring is chosen by name from :data:`LOSSES` (``loss="ce"``) or passed as a
:class:`Scoring`; a callable ``loss(logits, y) -> (N, ...)`` scores a classifier with
that loss. :func:`get_scoring` resolves all three. Names only: a ``"module:callable"``
reference typed by a user is imported by the file layer
(:func:`modeconnect.commands.barrier.resolve_loss`), never here.

**The batch convention.** Every batch is a pair ``(x, y)``:

* classifiers (``"ce"``, ``"mse"``, callables): ``x`` the model input(s) and ``y``
  class indices ``(N, ...)`` for logits ``(N, C, ...)`` (the class on axis 1), or a
  floating target of the output's shape (regression with ``"mse"``; accuracy is NaN);
* language models (``"causal_lm"``, ``"masked_lm"``): ``x`` token ids ``(N, T)``
  (``torch.long``) and ``y`` **the same ids** ``(N, T)``, i.e. ``y = x``, or Hugging
  Face style labels equal to the ids except :data:`IGNORE_INDEX` (``-100``) at
  positions not to score; ``y = None`` is read as ``y = x``. The model
  maps ids to logits ``(N, T, V)`` (the class, i.e. vocabulary, axis last);
  Hugging Face models are called by :mod:`modeconnect.forward` with
  ``input_ids=x, use_cache=False`` and their ``logits`` are read.

**Padding.** A padded position (attention mask 0) is :data:`PAD_LABEL` (``-101``) in
``y``: it is not scored, and the model does not see it. :func:`token_batch` builds
such a batch from a tokenizer's output (``input_ids``, ``attention_mask``, ``labels``).
A batch with padding runs the model on ``(ids, attention_mask)``: Hugging Face models
get ``attention_mask=`` (and causal LMs ``position_ids`` counted over the real tokens,
as ``generate`` does, so a left-padded sequence sees the positions it has unpadded),
plain modules ``model(ids, attention_mask)``. A batch without padding runs exactly as
before, on the ids alone.

Targets are built from the batch: ``"causal_lm"`` scores the next token
(``logits[:, :-1]`` against ``y[:, 1:]``, a target counted only where it and the
position before it are real tokens); ``"masked_lm"`` masks a seeded 15 % of the real
positions BERT-style (80 % ``[MASK]``, 10 % a random token, 10 % unchanged; Devlin et
al. 2019) and scores those. Each example's loss is the *sum* over its scored
entries and its count their number, so means are ratios of sums
(``Σ loss / Σ tokens``: the per-token cross-entropy, whose ``exp`` is the
perplexity that language-model results report).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modeconnect.errors import ModeconnectError

__all__ = [
    "IGNORE_INDEX",
    "LOSSES",
    "PAD_LABEL",
    "Batch",
    "CausalLMScoring",
    "ClassifierScoring",
    "ExampleLossFn",
    "LossChoice",
    "LossFn",
    "MaskedLMScoring",
    "Scoring",
    "check_per_example",
    "cross_entropy",
    "get_scoring",
    "loss_name",
    "squared_error",
    "token_batch",
]

Batch = tuple[Tensor, Tensor]
"""``(x, y)``: inputs and targets (see the module docstring for language models)."""
LossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss_fn(logits, y) -> scalar`` summed (not averaged) over the batch."""
ExampleLossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss(logits, y) -> (N, ...)`` per-example (or per-entry) losses, ``reduction="none"``."""
IGNORE_INDEX = -100
"""A label that is not scored (Hugging Face's and ``F.cross_entropy``'s convention)."""
PAD_LABEL = -101
"""A padded position (attention mask 0) in a language model's ``y``: not scored, and hidden
from the model (module docstring, :func:`token_batch`)."""


# --------------------------------------------------------------------------- per-entry losses


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Per-entry cross-entropy ``−log softmax(z)_y``: logits ``(N, C, ...)``, classes ``(N, ...)``.

    Written as ``log_softmax`` and ``gather`` (the same numbers as
    ``F.cross_entropy(..., reduction="none")`` for valid class indices): under
    ``vmap`` its batching rule loads in milliseconds, ``nll_loss``'s in ~0.5 s.
    """
    return -F.log_softmax(logits, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)


def squared_error(logits: Tensor, y: Tensor) -> Tensor:
    """Per-entry squared error ``(z − t)²``, summed over the classes for class labels.

    Class indices ``y`` become one-hot targets ``t`` (MSE-trained classifiers), giving
    ``Σ_c (z_c − t_c)²`` per entry; floating ``y`` is the target itself, reshaped to
    the output's shape (regression; accuracy is then reported as NaN).
    """
    if y.is_floating_point():
        return (logits - y.reshape(logits.shape).to(logits.dtype)) ** 2
    target = F.one_hot(y, logits.shape[1]).to(logits.dtype).movedim(-1, 1)
    return ((logits - target) ** 2).sum(dim=1)


def _cross_entropy_sum(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="sum")


def check_per_example(loss: Any, n: int) -> Tensor:
    """``loss`` if it holds one row per example (``(n, ...)``), else raise."""
    if not isinstance(loss, Tensor) or loss.ndim == 0 or loss.shape[0] != n:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ModeconnectError(
            f"loss: returned {shape} for a batch of {n} examples; return per-example "
            f'losses of shape ({n}, ...), e.g. with reduction="none"'
        )
    return loss


# --------------------------------------------------------------------------- scorings


class Scoring(abc.ABC):
    """How one batch is scored: model inputs and targets, per-entry losses, hits, counts.

    ``prepare(batch, index)`` turns the ``index``-th batch ``(x, y)`` into the
    ``(inputs, target)`` the model runs on and is scored against; the rest take the
    model's (selected) output and that target. Every method is a pure function of
    its arguments (and, for random masks, of a seed and ``index``), so every pass
    over the same batches scores the same entries.
    """

    name: str
    per_token: bool = False
    """Language-model scoring: results report the perplexity ``exp(mean loss)``."""

    def for_model(self, model: nn.Module) -> Scoring:
        """This scoring with what it reads from the model filled in (vocabulary, mask id)."""
        return self

    def prepare(self, batch: Any, index: int) -> Any:
        """``(inputs, target)`` for the ``index``-th batch; the default keeps the batch."""
        return batch

    def batches(self, batches: Iterable[Any]) -> Iterable[Any]:
        """``batches`` prepared lazily (re-iterable when ``batches`` is)."""
        return _Prepared(self, batches)

    @abc.abstractmethod
    def losses(self, out: Any, target: Tensor) -> Tensor:
        """Per-entry losses ``(N, ...)``; entries that are not scored give 0."""

    def summed(self, out: Any, target: Tensor) -> Tensor:
        """The loss summed over the batch (a 0-dim tensor)."""
        return self.losses(out, target).sum()

    @abc.abstractmethod
    def hits(self, out: Any, target: Tensor) -> Tensor | None:
        """Correct top-1 entries ``(N, ...)``, False where not scored; None: no accuracy."""

    @abc.abstractmethod
    def entries(self, target: Tensor) -> Tensor | float:
        """Scored entries per example, ``(N,)`` float64, or one float when all have as many."""

    @abc.abstractmethod
    def count(self, target: Tensor) -> int | Tensor:
        """Scored entries in the batch."""


class _Prepared:
    """``scoring.prepare(batch, i)`` for the ``i``-th batch, on every iteration."""

    def __init__(self, scoring: Scoring, batches: Iterable[Any]) -> None:
        self.scoring, self.source = scoring, batches

    def __iter__(self) -> Iterator[Any]:
        return (self.scoring.prepare(b, i) for i, b in enumerate(self.source))


@dataclass(frozen=True)
class ClassifierScoring(Scoring):
    """Classes on axis 1 of the output, ``y`` the targets as given (see the module docstring).

    ``loss`` gives per-entry losses; ``sum_loss``, if given, the batch sum that
    :func:`modeconnect.evaluation.evaluate` uses (``F.cross_entropy(reduction="sum")``
    for ``"ce"``), else the sum of ``loss``.
    """

    name: str
    loss: ExampleLossFn
    sum_loss: LossFn | None = None

    def batches(self, batches: Iterable[Any]) -> Iterable[Any]:
        return batches  # nothing to prepare: no wrapper, no cost per batch

    def losses(self, out: Any, target: Tensor) -> Tensor:
        return self.loss(out, target)

    def summed(self, out: Any, target: Tensor) -> Tensor:
        if self.sum_loss is not None:
            return self.sum_loss(out, target)
        return self.loss(out, target).sum()

    def hits(self, out: Any, target: Tensor) -> Tensor | None:
        return None if target.is_floating_point() else out.argmax(dim=1) == target

    def entries(self, target: Tensor) -> float:
        return float(math.prod(target.shape[1:]))

    def count(self, target: Tensor) -> int:
        return target.numel()


class _TokenScoring(Scoring):
    """Next-token or masked-token cross-entropy over the vocabulary axis (last)."""

    per_token = True

    def _logits(self, out: Any) -> Tensor:
        """The output's logits aligned with the target."""
        return out  # type: ignore[no-any-return]

    def losses(self, out: Any, target: Tensor) -> Tensor:
        logits = _check_logits(self.name, self._logits(out), target)
        valid = target != IGNORE_INDEX
        picked = logits.log_softmax(dim=-1).gather(-1, target.clamp(min=0).unsqueeze(-1))
        return torch.where(valid, -picked.squeeze(-1), 0.0)

    def hits(self, out: Any, target: Tensor) -> Tensor:
        logits = _check_logits(self.name, self._logits(out), target)
        return (logits.argmax(dim=-1) == target) & (target != IGNORE_INDEX)

    def entries(self, target: Tensor) -> Tensor:
        return (target != IGNORE_INDEX).sum(dim=1).to(torch.float64)

    def count(self, target: Tensor) -> Tensor:
        return (target != IGNORE_INDEX).sum()


@dataclass(frozen=True)
class CausalLMScoring(_TokenScoring):
    """Next-token prediction: ``logits[:, t]`` scored against ``y[:, t+1]``, ``T−1`` per sequence.

    ``ℓ_i = Σ_t −log p(y_{i,t+1} | x_{i,≤t})`` over the scored positions; the mean
    over all tokens is the per-token cross-entropy and ``exp`` of it the perplexity.
    """

    name: str = "causal_lm"

    def prepare(self, batch: Any, index: int) -> tuple[Any, Tensor]:
        ids, labels, mask = _token_batch(self.name, batch)
        if mask is None:
            return ids, labels[:, 1:]
        # A target counts where it is a token and so is its context position before it.
        counted = mask[:, 1:] & mask[:, :-1]
        return (ids, mask.long()), torch.where(counted, labels[:, 1:], IGNORE_INDEX)

    def _logits(self, out: Any) -> Tensor:
        if not isinstance(out, Tensor) or out.ndim != 3:
            return out  # type: ignore[no-any-return]  # _check_logits says what is wrong
        return out[:, :-1]


@dataclass(frozen=True)
class MaskedLMScoring(_TokenScoring):
    """BERT-style masked-token prediction, the mask drawn from ``seed`` and the batch index.

    In each sequence exactly ``max(1, round(probability · n))`` of its ``n`` scorable
    positions (neither padding nor :data:`IGNORE_INDEX`) are chosen (as BERT's
    pre-training data are made); each is replaced by ``mask_token_id`` with
    probability 0.8, by a uniform random token with 0.1, and kept with 0.1 (Devlin et
    al. 2019). Only the chosen positions are scored. The draws for the ``i``-th batch
    come from a generator seeded with ``seed`` and ``i``, so every pass (every ``α``)
    sees the same corrupted inputs.
    ``mask_token_id`` and ``vocab_size`` default to the model's
    ``config.mask_token_id`` and ``config.vocab_size`` (:meth:`for_model`).
    """

    mask_token_id: int | None = None
    vocab_size: int | None = None
    probability: float = 0.15
    seed: int = 0
    name: str = "masked_lm"

    def __post_init__(self) -> None:
        if not 0.0 < self.probability <= 1.0:
            raise ModeconnectError(
                f"masked_lm: probability={self.probability!r} is not in (0, 1]; pass e.g. 0.15"
            )

    def for_model(self, model: nn.Module) -> MaskedLMScoring:
        config = getattr(model, "config", None)
        mask = self.mask_token_id
        mask = getattr(config, "mask_token_id", None) if mask is None else mask
        vocab = self.vocab_size or getattr(config, "vocab_size", None) or _vocabulary(model)
        if mask is None:
            raise ModeconnectError(
                f"masked_lm: {type(model).__name__}'s config has no mask_token_id; pass "
                "loss=MaskedLMScoring(mask_token_id=...) with the tokenizer's mask token id"
            )
        if vocab is None:
            raise ModeconnectError(
                f"masked_lm: cannot tell {type(model).__name__}'s vocabulary size; pass "
                "loss=MaskedLMScoring(vocab_size=...)"
            )
        return replace(self, mask_token_id=int(mask), vocab_size=int(vocab))

    def prepare(self, batch: Any, index: int) -> tuple[Any, Tensor]:
        ids, labels, mask = _token_batch(self.name, batch)
        if self.mask_token_id is None or self.vocab_size is None:
            raise ModeconnectError(
                "masked_lm: the scoring has no mask_token_id or vocab_size; bind it to the "
                "model first (get_scoring(loss, model))"
            )
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + index) % 2**63)
        device = ids.device
        order = torch.rand(ids.shape, generator=gen).to(device)
        kind = torch.rand(ids.shape, generator=gen).to(device)
        random_ids = torch.randint(self.vocab_size, ids.shape, generator=gen).to(device, ids.dtype)
        scorable = labels != IGNORE_INDEX
        n = scorable.sum(dim=1)
        k = torch.where(n > 0, (n * self.probability).round().clamp(min=1), 0)
        rank = torch.where(scorable, order, 2.0).argsort(dim=1).argsort(dim=1)
        chosen = scorable & (rank < k.unsqueeze(1))
        inputs = torch.where(chosen & (kind < 0.8), self.mask_token_id, ids)
        inputs = torch.where(chosen & (kind >= 0.8) & (kind < 0.9), random_ids, inputs)
        target = torch.where(chosen, labels, IGNORE_INDEX)
        return (inputs, target) if mask is None else ((inputs, mask.long()), target)


def _vocabulary(model: nn.Module) -> int | None:
    embedding = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    return None if embedding is None else embedding.num_embeddings


def _describe(t: Any) -> str:
    if isinstance(t, Tensor):
        return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"
    return type(t).__name__


def _token_batch(where: str, batch: Any) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(ids, labels, mask)`` of a token batch ``(ids, ids | labels | None)``, checked.

    ``mask`` is ``None`` when no position is padded (:data:`PAD_LABEL`), else the
    attention mask, boolean ``(N, T)``; padded labels become :data:`IGNORE_INDEX`.
    """
    pair = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
    ids = pair[0]
    labels = pair[1] if len(pair) > 1 and pair[1] is not None else ids
    ok = isinstance(ids, Tensor) and ids.ndim == 2 and not ids.is_floating_point()
    if not (ok and isinstance(labels, Tensor) and labels.shape == ids.shape):
        raise ModeconnectError(
            f"{where}: a token batch is (ids (N, T) long, the same ids (N, T) long), got "
            f"({_describe(ids)}, {_describe(labels)}); load token data, whose targets are "
            "the ids themselves"
        )
    if labels.is_floating_point():
        raise ModeconnectError(
            f"{where}: labels are {_describe(labels)}, not token ids; pass the ids as targets"
        )
    padded = labels == PAD_LABEL
    # One check per batch: a batch without padding runs as plain ids (no mask, no copy).
    if labels is ids or not bool(padded.any()):
        return ids, labels, None
    return ids, labels.masked_fill(padded, IGNORE_INDEX), ~padded


def token_batch(
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    labels: Tensor | None = None,
    *,
    where: str = "token_batch",
) -> Batch:
    """A language-model batch ``(ids, y)`` from a tokenizer's output (module docstring).

    ``input_ids`` ``(N, T)`` integers; ``attention_mask`` ``(N, T)`` of 0/1 (integer or
    boolean; 0 at padding); ``labels`` ``(N, T)``, the ids to score or
    :data:`IGNORE_INDEX` (default: the ids). ``y`` is the labels with
    :data:`PAD_LABEL` where the mask is 0; without padding it is the labels (the ids
    themselves when none are given), so the batch runs exactly as plain ids do.
    ``where`` names the source in errors.

    >>> ids = torch.tensor([[5, 6, 7], [0, 8, 9]])
    >>> token_batch(ids, torch.tensor([[1, 1, 1], [0, 1, 1]]))[1]
    tensor([[   5,    6,    7],
            [-101,    8,    9]])
    """
    ids = _token_tensor(where, "input_ids", input_ids, None)
    if ids.ndim != 2 or ids.numel() == 0:
        raise ModeconnectError(
            f"{where}: 'input_ids' has shape {tuple(ids.shape)}; store one sequence per row, "
            "shape (N, T) with N, T >= 1"
        )
    ids = ids.long()
    y = ids
    if labels is not None:
        y = _token_tensor(where, "labels", labels, ids).long()
        bad = y[(y < 0) & (y != IGNORE_INDEX)]
        if bad.numel():
            raise ModeconnectError(
                f"{where}: 'labels' {tuple(y.shape)} hold {int(bad[0])}; labels are token ids, "
                f"or {IGNORE_INDEX} at positions not to score"
            )
    if attention_mask is None:
        return ids, y
    mask = _token_tensor(where, "attention_mask", attention_mask, ids)
    if mask.dtype != torch.bool:
        stray = mask[(mask != 0) & (mask != 1)]
        if stray.numel():
            raise ModeconnectError(
                f"{where}: 'attention_mask' {tuple(mask.shape)} holds {stray[0].item()}; a mask "
                "is 1 at a token and 0 at padding"
            )
        mask = mask != 0
    empty = (~mask.any(dim=1)).nonzero()
    if empty.numel():
        raise ModeconnectError(
            f"{where}: 'attention_mask' {tuple(mask.shape)} is all 0 in row {int(empty[0])} "
            f"({empty.numel()} of {len(mask)} rows): a sequence without tokens; drop it"
        )
    if bool(mask.all()):
        return ids, y
    return ids, y.masked_fill(~mask, PAD_LABEL)


def _token_tensor(where: str, name: str, value: Any, like: Tensor | None) -> Tensor:
    """``value``, checked: an integer tensor (a mask may be boolean) shaped like ``like``."""
    if not isinstance(value, Tensor):
        raise ModeconnectError(
            f"{where}: {name!r} is a {type(value).__name__}, not a tensor; store tensors, e.g. "
            "tokenizer(texts, padding=True, return_tensors='pt')"
        )
    mask = name == "attention_mask"
    if value.is_floating_point() or value.is_complex() or (value.dtype == torch.bool and not mask):
        kind = "0/1 as integers or booleans" if mask else "token ids as integers (torch.long)"
        raise ModeconnectError(
            f"{where}: {name!r} has dtype {str(value.dtype).removeprefix('torch.')}; store {kind}"
        )
    if like is not None and value.shape != like.shape:
        raise ModeconnectError(
            f"{where}: {name!r} has shape {tuple(value.shape)} but 'input_ids' has shape "
            f"{tuple(like.shape)}; store one value per token"
        )
    return value


def _check_logits(where: str, logits: Any, target: Tensor) -> Tensor:
    ok = isinstance(logits, Tensor) and logits.ndim == 3 and logits.shape[:2] == target.shape
    if not ok:
        raise ModeconnectError(
            f"{where}: the model returned {_describe(logits)} for targets "
            f"{tuple(target.shape)}; a language model must return logits (N, T, vocabulary)"
        )
    return logits  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- registry


LOSSES: Mapping[str, Scoring] = {
    "ce": ClassifierScoring("ce", cross_entropy, _cross_entropy_sum),
    "mse": ClassifierScoring("mse", squared_error),
    "causal_lm": CausalLMScoring(),
    "masked_lm": MaskedLMScoring(),
}
"""Scorings by name: ``loss="ce"`` (the default), ``"mse"``, ``"causal_lm"``, ``"masked_lm"``."""

LossChoice = str | Scoring | ExampleLossFn | None
"""A name of :data:`LOSSES`, a :class:`Scoring`, a per-example loss callable, or ``None`` (ce)."""


def get_scoring(loss: LossChoice = None, model: nn.Module | None = None) -> Scoring:
    """The scoring ``loss`` names (default ``"ce"``), bound to ``model`` when given.

    A callable ``loss(logits, y)`` returning per-example losses ``(N, ...)``
    (``reduction="none"``) scores a classifier (classes on axis 1).
    """
    scoring = _lookup(loss)
    return scoring if model is None else scoring.for_model(model)


def _lookup(loss: LossChoice) -> Scoring:
    if loss is None:
        return LOSSES["ce"]
    if isinstance(loss, Scoring):
        return loss
    if isinstance(loss, str):
        if loss in LOSSES:
            return LOSSES[loss]
        hint = (
            "; a 'module:callable' reference is imported by the file layer "
            "(modeconnect.commands.barrier.resolve_loss), the library takes the callable"
            if ":" in loss
            else ""
        )
        raise ModeconnectError(
            f"loss: unknown loss {loss!r}; valid names: {', '.join(sorted(LOSSES))}, or pass a "
            f'callable returning per-example losses (reduction="none"){hint}'
        )
    if callable(loss):
        return ClassifierScoring(loss_name(loss), loss)
    raise ModeconnectError(
        f"loss: {type(loss).__name__} is not a loss; pass one of {', '.join(sorted(LOSSES))} "
        "or a callable returning per-example losses"
    )


def loss_name(loss: LossChoice) -> str:
    """A printable name: the registry name, the scoring's name, or the callable's qualified name."""
    if loss is None:
        return "ce"
    if isinstance(loss, str):
        return loss
    if isinstance(loss, Scoring):
        return loss.name
    return f"{getattr(loss, '__module__', '?')}:{getattr(loss, '__qualname__', repr(loss))}"
