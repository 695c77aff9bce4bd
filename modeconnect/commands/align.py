"""``align`` on files: two checkpoints in, aligned B, the merge and a JSON report out.

Checkpoints read from Hugging Face directories stay on disk and go through the same
pipeline as checkpoints in memory (:func:`modeconnect.alignment.align`,
:func:`~modeconnect.alignment.compare_interpolations`): aligned B is a view of B, curve
points are built one at a time, so at most one float32 model is in memory besides the
matching's working memory; the outputs (``--out DIR``, ``--merged DIR``) are
``save_pretrained`` directories written one shard at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from modeconnect.alignment import AlignResult, CurvePair, align, compare_interpolations, merge_pair
from modeconnect.bn import check_mode, renormalize
from modeconnect.commands.barrier import symmetry_option
from modeconnect.commands.options import AlignOptions
from modeconnect.commands.results import FileReport
from modeconnect.commands.session import Session, open_session, parse_dtype
from modeconnect.devices import resolve_device
from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import Barrier, Curve, barrier_values
from modeconnect.guard import Equivalence
from modeconnect.io.checkpoints import json_writer
from modeconnect.io.hf import model_bytes
from modeconnect.io.spec_cache import cached_spec, forget_cached, with_untrusted_spec
from modeconnect.io.targets import Fill
from modeconnect.matching import method_options
from modeconnect.progress import ProgressFn
from modeconnect.spec import PermutationSpec
from modeconnect.views import Lerped

__all__ = ["AlignReport", "align_files"]


@dataclass(frozen=True, kw_only=True)
class AlignReport(FileReport[AlignResult]):
    """Everything ``modeconnect align`` computed and wrote: the :class:`FileReport` of an
    :class:`~modeconnect.alignment.AlignResult`, with the curves and the merge weight."""

    curves: CurvePair | None = None
    alpha: float = 0.5
    written_equivalence: Equivalence | None = None
    """The guard on aligned B as ``--out`` holds it, rounded to B's stored dtypes
    (:meth:`~modeconnect.commands.session.Session.check_written`); ``None``: nothing rounded."""

    def body(self) -> dict[str, Any]:
        res = self.result
        out: dict[str, Any] = {
            "alignment": res.alignment.to_dict(),
            "equivalence": res.equivalence.to_dict(),
            **(
                {"equivalence_written": self.written_equivalence.to_dict()}
                if self.written_equivalence is not None
                else {}
            ),  # fmt: skip
            "spec": {
                "groups": len(res.spec.groups),
                "units": sum(g.size for g in res.spec.groups.values()),
                "fixed_axes": len(res.spec.fixed),
            },
            "alpha": self.alpha,
        }
        if res.symmetry is not None:
            out["symmetry"] = dict(res.symmetry)
        if self.curves is not None:
            c = self.curves
            for name, bar, curve in (("naive", c.naive_barrier, c.naive),
                                     ("aligned", c.aligned_barrier, c.aligned)):  # fmt: skip
                out[name] = {"barrier": {**bar.to_dict(), **_perplexity_barrier(curve, bar)},
                             "curve": curve.to_dict()}  # fmt: skip
        return out


def _perplexity_barrier(curve: Curve, bar: Barrier) -> dict[str, float]:
    """A language model's barrier in perplexity (same definition), or nothing."""
    ppl = [p.perplexity for p in curve.points]
    if any(v is None for v in ppl):
        return {}
    values = torch.tensor(ppl, dtype=torch.float64)
    return {"perplexity": float(barrier_values(curve.alphas, values, bar.definition))}


