"""Study 4: curves connect even unaligned endpoints (Garipov et al. 2018; Draxler et al. 2018).

Garipov et al. (2018) and Draxler et al. (2018) found that independently trained
networks, whose straight line crosses a high barrier, are joined by simple curves
(a quadratic Bezier curve, a polygonal chain with one bend) along which train
loss and test error stay almost constant, without any alignment. Here: the
shipped pair (``checkpoints/mlp_a.pt``, ``mlp_b.pt``: 3x512 MLPs on the 8x8
digits, different seeds), a Bezier curve and a polygonal chain fitted with
:func:`modeconnect.curve_fitting.curve_study` on the training split (SGD, one ``t`` per
step), and the same after weight matching; ``lerp`` barriers of the line and the
curve on the test and train splits (25 points), and the loss plane through A, B
and the Bezier bend (Garipov et al., Fig. 1) with both paths drawn.
Run from the repository root (about a minute on one core)::

    python examples/science_curves.py --out runs/science/curves
"""

from __future__ import annotations

from typing import Any

from science_common import ROOT, digits, main, table

import modeconnect as mc
from modeconnect.curve_fitting import CurveStudy, curve_study
from modeconnect.evaluation import linear_path
from modeconnect.figures import curve_figure, surface_figure
from modeconnect.landscape import plane_grid

FULL: dict[str, Any] = {"epochs": 50, "lr": 0.05, "batch_size": 64, "resolution": 21,
        "runs": [("bezier", None), ("polychain", None), ("bezier", "weight")]}  # fmt: skip
QUICK: dict[str, Any] = {
    "epochs": 5,
    "lr": 0.05,
    "batch_size": 64,
    "resolution": 7,
    "runs": [("bezier", None)],
}


def row(name: str, study: CurveStudy, path: str) -> dict[str, Any]:
    results = getattr(study, path)
    test, train = results["test"], results["train"]
    return {
        "run": name,
        "path": path,
        "test_loss_barrier": test.barriers["lerp"].loss,
        "test_error_barrier": test.barriers["lerp"].error,
        "train_loss_barrier": train.barriers["lerp"].loss,
        "max_test_error": max(test.curve.errors),
        "mid_test_accuracy": test.midpoint.accuracy,
    }


def run(quick: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    config = QUICK if quick else FULL
    a, b = mc.load(ROOT / "checkpoints/mlp_a.pt"), mc.load(ROOT / "checkpoints/mlp_b.pt")
    model = mc.resolve_model([a, b]).model
    train_data, test_data = digits("train"), digits("test")
    rows, figures, fits = [], {}, {}
    for kind, align in config["runs"]:
        name = f"{kind}{' aligned' if align else ''}"
        study = curve_study(
            model, a.state_dict, b.state_dict, train=train_data, test=test_data, kind=kind,
            align=align, epochs=config["epochs"], lr=config["lr"],
            batch_size=config["batch_size"], seed=0,
        )  # fmt: skip
        rows += [row(name, study, "line"), row(name, study, "curve")]
        figures[f"curve_{name.replace(' ', '_')}"] = curve_figure(study)
        fits[name] = study
    bez = fits["bezier"]
    plane = plane_grid(
        model, a.state_dict, b.state_dict, bez.fit.bends[0], train_data,
        resolution=config["resolution"], names=("A", "B", "bend"), path_steps=41,
        paths={"line": linear_path(a.state_dict, b.state_dict), "curve": bez.fit.path()},
    )  # fmt: skip
    figures["curve_plane"] = surface_figure(
        plane, title="Train loss on the plane through A, B and the Bezier bend"
    )
    record = {
        "study": "curves",
        "config": config,
        "seeds": [0],
        "rows": rows,
        "fits": {name: s.to_dict() for name, s in fits.items()},
        "plane": plane.to_dict(),
    }
    return record, figures


def report(record: dict[str, Any]) -> str:
    return table(
        [[r["run"], r["path"], f"{r['test_loss_barrier']:.4f}", f"{r['test_error_barrier']:.2%}",
          f"{r['train_loss_barrier']:.4f}", f"{r['max_test_error']:.2%}",
          f"{r['mid_test_accuracy']:.2%}"] for r in record["rows"]],
        ["run", "path", "test loss barrier", "test error barrier", "train loss barrier",
         "max test error", "test acc at t=0.5"],
    )  # fmt: skip


if __name__ == "__main__":
    main(__doc__, "curves", run, report)
