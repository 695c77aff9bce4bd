"""The digits Flower App (examples/flower_app) as a federated team would run it.

The slow tests start a real ``flower-superlink`` and four ``flower-supernode``
processes on 127.0.0.1 through the App's launcher, run the App with ``flwr run``,
and check the final global model and that every process is gone afterwards. The
fast ones check the App's pieces (partition, data split, launcher helpers) and the
study script that measures FedAvg against AlignedFedAvg over many rounds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
pytest.importorskip("flwr")

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "examples" / "flower_app"
LAUNCHER = APP / "run_local.py"
sys.path.insert(0, str(APP))
sys.path.insert(0, str(ROOT / "examples"))

from digits_app.task import (  # noqa: E402
    Settings,
    build_model,
    class_proportions,
    client_data,
    dirichlet_partition,
    load_digits_split,
    parse_hidden,
)

import modeconnect as mc  # noqa: E402
from modeconnect.evaluation import evaluate  # noqa: E402

# Two rounds of a one-hidden-layer MLP, five local epochs, server-side evaluation only.
# Seen on CPU: initial model 3.8 % test accuracy, round 1 78.6 %, round 2 90.4 %,
# identical to the same rounds run in-process.
RUN_CONFIG = "num-server-rounds=2 hidden='32' local-epochs=5 lr=0.1 fraction-evaluate=0.0"
SETTINGS = Settings(num_server_rounds=2, hidden=(32,), local_epochs=5, lr=0.1)
MIN_FINAL_ACCURACY = 0.85
NODES = {"superlink", "supernode-0", "supernode-1", "supernode-2", "supernode-3"}


def _launcher():
    """The launcher script as a module (it is a script, not part of a package)."""
    if "run_local" not in sys.modules:
        spec = importlib.util.spec_from_file_location("run_local", LAUNCHER)
        module = importlib.util.module_from_spec(spec)
        sys.modules["run_local"] = module  # dataclasses look their module up here
        spec.loader.exec_module(module)
    return sys.modules["run_local"]


def _skip_without_flower_executables():
    launcher = _launcher()
    try:
        launcher.executables()
    except launcher.LaunchError as exc:
        pytest.skip(f"cannot run a Flower deployment here: {exc}")


def _running(pid: int, start_time: int | None) -> bool:
    """True if ``pid`` is still the process we started and has not exited (zombies count
    as exited: they hold no resources and only wait for their parent to reap them)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: the pid exists, assume the worst
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0] not in ("Z", "X") and (start_time is None or int(fields[19]) == start_time)


def _all_processes(launch: dict) -> list[dict]:
    return launch["processes"]["started"] + launch["processes"]["spawned"]


def _env() -> dict[str, str]:
    return dict(os.environ, FLWR_TELEMETRY_ENABLED="0", PYTHONUNBUFFERED="1")


def _launch(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """The launcher, as a user runs it, on the short run of RUN_CONFIG."""
    argv = [sys.executable, str(LAUNCHER), "--out", str(out), "--run-config", RUN_CONFIG]
    return subprocess.run([*argv, "--timeout", "300", *extra], capture_output=True, text=True,
                          timeout=600, env=_env(), cwd=out)  # fmt: skip


# --------------------------------------------------------------------------- the App's pieces


def test_split_is_the_shipped_digits_split(checkpoints):
    train, test = load_digits_split()
    shipped_train = torch.load(checkpoints / "digits_train.pt", weights_only=True)
    shipped_test = torch.load(checkpoints / "digits_test.pt", weights_only=True)
    assert torch.equal(train.x, shipped_train["x"]) and torch.equal(train.y, shipped_train["y"])
    assert torch.equal(test.x, shipped_test["x"]) and torch.equal(test.y, shipped_test["y"])


@pytest.mark.parametrize("alpha", [0.1, 0.5, 100.0])
def test_dirichlet_partition_is_disjoint_covering_and_seeded(alpha):
    train, _ = load_digits_split()
    parts = dirichlet_partition(train.y, 4, alpha, seed=3)
    everything = torch.cat(parts).sort().values
    assert torch.equal(everything, torch.arange(len(train.y)))
    again = dirichlet_partition(train.y, 4, alpha, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))
    # Each class is dealt out in the proportions drawn for it.
    props = torch.as_tensor(class_proportions(4, alpha, seed=3))
    for c in range(10):
        n_c = int((train.y == c).sum())
        got = torch.tensor([int((train.y[p] == c).sum()) for p in parts], dtype=torch.float64)
        assert (got - props[c] * n_c).abs().max() <= 1.0


