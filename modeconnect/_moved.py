"""Modules that moved, still importable under their 0.2.0 names (with a DeprecationWarning).

``import modeconnect.files.align`` gives the very module object of
``modeconnect.commands.align`` (one module, two names), so code that patches or reads
attributes through the old name sees the real module. The finder is installed when
``modeconnect`` is imported and only answers for the names in :data:`MOVED`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

__all__ = ["MOVED", "install"]

_IO = ("checkpoints", "data", "hf", "jsonfile", "links", "offline", "references", "report",
       "safetensors_header", "spec_cache", "targets")  # fmt: skip
_COMMANDS = ("align", "barrier", "compare", "curve", "landscape", "merge", "results", "session",
             "sharpness", "spec")  # fmt: skip

MOVED: dict[str, str] = {
    **{f"modeconnect.files.{m}": f"modeconnect.io.{m}" for m in _IO},
    **{f"modeconnect.files.{m}": f"modeconnect.commands.{m}" for m in _COMMANDS},
    "modeconnect.files.lazy": "modeconnect.views",
    "modeconnect.pipeline": "modeconnect.alignment",
    "modeconnect.study": "modeconnect.barrier_studies",
    "modeconnect.curves": "modeconnect.curve_fitting",
    "modeconnect.evaluation.losses": "modeconnect.evaluation.scoring",
    "modeconnect.spec.layout": "modeconnect.spec.permutations",
    "modeconnect.spec.codec": "modeconnect.spec.permutations",
}
"""Old module name -> where it lives now (see CHANGELOG.md, 0.3.0)."""


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers an old name with the module under its new name."""

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def find_spec(
        self, fullname: str, path: object = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new} in modeconnect 0.3.0; import it from there",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(new)
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        """The module ran under its new name already; importing it under the old one
        replaced its ``__spec__``, which is put back (the module is still the new one)."""
        alias = module.__spec__.name if module.__spec__ is not None else None
        if alias in self._specs:
            module.__spec__ = self._specs.pop(alias)


def install() -> None:
    """Put the alias finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.insert(0, _Alias())
