"""Names the command line offers as choices, known without importing torch.

The library maps each name to its object where it is used (:func:`modeconnect.devices.
resolve_device`, :func:`modeconnect.commands.session.parse_dtype`); the CLI lists the same
names, so ``--help`` answers at once and the two can never disagree.
"""

from __future__ import annotations

__all__ = ["DEFAULT_BN_EXAMPLES", "DEVICES", "EVAL_DTYPES", "INPUT_DTYPES"]

DEVICES = ("cpu", "cuda", "auto")
"""Where products and evaluation run; ``auto``: CUDA when there is one."""

INPUT_DTYPES = ("float32", "float64", "float16", "bfloat16", "long", "int")
"""Dtypes of probe inputs (``long``/``int``: token ids)."""

EVAL_DTYPES = ("float32", "bfloat16", "float16", "float64")
"""Dtypes evaluation may run in."""

DEFAULT_BN_EXAMPLES = 512
"""The commands' default cap on each BatchNorm reset: the whole batches of ``--train``
holding at most this many examples (at least one batch); :func:`modeconnect.bn.bn_batches`.
On the digits CNN pair (``benchmarks/bench_bn_batches.py``) a reset on 64-512 examples
moved the loss barrier by 0.0016-0.0057 nats against a 95 % bootstrap half-width of 0.086."""
