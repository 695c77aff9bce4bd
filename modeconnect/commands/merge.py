"""``merge`` on files: N checkpoints in, their aligned (weighted) average out.

Hugging Face directories stay on disk (lazy checkpoints): the merge reads each tensor
when it needs it, weight matching keeps at most one model's worth of similarity
products (``max_bytes``), and the output is a ``save_pretrained`` directory written
one shard at a time (``--out DIR``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from modeconnect.bn import reset_batchnorm
from modeconnect.commands.barrier import symmetry_option
from modeconnect.commands.options import MergeOptions
from modeconnect.commands.results import FileReport
from modeconnect.commands.session import Session, open_session, parse_dtype
from modeconnect.devices import moved_batches, resolve_device
from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import Metrics, evaluate
from modeconnect.evaluation.interpolation import placed
from modeconnect.fusion.core import FusionResult
from modeconnect.fusion.declared import FUSION_NAMES
from modeconnect.io.checkpoints import (
    Checkpoint,
    check_same_architecture,
    check_state_dict,
    in_model_dtypes,
    json_writer,
    load_checkpoint,
)
from modeconnect.io.data import Batch
from modeconnect.io.hf import model_bytes
from modeconnect.matching import method_options
from modeconnect.merging import (
    DEFAULT_MAX_ROUNDS,
    NO_ALIGNMENT,
    MergeResult,
    Reference,
    check_merge_options,
    merge,
    normalize_weights,
    weighted_average,
)

__all__ = ["MergeReport", "merge_files"]


@dataclass(frozen=True, kw_only=True)
class MergeReport(FileReport[MergeResult | FusionResult]):
    """Everything ``modeconnect merge`` computed and wrote: the :class:`FileReport` of a
    :class:`~modeconnect.merging.MergeResult`, with the metrics when there was data.

    ``inputs`` holds each input's metrics on ``--data``; ``plain`` the metrics of
    the unaligned weighted average (for comparison); ``merged`` the output's.
    """

    inputs: tuple[Metrics, ...] | None = None
    plain: Metrics | None = None
    merged: Metrics | None = None

    @property
    def sources(self) -> tuple[Path, ...]:
        """The merged checkpoints, in order."""
        return tuple(Path(p) for p in self.files["sources"])

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"merge": self.result.to_dict()}
        if self.inputs is not None:
            out["metrics"] = {
                "inputs": [_metrics(m) for m in self.inputs],
                "plain_average": None if self.plain is None else _metrics(self.plain),
                "merged": None if self.merged is None else _metrics(self.merged),
            }
        return out


def _metrics(m: Metrics) -> dict[str, float]:
    out = {"loss": m.loss, "accuracy": m.accuracy}
    if m.perplexity is not None:
        out["perplexity"] = m.perplexity
    return out


def merge_files(
    paths: Sequence[str | Path],
    options: MergeOptions | None = None,
    **keywords: Any,
) -> MergeReport:
    """Load N checkpoints, merge them, evaluate on ``data``, and write the merged checkpoint.

    ``train`` (default ``data``) feeds activation statistics and ``bn="reset"``;
    ``data`` is evaluated (each input, the plain average and the merge). Every check
    (output paths, files, architecture, keys, shapes, finite values, weights, method)
    runs before any work; the outputs are written together, after the merge and its
    guard have passed, in the first checkpoint's dtypes. The metadata lists the
    sources, weights, method, reference and MergeMany rounds, and names the model so
    the merge loads back without ``--model``. ``device`` runs the similarity products
    and the evaluation, in ``dtype``; ``block_size`` cuts text data for a language
    model; ``progress(task, done, total)`` hears of groups matched and shards written.
    """
    o = MergeOptions.build(options, keywords)
    if o.method in FUSION_NAMES or o.width is not None:
        raise ModeconnectError(
            f"merge: --width and the fusion methods ({', '.join(FUSION_NAMES)}) run through "
            f"modeconnect.commands.fuse.fuse_files; method {o.method!r} keeps every width"
        )
    if len(paths) < 2:
        raise ModeconnectError(
            f"merge: needs at least two checkpoints, got {len(paths)}; pass more checkpoints"
        )
    w = normalize_weights(o.weights, len(paths))
    stats_source = o.inputs.train if o.inputs.train is not None else o.inputs.data
    check_merge_options(o.method, o.bn, stats_source is not None, o.method_options)
    where, eval_dtype = resolve_device(o.run.device), parse_dtype(o.run.dtype)
    session = open_session(
        paths, o,
        extra_inputs=[o.reference],
        seed=int(o.method_options.get("seed") or 0),
        outputs=[("--out", o.out, "checkpoint"), ("--json", o.json_path, "json")],
    )  # fmt: skip
    ref_ckpt, ref = _load_reference(o.reference, session)
    stats = session.train if session.train is not None else session.data
    sources = session.paths
    given = dict(o.method_options)
    rounds = given.pop("max_rounds", DEFAULT_MAX_ROUNDS)
    seed = given.pop("seed", 0)
    chosen = method_options(o.method, given) if o.method != NO_ALIGNMENT else {}
    if session.lazy and o.method == "weight":  # bounded similarity, products on the device
        chosen.update(max_bytes=model_bytes(session.state_dicts[0]), device=where)
    if o.run.progress is not None and o.method == "weight":
        chosen["progress"] = o.run.progress
    under: dict[str, Any] = symmetry_option(
        o.symmetry, None if o.method == NO_ALIGNMENT else o.method, "--method", o.head_maps
    )
    with session.timings.phase("merge"):
        result = merge(
            session.model, session.state_dicts, weights=w, method=o.method, reference=ref,
            data=stats, inputs=session.probe, bn=o.bn, permute_output=o.permute_output,
            labels=[str(p) for p in sources], max_rounds=rounds, seed=seed,
            **under, **chosen,
        )  # fmt: skip
    report = MergeReport(
        files={"sources": [str(p) for p in sources]}, model_ref=session.model_ref,
        model_kwargs=session.model_kwargs, result=result, command=o.run.command,
    )  # fmt: skip
    if session.data is not None:
        with session.timings.phase("evaluation"):
            report = _with_metrics(report, session, stats, _Evaluation(where, eval_dtype))
    plan = session.outputs
    written = {"out": plan.path("--out")}
    if "--json" in plan:
        written["json"] = plan.path("--json")
    meta = _metadata(sources, result, o.reference)
    with session.timings.phase("writes"), plan.writing() as staging:
        like = session.checkpoints[0]
        staging.write(
            written["out"],
            session.checkpoint_writer(
                written["out"], result.state_dict, like=like, metadata=meta, progress=o.run.progress
            ),
        )
        if "--json" in plan:
            staging.write(written["json"], json_writer(replace(report, written=written).to_dict()))
    return replace(report, written=written, timings=session.timings.to_dict())


def _load_reference(
    reference: str | Path | None, session: Session
) -> tuple[Checkpoint | None, Reference]:
    """An input named as ``--reference`` becomes its index; another file, its state dict."""
    if reference is None:
        return None, None
    path = Path(reference)
    for j, c in enumerate(session.checkpoints):
        if path.exists() and path.resolve() == c.path.resolve():
            return None, j
    ckpt = load_checkpoint(path)
    check_state_dict(session.model, ckpt)
    check_same_architecture(session.checkpoints[0], ckpt)
    ckpt = in_model_dtypes(session.model, ckpt)
    return ckpt, ckpt.state_dict


@dataclass(frozen=True)
class _Evaluation:
    """Where and in which dtype models are evaluated (the model's own buffers moved along)."""

    device: torch.device
    dtype: torch.dtype | None

    def __call__(
        self, session: Session, state_dict: Mapping[str, Tensor], batches: Iterable[Batch]
    ) -> Metrics:
        net = session.model
        if self.device.type == "cpu" and self.dtype is None:
            return evaluate(net, state_dict, batches, loss=session.scoring)
        moved = placed(net, state_dict, device=self.device, dtype=self.dtype)
        on_device = moved_batches(batches, self.device, self.dtype)
        return evaluate(net, moved, on_device, loss=session.scoring)


def _with_metrics(
    report: MergeReport,
    session: Session,
    stats: Iterable[Batch] | None,
    run: _Evaluation,
) -> MergeReport:
    res, net, sds, batches = report.result, session.model, session.state_dicts, session.data or []
    inputs = tuple(run(session, sd, batches) for sd in sds)
    merged = run(session, res.state_dict, batches)
    plain = None
    if res.method != NO_ALIGNMENT:
        average = weighted_average(sds, res.weights)
        if res.bn == "reset" and stats is not None:
            average = dict(reset_batchnorm(net, average, stats))
        plain = run(session, average, batches)
    return replace(report, inputs=inputs, plain=plain, merged=merged)


def _metadata(
    sources: Sequence[Path], result: MergeResult, reference: str | Path | None
) -> dict[str, str]:
    return {
        "modeconnect.role": "merged",
        "modeconnect.sources": json.dumps([str(p) for p in sources]),
        "modeconnect.weights": json.dumps(list(result.weights)),
        "modeconnect.method": result.method,
        "modeconnect.reference": str(reference) if reference is not None else result.reference,
        "modeconnect.iterations": str(result.rounds),
        "modeconnect.bn": result.bn,
    }