def test_small_alpha_gives_skewed_shares():
    train, _ = load_digits_split()
    skew = []
    for alpha in (0.1, 100.0):
        shares = [client_data(k, 4, alpha, seed=0)[0] for k in range(4)]
        top = [torch.bincount(s.y, minlength=10).max() / len(s) for s in shares]
        skew.append(float(torch.stack(top).mean()))
    assert skew[0] > 0.3 > 0.15 > skew[1]  # one class dominates vs. ~10 % each


def test_bad_partition_and_hidden_are_explained():
    with pytest.raises(ValueError, match="partition-id=4 is outside 0..3; start each SuperNode"):
        client_data(4, 4, 0.5, seed=0)
    with pytest.raises(ValueError, match="hidden='12,x': give positive hidden widths"):
        parse_hidden("12,x")
    assert parse_hidden("64,32") == (64, 32)


def test_settings_read_the_run_config_of_the_app():
    from toml_compat import tomllib

    config = tomllib.loads((APP / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    defaults = Settings.from_run_config(config["config"])
    assert defaults.hidden == (128, 128, 128) and defaults.method == "weight"
    assert config["components"] == {
        "serverapp": "digits_app.server_app:app",
        "clientapp": "digits_app.client_app:app",
    }
    assert Settings.from_run_config({"hidden": "16", "method": "none"}).hidden == (16,)


def test_launcher_names_missing_executables(tmp_path):
    launcher = _launcher()
    with pytest.raises(launcher.LaunchError, match="flower-superlink, flower-supernode, flwr are"):
        old = os.environ["PATH"]
        os.environ["PATH"] = str(tmp_path)
        try:
            launcher.executables(bin_dir=tmp_path)
        finally:
            os.environ["PATH"] = old
    ports = launcher.free_ports(5)
    assert len(set(ports)) == 5


def test_launcher_keeps_flower_state_out_of_home(tmp_path):
    launcher = _launcher()
    env = launcher.flower_env(tmp_path, "/x/bin")
    assert env["FLWR_HOME"] == str(tmp_path / "flwr-home")
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    assert env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    launcher.write_connection(tmp_path / "flwr-home", 4321)
    text = (tmp_path / "flwr-home" / "config.toml").read_text()
    assert 'address = "127.0.0.1:4321"' in text and "insecure = true" in text


def test_study_script_quick(tmp_path):
    import federated_rounds

    from modeconnect.provenance import read_result

    result = federated_rounds.main(["--out", str(tmp_path), "--quick"])
    assert (tmp_path / "federated_rounds.png").stat().st_size > 10_000
    saved = read_result(tmp_path / "federated_rounds.json")
    body = json.loads((tmp_path / "federated_rounds.json").read_text())
    assert body["provenance"]["seeds"] == [0, 1]
    assert len(saved["runs"]) == 4 and len(saved["runs"][0]["rounds"]) == 3
    row = result["summary"][0]
    # docs/federated.md's quick claim: multi-round alignment keeps every unit in place
    # (0 of 4 aggregations move a unit), so both strategies end identically.
    assert row["AlignedFedAvg"]["moved_units"] == 0
    assert row["AlignedFedAvg"]["rounds_with_moves"][0] == 0
    assert row["final_difference"] == [0.0, 0.0]
    # ... and one-shot MergeMany lifts the merge in every seed (stored quick run: +14.5
    # ± 4.1 points, results/federated_rounds_quick.json; tolerance 2 points).
    assert len(result["one_shot"]) == 2
    gains = [100 * (s["AlignedFedAvg"] - s["FedAvg"]) for s in result["one_shot"]]
    assert min(gains) > 5
    assert sum(gains) / len(gains) == pytest.approx(14.5, abs=2.0)
    # The plot is drawn from the stored file alone.
    federated_rounds.main(["--plot-from", str(tmp_path / "federated_rounds.json"),
                           "--plot", str(tmp_path / "again.png")])  # fmt: skip
    assert (tmp_path / "again.png").stat().st_size > 10_000


def test_in_process_rounds_match_the_library_function():
    """The study's rounds are FedAvg / aligned FedAvg as modeconnect computes them."""
    import federated_rounds

    plain = federated_rounds.simulate(Settings(num_server_rounds=1, hidden=(16,), method="none"))
    torch.manual_seed(0)
    model = build_model((16,))
    shares = [client_data(k, 4, 0.5, 0)[0] for k in range(4)]
    local = [
        federated_rounds._local_update(
            Settings(hidden=(16,)), model.state_dict(), s, federated_rounds.client_seed(0, 1, k)
        )
        for k, s in enumerate(shares)
    ]
    expected = mc.fedavg(local, [len(s) for s in shares])
    _, test = load_digits_split()
    assert plain[1].accuracy == evaluate(model, expected, [(test.x, test.y)]).accuracy


# --------------------------------------------------------------------------- deployment


def _check_stopped(launch: dict) -> None:
    """Every process the launcher started, and every one they spawned, is gone."""
    assert {p["name"] for p in launch["processes"]["started"]} == NODES | {"flwr-run"}
    assert launch["left_running"] == []
    still = [p for p in _all_processes(launch) if _running(p["pid"], p["start_time"])]
    assert still == [], f"processes left running: {still}"


_REFERENCE: list = []


def _check_rounds(out: Path, proc: subprocess.CompletedProcess[str], engine: str):
    """The run finished on ``engine`` and each round's test accuracy and loss are those of
    the same rounds in this process, through the same strategy (whatever the engine, the
    clients train the same shares from the same seeds). Returns launch.json, result.json."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    launch = json.loads((out / "launch.json").read_text())
    assert launch["status"] == "finished:completed" and launch["engine"] == engine
    result = json.loads((out / "result.json").read_text())
    assert [r["round"] for r in result["rounds"]] == [0, 1, 2]
    assert result["rounds"][0]["accuracy"] < 0.2
    assert result["final_accuracy"] > MIN_FINAL_ACCURACY
    assert all(r["aggregation_seconds"] > 0 for r in result["rounds"][1:])
    if not _REFERENCE:
        import federated_rounds

        _REFERENCE.extend(federated_rounds.simulate(SETTINGS))
    # Accuracies exactly; losses to float32 summation order (seen: 2e-8 apart).
    assert [r["accuracy"] for r in result["rounds"]] == [r.accuracy for r in _REFERENCE]
    got, want = [r["loss"] for r in result["rounds"]], [r.loss for r in _REFERENCE]
    assert got == pytest.approx(want, rel=1e-6), f"{engine}: losses {got} != {want}"
    return launch, result


@pytest.mark.slow
def test_deployment_run_trains_the_global_model_and_stops_every_process(tmp_path):
    # One test, not a shared fixture: under pytest-xdist a module fixture would
    # start one federation per worker.
    _skip_without_flower_executables()
    proc = _launch(tmp_path)
    launch, result = _check_rounds(tmp_path, proc, "deployment")
    # The final model is a modeconnect checkpoint that evaluates to the reported accuracy.
    ckpt = mc.load(tmp_path / "final.pt")
    _, test = load_digits_split()
    acc = evaluate(build_model((32,)), ckpt.state_dict, [(test.x, test.y)]).accuracy
    assert acc == pytest.approx(result["final_accuracy"])
    assert "final test accuracy" in proc.stdout and "0 left running" in proc.stdout
    # SuperExecs, the ServerApp and the ClientApps were seen (Linux /proc), and are gone.
    if Path("/proc").is_dir():
        assert len(launch["processes"]["spawned"]) >= 5
    _check_stopped(launch)


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_the_federation(tmp_path):
    _skip_without_flower_executables()
    log = (tmp_path / "launcher.log").open("w")
    launcher = subprocess.Popen(
        [
            sys.executable,
            str(LAUNCHER),
            "--out",
            str(tmp_path),
            "--run-config",
            "num-server-rounds=50 local-epochs=20",
            "--timeout",
            "300",
            "--grace",
            "10",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(),
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 180
        while "flwr run" not in (tmp_path / "launcher.log").read_text():
            assert launcher.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        time.sleep(5)  # the run is under way
        launcher.send_signal(signal.SIGTERM)
        code = launcher.wait(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        log.close()
    assert code == 128 + signal.SIGTERM
    launch = json.loads((tmp_path / "launch.json").read_text())
    assert launch["error"] == "terminated"
    _check_stopped(launch)


@pytest.mark.slow
def test_simulation_engine_runs_the_same_app(tmp_path):
    """The simulation engine (Ray; the test extra installs flwr[simulation]) gives the
    deployment engine's numbers: both equal the in-process rounds (_check_rounds)."""
    _skip_without_flower_executables()
    proc = _launch(tmp_path, "--engine", "simulation")
    launch, _ = _check_rounds(tmp_path, proc, "simulation")
    assert launch["left_running"] == []
    assert [p for p in _all_processes(launch) if _running(p["pid"], p["start_time"])] == []
