"""The public API: every name is importable, none is shadowed by a submodule, no torch on import."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import types
from pathlib import Path

import modeconnect as mc


def test_every_public_name_resolves_to_what_it_names_even_after_all_submodules_load() -> None:
    for info in pkgutil.walk_packages(mc.__path__, prefix="modeconnect."):
        if info.name.startswith("modeconnect.integrations"):
            continue  # optional extras (flwr)
        importlib.import_module(info.name)
    for name in mc.__all__:
        value = getattr(mc, name)
        assert not isinstance(value, types.ModuleType), name
    assert callable(mc.evaluate) and callable(mc.merge) and callable(mc.sharpness)


def test_no_submodule_shares_a_public_name() -> None:
    """``import modeconnect.X as m`` would give the function X, not the module."""
    modules = {info.name for info in pkgutil.iter_modules(mc.__path__)}
    assert not modules & set(mc.__all__)


def test_importing_the_package_and_the_command_line_loads_no_torch() -> None:
    code = (
        "import sys, modeconnect, modeconnect.matching, modeconnect_cli.main\n"
        "heavy = [m for m in ('torch', 'scipy', 'ot', 'numpy') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_package_is_shipped() -> None:
    """A package missing from pyproject's list is left out of the wheel (installs break)."""
    from pathlib import Path

    from toml_compat import tomllib

    root = Path(__file__).resolve().parents[1]
    listed = set(
        tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(root).parts)
        for init in (root / "modeconnect").rglob("__init__.py")
    }
    assert found <= listed, sorted(found - listed)


def test_the_package_and_its_metadata_agree_on_the_version() -> None:
    from pathlib import Path

    from toml_compat import tomllib

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert mc.__version__ == project["version"]


def test_the_tests_run_on_every_python_the_package_claims() -> None:
    """``requires-python >= 3.10`` while the tests read TOML: the ``test`` extra brings the
    tomli backport where the standard library has no ``tomllib`` (Python 3.10)."""
    from toml_compat import tomllib

    root = Path(__file__).resolve().parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.10"
    test_extra = project["optional-dependencies"]["test"]
    assert "tomli>=2; python_version < '3.11'" in test_extra
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert "Python ≥ 3.10" in readme
