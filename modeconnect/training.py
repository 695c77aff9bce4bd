"""Training the classifiers that barrier studies compare: one seeded loop.

Every mode-connectivity study starts from networks trained from different seeds.
:func:`train_classifier` is the one loop the shipped checkpoints, the examples, the
benchmarks and the tests use to make them: cross-entropy, SGD with momentum (or
AdamW), a cosine or constant learning rate, and mini-batches drawn in an order of
their own seed, so that a pair differs only in the seeds it is given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modeconnect.errors import ModeconnectError

__all__ = ["OPTIMIZERS", "SCHEDULES", "train_classifier"]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")


def train_classifier(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 32,
    seed: int = 0,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
) -> nn.Module:
    """Train ``model`` in place to classify ``x`` as ``y``; returns it in eval mode.

    Each epoch visits the examples in an order drawn from ``torch.Generator`` seeded
    by ``seed``, in batches of ``batch_size``. ``optimizer`` is ``"sgd"`` (with
    ``momentum``) or ``"adamw"``; ``schedule`` ``"cosine"`` decays ``lr`` to 0 over
    all steps, ``"constant"`` keeps it. The model's initialisation is the caller's
    (seed it before building the model).

    Examples
    --------
    >>> import torch
    >>> from modeconnect.models import mlp
    >>> from modeconnect.training import train_classifier
    >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> _ = torch.manual_seed(0)
    >>> first = train_classifier(mlp(4, [8], 3), x, y, epochs=2, lr=0.1, seed=1)
    >>> _ = torch.manual_seed(0)
    >>> again = train_classifier(mlp(4, [8], 3), x, y, epochs=2, lr=0.1, seed=1)
    >>> torch.equal(first(x), again(x)), first.training
    (True, False)
    """
    if optimizer not in OPTIMIZERS or schedule not in SCHEDULES:
        raise ModeconnectError(
            f"train_classifier: optimizer {optimizer!r} / schedule {schedule!r}: choose an "
            f"optimizer from {OPTIMIZERS} and a schedule from {SCHEDULES}"
        )
    opt: torch.optim.Optimizer
    if optimizer == "sgd":
        opt = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(y)
    steps = epochs * -(-n // batch_size)
    cosine = schedule == "cosine"
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps) if cosine else None
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=gen).split(batch_size):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            if sched is not None:
                sched.step()
    return model.eval()
