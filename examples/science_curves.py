"""Study 4: curves connect even unaligned endpoints (Garipov et al. 2018; Draxler et al. 2018).

Garipov et al. (2018) and Draxler et al. (2018) found that independently trained
networks, whose straight line crosses a high barrier, are joined by simple curves
(a quadratic Bezier curve, a polygonal chain with one bend) along which train
loss and test error stay almost constant, without any alignment. Here: three
pairs of 3x512 MLPs on the 8x8 digits, seeds (1, 2), (3, 4), (5, 6), trained with the
recipe of the shipped pair (``checkpoints/make_checkpoints.py``: 20 epochs, learning
rate 0.1, batch 32); per pair a Bezier curve and a polygonal chain fitted with
:func:`modeconnect.curve_fitting.curve_study` on the training split (SGD, one ``t`` per
step), and the same after weight matching; ``lerp`` barriers of the line and the
curve on the test and train splits (25 points), mean ± sample standard deviation over
the pairs, and for the first pair the loss plane through A, B and the Bezier bend
(Garipov et al., Fig. 1) with both paths drawn. ``--quick`` uses the shipped pair
(``checkpoints/mlp_a.pt``, ``mlp_b.pt``) and the Bezier curve only.
Run from the repository root (a few minutes on one core)::

    python examples/science_curves.py --out runs/science/curves
"""

from __future__ import annotations

from typing import Any

from science_common import MLP_RECIPE, ROOT, digits, main, mlp_pair, pm, summarise_pairs, table

import modeconnect as mc
from modeconnect.curve_fitting import CurveStudy, curve_study
from modeconnect.evaluation import linear_path
from modeconnect.figures import curve_figure, surface_figure
from modeconnect.landscape import plane_grid

HIDDEN = [512, 512, 512]  # the endpoints: trained with the shipped pair's recipe
FULL: dict[str, Any] = {"epochs": 50, "lr": 0.05, "batch_size": 64, "resolution": 21,
        "runs": [("bezier", None), ("polychain", None), ("bezier", "weight")],
        "pairs": [(1, 2), (3, 4), (5, 6)],
        "endpoints": {"hidden": HIDDEN, **MLP_RECIPE}}  # fmt: skip
QUICK: dict[str, Any] = {
    "pairs": ["shipped"],
    "epochs": 5,
    "lr": 0.05,
    "batch_size": 64,
    "resolution": 7,
    "runs": [("bezier", None)],
}


def row(name: str, study: CurveStudy, path: str, seeds: list[int]) -> dict[str, Any]:
    results = getattr(study, path)
    test, train = results["test"], results["train"]
    errors = test.curve.errors
    return {
        "run": name,
        "path": path,
        "seeds": seeds,
        "worst_endpoint_test_error": max(errors[0], errors[-1]),
        "test_loss_barrier": test.barriers["lerp"].loss,
        "test_error_barrier": test.barriers["lerp"].error,
        "train_loss_barrier": train.barriers["lerp"].loss,
        "max_test_error": max(test.curve.errors),
        "mid_test_accuracy": test.midpoint.accuracy,
    }


def run(quick: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    config = QUICK if quick else FULL
    model = mc.resolve_model([mc.load(ROOT / "checkpoints/mlp_a.pt")]).model
    train_data, test_data = digits("train"), digits("test")
    rows: list[dict[str, Any]] = []
    figures: dict[str, Any] = {}
    seeds: list[int] = []
    for index, pair in enumerate(config["pairs"]):
        pair_seeds, a, b = mlp_pair(pair, HIDDEN)
        seeds += pair_seeds
        fits = {}
        for kind, align in config["runs"]:
            name = f"{kind}{' aligned' if align else ''}"
            study = curve_study(
                model, a, b, train=train_data, test=test_data, kind=kind,
                align=align, epochs=config["epochs"], lr=config["lr"],
                batch_size=config["batch_size"], seed=0,
            )  # fmt: skip
            rows += [row(name, study, "line", pair_seeds), row(name, study, "curve", pair_seeds)]
            fits[name] = study
        if index == 0:  # the figures and the stored fits: the first pair
            first = fits
            for name, study in fits.items():
                figures[f"curve_{name.replace(' ', '_')}"] = curve_figure(study)
            plane = plane_grid(
                model, a, b, fits["bezier"].fit.bends[0], train_data,
                resolution=config["resolution"], names=("A", "B", "bend"), path_steps=41,
                paths={"line": linear_path(a, b), "curve": fits["bezier"].fit.path()},
            )  # fmt: skip
    figures["curve_plane"] = surface_figure(
        plane, title="Train loss on the plane through A, B and the Bezier bend"
    )
    record = {
        "study": "curves",
        "config": config,
        "seeds": seeds,
        "rows": rows,
        "summary": summarise_pairs(rows, ["run", "path"]),
        "fits": {name: s.to_dict() for name, s in first.items()},
        "plane": plane.to_dict(),
    }
    return record, figures


def report(record: dict[str, Any]) -> str:
    """The mean ± sample standard deviation over the pairs, per run and path."""
    return table(
        [[r["run"], r["path"], r["pairs"], pm(r, "test_loss_barrier", ".4f"),
          pm(r, "test_error_barrier", ".2%"), pm(r, "train_loss_barrier", ".4f"),
          pm(r, "max_test_error", ".2%"), pm(r, "mid_test_accuracy", ".2%")]
         for r in record["summary"]],
        ["run", "path", "pairs", "test loss barrier", "test error barrier",
         "train loss barrier", "max test error", "test acc at t=0.5"],
    )  # fmt: skip


if __name__ == "__main__":
    main(__doc__, "curves", run, report)
