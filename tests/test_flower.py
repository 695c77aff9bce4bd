"""The Flower strategy: aggregation on replies built here, and an in-process round trip.

No Ray, no network: the round trip runs Flower's own ``Strategy.start`` against a
grid that delivers each message to a real ``ClientApp`` in this process.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterable

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch.testing import assert_close  # noqa: E402

flwr = pytest.importorskip("flwr")

from flwr.app import (  # noqa: E402
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from small_mlp import small_net, small_state  # noqa: E402

from modeconnect.federated import aligned_fedavg, fedavg  # noqa: E402
from modeconnect.integrations.flower import AlignedFedAvg  # noqa: E402
from modeconnect.spec import (  # noqa: E402
    apply_permutation,
    derive_spec,  # noqa: E402
    random_permutation,
)


@pytest.fixture(autouse=True)
def _task_identity():
    """flwr >= 1.2x stamps new messages with the running task's identity, which the
    ServerApp runtime sets; set it here as the runtime would (older flwr has none)."""
    try:
        from flwr.supercore.task_identity import TaskIdentity
    except ImportError:  # pragma: no cover - depends on the flwr version
        yield
        return
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture
def flwr_log(caplog):
    """Flower's logger does not propagate to the root logger: listen to it directly."""
    logger = logging.getLogger("flwr")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="flwr")
    yield caplog
    logger.removeHandler(caplog.handler)


SPEC = derive_spec(small_net(), (torch.randn(2, 6),))


def _client_model(global_sd: dict[str, torch.Tensor], node: int) -> dict[str, torch.Tensor]:
    """What client ``node`` "trains": the global model, permuted, plus a little noise."""
    gen = torch.Generator().manual_seed(node)
    moved = {k: v + 0.002 * torch.randn(v.shape, generator=gen) for k, v in global_sd.items()}
    return apply_permutation(moved, SPEC, random_permutation(SPEC, node))


def _instruction(node: int, global_sd) -> Message:
    content = RecordDict({"arrays": ArrayRecord(global_sd), "config": ConfigRecord()})
    return Message(content, dst_node_id=node, message_type=MessageType.TRAIN)


def _reply(node: int, sd, n: int, global_sd) -> Message:
    content = RecordDict({
        "arrays": ArrayRecord(sd),
        "metrics": MetricRecord({"num-examples": n, "train_loss": float(node)}),
    })  # fmt: skip
    return Message(content, reply_to=_instruction(node, global_sd))


def _error_reply(node: int, global_sd) -> Message:
    return Message(Error(code=1, reason="client crashed"), reply_to=_instruction(node, global_sd))


def _strategy(global_sd, **kwargs) -> AlignedFedAvg:
    strategy = AlignedFedAvg(small_net(), align_options={"spec": SPEC}, **kwargs)
    strategy.global_arrays = ArrayRecord(global_sd)
    return strategy


# --------------------------------------------------------------------------- aggregation


