"""A Flower strategy that aligns client models before federated averaging.

``AlignedFedAvg`` is :class:`flwr.serverapp.strategy.FedAvg` (Message API,
flwr >= 1.21) with one change in :meth:`aggregate_train`: every client's
``ArrayRecord`` is permuted into the basis of the round's reference, the global
model sent out in :meth:`configure_train`, before the example-count weighted
average (:func:`modeconnect.federated.aligned_fedavg`)::

    θ_{t+1} = Σ_k (n_k / n) · π_k(θ_k),   π_k = argmax_π ⟨θ_t, π(θ_k)⟩

Use it like FedAvg in a ``ServerApp``::

    from modeconnect.integrations.flower import AlignedFedAvg

    strategy = AlignedFedAvg(Net(), fraction_train=1.0)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(Net().state_dict()))

Replies that carry an error are skipped, as FedAvg skips them. A reply whose
arrays do not fit the model (missing or extra keys, other shapes, non-finite
values) is logged with one line naming the node, the key and the shapes, and
left out; the round goes on with the others. With ``reference="clients"`` the
clients are aligned to each other (MergeMany) instead of to the global model,
for one-shot merges of clients trained from different initialisations.

Clients of different widths (FedMA's setting): with ``widths`` set (``"global"``,
``"widest"``, a number or ``{group: width}``), every reply of the model's family at any
hidden widths (for transformers: hidden size, attention head counts and MLP width; one
head dimension) is accepted and the clients are fused into one global model of those
widths by :func:`modeconnect.fusion.fused_fedavg` (OT fusion, or ZipIt! with
``fusion="zip"``), on the server-held batches ``fusion_options["data"]``. The global
model is broadcast as FedAvg broadcasts it, so clients adopt its architecture each
round; ``"widest"`` lets it grow to the widest client's widths. No equivalence guard
applies to a fused model: it is the evaluated object. A reply of another family is
logged with one line and left out.

flwr is imported on first use of :data:`AlignedFedAvg`, never by ``import modeconnect``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from ..errors import ModeconnectError, count_nonfinite
from ..federated import aligned_fedavg

__all__ = ["AlignedFedAvg", "REFERENCES", "WIDTH_POLICIES"]

REFERENCES = ("global", "clients")
"""``"global"``: align to the round's global model; ``"clients"``: MergeMany among the clients."""

WIDTH_POLICIES = ("global", "widest")
"""``widths=`` by name: ``"global"``, the global model's widths (fixed); ``"widest"``, the
widest client's of the round, group by group (the global model grows)."""

_LOG = logging.getLogger("flwr")  # Flower's own logger, so lines appear with its output
_CLASS: type | None = None

if TYPE_CHECKING:  # pragma: no cover
    from flwr.serverapp.strategy import FedAvg

    class AlignedFedAvg(FedAvg):
        """What type checkers see: the class built by :func:`_build` (naming FedAvg itself
        would reject ``model``, ``method`` and the rest; the keywords are documented there)."""

        model: nn.Module
        method: str
        reference: str
        align_options: dict[str, Any]
        global_arrays: Any
        aggregation_seconds: dict[int, float]
        last_fusion: Any

        def __init__(self, model: nn.Module, **options: Any) -> None: ...

        def aggregate_state_dicts(
            self, state_dicts: Sequence[Mapping[str, Tensor]], num_examples: Sequence[float]
        ) -> dict[str, Tensor]: ...


def __getattr__(name: str) -> Any:
    if name == "AlignedFedAvg":
        return _aligned_fedavg_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _aligned_fedavg_class() -> type:
    """Import flwr and build the strategy class (once)."""
    global _CLASS
    if _CLASS is None:
        try:
            from flwr.serverapp.strategy import FedAvg
        except ImportError as exc:
            raise ModeconnectError(
                f"AlignedFedAvg needs flwr >= 1.21 ({exc}); "
                "install it with pip install 'modeconnect[flower]'"
            ) from exc
        _CLASS = _build(FedAvg)
    return _CLASS


