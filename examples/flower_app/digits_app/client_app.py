"""ClientApp: train the global model on this SuperNode's share, evaluate it on its test share.

The share is chosen by the SuperNode's node config (``partition-id``,
``num-partitions``), which ``flower-supernode --node-config`` sets on the
deployment engine and the simulation engine sets by itself.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from digits_app.task import Settings, as_int, build_model, client_data, client_seed, train
from modeconnect.evaluation import evaluate

app = ClientApp()


def _setup(msg: Message, context: Context):
    torch.set_num_threads(1)  # tiny model; several ClientApps share two cores
    settings = Settings.from_run_config(context.run_config)
    node = context.node_config
    partition = as_int(node.get("partition-id"), "node config partition-id")
    num_partitions = as_int(node.get("num-partitions"), "node config num-partitions")
    data = client_data(partition, num_partitions, settings.alpha, settings.seed)
    model = build_model(settings.hidden)
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    return settings, partition, data, model


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    settings, partition, (train_share, _), model = _setup(msg, context)
    server_round = as_int(msg.content.config_records["config"]["server-round"], "server-round")
    seed = client_seed(settings.seed, server_round, partition)
    loss = train(model, train_share, settings.local_epochs, settings.lr, seed)
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(train_share)})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    _, _, (_, test_share), model = _setup(msg, context)
    m = evaluate(model, model.state_dict(), [(test_share.x, test_share.y)])
    metrics = MetricRecord(
        {"eval_loss": m.loss, "eval_acc": m.accuracy, "num-examples": len(test_share)}
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
