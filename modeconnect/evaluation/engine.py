"""The forward-pass engine: scored passes over batches, for one state or many along a path.

A :class:`Pass` runs a model over batches through :func:`modeconnect.forward.over_batches`
(the weights are swapped in once per pass; eval-mode BatchNorm layers folded into the
layer feeding them, :mod:`modeconnect.evaluation.folding`) and keeps, per batch or per
example, the loss sum, the top-1 hits and the scored entries, as its
:class:`~modeconnect.evaluation.scoring.Scoring` defines them. Everything stays on the
device until the pass ends.

:func:`path_rows` evaluates a path ``α -> θ(α)`` on several splits: identical
states (the same tensors) once, endpoints on their own (so they equal a single
evaluation exactly), the other points ``alpha_batch`` at a time in one
:func:`torch.func.vmap` pass over stacked weights. :func:`point_rows` is the same
for any set of points (planes, landscape grids): the one batched evaluation path.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from modeconnect.distributed import Cluster, map_chunks
from modeconnect.errors import ModeconnectError
from modeconnect.evaluation.folding import agree, folding_target
from modeconnect.evaluation.interpolation import PathFn
from modeconnect.evaluation.results import Metrics, perplexity
from modeconnect.evaluation.scoring import LossFn, Scoring, check_per_example
from modeconnect.forward import (
    Binding,
    ModelCall,
    batch_inputs,
    eval_mode,
    model_call,
    over_batches,
)
from modeconnect.progress import ProgressFn

__all__ = [
    "MAX_ALPHA_BATCH",
    "SMALL_PASS",
    "STACK_BYTES",
    "CorrectedPath",
    "Pass",
    "Rows",
    "auto_alpha_batch",
    "check_reiterable",
    "corrected_path",
    "path_rows",
    "metrics",
    "point_rows",
    "points_per_pass",
    "vmap_agrees",
]

VMAP_FALLBACK_NOTE = "There is a performance drop because we have not yet implemented the batching"
"""The start of torch's warning for an op ``vmap`` runs one point at a time (scaled dot-product
attention on the CPU, for one): a note to torch's developers, silenced in stacked passes."""

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
    rows are examples, float64 sums over each example's entries. An eval-mode
    BatchNorm that reads only a Conv/Linear layer's output runs folded into it
    (:func:`~modeconnect.evaluation.folding.folding_target`, checked once per model).
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
        model, params = folding_target(self.model, self.call, params, prepared, batches)
        if self.per_example:
            rows = over_batches(model, params, prepared, self._example_step, call=self.call,
                                bound=True)  # fmt: skip
            return self._examples(rows)
        sums = over_batches(model, params, prepared, self._batch_step, call=self.call, bound=True)
        return self._batches(sums)

    def run_stacked(self, states: Sequence[Mapping[str, Tensor]], batches: Iterable[Any]) -> Rows:
        """One pass for ``k`` states at once: :func:`torch.func.vmap` over stacked weights.

        Tensors shared by every state (the same object) are passed once, unbatched.
        Outputs gain a leading dimension ``k``. Small models gain most: one ``bmm``
        replaces ``k`` small matrix products and their per-call overhead. Random
        draws (masked-LM masks) are the same for every state (``randomness="same"``).
        """
        # Decide the BatchNorm fold on plain tensors, before the vmapped passes use it.
        folding_target(self.model, self.call, states[0], self.scoring.batches(batches), batches)
        shared = {k: v for k, v in states[0].items() if all(s[k] is v for s in states)}
        stacked = {k: torch.stack([s[k] for s in states]) for k in states[0] if k not in shared}

        def one(params: dict[str, Tensor]) -> Rows:
            return self.run({**shared, **params}, batches)

        with warnings.catch_warnings():  # torch's note on ops it loops over: not the user's
            warnings.filterwarnings("ignore", message=VMAP_FALLBACK_NOTE, category=UserWarning)
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
        whole = tensors[0] if len(tensors) == 1 else torch.cat(tensors)
        return whole.to(torch.float64)
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
    """The most points one vectorised pass may stack, from the memory budget.

    ``1`` for models with convolutions: ``vmap`` turns a convolution into a grouped
    one, measured 1.2-1.7x slower on CPU (``benchmarks/bench_evaluate.py``).
    Otherwise :data:`MAX_ALPHA_BATCH`, fewer if the stacked weights would exceed
    :data:`STACK_BYTES`.
    """
    if any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules()):
        return 1
    tensors = [*model.parameters(), *model.buffers()]
    size = sum(t.numel() * t.element_size() for t in tensors)
    return max(1, min(MAX_ALPHA_BATCH, STACK_BYTES // max(size, 1)))


SMALL_PASS = 4e6
"""Multiply-adds per batch (weights × rows) below which stacking points pays. Per point,
against one alone, on a 2-core CPU: a 64-64-10 MLP at batch 32 (1.5e5) took 0.34-0.45
of the time stacking 16 points; a 784-512-512-10 MLP at batch 500 (3.4e8) 1.05-1.15,
where the pass is compute-bound and one larger GEMM gains nothing."""


def points_per_pass(model: nn.Module, batches: Iterable[Any]) -> int:
    """How many points one pass evaluates when the caller does not say: a rule, not a clock.

    :func:`auto_alpha_batch`'s memory bound where one batch is small work (weights ×
    rows under :data:`SMALL_PASS`: per-call overhead dominates and one ``bmm``
    replaces many small products), else ``1`` (compute-bound: the FLOP floor is
    reached point by point). The choice depends on the model and the data only, so
    results never depend on timing.
    """
    k = auto_alpha_batch(model)
    first = next(iter(batches), None)
    if k == 1 or first is None:
        return 1
    inputs = batch_inputs(first)
    x = inputs[0] if inputs and isinstance(inputs[0], Tensor) else None
    if x is None or x.ndim == 0:
        return 1
    rows = x.numel() // x.shape[-1] if x.is_floating_point() and x.ndim > 1 else x.numel()
    weights = sum(p.numel() for p in model.parameters())
    return k if weights * rows < SMALL_PASS else 1


def path_rows(
    runner: Pass,
    path: PathFn,
    alphas: Sequence[float],
    splits: Mapping[str, Iterable[Any]],
    alpha_batch: int | None,
    progress: ProgressFn | None,
    task: str,
    cluster: Cluster | None = None,
) -> dict[str, list[Rows]]:
    """Raw pass rows for every ``α`` and split (the caller sets eval mode, no_grad).

    Endpoints (α = 0, 1) run alone; the other points in chunks of ``k``
    (:func:`point_rows`, on ``cluster`` if given). ``path`` may be a
    :class:`CorrectedPath`, whose correction then runs for a whole chunk at once.
    """
    alone = [i for i, t in enumerate(alphas) if t in (0.0, 1.0)]
    if isinstance(path, CorrectedPath):
        corrected = path

        def build(idx: Sequence[int]) -> list[Mapping[str, Tensor]]:
            return corrected.build([alphas[i] for i in idx])
    else:

        def build(idx: Sequence[int]) -> list[Mapping[str, Tensor]]:
            return [path(alphas[i]) for i in idx]

    return point_rows(
        runner, build, len(alphas), splits, alpha_batch, progress, task, alone, cluster
    )


@dataclass(frozen=True, eq=False)
class CorrectedPath:
    """``α -> correct(path(α), α)``, whose correction can also run for many points at once.

    ``correct_many(states, alphas)`` (a BatchNorm reset of several states in one pass
    over the training data, :func:`modeconnect.bn.reset_batchnorm_many`) must return
    what ``correct`` returns for each, to float tolerance; without it the points are
    corrected one by one.
    """

    path: PathFn
    correct: Callable[[Mapping[str, Tensor], float], Mapping[str, Tensor]]
    correct_many: (
        Callable[[Sequence[Mapping[str, Tensor]], Sequence[float]], list[Mapping[str, Tensor]]]
        | None
    ) = None

    def __call__(self, alpha: float) -> Mapping[str, Tensor]:
        return self.correct(self.path(alpha), alpha)

    def build(self, alphas: Sequence[float]) -> list[Mapping[str, Tensor]]:
        """The corrected states at ``alphas``: together when there are several and it can."""
        if len(alphas) > 1 and self.correct_many is not None:
            return self.correct_many([self.path(t) for t in alphas], alphas)
        return [self(t) for t in alphas]


def corrected_path(path: PathFn, correct: Callable[..., Mapping[str, Tensor]]) -> CorrectedPath:
    """``α -> correct(path(α), α)`` as a :class:`CorrectedPath`, batched where ``correct``
    has a ``many(states, alphas)`` method (:class:`modeconnect.bn.BatchNormReset`)."""
    return CorrectedPath(path, correct, getattr(correct, "many", None))


def point_rows(
    runner: Pass,
    build: Callable[[Sequence[int]], Sequence[Mapping[str, Tensor]]],
    count: int,
    splits: Mapping[str, Iterable[Any]],
    k_given: int | None,
    progress: ProgressFn | None,
    task: str,
    alone: Sequence[int] = (),
    cluster: Cluster | None = None,
) -> dict[str, list[Rows]]:
    """Raw pass rows of ``count`` parameter points on every split: the one batched path.

    ``build(indices)`` returns the states of those points (a line, a trained curve,
    a plane, a grid); each chunk of points is built, evaluated on every split and
    dropped before the next, so one chunk of models is alive at a time. Points in
    ``alone`` run on their own (endpoints, so they equal a single evaluation exactly).
    The others run ``k`` at a time in one :func:`torch.func.vmap` pass over stacked
    weights: ``k = k_given`` if given (``--points-per-pass``), else
    :func:`points_per_pass` (a memory budget and a rule for when stacking pays).
    Before the first stacked pass on a model, :func:`vmap_agrees` checks on one batch
    that the stacked pass equals the per-point one; where it does not (or ``vmap``
    raises), every point runs alone. On a ``cluster`` the same chunks run as Ray tasks,
    several chunks per task (:func:`~modeconnect.distributed.map_chunks`: the model,
    the data and ``build`` travel once), so the rows are those of the local run.
    """
    if not splits:
        raise ModeconnectError(
            "evaluate: no data to evaluate; pass at least one split of (x, y) batches"
        )
    for batches in splits.values():
        check_reiterable(batches, count)
    if k_given is None:
        k = points_per_pass(runner.model, next(iter(splits.values())))
    else:
        k = _check_alpha_batch(k_given)
    single = set(alone)
    inner = [i for i in range(count) if i not in single]
    chunks = [[i] for i in range(count) if i in single]
    chunks += [inner[i : i + k] for i in range(0, len(inner), k)]
    out: dict[str, dict[int, Rows]] = {name: {} for name in splits}
    if cluster is None:
        _chunk_rows(runner, build, chunks, splits, k, out, progress, task, count)
    else:
        per_task = max(1, -(-len(chunks) // (4 * (cluster.workers or 4))))
        tasks = [chunks[i : i + per_task] for i in range(0, len(chunks), per_task)]
        parts = map_chunks(
            _task_rows, (runner, build, dict(splits), k), tasks, cluster=cluster,
            sizes=[sum(map(len, t)) for t in tasks], progress=progress, task=task,
        )  # fmt: skip
        for part in parts:
            for name, rows in part.items():
                out[name].update(rows)
    return {name: [rows[i] for i in range(count)] for name, rows in out.items()}


def _chunk_rows(
    runner: Pass,
    build: Callable[[Sequence[int]], Sequence[Mapping[str, Tensor]]],
    chunks: Sequence[Sequence[int]],
    splits: Mapping[str, Iterable[Any]],
    k: int,
    out: dict[str, dict[int, Rows]],
    progress: ProgressFn | None = None,
    task: str = "",
    count: int = 0,
) -> None:
    """Evaluate ``chunks`` of points in order into ``out``: :func:`point_rows`' loop."""
    binding = Binding.of(runner.model)
    checked: set[tuple[str, ...]] = set()  # key sets that fit the model: checked once
    aliases = _has_aliases(binding)

    def bound(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        keys = tuple(state)
        if keys not in checked:
            binding.check(state)
            checked.add(keys)
        if not aliases and type(state) is dict:
            return state  # a checked state without tied names is its own binding
        return binding.bind(state)

    done = 0
    for idx in chunks:
        states = [bound(s) for s in build(idx)]
        for name, batches in splits.items():
            if len(idx) > 1 and _distinct(states) > 1 and not vmap_agrees(runner, states, batches):
                k = 1
            rows, worked = _evaluate_chunk(runner, states, batches, k > 1)
            k = k if worked else 1
            out[name].update(zip(idx, rows, strict=True))
        del states  # before the next chunk is built: one chunk of models alive at a time
        done += len(idx)
        if progress is not None:
            progress(task, done, count)


def _has_aliases(binding: Binding) -> bool:
    """Whether some tensor of the model goes by several names (tied weights), which
    :meth:`Binding.bind` fills in; without any, a checked state dict is used as it is."""
    return any(len(names) > 1 for names in binding.groups)


def _task_rows(
    shared: tuple[Any, ...], chunks: Sequence[Sequence[int]]
) -> dict[str, dict[int, Rows]]:
    """One Ray task of :func:`point_rows`: its chunks through the local loop, in eval mode."""
    runner, build, splits, k = shared
    out: dict[str, dict[int, Rows]] = {name: {} for name in splits}
    with eval_mode(runner.model), torch.no_grad():
        _chunk_rows(runner, build, chunks, splits, k, out)
    return out


_AGREES: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()
"""Per model: whether a stacked pass equals the per-point one (:func:`vmap_agrees`)."""


def vmap_agrees(
    runner: Pass, states: Sequence[Mapping[str, Tensor]], batches: Iterable[Any]
) -> bool:
    """Whether evaluating ``states[:2]`` stacked equals evaluating each alone, on one batch.

    The test that decides, once per model, between the batched path and the per-point
    one: a model ``vmap`` cannot run raises, and one it runs differently (a forward
    that reads its weights outside the reach of :func:`modeconnect.forward.swapped`)
    gives other losses; both fall back to one point per pass. Losses must agree to 256
    units in the last place of the model's dtype (at most 10 %), relative to their size.
    """
    known = _AGREES.get(runner.model)
    if known is not None:
        return known
    first = next(iter(batches), None)
    distinct = list({tuple(map(id, s.values())): s for s in states}.values())[:2]
    if first is None or len(distinct) < 2:
        return True
    dtype = next((t.dtype for t in distinct[0].values() if t.is_floating_point()), torch.float32)
    try:
        stacked = runner.run_stacked(distinct, [first])
        alone = [runner.run(s, [first]) for s in distinct]
        # Losses and counts; hits may flip at a near-tie of the argmax, legitimately.
        agrees = all(
            agree(stacked[r][j], alone[j][r], dtype) for j in range(len(distinct)) for r in (0, 2)
        )
    except ModeconnectError:
        raise
    except Exception:  # data-dependent control flow, in-place updates, unsupported ops
        agrees = False
    _AGREES[runner.model] = agrees
    return agrees


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
