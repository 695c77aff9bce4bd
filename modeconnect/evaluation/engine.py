"""The forward-pass engine: scored passes over batches, for one state or many along a path.

A :class:`Pass` runs a model over batches through :func:`modeconnect.forward.over_batches`
(one :func:`torch.func.functional_call` around the whole loop, so the weights are
swapped in once per pass) and keeps, per batch or per example, the loss sum, the
top-1 hits and the scored entries, as its :class:`~modeconnect.evaluation.scoring.Scoring`
defines them. Everything stays on the device until the pass ends.

:func:`path_rows` evaluates a path ``α -> θ(α)`` on several splits: identical
states (the same tensors) once, endpoints on their own (so they equal a single
evaluation exactly), the other points ``alpha_batch`` at a time in one
:func:`torch.func.vmap` pass over stacked weights, or as a timed probe decides.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from modeconnect.errors import ModeconnectError
from modeconnect.evaluation.interpolation import PathFn
from modeconnect.evaluation.results import Metrics, perplexity
from modeconnect.evaluation.scoring import LossFn, Scoring, check_per_example
from modeconnect.forward import Binding, ModelCall, model_call, over_batches
from modeconnect.progress import ProgressFn

__all__ = [
    "MAX_ALPHA_BATCH",
    "STACK_BYTES",
    "Pass",
    "Rows",
    "auto_alpha_batch",
    "check_reiterable",
    "path_rows",
    "metrics",
]

MAX_ALPHA_BATCH = 16
"""At most this many α share one vectorised pass."""
STACK_BYTES = 256 * 2**20
"""Stacked weights of the α evaluated together stay under this many bytes."""

Rows = tuple[Tensor, Tensor, Tensor]
"""``(loss, hits, count)``: one row per batch (sums) or per example (:class:`Pass`)."""


# --------------------------------------------------------------------------- one pass


@dataclass(frozen=True, eq=False)
class Pass:
    """One scored pass of ``model`` over batches: ``(loss, hits, count)`` rows.

    With ``per_example=False`` the rows are batches: the loss summed over the batch
    (by ``sum_loss`` if given, a user's ``loss_fn(logits, y) -> scalar``, else by
    the scoring), its hits and its scored entries. With ``per_example=True`` the
    rows are examples, float64 sums over each example's entries.
    """

    model: nn.Module
    scoring: Scoring
    per_example: bool
    sum_loss: LossFn | None = None
    call: ModelCall | None = None

    @staticmethod
    def of(
        model: nn.Module, scoring: Scoring, *, per_example: bool, sum_loss: LossFn | None = None
    ) -> Pass:
        return Pass(model, scoring, per_example, sum_loss, model_call(model))

    def run(self, params: Mapping[str, Tensor], batches: Iterable[Any]) -> Rows:
        """The rows of one state; ``params`` is bound (:meth:`Binding.checked`)."""
        prepared = self.scoring.batches(batches)
        if self.per_example:
            rows = over_batches(
                self.model, params, prepared, self._example_step, call=self.call, bound=True
            )
            return self._examples(rows)
        sums = over_batches(
            self.model, params, prepared, self._batch_step, call=self.call, bound=True
        )
        return self._batches(sums)

    def run_stacked(self, states: Sequence[Mapping[str, Tensor]], batches: Iterable[Any]) -> Rows:
        """One pass for ``k`` states at once: :func:`torch.func.vmap` over stacked weights.

        Tensors shared by every state (the same object) are passed once, unbatched.
        Outputs gain a leading dimension ``k``. Small models gain most: one ``bmm``
        replaces ``k`` small matrix products and their per-call overhead. Random
        draws (masked-LM masks) are the same for every state (``randomness="same"``).
        """
        shared = {k: v for k, v in states[0].items() if all(s[k] is v for s in states)}
        stacked = {k: torch.stack([s[k] for s in states]) for k in states[0] if k not in shared}

        def one(params: dict[str, Tensor]) -> Rows:
            return self.run({**shared, **params}, batches)

        out: Rows = torch.func.vmap(one, randomness="same")(stacked)
        return out

    # Per batch only the model, the loss and the argmax run; reductions and casts
    # happen once at the end (per-batch ones cost ~40 % on a tiny MLP).

    def _batch_step(self, out: Any, batch: Any) -> tuple[Tensor, Tensor, int | Tensor, int]:
        target = batch[1]
        summed = self.sum_loss(out, target) if self.sum_loss else self.scoring.summed(out, target)
        hits = self.scoring.hits(out, target)
        found = hits.sum() if hits is not None else torch.tensor(math.nan)
        return _check_summed(summed), found, self.scoring.count(target), target.shape[0]

    def _example_step(self, out: Any, batch: Any) -> tuple[Tensor, Tensor | None, Tensor | float]:
        target = batch[1]
        loss = check_per_example(self.scoring.losses(out, target), target.shape[0])
        return loss, self.scoring.hits(out, target), self.scoring.entries(target)

    @staticmethod
    def _batches(rows: Sequence[tuple[Tensor, Tensor, int | Tensor, int]]) -> Rows:
        _check_nonempty(sum(r[3] for r in rows))
        counts = [r[2] for r in rows]
        if all(isinstance(c, int) for c in counts):
            count = torch.tensor(counts)
        else:
            count = torch.stack([torch.as_tensor(c) for c in counts])
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]), count

    @staticmethod
    def _examples(rows: Sequence[tuple[Tensor, Tensor | None, Tensor | float]]) -> Rows:
        sizes = [r[0].shape[0] for r in rows]
        _check_nonempty(sum(sizes))
        losses = [r[0] for r in rows]
        count = _entry_counts([r[2] for r in rows], sizes, losses[0].device)
        return _per_row_sums(losses, count), _per_row_sums([r[1] for r in rows], count), count


def _check_nonempty(examples: int) -> None:
    if examples == 0:
        raise ModeconnectError(
            "evaluate: no examples to evaluate, `batches` is empty; pass some (x, y) batches"
        )


def _check_summed(loss: Any) -> Tensor:
    if not isinstance(loss, Tensor) or loss.ndim != 0:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ModeconnectError(
            f"evaluate: loss_fn returned {shape}, not a 0-dim tensor; return the loss summed "
            'over the batch (reduction="sum")'
        )
    return loss


def _entry_counts(
    entries: Sequence[Tensor | float], sizes: Sequence[int], device: torch.device
) -> Tensor:
    """Entries per example ``(N,)`` float64 from each batch's (a float: the same for all)."""
    same = {e for e in entries if isinstance(e, float)}
    if len(same) == 1 and all(isinstance(e, float) for e in entries):
        return torch.full((sum(sizes),), same.pop(), dtype=torch.float64, device=device)
    parts = [
        e.to(device) if isinstance(e, Tensor) else torch.full((n,), e, dtype=torch.float64)
        for e, n in zip(entries, sizes, strict=True)
    ]
    return torch.cat(parts).to(device)


