"""Shared fixtures: one torch thread (faster for tiny models on a busy 2-core box), paths."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT / "checkpoints"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/zoo.py importable as `zoo`
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


@pytest.fixture(autouse=True, scope="session")
def _spec_cache(tmp_path_factory: pytest.TempPathFactory):
    """Derived specs are cached in a folder of the test run, never in the user's home."""
    previous = os.environ.get("MODECONNECT_CACHE")
    os.environ["MODECONNECT_CACHE"] = str(tmp_path_factory.mktemp("spec-cache"))
    yield
    if previous is None:
        os.environ.pop("MODECONNECT_CACHE", None)
    else:
        os.environ["MODECONNECT_CACHE"] = previous


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def checkpoints() -> Path:
    return CHECKPOINTS


# --------------------------------------------------------------------------- hostile inputs


@pytest.fixture(scope="session")
def hub():
    """A recording stand-in for the Hugging Face Hub (tests/hostile_bench.py)."""
    from hostile_bench import HubRecorder

    recorder = HubRecorder()
    yield recorder
    recorder.close()


@pytest.fixture
def bench(tmp_path: Path, hub, monkeypatch: pytest.MonkeyPatch):
    """A folder of planted files; the Hub is the recorder and sockets stay local."""
    from hostile_bench import make_bench

    yield from make_bench(tmp_path, hub, monkeypatch)