def _build(fedavg: type) -> type:
    from flwr.app import ArrayRecord
    from flwr.serverapp.strategy.strategy_utils import validate_message_reply_consistency

    class AlignedFedAvg(fedavg):  # type: ignore[misc, valid-type]
        """FedAvg that aligns each client's model to the round's reference first.

        ``model`` is the ``nn.Module`` whose state dict the arrays hold: it gives
        the permutation spec and runs the equivalence guard. ``method`` names an
        alignment method (``"weight"``, ...; ``"none"`` is plain FedAvg);
        ``reference`` is ``"global"`` or ``"clients"`` (see the module doc);
        ``align_options`` go to :func:`modeconnect.federated.aligned_fedavg`
        (``data``, ``inputs``, ``seed``, ``restarts``, ...). Every other keyword
        argument is FedAvg's.

        ``widths`` (default ``None``: every client has ``model``'s shapes) accepts
        clients of other widths and fuses them with ``fusion`` (``"otfusion"`` or
        ``"zip"``) into ``"global"`` (the global model's widths), ``"widest"`` (the
        round's widest client's, so the global model grows), a number for every group
        that can change width, or ``{group: width}``. ``fusion_options`` go to
        :func:`~modeconnect.fusion.fused_fedavg` and must hold ``data``, server-held
        batches. ``model`` follows the global model's widths (``model_for(state_dict)``
        builds a model for a client's arrays if given; otherwise ``model`` is rebuilt at
        their widths, :func:`~modeconnect.fusion.rebuilt_model`: a Hugging Face model
        from its config with ``hidden_size``, head counts and ``intermediate_size``
        rewritten, so ``strategy.model.save_pretrained`` writes the global model).
        ``last_fusion`` keeps the last round's :class:`~modeconnect.fusion.FusionResult`.

        ``aggregation_seconds[round]`` records the server's wall time for aligning
        and averaging each round's models (with ``method="none"``, averaging alone).
        """

        def __init__(
            self,
            model: nn.Module,
            *,
            method: str = "weight",
            reference: str = "global",
            align_options: Mapping[str, Any] | None = None,
            widths: str | int | Mapping[str, int] | None = None,
            fusion: str = "otfusion",
            fusion_options: Mapping[str, Any] | None = None,
            model_for: Callable[[Mapping[str, Tensor]], nn.Module] | None = None,
            **fedavg_kwargs: Any,
        ) -> None:
            super().__init__(**fedavg_kwargs)
            if reference not in REFERENCES:
                raise ModeconnectError(
                    f"reference={reference!r} is not one of {', '.join(REFERENCES)}"
                )
            self.model = model
            self.method = method
            self.reference = reference
            self.align_options = dict(align_options or {})
            self.expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            self.global_arrays: Any = None  # the round's reference, set by configure_train
            self.aggregation_seconds: dict[int, float] = {}
            self.widths = widths
            self.last_fusion: Any = None
            if widths is not None:
                self._widths = _WidthFusion(model, widths, fusion, fusion_options, model_for)

        def summary(self) -> None:
            super().summary()
            if self.widths is not None:
                _LOG.info("\t└──> Fusion across widths: %s, widths %s", self._widths.method,
                          self.widths)  # fmt: skip
            else:
                _LOG.info("\t└──> Alignment: %s, reference %s", self.method, self.reference)

        def configure_train(self, server_round: int, arrays: Any, config: Any, grid: Any):
            """FedAvg's, remembering ``arrays`` as this round's reference."""
            self.global_arrays = arrays
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round: int, replies: Iterable[Any]):
            """Align the fitting replies to the reference, then FedAvg them.

            Returns ``(ArrayRecord | None, MetricRecord | None)`` as FedAvg does.
            """
            replies = list(replies)
            ok = [m for m in replies if not m.has_error()]
            _LOG.info("aggregate_train: Received %s results and %s failures",
                      len(ok), len(replies) - len(ok))  # fmt: skip
            for m in replies:
                if m.has_error():
                    _LOG.info("\t> Received error in reply from node %d: %s",
                              m.metadata.src_node_id, m.error.reason)  # fmt: skip
            kept, state_dicts = [], []
            for m in ok:
                sd = self._fitting_arrays(server_round, m)
                if sd is not False:
                    kept.append(m.content)
                    state_dicts.append(sd)
            if not kept:
                return None, None
            validate_message_reply_consistency(
                replies=kept, weighted_by_key=self.weighted_by_key, check_arrayrecord=True
            )
            start = time.perf_counter()
            merged = self.aggregate_state_dicts(
                state_dicts, [_weight(c, self.weighted_by_key) for c in kept]
            )
            seconds = time.perf_counter() - start
            self.aggregation_seconds[server_round] = seconds
            _LOG.info("\t└──> %s: aggregated %d models in %.3f s",
                      self._widths.method if self.widths is not None else self.method,
                      len(kept), seconds)  # fmt: skip
            metrics = self.train_metrics_aggr_fn(kept, self.weighted_by_key)
            return ArrayRecord(merged), metrics

        def aggregate_state_dicts(
            self, state_dicts: Sequence[Mapping[str, Tensor]], num_examples: Sequence[float]
        ) -> dict[str, Tensor]:
            """:func:`~modeconnect.federated.aligned_fedavg` with this round's reference (with
            ``widths`` set: :func:`~modeconnect.fusion.fused_fedavg` into those widths)."""
            if self.widths is not None:
                self.last_fusion = self._widths.aggregate(state_dicts, num_examples)
                self.model = self._widths.model
                return self.last_fusion.state_dict
            return aligned_fedavg(self.model, state_dicts, num_examples,
                                  reference=self._reference(), method=self.method,
                                  **self.align_options)  # fmt: skip

        def _reference(self) -> dict[str, Tensor] | None:
            if self.reference == "clients":
                return None
            if self.global_arrays is None:
                _LOG.warning(
                    "AlignedFedAvg: no global model seen yet (set .global_arrays or "
                    "call configure_train first); aligning the clients to each other"
                )
                return None
            ref = _to_torch(self.global_arrays)
            problem = self._mismatch(ref)
            if problem is not None:
                raise ModeconnectError(
                    f"AlignedFedAvg: the global model does not fit the "
                    f"model given to the strategy: {problem}"
                )
            return ref

        def _fitting_arrays(self, server_round: int, message: Any) -> Any:
            """The reply's arrays as a state dict; ``False`` (after one log line) if they
            do not fit the model; ``None`` if the reply has no single ArrayRecord, which
            FedAvg's consistency check then reports."""
            records = list(message.content.array_records.values())
            if len(records) != 1:
                return None
            sd = _to_torch(records[0])
            problem = self._mismatch(sd)
            if problem is None:
                return sd
            _LOG.warning(
                "AlignedFedAvg round %s: leaving out the reply from node %s: %s",
                server_round, message.metadata.src_node_id, problem,
            )  # fmt: skip
            return False

        def _mismatch(self, sd: Mapping[str, Tensor]) -> str | None:
            if self.widths is not None:
                return self._widths.mismatch(sd)
            missing = sorted(self.expected.keys() - sd.keys())
            extra = sorted(sd.keys() - self.expected.keys())
            if missing or extra:
                return (f"its arrays do not match the model's keys (missing {missing[:5]}, "
                        f"unexpected {extra[:5]})")  # fmt: skip
            for key, shape in self.expected.items():
                got = tuple(sd[key].shape)
                if got != shape:
                    return f"array {key!r} has shape {got} but the model expects {shape}"
            return _non_finite(sd)

    AlignedFedAvg.__module__ = __name__
    AlignedFedAvg.__qualname__ = "AlignedFedAvg"
    return AlignedFedAvg