def _per_row_sums(parts: Sequence[Tensor | None], count: Tensor) -> Tensor:
    """Concatenate per-batch ``(N_b, ...)`` tensors into float64 sums per example ``(N,)``.

    ``None`` parts (no accuracy for regression targets) make the result NaN.
    """
    tensors = [p for p in parts if p is not None]
    if len(tensors) < len(parts):
        return torch.full_like(count, math.nan)
    if all(p.ndim == 1 for p in tensors):
        return torch.cat(tensors).to(torch.float64)
    return torch.cat([p.reshape(len(p), -1).to(torch.float64).sum(dim=1) for p in tensors])


def metrics(rows: Rows, per_token: bool = False) -> Metrics:
    """Mean loss and accuracy (and perplexity, per token) from the rows of one pass."""
    loss, hits, count = rows
    total = int(count.sum())
    if total == 0:
        raise ModeconnectError(
            "evaluate: the batches hold no scored entry (every label is ignored); pass "
            "batches with targets to score"
        )
    # Per-batch sums are in the model's dtype; the sum over batches is in float64.
    mean = loss.to(torch.float64).sum().item() / total
    return Metrics(
        loss=mean,
        accuracy=hits.sum().item() / total,
        perplexity=perplexity(mean) if per_token else None,
    )


# --------------------------------------------------------------------------- paths


