"""Federated averaging of clients whose widths differ (FedMA's setting, Wang et al. 2020).

:func:`fused_fedavg` is matched averaging by the fusion maps: every client's units are
matched by activations on shared data (a public or server-held batch) and fused into a
global model of the chosen widths, each client weighted by its example count. The
global model may grow (``widths`` wider than any client's). It is the counterpart of
:func:`modeconnect.aligned_fedavg` (clients of one width, permutations under the
equivalence guard); here the fused model is the evaluated object and no guard applies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from .core import FusionResult, Widths, fuse

__all__ = ["fused_fedavg"]


def fused_fedavg(
    client_models: Sequence[nn.Module],
    client_state_dicts: Sequence[Mapping[str, Tensor]],
    num_examples: Sequence[float],
    *,
    data: Iterable[Any],
    widths: Widths = None,
    method: str = "otfusion",
    **options: Any,
) -> FusionResult:
    """Fuse clients (``client_models[k]`` holds client ``k``'s widths) weighted by
    ``num_examples``, into ``widths`` (default: client 0's). ``options`` go to
    :func:`~modeconnect.fusion.fuse` (``transport``, ``alpha``, ...).

    A client with all the weight gives itself back (OT fusion at its width):

    >>> import torch
    >>> from modeconnect.models import mlp
    >>> _ = torch.manual_seed(0)
    >>> models = [mlp(4, [6], 2), mlp(4, [9], 2)]
    >>> sds = [m.state_dict() for m in models]
    >>> data = [(torch.randn(64, 4), torch.zeros(64, dtype=torch.long))]
    >>> out = fused_fedavg(models, sds, [1, 0], data=data)
    >>> all(torch.allclose(out.state_dict[k], sds[0][k], atol=1e-6) for k in sds[0])
    True
    """
    labels = [f"client {k}" for k in range(len(client_state_dicts))]
    return fuse(
        client_models, client_state_dicts, data=data, method=method, widths=widths,
        weights=num_examples, labels=labels, **options,
    )  # fmt: skip
