"""The ``>>>`` examples in the package's docstrings run, and every one of them passes.

Each module of :mod:`modeconnect` whose source holds an example is imported and
its docstrings are run with :mod:`doctest`, one test per module, so a new example
is picked up without being listed here. A module without examples is never
imported: an optional dependency (``flwr`` for :mod:`modeconnect.integrations.flower`)
stays optional, and the run gets this folder's fixtures (one torch thread, a
temporary spec cache). The examples seed their own generators and run with the
global RNG state restored afterwards, so they neither depend on nor disturb the
order of the other tests. ``python -m pytest --doctest-modules modeconnect`` runs
the same examples.
"""

from __future__ import annotations

import doctest
import importlib
import io
from pathlib import Path

import pytest
import torch

import modeconnect

PACKAGE = Path(modeconnect.__file__).resolve().parent
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

EXAMPLED = (
    "align",
    "derive_spec",
    "apply_permutation",
    "random_permutation",
    "match_weights",
    "interpolate",
    "interpolation_curve",
    "barrier",
    "evaluate",
    "merge",
    "fedavg",
    "aligned_fedavg",
    "check_equivalence",
    "reset_batchnorm",
    "repair",
    "layerwise_barriers",
    "plane_basis",
    "filter_normalized_direction",
    "hessian_spectrum",
)
"""Public names (``modeconnect.NAME``) whose docstrings must keep an example."""


def modules_with_examples() -> list[str]:
    """Dotted names of the package's modules whose source holds a ``>>>`` line."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if any(line.lstrip().startswith(">>>") for line in path.read_text("utf-8").splitlines()):
            parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = modules_with_examples()


def run_examples(name: str) -> tuple[doctest.TestResults, str]:
    """Run the examples of module ``name``; return the counts and doctest's report."""
    module = importlib.import_module(name)
    tests = [t for t in doctest.DocTestFinder().find(module, name) if t.examples]
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report = io.StringIO()
    with torch.random.fork_rng():
        for test in sorted(tests, key=lambda t: t.name):
            runner.run(test, out=report.write)
    return doctest.TestResults(runner.failures, runner.tries), report.getvalue()


@pytest.mark.parametrize("name", MODULES)
def test_examples_pass(name: str) -> None:
    results, report = run_examples(name)
    assert results.attempted, f"{name}: its source has '>>>' lines but no docstring example ran"
    assert not results.failed, f"{results.failed} example(s) of {name} failed:\n{report}"


@pytest.mark.parametrize("name", EXAMPLED)
def test_public_function_has_an_example(name: str) -> None:
    function = getattr(modeconnect, name)
    module = importlib.import_module(function.__module__)
    found = {t.name for t in doctest.DocTestFinder().find(module) if t.examples}
    where = f"{module.__name__}.{function.__qualname__}"
    assert where in found, f"modeconnect.{name} ({where}) has no docstring example doctest finds"


def test_a_failing_example_fails() -> None:
    def broken() -> None:
        """>>> 1 + 1
        3
        """

    test = doctest.DocTestFinder().find(broken, "broken", globs={})[0]
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    assert runner.run(test, out=lambda _: None).failed == 1