def auto_alpha_batch(model: nn.Module) -> int:
    """The most ``α`` one vectorised pass may stack when the caller does not say.

    ``1`` for models with convolutions: ``vmap`` turns a convolution into a grouped
    one, measured 1.2-1.7x slower on CPU (``benchmarks/bench_evaluate.py``).
    Otherwise :data:`MAX_ALPHA_BATCH`, fewer if the stacked weights would exceed
    :data:`STACK_BYTES`; :func:`path_rows` then times one chunk both ways and
    keeps vectorising only if it pays (it does when per-batch overhead dominates:
    small models, small batches; see :data:`_PROBE_SIZE`).
    """
    if any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules()):
        return 1
    tensors = [*model.parameters(), *model.buffers()]
    size = sum(t.numel() * t.element_size() for t in tensors)
    return max(1, min(MAX_ALPHA_BATCH, STACK_BYTES // max(size, 1)))


_VMAP_GAIN = 0.8
"""Vectorising is kept when it costs less than this fraction of one-by-one per state."""
_PROBE_SIZE = 8
"""States in the probe chunk: one alone, seven stacked. Per state, against one alone, on a
2-core CPU: a 64-64-10 MLP at batch 32 took 0.74 / 0.43 / 0.34 of the time stacking
3 / 8 / 16 α with per-example losses and 1.25 / 0.63 / 0.45 with summed ones (slower
``nll_loss`` batching rule); a 784-512-512-10 MLP at batch 500 took 1.05-1.15. Seven
stacked tell them apart; a wrong guess costs under one extra pass."""
_COMPUTE_BOUND = 2e-3
"""Seconds per batch above which a pass is compute-bound and stacking α is not tried
(the 64-64-10 MLP above took 0.06 ms per batch, the 784-512-512-10 one 5 ms)."""


def path_rows(
    runner: Pass,
    path: PathFn,
    alphas: Sequence[float],
    splits: Mapping[str, Iterable[Any]],
    alpha_batch: int | None,
    progress: ProgressFn | None,
    task: str,
) -> dict[str, list[Rows]]:
    """Raw pass rows for every ``α`` and split (the caller sets eval mode, no_grad).

    Endpoints (α = 0, 1) run alone; the other points in chunks of ``k``. With
    ``alpha_batch=None`` the first chunk is a probe (:data:`_PROBE_SIZE` distinct
    states): one alone, the rest stacked, timed; later chunks use the faster way.
    """
    if not splits:
        raise ModeconnectError(
            "evaluate: no data to evaluate; pass at least one split of (x, y) batches"
        )
    for batches in splits.values():
        check_reiterable(batches, len(alphas))
    binding = Binding.of(runner.model)
    k = auto_alpha_batch(runner.model) if alpha_batch is None else _check_alpha_batch(alpha_batch)
    probing = alpha_batch is None and k > 1
    inner = [i for i, t in enumerate(alphas) if t not in (0.0, 1.0)]
    chunks = [[i] for i, t in enumerate(alphas) if t in (0.0, 1.0)]
    out: dict[str, dict[int, Rows]] = {name: {} for name in splits}
    pos = done = 0
    while chunks or pos < len(inner):
        if chunks:
            idx = chunks.pop(0)
        else:
            size = min(k, _PROBE_SIZE) if probing else k
            idx, pos = inner[pos : pos + size], pos + size
        states = [binding.checked(path(alphas[i])) for i in idx]
        for name, batches in splits.items():
            if probing and _distinct(states) >= 3:
                rows, faster = _probe(runner, states, batches)
                probing, k = False, k if faster else 1
            else:
                rows, worked = _evaluate_chunk(runner, states, batches, k > 1)
                k = k if worked else 1
            out[name].update(zip(idx, rows, strict=True))
        del states  # before the next chunk is built: one chunk of models alive at a time
        done += len(idx)
        if progress is not None:
            progress(task, done, len(alphas))
    return {name: [rows[i] for i in range(len(alphas))] for name, rows in out.items()}


def check_reiterable(batches: Iterable[Any], passes: int) -> None:
    """Raise if ``batches`` is a one-shot iterator but ``passes > 1`` passes are needed."""
    if passes > 1 and iter(batches) is batches:
        raise ModeconnectError(
            "evaluate: batches is a one-shot iterator but a curve needs one pass per alpha; "
            "pass a list of (x, y) batches or a DataLoader"
        )


def _check_alpha_batch(alpha_batch: int) -> int:
    if isinstance(alpha_batch, bool) or not isinstance(alpha_batch, int) or alpha_batch < 1:
        raise ModeconnectError(
            f"evaluate: alpha_batch={alpha_batch!r} must be a positive int or None; pass one"
        )
    return alpha_batch


def _distinct(states: Sequence[dict[str, Tensor]]) -> int:
    return len({tuple(map(id, s.values())) for s in states})


def _batch_count(batches: Iterable[Any]) -> int | None:
    try:
        return len(batches) if isinstance(batches, Sized) else None
    except TypeError:  # a DataLoader over an IterableDataset has no length
        return None


def _probe(
    runner: Pass, states: Sequence[dict[str, Tensor]], batches: Iterable[Any]
) -> tuple[list[Rows], bool]:
    """Evaluate ``states[0]`` alone and the rest stacked; is stacking faster per state?

    A pass slower than :data:`_COMPUTE_BOUND` seconds per batch is compute-bound:
    stacking cannot pay, so the rest run one by one and nothing is spent on trying.
    """
    start = time.perf_counter()
    first, _ = _evaluate_chunk(runner, states[:1], batches, False)
    float(first[0][0][-1])  # synchronise (GPU) before reading the clock
    single = time.perf_counter() - start
    count = _batch_count(batches)
    if count is not None and single > _COMPUTE_BOUND * max(count, 1):
        rest, _ = _evaluate_chunk(runner, states[1:], batches, False)
        return first + rest, False
    middle = time.perf_counter()
    rest, worked = _evaluate_chunk(runner, states[1:], batches, True)
    float(rest[-1][0][-1])
    per_state = (time.perf_counter() - middle) / (len(states) - 1)
    return first + rest, worked and per_state < _VMAP_GAIN * single


def _evaluate_chunk(
    runner: Pass, states: Sequence[dict[str, Tensor]], batches: Iterable[Any], vectorise: bool
) -> tuple[list[Rows], bool]:
    """Evaluate each state once per distinct set of tensors; ``vmap`` several when asked.

    Returns the rows in ``states`` order and whether vectorisation worked (``False``
    tells the caller to stop trying: ``vmap`` cannot batch every model).
    """
    keys = [tuple(map(id, s.values())) for s in states]
    index: dict[tuple[int, ...], int] = {}
    distinct: list[dict[str, Tensor]] = []
    for key, state in zip(keys, states, strict=True):
        if key not in index:
            index[key] = len(distinct)
            distinct.append(state)
    rows: list[Rows] | None = None
    worked = True
    if vectorise and len(distinct) > 1:
        try:
            loss, hits, count = runner.run_stacked(distinct, batches)
            rows = [(loss[j], hits[j], count[j]) for j in range(len(distinct))]
        except ModeconnectError:
            raise
        except Exception:  # data-dependent control flow, in-place updates, unsupported ops
            worked = False
    if rows is None:
        rows = [runner.run(s, batches) for s in distinct]
    return [rows[index[key]] for key in keys], worked
