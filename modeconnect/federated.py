"""Federated averaging, plain and aligned, for any training loop.

FedAvg (McMahan et al. 2017) averages client models weighted by their example
counts ``n_k``::

    θ = Σ_k (n_k / n) · θ_k,        n = Σ_k n_k.

Clients trained from different starting points (or for long enough to drift
apart) hold the same function in different unit orders, and averaging them
unaligned destroys it. Aligned FedAvg first permutes every client into the
basis of the round's reference ``θ_R`` (normally the global model the round
started from), with the same alignment methods as ``modeconnect align``::

    θ = Σ_k (n_k / n) · π_k(θ_k),   π_k = argmax_π ⟨θ_R, π(θ_k)⟩   (weight matching,
                                                              Ainsworth et al. 2023)

Each ``π_k`` is checked by the equivalence guard. Both functions take and
return plain state dicts; :mod:`modeconnect.integrations.flower` wraps
:func:`aligned_fedavg` as a Flower strategy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from .merging import Reference, check_state_dicts, merge, normalize_weights, weighted_average

__all__ = ["aligned_fedavg", "fedavg"]

StateDict = Mapping[str, Tensor]


def fedavg(
    client_state_dicts: Sequence[StateDict], num_examples: Sequence[float]
) -> dict[str, Tensor]:
    """Plain FedAvg: ``Σ_k (n_k / n) θ_k`` for floating tensors; others from client 0.

    Clients must share keys, shapes and dtypes and hold finite values; a client
    that does not is rejected with a :class:`~modeconnect.ModeconnectError` that
    names its index, the key and both shapes.

    Examples
    --------
    >>> import torch
    >>> import modeconnect as mc
    >>> clients = [{"w": torch.tensor([0.0, 4.0])}, {"w": torch.tensor([4.0, 8.0])}]
    >>> mc.fedavg(clients, num_examples=[3, 1])
    {'w': tensor([1., 5.])}
    """
    sds = list(client_state_dicts)
    weights = _check_clients(sds, num_examples, None)
    return weighted_average(sds, weights)


def aligned_fedavg(
    model: nn.Module,
    client_state_dicts: Sequence[StateDict],
    num_examples: Sequence[float],
    *,
    reference: Reference,
    method: str = "weight",
    **opts: Any,
) -> dict[str, Tensor]:
    """Align every client to ``reference``, then average weighted by ``num_examples``.

    ``reference`` is the round's reference state dict (the global model sent to
    the clients), a client index, or ``None`` to align the clients to each other
    (MergeMany, for one-shot merges of clients trained from different inits).
    ``method`` names an alignment method (``"none"`` gives plain FedAvg);
    ``opts`` go to :func:`modeconnect.merging.merge` (``data``, ``seed``,
    ``restarts``, ``bn``, ...). Returns the new global state dict.

    Examples
    --------
    A client whose hidden units came back permuted no longer blurs the average:

    >>> import torch
    >>> import modeconnect as mc
    >>> from modeconnect.models import permuted_pair
    >>> model, _, spec, global_model, permuted, _ = permuted_pair()
    >>> clients = [global_model, permuted]
    >>> new = mc.aligned_fedavg(model, clients, [1, 1], reference=global_model, spec=spec)
    >>> all(torch.allclose(new[k], global_model[k]) for k in global_model)
    True
    >>> plain = mc.fedavg(clients, [1, 1])
    >>> all(torch.allclose(plain[k], global_model[k]) for k in global_model)
    False
    """
    sds = list(client_state_dicts)
    _check_clients(sds, num_examples, reference)
    labels = [f"client {k}" for k in range(len(sds))]
    result = merge(model, sds, weights=num_examples, method=method, reference=reference,
                   labels=labels, **opts)  # fmt: skip
    return result.state_dict


def _check_clients(
    sds: Sequence[StateDict], num_examples: Sequence[float], reference: Reference
) -> tuple[float, ...]:
    weights = normalize_weights(list(num_examples), len(sds), what="num_examples")
    labels = [f"client {k}" for k in range(len(sds))]
    if isinstance(reference, Mapping):
        check_state_dicts(sds, labels, against=reference, against_label="the reference")
    else:
        check_state_dicts(sds, labels)
    return weights
