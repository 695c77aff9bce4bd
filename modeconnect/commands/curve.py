"""``curve`` on files: a low-loss curve between two checkpoints, its bends, JSON and report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from modeconnect.commands.barrier import resolve_loss
from modeconnect.commands.results import FileReport, count_examples, open_study, write_study
from modeconnect.commands.session import Session
from modeconnect.curve_fitting import CurveStudy, curve_study, get_curve
from modeconnect.errors import ModeconnectError
from modeconnect.evaluation import ExampleLossFn
from modeconnect.io.references import NO_TRUST, Trust
from modeconnect.io.report import CURVE_PLOTS, curve_sections
from modeconnect.io.targets import Fill
from modeconnect.matching import method_options
from modeconnect.objective import bn_correction
from modeconnect.progress import ProgressFn
from modeconnect.timing import Timings

__all__ = ["curve_files"]


def curve_files(
    a_path: str | Path,
    b_path: str | Path,
    *,
    train: str,
    data: str,
    curve: str = "bezier",
    bends: int = 1,
    align: str | None = None,
    align_options: Mapping[str, Any] | None = None,
    epochs: int = 20,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    batch_size: int = 128,
    seed: int = 0,
    steps: int = 25,
    definition: str = "lerp",
    bn: str = "auto",
    max_bn_batches: int | None = None,
    loss: str | ExampleLossFn | None = "ce",
    bend: Sequence[str | Path] = (),
    aligned: str | Path | None = None,
    json_path: str | Path | None = None,
    report_dir: str | Path | None = None,
    model: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    trust: Trust = NO_TRUST,
    input_shape: Sequence[int] | None = None,
    input_dtype: str | torch.dtype | None = None,
    permute_output: bool = False,
    command: str | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
    timings: Timings | None = None,
) -> FileReport[CurveStudy]:
    """Load A, B and the data, run :func:`~modeconnect.curve_fitting.curve_study`, write the
    results.

    The curve (``curve`` with ``bends`` bends) is trained on ``train`` (SGD batches of
    ``batch_size``; the same size batches the evaluation) and evaluated with the line
    on ``data`` and ``train``. ``align`` (a method name; ``None``/``"none"``: B as it
    is) first permutes B into A's basis with ``align_options``. Outputs: ``bend``, one
    checkpoint per bend (in A's dtypes, naming the architecture, so they load back as
    models); ``aligned``, aligned B (needs ``align``); ``json_path``; ``report_dir``
    (``curve.png`` and ``report.html``). Every option and output is checked before
    the training starts.
    """
    method = None if align in (None, "none") else str(align)
    _check_options(steps, bends, bend, method, aligned)
    get_curve(curve, bends)
    class_labels = loss in (None, "ce")
    outputs: list[tuple[str, str | Path | None, str]] = [
        (f"--bend #{i + 1}" if len(bend) > 1 else "--bend", p, "checkpoint")
        for i, p in enumerate(bend)
    ]
    outputs += [("--aligned", aligned, "checkpoint"), ("--json", json_path, "json"),
                ("--report", report_dir, "report")]  # fmt: skip
    session = open_study(
        [a_path, b_path], outputs=outputs, plots=CURVE_PLOTS, force=force, model=model,
        model_kwargs=model_kwargs, trust=trust, data=data, train=train, batch_size=batch_size,
        input_shape=input_shape, input_dtype=input_dtype, class_labels=class_labels,
        train_labels=class_labels, timings=timings,
    )  # fmt: skip
    bn_correction(session.model, bn, session.train, where="curve")  # refused before training
    (ca, cb), train_data, test_data = session.checkpoints, session.train, session.data
    seeded = {"seed": seed} if method is not None else {}  # without a method, none is given
    chosen = method_options(method, {**seeded, **(align_options or {})})
    with session.timings.phase("study"):
        study = curve_study(
            session.model, ca.state_dict, cb.state_dict, train=train_data or [],
            test=test_data or [], kind=curve, bends=bends, align=method,
            align_options={**chosen, "permute_output": permute_output, "inputs": session.probe},
            epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
            batch_size=batch_size, seed=seed, steps=steps, definition=definition, bn=bn,
            loss=resolve_loss(loss, session), max_bn_batches=max_bn_batches, progress=progress,
        )  # fmt: skip
    report = FileReport(
        {"a": str(a_path), "b": str(b_path)}, session.model_ref, session.model_kwargs, study,
        {"test": count_examples(test_data or []), "train": count_examples(train_data or [])},
        command,
    )  # fmt: skip
    files = _checkpoints(session, study, bend, aligned, a_path, b_path)
    return write_study(session, report, title="Curve report", sections=curve_sections, files=files)


def _check_options(
    steps: int,
    bends: int,
    bend: Sequence[str | Path],
    method: str | None,
    aligned: str | Path | None,
) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 3 or steps % 2 == 0:
        raise ModeconnectError(
            f"curve: --steps {steps!r} is not an odd number >= 3; pass one (e.g. 25), so that "
            "t = 0.5 is evaluated"
        )
    if bend and len(bend) != bends:
        raise ModeconnectError(
            f"curve: {len(bend)} --bend files for a curve with {bends} bends; pass --bend once "
            "per bend, in order"
        )
    if aligned is not None and method is None:
        raise ModeconnectError(
            "curve: --aligned writes B aligned to A, but no alignment was asked for; "
            "pass --align METHOD (e.g. weight) or drop --aligned"
        )


def _checkpoints(
    session: Session,
    study: CurveStudy,
    bend: Sequence[str | Path],
    aligned: str | Path | None,
    a_path: str | Path,
    b_path: str | Path,
) -> dict[str, tuple[Path, Fill]]:
    """The bends (in A's stored dtypes) and aligned B (in B's), with what they are."""
    (ca, cb), fit = session.checkpoints, study.fit
    method = study.alignment.alignment.method if study.alignment is not None else "none"
    meta = {
        "modeconnect.source_a": str(a_path),
        "modeconnect.source_b": str(b_path),
        "modeconnect.method": method,
    }
    files: dict[str, tuple[Path, Fill]] = {}
    for i, path in enumerate(map(Path, bend)):  # none, or one per bend (checked)
        name = "bend" if len(bend) == 1 else f"bend_{i + 1}"
        role = {**meta, "modeconnect.role": "curve bend", "modeconnect.curve": fit.curve.name,
                "modeconnect.bend": f"{i + 1}/{fit.curve.bends}",
                "modeconnect.seed": str(fit.params["seed"])}  # fmt: skip
        files[name] = (path, session.checkpoint_writer(path, fit.bends[i], like=ca, metadata=role))
    if aligned is not None and study.alignment is not None:
        path = Path(aligned)
        role = {**meta, "modeconnect.role": "b aligned to a"}
        writer = session.checkpoint_writer(path, study.alignment.aligned, like=cb, metadata=role)
        files["aligned"] = (path, writer)
    return files
