"""Grids on a local Ray cluster: the same numbers as here, a killed worker costs one task,
and no Ray process outlives the cluster.

One cluster (2 CPUs) serves the whole module: starting one takes seconds on a busy
2-core machine. Its processes are found by the folder it was told to keep its files in.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from study_files import Bench, files_fixture, run  # noqa: F401 (the ``files`` fixture)

import modeconnect as mc
from modeconnect.compare import compare_methods
from modeconnect.distributed import Cluster, cluster_from, map_chunks
from modeconnect.errors import ModeconnectError
from modeconnect.models import conv_net, mlp

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Tip. In future versions of Ray:FutureWarning"),
]
CLUSTER = Cluster(workers=2)


def _ray_processes(folder: str) -> list[str]:
    """Processes whose command line names ``folder`` (Ray's session files live there)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            line = " ".join(proc.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if folder in line and proc.info["pid"] != os.getpid():
            found.append(f"{proc.info['pid']}: {line[:120]}")
    return found


def _gone(folder: str, seconds: float = 20.0) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := _ray_processes(folder)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.fixture(scope="module", autouse=True)
def local_cluster():
    folder = tempfile.mkdtemp(prefix="mcray")  # short: Ray's socket paths have a limit
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=folder)
    assert _ray_processes(folder), "the cluster's processes are found by their folder"
    yield folder
    ray.shutdown()
    assert _gone(folder) == [], "Ray processes left after shutdown"


def _digits(n: int = 120) -> tuple[list, list]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * n, 64, generator=g)
    y = torch.randint(0, 10, (2 * n,), generator=g)
    return [(x[:n], y[:n])], [(x[n:], y[n:])]


def test_a_surface_on_ray_is_the_local_surface_to_the_bit():
    torch.manual_seed(0)
    model = mlp(64, [32], 10)
    data, _ = _digits()
    here = mc.surface_2d(model, model.state_dict(), data, resolution=5, seed=3)
    seen = []
    there = mc.surface_2d(
        model, model.state_dict(), data, resolution=5, seed=3, cluster=CLUSTER,
        progress=lambda task, done, total: seen.append((task, done, total)),
    )  # fmt: skip
    assert there == here  # every loss and accuracy, exactly
    assert len({row for row in here.loss}) == 5  # the rows differ: no row was repeated
    assert [s[1] for s in seen] == [5, 10, 15, 20, 25] and seen[-1] == ("surface", 25, 25)


def test_a_batchnorm_plane_and_a_slice_on_ray_are_the_local_ones():
    torch.manual_seed(1)
    a, b, c = (conv_net(1, (4, 6), 10, 8).state_dict() for _ in range(3))
    model = conv_net(1, (4, 6), 10, 8)
    data, train = _digits(60)
    here = mc.plane_grid(model, a, b, c, data, resolution=3, train=train)
    there = mc.plane_grid(model, a, b, c, data, resolution=3, train=train, cluster=CLUSTER)
    assert there.loss == here.loss and there.accuracy == here.accuracy
    assert here.params["bn"] == "auto"
    line = mc.slice_1d(model, a, data, steps=7, seed=2)
    assert mc.slice_1d(model, a, data, steps=7, seed=2, cluster=CLUSTER) == line


def test_a_barrier_study_on_ray_is_the_local_study_to_the_bit():
    """Curves with a BatchNorm reset and stacked points, and every layer-wise path: the
    path points run as Ray tasks and every number is the local run's."""
    torch.manual_seed(2)
    a, b = (conv_net(1, (4, 6), 10, 8).state_dict() for _ in range(2))
    model = conv_net(1, (4, 6), 10, 8)
    data, train = _digits(60)
    data = [(x.view(-1, 1, 8, 8), y) for x, y in data]
    train = [(x.view(-1, 1, 8, 8), y) for x, y in train]
    common = {"test": data, "train": train, "align": None, "bn": "reset", "steps": 5,
              "layerwise": True, "alpha_batch": 2}  # fmt: skip
    here = mc.barrier_study(model, a, b, **common).to_dict()
    there = mc.barrier_study(model, a, b, cluster=CLUSTER, **common).to_dict()
    here.pop("seconds"), there.pop("seconds")
    assert there == here
    assert len(here["layerwise"]) == 5  # one record (three paths) for each conv, BN, linear
    assert all({"from_a", "from_b", "cumulative"} <= set(r) for r in here["layerwise"])


