"""ServerApp: AlignedFedAvg over the SuperNodes, evaluated centrally on the test set.

With ``method = "none"`` in the run config the same App runs plain FedAvg, so the
two can be compared on the same engine. With ``result-dir`` set, the ServerApp
writes ``result.json`` (settings, accuracy and aggregation time per round) and
``final.pt`` (the final global model as a modeconnect checkpoint) there.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

import modeconnect as mc
from digits_app.task import IN_FEATURES, MODEL_REF, Settings, build_model, load_digits_split
from modeconnect.evaluation import evaluate
from modeconnect.integrations.flower import AlignedFedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    torch.set_num_threads(1)
    settings = Settings.from_run_config(context.run_config)
    torch.manual_seed(settings.seed)
    model = build_model(settings.hidden)
    spec = mc.derive_spec(model, (torch.zeros(2, IN_FEATURES),))  # once, not every round
    strategy = AlignedFedAvg(
        model,
        method=settings.method,
        align_options={"spec": spec},
        fraction_train=1.0,
        fraction_evaluate=settings.fraction_evaluate,
        min_available_nodes=settings.min_nodes,
        min_train_nodes=settings.min_nodes,
        min_evaluate_nodes=settings.min_nodes if settings.fraction_evaluate > 0 else 0,
    )
    _, test = load_digits_split()

    def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        m = evaluate(model, arrays.to_torch_state_dict(), [(test.x, test.y)])
        return MetricRecord({"accuracy": m.accuracy, "loss": m.loss})

    start = time.perf_counter()
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=settings.num_server_rounds,
        timeout=settings.round_timeout,
        evaluate_fn=central_evaluate,
    )
    if settings.result_dir:
        _write(Path(settings.result_dir), settings, strategy, result, time.perf_counter() - start)


def _write(out: Path, settings: Settings, strategy: Any, result: Any, seconds: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    final = result.arrays.to_torch_state_dict()
    mc.save_checkpoint(
        out / "final.pt", final, model_ref=MODEL_REF, model_kwargs=settings.model_kwargs, force=True
    )
    central = result.evaluate_metrics_serverapp
    rounds = [
        {
            "round": r,
            "accuracy": central[r]["accuracy"],
            "loss": central[r]["loss"],
            "train_loss": _get(result.train_metrics_clientapp, r, "train_loss"),
            "client_eval_acc": _get(result.evaluate_metrics_clientapp, r, "eval_acc"),
            "aggregation_seconds": strategy.aggregation_seconds.get(r),
        }
        for r in sorted(central)
    ]
    summary = {
        "settings": {k.replace("_", "-"): v for k, v in vars(settings).items()},
        "rounds": rounds,
        "final_accuracy": rounds[-1]["accuracy"],
        "best_accuracy": max((r["accuracy"] for r in rounds[1:]), default=None),
        "seconds": seconds,
        "checkpoint": "final.pt",
    }
    (out / "result.json").write_text(json.dumps(summary, indent=2, default=list) + "\n")


def _get(history: dict[int, MetricRecord], server_round: int, key: str) -> float | None:
    value = history[server_round].get(key) if server_round in history else None
    return float(value) if isinstance(value, int | float) else None