def test_import_modeconnect_does_not_import_flwr():
    code = (
        "import sys, modeconnect, modeconnect.merging, modeconnect.federated, "
        "modeconnect.integrations.flower; sys.exit('flwr' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], timeout=120)
    assert proc.returncode == 0, "importing modeconnect imported flwr"


def test_strategy_output_matches_the_library_function():
    global_sd = small_state(0)
    clients = {node: _client_model(global_sd, node) for node in (1, 2, 3)}
    counts = {1: 30, 2: 10, 3: 60}
    replies = [_reply(n, clients[n], counts[n], global_sd) for n in clients]
    strategy = _strategy(global_sd)
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert list(strategy.aggregation_seconds) == [1] and strategy.aggregation_seconds[1] > 0
    expected = aligned_fedavg(small_net(), list(clients.values()), list(counts.values()),
                              reference=global_sd, spec=SPEC)  # fmt: skip
    assert_close(arrays.to_torch_state_dict(), expected)
    assert_close(arrays.to_torch_state_dict(), global_sd, atol=0.02, rtol=0)  # aligned back
    _, fedavg_metrics = FedAvg().aggregate_train(1, replies)
    assert dict(metrics) == pytest.approx(dict(fedavg_metrics))


def test_method_none_matches_flowers_fedavg():
    global_sd = small_state(0)
    replies = [_reply(n, _client_model(global_sd, n), 10 * n, global_sd) for n in (1, 2)]
    ours, _ = _strategy(global_sd, method="none").aggregate_train(1, replies)
    theirs, _ = FedAvg().aggregate_train(1, replies)
    assert_close(ours.to_torch_state_dict(), theirs.to_torch_state_dict())


def test_failed_clients_are_skipped(flwr_log):
    global_sd = small_state(0)
    good = {1: _client_model(global_sd, 1), 3: _client_model(global_sd, 3)}
    replies = [_reply(1, good[1], 5, global_sd), _error_reply(2, global_sd),
               _reply(3, good[3], 15, global_sd)]  # fmt: skip
    arrays, _ = _strategy(global_sd).aggregate_train(1, replies)
    expected = aligned_fedavg(
        small_net(), list(good.values()), [5, 15], reference=global_sd, spec=SPEC
    )
    assert_close(arrays.to_torch_state_dict(), expected)
    assert "Received error in reply from node 2: client crashed" in flwr_log.text


def test_mismatched_client_is_logged_and_left_out(flwr_log):
    global_sd = small_state(0)
    good = {1: _client_model(global_sd, 1), 2: _client_model(global_sd, 2)}
    wrong = dict(_client_model(global_sd, 3))
    wrong["3.weight"] = torch.zeros(12, 7)
    nan = dict(_client_model(global_sd, 4))
    nan["1.bias"] = torch.full((10,), float("nan"))
    replies = [_reply(1, good[1], 5, global_sd), _reply(3, wrong, 50, global_sd),
               _reply(2, good[2], 5, global_sd), _reply(4, nan, 50, global_sd)]  # fmt: skip
    arrays, _ = _strategy(global_sd).aggregate_train(7, replies)
    expected = aligned_fedavg(
        small_net(), list(good.values()), [5, 5], reference=global_sd, spec=SPEC
    )
    assert_close(arrays.to_torch_state_dict(), expected)
    assert any(r.getMessage().startswith("\t└──> weight: aggregated 2 models in ")
               for r in flwr_log.records)  # fmt: skip
    lines = [r.getMessage() for r in flwr_log.records if r.levelno == logging.WARNING]
    assert (
        "AlignedFedAvg round 7: leaving out the reply from node 3: array '3.weight' has shape "
        "(12, 7) but the model expects (12, 10)"
    ) in lines
    assert any("node 4: array '1.bias' (10,) has non-finite values" in line for line in lines)


def test_no_usable_replies_give_nothing():
    global_sd = small_state(0)
    assert _strategy(global_sd).aggregate_train(1, [_error_reply(1, global_sd)]) == (None, None)
    assert _strategy(global_sd).aggregate_train(1, []) == (None, None)


def test_bad_reference_name():
    from modeconnect.errors import ModeconnectError

    with pytest.raises(ModeconnectError, match="reference='best' is not one of global, clients"):
        AlignedFedAvg(small_net(), reference="best")


# --------------------------------------------------------------------------- round trip


class InProcessGrid(Grid):
    """Delivers each message to a ClientApp in this process; a raised exception becomes
    an error reply, as Flower's runtime turns a failing ClientApp into one."""

    def __init__(self, app: ClientApp, nodes: Iterable[int]) -> None:
        self.app, self.nodes, self._replies, self._run = app, list(nodes), {}, None

    def set_run(self, run):  # pragma: no cover - not used in-process
        self._run = run

    @property
    def run(self):  # pragma: no cover - not used in-process
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id=dst_node_id, message_type=message_type,
                       group_id=group_id, ttl=ttl)  # fmt: skip

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for i, msg in enumerate(messages):
            context = Context(run_id=1, node_id=msg.metadata.dst_node_id, node_config={},
                              state=RecordDict(), run_config={})  # fmt: skip
            try:
                reply = self.app(msg, context)
            except Exception as exc:  # noqa: BLE001 - the runtime reports any failure
                reply = Message(Error(code=0, reason=str(exc)), reply_to=msg)
            ids.append(f"m{len(self._replies)}-{i}")
            self._replies[ids[-1]] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids]

    def send_and_receive(self, messages, *, timeout=None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def _client_app(fail_node: int) -> tuple[ClientApp, Callable[[int], int]]:
    app = ClientApp()

    def examples(node: int) -> int:
        return 10 * node

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        node = context.node_id
        if node == fail_node:
            raise RuntimeError("out of memory")
        sd = msg.content["arrays"].to_torch_state_dict()
        content = RecordDict({
            "arrays": ArrayRecord(_client_model(dict(sd), node)),
            "metrics": MetricRecord({"num-examples": examples(node)}),
        })  # fmt: skip
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        metrics = MetricRecord({"num-examples": examples(context.node_id), "accuracy": 1.0})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app, examples


def test_in_process_round_trip(flwr_log):
    nodes, failing = [1, 2, 3, 4], 3
    app, examples = _client_app(failing)
    strategy = AlignedFedAvg(
        small_net(), align_options={"spec": SPEC}, min_available_nodes=4, min_train_nodes=4
    )
    start = small_state(0)
    result = strategy.start(grid=InProcessGrid(app, nodes), initial_arrays=ArrayRecord(start),
                            num_rounds=2)  # fmt: skip
    # The same two rounds by the library function alone.
    expected = start
    for _ in range(2):
        clients = [_client_model(expected, n) for n in nodes if n != failing]
        counts = [examples(n) for n in nodes if n != failing]
        expected = aligned_fedavg(small_net(), clients, counts, reference=expected, spec=SPEC)
    assert_close(result.arrays.to_torch_state_dict(), expected)
    assert_close(result.arrays.to_torch_state_dict(), start, atol=0.05, rtol=0)
    # Plain FedAvg of the same permuted clients would have scrambled the model.
    plain = fedavg([_client_model(start, n) for n in (1, 2, 4)], [10, 20, 40])
    assert (plain["1.weight"] - start["1.weight"]).abs().max() > 0.1
    assert "Received error in reply from node 3: out of memory" in flwr_log.text
    assert result.evaluate_metrics_clientapp[2]["accuracy"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- across widths

X = torch.randn(96, 6, generator=torch.Generator().manual_seed(5))
DATA = [(X, torch.zeros(96, dtype=torch.long))]


def _padded(sd: dict[str, torch.Tensor], hidden: list[int]) -> dict[str, torch.Tensor]:
    """``sd`` (a small_net) zero-padded to an MLP of ``hidden`` widths: the same function."""
    from modeconnect.models import mlp

    out = {k: torch.zeros_like(v) for k, v in mlp(6, hidden, 3).state_dict().items()}
    for k, v in sd.items():
        out[k][tuple(slice(0, n) for n in v.shape)] = v
    return out


def _seeded(hidden: list[int], seed: int) -> dict[str, torch.Tensor]:
    from modeconnect.models import mlp

    torch.manual_seed(seed)
    return dict(mlp(6, hidden, 3).state_dict())


def _live_state(seed: int) -> dict[str, torch.Tensor]:
    """A small_net whose hidden units are all active on ``X`` (OT fusion gives mass only to
    units active on the server's data: a unit dead there may be merged away)."""
    sd = small_state(seed)
    sd["1.bias"], sd["3.bias"] = sd["1.bias"] + 1.0, sd["3.bias"] + 1.0
    return sd


def _width_strategy(widths, **kwargs) -> AlignedFedAvg:
    return AlignedFedAvg(small_net(), widths=widths, fusion_options={"data": DATA}, **kwargs)


@pytest.mark.slow
def test_clients_of_two_widths_fuse_into_the_chosen_width():
    from modeconnect.fusion import fused_fedavg
    from modeconnect.models import mlp

    narrow, wide = small_state(1), _seeded([14, 16], 2)
    replies = [_reply(1, narrow, 30, narrow), _reply(2, wide, 10, narrow)]
    for widths, hidden in (("widest", [14, 16]), ("global", [10, 12]), (13, [13, 13]),
                           ({"P1": 20}, [10, 20])):  # fmt: skip
        strategy = _width_strategy(widths)
        arrays, metrics = strategy.aggregate_train(1, replies)
        got = arrays.to_torch_state_dict()
        net = mlp(6, hidden, 3)
        net.load_state_dict(got)  # strict: the global model has the chosen widths
        out = net(X)
        assert out.shape == (96, 3) and bool(torch.isfinite(out).all())
        assert torch.equal(strategy.model(X), out)  # the strategy's model follows
        assert strategy.last_fusion.widths == {"P0": hidden[0], "P1": hidden[1]}
        assert metrics["train_loss"] == pytest.approx(1 * 0.75 + 2 * 0.25)
    models = [small_net(), mlp(6, [14, 16], 3)]
    expected = fused_fedavg(models, [narrow, wide], [30, 10], data=DATA,
                            widths={"P0": 14, "P1": 16})  # fmt: skip
    assert_close(_width_strategy("widest").aggregate_state_dicts([narrow, wide], [30, 10]),
                 expected.state_dict)  # fmt: skip


def test_zero_padded_clients_aggregate_back_to_the_model():
    sd = _live_state(0)
    replies = [_reply(1, sd, 30, sd), _reply(2, _padded(sd, [14, 16]), 10, sd),
               _reply(3, _padded(sd, [11, 20]), 25, sd)]  # fmt: skip
    arrays, _ = _width_strategy("global").aggregate_train(1, replies)
    assert_close(arrays.to_torch_state_dict(), sd, atol=1e-5, rtol=0)
    calls = []

    def model_for(arrays):  # the user's own constructor, called for each client's widths
        from modeconnect.models import mlp

        calls.append(arrays["1.weight"].shape[0])
        net = mlp(6, [arrays["1.weight"].shape[0], arrays["3.weight"].shape[0]], 3)
        net.load_state_dict(arrays)
        return net

    built, _ = _width_strategy("global", model_for=model_for).aggregate_train(1, replies)
    assert_close(built.to_torch_state_dict(), arrays.to_torch_state_dict())
    assert calls == [10, 14, 11, 10]  # three clients, then the global model


@pytest.mark.slow
def test_llama_clients_of_other_head_counts_aggregate_into_a_global_model_that_loads_back(
    tmp_path,
):
    """Llama clients of hidden 32 (4 query / 2 key-value heads, MLP 24) and 48 (6 / 3, MLP
    40; a zero-padded copy of the first) are accepted by the strategy: at the global
    widths they aggregate back to the first; at the widest, the global model grows, and
    its config (hidden size, both head counts, MLP width) is rewritten, so
    ``save_pretrained`` / ``from_pretrained`` give back the aggregated arrays."""
    from hf_models import NARROW, WIDE, padded_pair

    small, wide = padded_pair("llama")
    a, b = small.state_dict(), wide.state_dict()
    x = torch.randint(0, 64, (8, 12))
    replies = [_reply(1, a, 30, a), _reply(2, b, 10, a)]
    for policy, widths in (("global", NARROW), ("widest", WIDE)):
        strategy = AlignedFedAvg(small, widths=policy, fusion_options={"data": [(x, x)]})
        arrays, _ = strategy.aggregate_train(1, replies)
        got = arrays.to_torch_state_dict()
        config = strategy.model.config
        assert (config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                config.intermediate_size) == widths  # fmt: skip
        strategy.model.save_pretrained(tmp_path / policy)
        back = type(small).from_pretrained(tmp_path / policy).eval()
        assert_close(back.state_dict(), got, atol=0, rtol=0)
        if policy == "global":
            with torch.no_grad():
                assert_close(back(x).logits, small(x).logits, atol=1e-4, rtol=1e-4)
    assert small.config.hidden_size == NARROW[0]  # the model given is left alone


def test_client_of_another_family_is_left_out_with_one_line(flwr_log):
    sd = _live_state(0)
    other = _seeded([10, 12], 3)
    other["1.weight"] = torch.randn(10, 7)  # seven inputs, not six
    deeper = dict(_padded(sd, [10, 12]))
    deeper["7.weight"] = torch.randn(3, 3)
    replies = [_reply(1, sd, 30, sd), _reply(2, other, 10, sd), _reply(3, deeper, 10, sd),
               _reply(4, _padded(sd, [14, 16]), 10, sd)]  # fmt: skip
    arrays, _ = _width_strategy("global").aggregate_train(4, replies)
    assert_close(arrays.to_torch_state_dict(), sd, atol=1e-5, rtol=0)
    lines = [r.getMessage() for r in flwr_log.records if r.levelno == logging.WARNING]
    assert (
        "AlignedFedAvg round 4: leaving out the reply from node 2: its arrays are not of the "
        "model's family: '1.weight' has shape (10, 7), the model at widths {'P0': 10, 'P1': 12} "
        "has (10, 6)"
    ) in lines
    assert (
        "AlignedFedAvg round 4: leaving out the reply from node 3: its arrays are not of the "
        "model's family (missing [], unexpected ['7.weight'])"
    ) in lines
    assert all("\n" not in line for line in lines)


def test_width_options_are_checked():
    from modeconnect.errors import ModeconnectError

    with pytest.raises(ModeconnectError, match=r"widths= needs fusion_options=\{'data'"):
        AlignedFedAvg(small_net(), widths="widest")
    with pytest.raises(ModeconnectError, match="widths='biggest' is not one of global, widest"):
        _width_strategy("biggest")
    with pytest.raises(ModeconnectError, match="fusion='universe': clients of different widths"):
        _width_strategy("widest", fusion="universe")
    with pytest.raises(ModeconnectError, match="width 0 must be a positive integer"):
        _width_strategy({"P0": 0})


def test_round_trip_across_widths_grows_the_global_model():
    """Round 1: one client brings a wider copy; the global model grows to it and is
    broadcast; round 2: every client trains the global architecture."""
    from modeconnect.models import mlp

    app, received = ClientApp(), []

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        sd = dict(msg.content["arrays"].to_torch_state_dict())
        received.append((context.node_id, sd["1.weight"].shape[0], sd["3.weight"].shape[0]))
        if context.node_id == 2 and sd["1.weight"].shape[0] == 10:
            sd = _padded(sd, [14, 16])  # joins with a wider model of the same function
        content = RecordDict({"arrays": ArrayRecord(sd),
                              "metrics": MetricRecord({"num-examples": 10})})  # fmt: skip
        return Message(content, reply_to=msg)

    strategy = _width_strategy("widest", min_available_nodes=2, min_train_nodes=2,
                               fraction_evaluate=0.0)  # fmt: skip
    start = _live_state(0)
    result = strategy.start(grid=InProcessGrid(app, [1, 2]), initial_arrays=ArrayRecord(start),
                            num_rounds=2)  # fmt: skip
    # Round 1 broadcasts the start; round 2 the grown global model, to every client.
    assert sorted(received) == [(1, 10, 12), (1, 14, 16), (2, 10, 12), (2, 14, 16)]
    final = result.arrays.to_torch_state_dict()
    assert_close(final, strategy.last_fusion.state_dict)
    net = mlp(6, [14, 16], 3)
    net.load_state_dict(final)
    assert bool(torch.isfinite(net(X)).all())
