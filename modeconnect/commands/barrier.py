"""``barrier`` on files: a barrier study of two checkpoints, written as JSON and a report."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from modeconnect.alignment import SYMMETRIES
from modeconnect.barrier_studies import Study, barrier_study
from modeconnect.bn import bn_batches
from modeconnect.commands.options import BarrierOptions
from modeconnect.commands.results import FileReport
from modeconnect.commands.session import Session, open_session
from modeconnect.distributed import cluster_from
from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import ExampleLossFn, Scoring
from modeconnect.io.checkpoints import json_writer
from modeconnect.io.data import Batch
from modeconnect.io.references import import_callable
from modeconnect.io.report import stage_report
from modeconnect.matching import method_options
from modeconnect.symmetry.align import HEAD_MAPS

__all__ = ["StudyReport", "barrier_files", "resolve_loss"]


class StudyReport(FileReport[Study]):
    """What ``modeconnect barrier`` computed and wrote: the :class:`FileReport` of a
    :class:`~modeconnect.barrier_studies.Study`, whose parts keep their 0.2.0 names."""

    @property
    def study(self) -> Study:
        return self.result


def resolve_loss(
    loss: str | ExampleLossFn | Scoring | None, session: Session | None = None
) -> str | ExampleLossFn | Scoring | None:
    """The loss a command evaluates with: ``loss`` as the user named it, made to fit the model.

    For a language model read from a directory (``session.scoring`` set), the default
    (``None`` or ``"ce"``: cross-entropy) and the name of its own scoring are that
    scoring (next-token cross-entropy for a causal LM, masked-token for a masked LM,
    :func:`~modeconnect.commands.session.open_session`); a library :class:`Scoring` is used
    as given, and anything else (``"mse"``, the other kind's scoring, a callable of
    classifier outputs) is refused with one line: it cannot fit logits
    ``(N, T, vocabulary)``. Otherwise a ``"module:callable"`` loss is imported (the user
    typed it) and any error it raises on the model's outputs becomes one line naming
    it and the shapes; names and callables pass as given.
    """
    if session is not None and session.scoring is not None:
        return _language_loss(loss, session)
    if isinstance(loss, str) and ":" in loss:
        return _reported(loss, import_callable(loss))
    return loss


def _language_loss(loss: str | ExampleLossFn | Scoring | None, session: Session) -> Scoring:
    scoring: Scoring = session.scoring
    if loss in (None, "ce", scoring.name):
        return scoring
    if isinstance(loss, Scoring):
        return loss
    kind = session.language.kind if session.language is not None else "language"
    name = loss if isinstance(loss, str) else getattr(loss, "__qualname__", type(loss).__name__)
    raise ModeconnectError(
        f"--loss {name}: cannot score {session.paths[0]}, a {kind} language model "
        f"({session.model_ref}) whose outputs are logits (N, T, vocabulary) over token ids; "
        f"leave --loss out (or pass --loss {scoring.name}) to score it by its {scoring.name} "
        "cross-entropy"
    )


def symmetry_option(
    symmetry: str, method: str | None, flag: str = "--align", head_maps: str = "orthogonal"
) -> dict[str, str]:
    """The ``symmetry`` keyword of the study's alignment: none for permutations (today's
    call, unchanged); an error for an unknown name or a larger symmetry without ``--align``.
    ``head_maps`` other than the default needs ``full`` and goes with it.

    >>> symmetry_option("permutation", None), symmetry_option("full", "weight")
    ({}, {'symmetry': 'full'})
    >>> symmetry_option("full", "weight", head_maps="least-squares")
    {'symmetry': 'full', 'head_maps': 'least-squares'}
    """
    if head_maps != "orthogonal":
        if head_maps not in HEAD_MAPS:
            raise ModeconnectError(
                f"--head-maps: unknown {head_maps!r}; choose one of {', '.join(HEAD_MAPS)}"
            )
        if symmetry != "full":
            raise ModeconnectError(
                f"--head-maps {head_maps}: maps attention heads under --symmetry full only; "
                "pass --symmetry full or leave --head-maps out"
            )
    if symmetry not in SYMMETRIES:
        raise ModeconnectError(
            f"--symmetry: unknown {symmetry!r}; choose one of {', '.join(SYMMETRIES)}"
        )
    if symmetry == "permutation":
        return {}
    if method is None:
        raise ModeconnectError(
            f"--symmetry {symmetry}: needs an alignment; pass {flag} METHOD (e.g. weight)"
        )
    heads = {"head_maps": head_maps} if head_maps != "orthogonal" else {}
    return {"symmetry": symmetry, **heads}


def _reported(ref: str, fn: Any) -> ExampleLossFn:
    """``fn``, with any error it raises (outputs it cannot take) as one line naming ``ref``."""
    if not callable(fn):
        raise ModeconnectError(
            f"--loss {ref}: is a {type(fn).__name__}, not a callable; pass a function "
            "loss(outputs, targets) returning per-example losses"
        )

    @functools.wraps(fn)
    def loss(out: Any, target: Any) -> Any:
        try:
            return fn(out, target)
        except ModeconnectError:
            raise
        except Exception as exc:
            raise ModeconnectError(
                f"--loss {ref}: raised {type(exc).__name__} ({' '.join(str(exc).split())[:200]}) "
                f"on the model's outputs {_shape(out)} and targets {_shape(target)}; the loss "
                'must take (outputs, targets) and return per-example losses (reduction="none")'
            ) from exc

    return loss


def _shape(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    return type(value).__name__


def barrier_files(
    a_path: str | Path,
    b_path: str | Path,
    options: BarrierOptions | None = None,
    **keywords: Any,
) -> StudyReport:
    """Load two checkpoints and the data, run :func:`~modeconnect.barrier_study`, write the
    results.

    ``align`` names the alignment method (``None`` or ``"none"``: the naive path only)
    and ``align_options`` its options (one the method does not take raises);
    ``options`` go to the study (``bn``, ``steps``, ``definition``, ``layerwise``,
    ``layer_groups``, ``bootstrap``, ``seed``, ``max_bn_batches``: by default the whole
    batches holding at most :data:`~modeconnect.choices.DEFAULT_BN_EXAMPLES` examples,
    ``"all"`` for every batch; :func:`~modeconnect.bn.bn_batches`). Outputs are checked
    before any work and written together at the end.
    """
    o = BarrierOptions.build(options, keywords)
    cluster = cluster_from(o.ray, o.workers)
    class_labels = o.loss in (None, "ce")
    session = open_session(
        [a_path, b_path], o, class_labels=class_labels, train_labels=class_labels,
        outputs=[("--report", o.report_dir, "report"), ("--json", o.json_path, "json")],
        place=True,
    )  # fmt: skip
    (a, b), clock = session.state_dicts, session.timings
    method = None if o.align in (None, "none") else o.align
    chosen = method_options(method, o.align_options or {})  # no method: no option may be given
    study_align = {**chosen, "permute_output": o.permute_output, "inputs": session.probe,
                   **symmetry_option(o.symmetry, method, head_maps=o.head_maps)}  # fmt: skip
    with clock.phase("study"):
        study = barrier_study(
            session.model, a, b, test=session.data or [],
            train=session.train, align=method, align_options=study_align, progress=o.run.progress,
            loss=resolve_loss(o.loss, session) or "ce", alpha_batch=o.run.points_per_pass,
            cluster=cluster, **{**o.study, "max_bn_batches": bn_batches(
                o.study.get("max_bn_batches"), o.inputs.batch_size)},
        )  # fmt: skip
    examples = {"test": _count(session.data or [])}
    if session.train is not None:
        examples["train"] = _count(session.train)
    inputs = {"a": str(a_path), "b": str(b_path)}
    report = StudyReport(
        inputs, session.model_ref, session.model_kwargs, study, examples, o.run.command
    )
    plan = session.outputs
    written: dict[str, Path] = {}
    with clock.phase("writes"), plan.writing() as staging:
        if "--report" in plan:
            files = stage_report(
                staging, study, plan.path("--report"), command=o.run.command, meta=report.to_dict()
            )
            written.update(
                {"report": files.html, **{f"plot_{k}": v for k, v in files.plots.items()}}
            )
        if "--json" in plan:
            written["json"] = plan.path("--json")
            staging.write(written["json"], json_writer(replace(report, written=written).to_dict()))
    return replace(report, written=written, timings=clock.to_dict())


def _count(batches: Iterable[Batch]) -> int:
    return sum(len(y) for _, y in batches)