def _non_finite(sd: Mapping[str, Tensor]) -> str | None:
    for key, t in sd.items():
        if t.is_floating_point() and count_nonfinite(t):
            return f"array {key!r} {tuple(t.shape)} has non-finite values (NaN or inf)"
    return None


class _WidthFusion:
    """The strategy's fusion across widths: the global model, its spec and the target."""

    def __init__(
        self,
        model: nn.Module,
        widths: str | int | Mapping[str, int],
        method: str,
        options: Mapping[str, Any] | None,
        model_for: Callable[[Mapping[str, Tensor]], nn.Module] | None,
    ) -> None:
        from ..fusion.core import resolve_widths, width_groups
        from ..fusion.resize import model_builder
        from ..probe import probe_inputs
        from ..spec import derive_spec

        if method not in ("otfusion", "zip"):
            raise ModeconnectError(
                f"fusion={method!r}: clients of different widths fuse by otfusion or zip"
            )
        self.options = dict(options or {})
        if self.options.get("data") is None:
            raise ModeconnectError(
                "widths= needs fusion_options={'data': ...}: server-held batches on which "
                "the clients' units are matched"
            )
        self.model, self.method, self.model_for = model, method, model_for
        self.probe = probe_inputs(model, self.options.get("inputs"), self.options["data"])
        self.spec = derive_spec(model, self.probe)
        self.free = width_groups(self.spec)
        self.build = model_builder(model, self.probe, self.spec)
        if isinstance(widths, str):
            if widths not in WIDTH_POLICIES:
                raise ModeconnectError(
                    f"widths={widths!r} is not one of {', '.join(WIDTH_POLICIES)}, a number "
                    "or {group: width}"
                )
            self.fixed: dict[str, int] | None = None
        else:
            every = resolve_widths(self.spec, widths)
            self.fixed = {g: every[g] for g in self.free}
        self.policy = widths

    def mismatch(self, sd: Mapping[str, Tensor]) -> str | None:
        """One line if ``sd`` is not of the model's family at some widths, or not finite."""
        from ..fusion.resize import state_widths

        try:
            state_widths(self.spec, self.free, sd)
        except ModeconnectError as exc:
            return str(exc)
        return _non_finite(sd)

    def model_at(self, sd: Mapping[str, Tensor]) -> nn.Module:
        if self.model_for is not None:
            return self.model_for(sd)
        return self.build(sd)

    def aggregate(
        self, state_dicts: Sequence[Mapping[str, Tensor]], num_examples: Sequence[float]
    ) -> Any:
        """Fuse the clients into the target widths; the global model follows them."""
        from ..fusion.federated import fused_fedavg
        from ..fusion.resize import state_widths

        if self.fixed is not None:
            target = self.fixed
        elif self.policy == "global":
            own = state_widths(self.spec, self.free, self.model.state_dict())
            target = {g: own[g] for g in self.free}
        else:
            each = [state_widths(self.spec, self.free, sd) for sd in state_dicts]
            target = {g: max(w[g] for w in each) for g in self.free}
        models = [self.model_at(sd) for sd in state_dicts]
        options = {k: v for k, v in self.options.items() if k != "data"}
        result = fused_fedavg(models, state_dicts, num_examples, data=self.options["data"],
                              widths=target, method=self.method, **options)  # fmt: skip
        self.model = self.model_at(result.state_dict)
        return result


def _to_torch(record: Any) -> dict[str, Tensor]:
    return dict(record.to_torch_state_dict())


def _weight(content: Any, key: str) -> float:
    return float(next(iter(content.metric_records.values()))[key])