def align_files(
    a_path: str | Path,
    b_path: str | Path,
    options: AlignOptions | None = None,
    **keywords: Any,
) -> AlignReport:
    """Load two checkpoints, align B to A, evaluate on ``data``, and write the outputs asked for.

    ``data`` is the evaluation split (curves and barriers); ``train`` the training split
    (activation statistics, ``bn``; default ``data``). ``options`` go to the method
    (:func:`~modeconnect.matching.method_options`). Outputs are checked before any
    work and written together only after the equivalence guard has passed; aligned B
    keeps B's stored dtypes, the merge A's. ``device`` and ``dtype`` are the
    evaluation's (checkpoints read from directories; ``block_size``: tokens per
    example of text data); ``progress(task, done, total)`` hears of groups matched,
    curve points and shards written.
    """
    o = AlignOptions.build(options, keywords)
    if not 0.0 <= o.alpha <= 1.0:
        raise ModeconnectError(f"--alpha: must lie in [0, 1], got {o.alpha}; pass the weight of B")
    where, eval_dtype = resolve_device(o.run.device), parse_dtype(o.run.dtype)
    session = open_session(
        [a_path, b_path], o,
        seed=int(o.method_options.get("seed") or 0),
        outputs=[("--out", o.out, "checkpoint"), ("--merged", o.merged, "checkpoint"),
                 ("--json", o.json_path, "json")],
    )  # fmt: skip
    net, (ca, cb), clock = session.model, session.checkpoints, session.timings
    values_change = o.symmetry != "permutation" or o.method == "learned"
    if "--out" in session.outputs:
        session.require_writable(cb, values_change)
    stats = session.train if session.train is not None else session.data
    check_mode(net, o.bn, session.train)
    opts = method_options(o.method, o.method_options)
    probe = tuple(x[:2] for x in session.probe)
    products = where if session.lazy or where.type != "cpu" else None  # the similarity's
    under: dict[str, Any] = symmetry_option(o.symmetry, o.method, "--method", o.head_maps)

    def matched(spec: PermutationSpec) -> AlignResult:
        with clock.phase("matching + guard"):
            return align(
                net, ca.state_dict, cb.state_dict, method=o.method, inputs=session.probe,
                data=stats, spec=spec, progress=o.run.progress,
                max_bytes=model_bytes(cb.state_dict), device=products, loss=session.scoring,
                **under, **opts,
            )  # fmt: skip

    # A cached spec is untrusted input: if the guard refuses it, it is derived again, once.
    result = with_untrusted_spec(
        matched,
        lambda: cached_spec(net, probe, permute_output=o.permute_output),
        lambda: forget_cached(net, probe, permute_output=o.permute_output),
        clock,
    )
    rounded = None  # before the evaluation: --out in a coarser dtype may be refused
    if "--out" in session.outputs:
        with clock.phase("matching + guard"):
            rounded = session.check_written(cb.state_dict, result.aligned, cb, values_change)
    curves = None
    if session.data is not None:
        with clock.phase("evaluation"):
            curves = _curves(session, result, o.steps, where, eval_dtype, o.run.progress)
    meta = {
        "modeconnect.source_a": str(a_path),
        "modeconnect.source_b": str(b_path),
        "modeconnect.method": o.method,
    }
    plan = session.outputs
    written: dict[str, Path] = {}
    writes: dict[str, Fill] = {}
    if "--out" in plan:
        written["out"] = plan.path("--out")
        role = {**meta, "modeconnect.role": "b aligned to a"}
        writes["out"] = session.checkpoint_writer(
            written["out"], result.aligned, like=cb, metadata=role, progress=o.run.progress
        )
    if "--merged" in plan:
        with clock.phase("merge"):
            mixed: Mapping[str, torch.Tensor]
            if session.lazy and o.method != "ot" and o.bn == "none":  # computed as it is written
                start = result.start(ca.state_dict)
                mixed, role_name = Lerped(start, result.aligned, o.alpha), "merged"
            else:
                mixed, role_name = merge_pair(
                    net, ca.state_dict, cb.state_dict, result, o.alpha, o.method, stats, opts
                )
                mixed = renormalize(
                    net, result.start(ca.state_dict), result.aligned, dict(mixed), session.train,
                    mode=o.bn, alpha=o.alpha,
                )  # fmt: skip
        written["merged"] = plan.path("--merged")
        info = {**meta, "modeconnect.alpha": str(o.alpha), "modeconnect.role": role_name,
                "modeconnect.bn": o.bn}  # fmt: skip
        writes["merged"] = session.checkpoint_writer(
            written["merged"], mixed, like=ca, metadata=info, progress=o.run.progress
        )
    if "--json" in plan:
        written["json"] = plan.path("--json")
    report = AlignReport(
        files={"a": str(a_path), "b": str(b_path)}, model_ref=session.model_ref,
        model_kwargs=session.model_kwargs, result=result, command=o.run.command,
        written=written, curves=curves, alpha=o.alpha, written_equivalence=rounded,
    )  # fmt: skip
    if "--json" in plan:
        writes["json"] = json_writer(report.to_dict())
    with clock.phase("writes"), plan.writing() as staging:
        for name, fill in writes.items():
            staging.write(written[name], fill)
    return replace(report, timings=clock.to_dict())


def _curves(
    session: Session,
    result: AlignResult,
    steps: int,
    device: torch.device,
    dtype: torch.dtype | None,
    progress: ProgressFn | None,
) -> CurvePair:
    """Naive and aligned curves, evaluated where and in what dtype the user chose (one
    point at a time for checkpoints on disk or another device or dtype)."""
    (ca, cb), data = session.checkpoints, session.data or []
    elsewhere = device.type != "cpu" or dtype is not None
    return compare_interpolations(
        session.model, ca.state_dict, cb.state_dict, result.aligned, data, steps=steps,
        loss=session.scoring, progress=progress, dtype=dtype,
        device=device if elsewhere else None, start=result.start(ca.state_dict),
    )  # fmt: skip
