"""Read-only state dicts that compute a tensor when it is read and keep nothing.

A model of ``S`` bytes held as four float32 copies (A, B, aligned B, the merge) needs
``8 S`` for bfloat16 weights; held as views it needs one tensor at a time. Each view is
a ``Mapping[str, Tensor]`` with fixed keys: every read of ``view[key]`` computes the
tensor again from its sources (a file, another view), and nothing is cached, so the
memory a view costs is that of the tensors its reader keeps. Readers that keep every
tensor (``dict(view)``) materialise the whole state dict, as they would from a dict.

* :class:`Converted`: floating tensors in another dtype and/or on another device;
* :class:`Permuted`: ``apply_permutation`` one tensor at a time;
* :class:`Lerped`: ``torch.lerp(a, b, alpha)`` one tensor at a time (as
  :func:`modeconnect.evaluation.interpolate`);
* :class:`Rounded`: tensors rounded to the dtype each was stored in, read back in their own;
* :class:`Extended`: a view plus a few fixed tensors (a model's non-persistent buffers).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from .spec import PermutationSpec, permute_tensor

__all__ = ["Converted", "Extended", "Lerped", "Permuted", "Rounded", "View", "materialize"]


class View(Mapping[str, Tensor]):
    """A mapping whose values are computed on every read from ``source``'s values."""

    def __init__(self, source: Mapping[str, Tensor]) -> None:
        self.source = source

    def __iter__(self) -> Iterator[str]:
        return iter(self.source)

    def __len__(self) -> int:
        return len(self.source)

    def __contains__(self, key: object) -> bool:
        return key in self.source

    def __getitem__(self, key: str) -> Tensor:
        return self.compute(key, self.source[key])

    def compute(self, key: str, tensor: Tensor) -> Tensor:
        return tensor

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} tensors)"


class Converted(View):
    """Floating tensors of ``source`` in ``dtype`` (``None``: as stored), on ``device``."""

    def __init__(
        self,
        source: Mapping[str, Tensor],
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(source)
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None

    def compute(self, key: str, tensor: Tensor) -> Tensor:
        dtype = self.dtype if self.dtype is not None and tensor.is_floating_point() else None
        if dtype is None and self.device is None:
            return tensor
        return tensor.to(device=self.device, dtype=dtype)


class Rounded(View):
    """Each tensor named in ``stored`` rounded to that dtype and read back in its own: what a
    checkpoint written in ``stored``'s dtypes holds, as the model reads it."""

    def __init__(self, source: Mapping[str, Tensor], stored: Mapping[str, torch.dtype]) -> None:
        super().__init__(source)
        self.stored = stored

    def compute(self, key: str, tensor: Tensor) -> Tensor:
        dtype = self.stored.get(key)
        return tensor if dtype is None else tensor.to(dtype).to(tensor.dtype)


class Permuted(View):
    """``apply_permutation(source, spec, perm)``, one tensor per read (exact indexing)."""

    def __init__(
        self, source: Mapping[str, Tensor], spec: PermutationSpec, perm: Mapping[str, Tensor]
    ) -> None:
        super().__init__(source)
        self.spec, self.perm = spec, perm

    def compute(self, key: str, tensor: Tensor) -> Tensor:
        layouts = self.spec.layouts.get(self.spec.aliases.get(key, key))
        return tensor if layouts is None else permute_tensor(tensor, layouts, self.perm)


class Lerped(View):
    """``(1-α)·a + α·b`` for floating tensors (``torch.lerp``: exact at 0 and 1); others ``a``'s."""

    def __init__(self, a: Mapping[str, Tensor], b: Mapping[str, Tensor], alpha: float) -> None:
        super().__init__(a)
        self.b, self.alpha = b, float(alpha)

    def compute(self, key: str, tensor: Tensor) -> Tensor:
        if not (tensor.is_floating_point() or tensor.is_complex()) or self.alpha == 0.0:
            return tensor
        other = self.b[key]
        return other if self.alpha == 1.0 else torch.lerp(tensor, other, self.alpha)


class Extended(View):
    """``source`` plus ``extra`` tensors (kept: they are small, e.g. rotary frequencies)."""

    def __init__(self, source: Mapping[str, Tensor], extra: Mapping[str, Tensor]) -> None:
        super().__init__(source)
        self.extra = {k: v for k, v in extra.items() if k not in source}

    def __iter__(self) -> Iterator[str]:
        yield from self.source
        yield from self.extra

    def __len__(self) -> int:
        return len(self.source) + len(self.extra)

    def __contains__(self, key: object) -> bool:
        return key in self.source or key in self.extra

    def __getitem__(self, key: str) -> Tensor:
        return self.extra[key] if key in self.extra else self.source[key]


def materialize(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Every tensor of ``state_dict`` read once into a plain dict (a dict is returned as is)."""
    return state_dict if isinstance(state_dict, dict) else dict(state_dict)