def _here_and_on_ray(files: Bench, *args: object) -> tuple[dict, dict]:
    """The JSON the command ``args`` writes, run here and with ``--ray auto --workers 2``."""
    import json

    written = []
    for name, extra in (("here", ()), ("there", ("--ray", "auto", "--workers", "2"))):
        path = files.root / f"{name}.json"
        code, _, err = run(*args, "--json", path, *extra)
        assert code == 0, err
        written.append(json.loads(path.read_text()))
    return written[0], written[1]


def test_the_cli_barrier_with_ray_writes_the_local_numbers(files: Bench):
    here, there = _here_and_on_ray(
        files, "barrier", files.a, files.b, "--data", files.test, "--steps", "5"
    )
    assert (there["naive"], there["aligned"]) == (here["naive"], here["aligned"])


def test_a_task_error_is_the_callers_error_once():
    def fails_on_two(shared, chunk):
        if chunk == 2:
            raise ModeconnectError(f"chunk {chunk} is bad; pass another")
        return shared + chunk

    assert map_chunks(fails_on_two, 10, [1, 3], cluster=CLUSTER) == [11, 13]
    with pytest.raises(ModeconnectError, match=r"^chunk 2 is bad; pass another$"):
        map_chunks(fails_on_two, 10, [1, 2, 3], cluster=CLUSTER)


def test_the_cli_landscape_with_ray_writes_the_local_numbers(files: Bench):
    here, there = _here_and_on_ray(
        files, "landscape", files.a, "--data", files.test, "--resolution", "4"
    )
    assert (there["loss"], there["accuracy"]) == (here["loss"], here["accuracy"])


def test_compare_on_ray_has_the_local_rows():
    torch.manual_seed(0)
    model = mlp(64, [16, 16], 10)
    a, b = model.state_dict(), mlp(64, [16, 16], 10).state_dict()
    data, _ = _digits(60)

    def rows(cluster: Cluster | None) -> list[dict]:
        found = compare_methods(model, a, b, data, methods=["weight", "ot"], steps=3,
                                   cluster=cluster)  # fmt: skip
        return [{k: v for k, v in r.to_dict().items() if k != "seconds"} for r in found.rows]

    here = rows(None)
    assert rows(CLUSTER) == here and [r["method"] for r in here] == ["weight", "ot"]


def test_a_sweep_on_ray_has_the_local_rows(files: Bench):
    import json

    config = files.root / "sweep.json"
    config.write_text(json.dumps({"pairs": [["a.pt", "b.pt"], ["a.pt", "c.pt"]], "steps": 3}))

    def rows(name: str, *extra: str) -> list[dict]:
        path = files.root / f"{name}.json"
        code, out, err = run("sweep", config, "--data", files.test, "--json", path, *extra)
        assert code == 0 and "(2 new, 0 from the table)" in out, err
        return [{k: v for k, v in r.items() if k != "seconds"} for r in
                json.loads(path.read_text())["rows"]]  # fmt: skip

    assert rows("there", "--ray", "auto") == rows("here")


def test_a_killed_worker_costs_its_task_not_the_grid(tmp_path: Path):
    """Last of the cluster's tests (a new worker takes seconds to start). The loss kills
    its own worker process the first time a worker calls it; Ray runs
    that task again and the surface is whole and the same as here."""
    marker, driver = tmp_path / "killed", os.getpid()

    def ce_that_kills_once(logits, y):
        if os.getpid() != driver and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return torch.nn.functional.cross_entropy(logits, y, reduction="none")

    torch.manual_seed(0)
    model = mlp(64, [16], 10)
    data, _ = _digits(60)
    kw = {"resolution": 4, "seed": 0, "loss": ce_that_kills_once}
    there = mc.surface_2d(model, model.state_dict(), data, cluster=CLUSTER, **kw)
    assert marker.exists() and int(marker.read_text()) != driver  # a worker did die
    assert there == mc.surface_2d(model, model.state_dict(), data, **kw)


def test_without_ray_the_flag_is_one_line_naming_the_extra(files: Bench, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code, out, err = run("plane", files.a, files.b, files.c, "--data", files.test,
                         "--ray", "auto", "--json", files.root / "p.json")  # fmt: skip
    assert code == 2 and out == "" and not (files.root / "p.json").exists()
    assert err.strip().splitlines() == [
        "Error: --ray needs Ray, which is not installed; install it with "
        'pip install "modeconnect[ray]"'
    ]
    with pytest.raises(ModeconnectError, match="--workers 2 needs --ray"):
        cluster_from(None, 2)
