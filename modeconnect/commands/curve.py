"""``curve`` on files: a low-loss curve between two checkpoints, its bends, JSON and report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modeconnect.bn import bn_batches, bn_correction
from modeconnect.commands.barrier import resolve_loss, symmetry_option
from modeconnect.commands.options import CurveOptions
from modeconnect.commands.results import FileReport, count_examples, open_study, write_study
from modeconnect.commands.session import Session
from modeconnect.curve_fitting import CurveStudy, curve_study, get_curve
from modeconnect.errors import ModeconnectError
from modeconnect.io.report import CURVE_PLOTS, curve_sections
from modeconnect.io.targets import Fill
from modeconnect.matching import method_options

__all__ = ["curve_files"]


def curve_files(
    a_path: str | Path,
    b_path: str | Path,
    options: CurveOptions | None = None,
    **keywords: Any,
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
    o = CurveOptions.build(options, keywords)
    method = None if o.align in (None, "none") else str(o.align)
    _check_options(o.steps, o.bends, o.bend, method, o.aligned)
    get_curve(o.curve, o.bends)
    class_labels = o.loss in (None, "ce")
    outputs: list[tuple[str, str | Path | None, str]] = [
        (f"--bend #{i + 1}" if len(o.bend) > 1 else "--bend", p, "checkpoint")
        for i, p in enumerate(o.bend)
    ]
    outputs += [("--aligned", o.aligned, "checkpoint"), ("--json", o.json_path, "json"),
                ("--report", o.report_dir, "report")]  # fmt: skip
    session = open_study(
        [a_path, b_path], o, outputs=outputs, plots=CURVE_PLOTS, class_labels=class_labels,
        train_labels=class_labels,
    )  # fmt: skip
    bn_correction(session.model, o.bn, session.train, where="curve")  # refused before training
    if o.aligned is not None:  # refused before training too
        session.require_writable(session.checkpoints[1],
                                 o.symmetry != "permutation" or method == "learned")  # fmt: skip
    (a, b), train_data, test_data = session.state_dicts, session.train, session.data
    seeded = {"seed": o.seed} if method is not None else {}  # without a method, none is given
    chosen = method_options(method, {**seeded, **(o.align_options or {})})
    under = symmetry_option(o.symmetry, method, "--align", o.head_maps)
    with session.timings.phase("study"):
        study = curve_study(
            session.model, a, b, train=train_data or [],
            test=test_data or [], kind=o.curve, bends=o.bends, align=method,
            align_options={**chosen, "permute_output": o.permute_output, "inputs": session.probe,
                           **under},  # fmt: skip
            epochs=o.epochs, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
            batch_size=o.inputs.batch_size, seed=o.seed, steps=o.steps, definition=o.definition,
            bn=o.bn, loss=resolve_loss(o.loss, session),
            max_bn_batches=bn_batches(o.max_bn_batches, o.inputs.batch_size),
            progress=o.run.progress, points_per_pass=o.run.points_per_pass,
        )  # fmt: skip
    report = FileReport(
        {"a": str(a_path), "b": str(b_path)}, session.model_ref, session.model_kwargs, study,
        {"test": count_examples(test_data or []), "train": count_examples(train_data or [])},
        o.run.command,
    )  # fmt: skip
    files = _checkpoints(session, study, o.bend, o.aligned, a_path, b_path)
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
        session.check_written(session.state_dicts[1], study.alignment.aligned, cb,
                              study.alignment.symmetry is not None)  # fmt: skip
        role = {**meta, "modeconnect.role": "b aligned to a"}
        writer = session.checkpoint_writer(path, study.alignment.aligned, like=cb, metadata=role)
        files["aligned"] = (path, writer)
    return files
