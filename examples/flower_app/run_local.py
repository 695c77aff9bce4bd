"""Run the digits App with ``flwr run`` on Flower's deployment engine, all on this machine.

What it does, in order:

1. makes a state directory (Flower's home ``FLWR_HOME``, the SuperLink database,
   Ray's temp files) in a fresh temporary directory, and points the ``flwr`` CLI at
   the SuperLink started below through ``$FLWR_HOME/config.toml``;
2. starts one ``flower-superlink`` and ``--supernodes`` (4) ``flower-supernode``
   processes in insecure mode on 127.0.0.1, on free ports chosen now, SuperNode
   ``K`` with ``--node-config "partition-id=K num-partitions=N"``;
3. submits the App with ``flwr run <app> <connection> --stream`` and follows its log
   until the run ends, at most ``--timeout`` seconds (then ``flwr stop``);
4. checks the run's final status (``flwr ls --run-id``) and reads what the
   ServerApp wrote to ``--out`` (``result.json``, ``final.pt``);
5. stops every process it started, by process id: SIGTERM in reverse start order,
   SIGKILL after ``--grace`` seconds. This also happens on errors, Ctrl-C and
   SIGTERM. The processes those spawn (SuperExec, ServerApp and ClientApp
   processes, Ray with ``--engine simulation``) are recorded by id while the run
   goes on; they exit when their parent does, and any still alive after the
   grace period is killed by id as well.

The exit status is 0 only if the run completed, ``result.json`` was written and no
recorded process is left. ``<out>/launch.json`` lists every process id, and
``<out>/logs/`` holds each process's output.

Runtime dependency installation is switched off (``FLWR_DISABLE_RUNTIME_DEPENDENCY_
INSTALLATION=1`` and ``--disable-runtime-dependency-installation``): on Flower >= 1.2x
the SuperLink otherwise ``uv sync``s the App's dependencies into a fresh environment
for every run, from the network. Here they are already installed. Telemetry and the
update check are off too.

It is written for Linux (process ids are followed through ``/proc``; without it, as
on macOS, only the processes it started are tracked) and does not run on Windows.

``--engine simulation`` runs the same App on Flower's simulation engine instead
(one ``flower-superlink --simulation``, ``num-supernodes`` virtual SuperNodes);
it needs ``flwr[simulation]`` (Ray) in the environment of the Python that runs this
script, whose Flower executables are used.

Usage (from the repository root)::

    python examples/flower_app/run_local.py --out flower-run
    python examples/flower_app/run_local.py --out flower-run \\
        --run-config "num-server-rounds=5 local-epochs=5 method='none'"
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

APP_DIR = Path(__file__).resolve().parent
CONNECTION = "modeconnect-local"
HOST = "127.0.0.1"
EXECUTABLES = ("flower-superlink", "flower-supernode", "flwr")


class LaunchError(RuntimeError):
    """The federation could not be started or the run did not complete."""


# --------------------------------------------------------------------------- processes


@dataclass
class Started:
    """A process this script started, and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    start_time: int | None = None  # /proc/PID/stat field 22, where there is a /proc


@dataclass
class ProcessBook:
    """Every process started here, and every descendant seen while they ran.

    Descendants are keyed by pid with their start time (``/proc/PID/stat`` field
    22), so a recycled pid is never mistaken for one of ours.
    """

    started: list[Started] = field(default_factory=list)
    spawned: dict[int, int] = field(default_factory=dict)

    def start(
        self, name: str, argv: Sequence[str], log: Path, env: dict[str, str], cwd: Path
    ) -> Started:
        out = log.open("wb")
        try:
            popen = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            out.close()
        st = _stat(popen.pid)
        started = Started(name, popen, log, st[2] if st else None)
        self.started.append(started)
        return started

    def record_descendants(self) -> None:
        """Remember the processes our processes have spawned (Linux ``/proc``)."""
        self.spawned.update(_descendants([s.popen.pid for s in self.started]))

    def exited(self) -> list[Started]:
        return [s for s in self.started if s.popen.poll() is not None]

    def stop(self, grace: float) -> list[int]:
        """Stop everything, newest first; return the pids still alive afterwards."""
        self.record_descendants()
        for s in reversed(self.started):
            if s.popen.poll() is None:
                s.popen.terminate()
        self.record_descendants()  # what they spawned while shutting down
        deadline = time.monotonic() + grace
        for s in self.started:
            try:
                s.popen.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                s.popen.kill()
                s.popen.wait(timeout=10)
        # Descendants watch their parent's pid and exit shortly after it.
        while self._alive_spawned() and time.monotonic() < deadline + grace:
            time.sleep(0.2)
        for pid in self._alive_spawned():
            _kill(pid, self.spawned[pid])
        time.sleep(0.5)
        left = [s.popen.pid for s in self.started if s.popen.poll() is None]
        return left + self._alive_spawned()

    def _alive_spawned(self) -> list[int]:
        return [pid for pid, t0 in self.spawned.items() if _alive(pid, t0)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "started": [
                {
                    "name": s.name,
                    "pid": s.popen.pid,
                    "start_time": s.start_time,
                    "returncode": s.popen.returncode,
                    "log": str(s.log),
                }
                for s in self.started
            ],
            "spawned": [{"pid": pid, "start_time": t0} for pid, t0 in sorted(self.spawned.items())],
        }


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if this script dies (even by SIGKILL)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of ``pid`` from ``/proc``, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def _alive(pid: int, start_time: int) -> bool:
    """Running (not a zombie) and still the same process."""
    st = _stat(pid)
    return st is not None and st[2] == start_time and st[0] not in ("Z", "X")


def _descendants(roots: Iterable[int]) -> dict[int, int]:
    """pid -> start time of every live descendant of ``roots`` (empty without /proc)."""
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return {}
    for entry in proc.iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            children.setdefault(st[1], []).append(int(entry.name))
    found: dict[int, int] = {}
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found and (st := _stat(child)) is not None:
                found[child] = st[2]
                todo.append(child)
    return found


def _kill(pid: int, start_time: int) -> None:
    if _alive(pid, start_time):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- federation


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that are free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def executables(bin_dir: Path | None = None) -> dict[str, str]:
    """The Flower executables: next to this Python first, else on PATH.

    Raises :class:`LaunchError` naming the missing ones.
    """
    here = Path(sys.executable).parent if bin_dir is None else bin_dir
    found: dict[str, str] = {}
    for name in EXECUTABLES:
        path = here / name
        found[name] = str(path) if path.is_file() else (shutil.which(name) or "")
    missing = [n for n, p in found.items() if not p]
    if missing:
        raise LaunchError(
            f"the Flower executables {', '.join(missing)} are not installed; "
            "install them with pip install 'modeconnect[flower]' (flwr >= 1.21)"
        )
    return found


def flower_env(state: Path, bin_dir: str) -> dict[str, str]:
    """The environment of every Flower process: state under ``state``, nothing phones home."""
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(state / "flwr-home"),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        RAY_TMPDIR=str(state / "ray"),
        PYTHONUNBUFFERED="1",
        PATH=bin_dir + os.pathsep + env.get("PATH", ""),
    )
    return env


def write_connection(flwr_home: Path, port: int) -> None:
    """``$FLWR_HOME/config.toml``: one SuperLink connection, the default."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "{HOST}:{port}"\ninsecure = true\n'
    )


def wait_healthy(port: int, started: Started, timeout: float) -> None:
    """Wait until ``http://127.0.0.1:port/health`` answers, or the process has died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if started.popen.poll() is not None:
            raise LaunchError(
                f"{started.name} exited with code {started.popen.returncode} "
                f"while starting; see {started.log}"
            )
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise LaunchError(
        f"{started.name} did not answer on port {port} within {timeout:.0f} s; see {started.log}"
    )


@dataclass
class Launch:
    """One launch: its settings and the processes it started."""

    app: Path
    out: Path
    state: Path
    engine: str
    supernodes: int
    run_config: list[str]
    timeout: float
    exe: dict[str, str]
    book: ProcessBook = field(default_factory=ProcessBook)
    run_id: int | None = None
    status: str = "not started"

    @property
    def env(self) -> dict[str, str]:
        return flower_env(self.state, str(Path(self.exe["flower-superlink"]).parent))

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    def start_federation(self) -> None:
        ports = free_ports(1 + self.supernodes)
        write_connection(self.state / "flwr-home", ports[0])
        argv = [
            self.exe["flower-superlink"],
            "--insecure",
            "--host",
            HOST,
            "--port",
            str(ports[0]),
            "--database",
            str(self.state / "superlink.db"),
            "--disable-runtime-dependency-installation",
        ]
        if self.engine == "simulation":
            argv.append("--simulation")
        link = self.book.start("superlink", argv, self.logs / "superlink.log", self.env, self.state)
        wait_healthy(ports[0], link, timeout=60)
        print(f"superlink   pid {link.popen.pid:>7}  {HOST}:{ports[0]}", flush=True)
        if self.engine == "simulation":
            return
        for k, port in enumerate(ports[1:]):
            node_config = f"partition-id={k} num-partitions={self.supernodes}"
            node = self.book.start(
                f"supernode-{k}",
                [
                    self.exe["flower-supernode"],
                    "--insecure",
                    "--superlink",
                    f"{HOST}:{ports[0]}",
                    "--host",
                    HOST,
                    "--port",
                    str(port),
                    "--node-config",
                    node_config,
                ],
                self.logs / f"supernode-{k}.log",
                self.env,
                self.state,
            )
            wait_healthy(port, node, timeout=60)
            print(f"supernode-{k} pid {node.popen.pid:>7}  {node_config}", flush=True)

    def run_app(self) -> None:
        """``flwr run --stream`` until the run ends; then its final status."""
        config = " ".join(
            [*self.run_config, f"result-dir='{self.out}'", f"min-nodes={self.supernodes}"]
        )
        argv = [
            self.exe["flwr"],
            "run",
            str(self.app),
            CONNECTION,
            "--run-config",
            config,
            "--stream",
        ]
        if self.engine == "simulation":
            argv += ["--federation-config", f"num-supernodes={self.supernodes}"]
        log = self.logs / "run.log"
        run = self.book.start("flwr-run", argv, log, self.env, self.state)
        print(f"flwr run    pid {run.popen.pid:>7}  log {log}", flush=True)
        deadline = time.monotonic() + self.timeout
        while run.popen.poll() is None:
            self.book.record_descendants()
            dead = [s for s in self.book.exited() if s is not run]
            if dead:
                raise LaunchError(
                    f"{dead[0].name} exited with code {dead[0].popen.returncode} "
                    f"during the run; see {dead[0].log}"
                )
            if time.monotonic() > deadline:
                self._stop_run(log)
                raise LaunchError(
                    f"the run did not finish within --timeout {self.timeout:.0f} s; see {log}"
                )
            time.sleep(0.5)
        self.run_id = _run_id(log)
        if self.run_id is None:
            raise LaunchError(
                f"flwr run did not start a run (exit code {run.popen.returncode}); see {log}"
            )
        self.status = self._status()
        if self.status != "finished:completed":
            raise LaunchError(f"run {self.run_id} ended as {self.status!r}; see {log}")

    def _flwr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.exe["flwr"], *args, CONNECTION],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.state,
            timeout=120,
        )

    def _status(self) -> str:
        proc = self._flwr("ls", "--run-id", str(self.run_id), "--format", "json")
        try:
            return str(json.loads(proc.stdout)["runs"][0]["status"])
        except (ValueError, KeyError, IndexError):
            return f"unknown (flwr ls said: {(proc.stdout + proc.stderr).strip()[:300]})"

    def _stop_run(self, log: Path) -> None:
        self.run_id = _run_id(log)
        self.status = "timed out"
        if self.run_id is not None:
            self._flwr("stop", str(self.run_id))
            self.status = "timed out, stopped with flwr stop"


def _run_id(log: Path) -> int | None:
    match = re.search(r"Successfully started run (\d+)", log.read_text(errors="replace"))
    return int(match.group(1)) if match else None


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for result.json, final.pt, launch.json and logs/",
    )
    p.add_argument("--engine", choices=("deployment", "simulation"), default="deployment")
    p.add_argument("--supernodes", type=int, default=4, help="number of SuperNodes (4)")
    p.add_argument(
        "--run-config",
        action="append",
        default=[],
        help="run config overrides 'key=value ...', as for flwr run",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="seconds the run may take before it is stopped (900)",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=15.0,
        help="seconds between SIGTERM and SIGKILL when stopping (15)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="keep Flower's state here instead of a temporary folder",
    )
    return p.parse_args(argv)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.supernodes < 1:
        print("run_local: --supernodes must be at least 1", file=sys.stderr)
        return 2
    out = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "result.json").unlink(missing_ok=True)  # never report a previous run's result
    state = Path(tempfile.mkdtemp(prefix="mc-flwr-")) if args.state_dir is None else args.state_dir
    state = state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    launch: Launch | None = None
    code, error, started_at = 1, "", time.monotonic()
    try:
        exe = executables()
        if args.engine == "simulation":
            _check_ray(exe)
        launch = Launch(
            APP_DIR, out, state, args.engine, args.supernodes, args.run_config, args.timeout, exe
        )
        launch.start_federation()
        launch.run_app()
        if not (out / "result.json").is_file():
            raise LaunchError(f"the ServerApp wrote no {out / 'result.json'}")
        code = 0
    except LaunchError as exc:
        error = str(exc)
    except KeyboardInterrupt:
        error, code = "interrupted", 130
    except SystemExit as exc:
        error, code = "terminated", int(exc.code or 1)
    finally:
        left = launch.book.stop(args.grace) if launch is not None else []
        signal.signal(signal.SIGTERM, previous)
        if left:
            error = (error + "; " if error else "") + f"processes still running: {left}"
            code = code or 1
        _report(out, launch, code, error, left, time.monotonic() - started_at)
        if args.state_dir is None:
            shutil.rmtree(state, ignore_errors=True)
    return code


def _check_ray(exe: dict[str, str]) -> None:
    python = Path(exe["flower-superlink"]).parent / "python"
    python_cmd = str(python) if python.is_file() else sys.executable
    ok = subprocess.run([python_cmd, "-c", "import ray"], capture_output=True).returncode == 0
    if not ok:
        raise LaunchError(
            "--engine simulation needs Ray in the environment of the Flower executables "
            f"({Path(exe['flower-superlink']).parent}); install flwr[simulation] there, "
            "e.g. in a virtual environment, and run this script with its python"
        )


def _report(
    out: Path, launch: Launch | None, code: int, error: str, left: list[int], seconds: float
) -> None:
    summary: dict[str, Any] = {
        "ok": code == 0,
        "exit_code": code,
        "error": error or None,
        "engine": launch.engine if launch else None,
        "run_id": launch.run_id if launch else None,
        "status": launch.status if launch else None,
        "seconds": round(seconds, 1),
        "left_running": left,
        "processes": launch.book.to_dict() if launch else {"started": [], "spawned": []},
    }
    (out / "launch.json").write_text(json.dumps(summary, indent=2) + "\n")
    n_started = len(summary["processes"]["started"])
    n_spawned = len(summary["processes"]["spawned"])
    print(
        f"stopped {n_started} started processes and {n_spawned} they spawned; "
        f"{len(left)} left running",
        flush=True,
    )
    result = out / "result.json"
    if code == 0 and result.is_file():
        data = json.loads(result.read_text())
        for r in data["rounds"]:
            agg = r["aggregation_seconds"]
            agg_text = "" if agg is None else f"  aggregation {agg * 1000:7.1f} ms"
            print(f"round {r['round']:>3}  test acc {r['accuracy']:7.2%}{agg_text}")
        print(f"final test accuracy {data['final_accuracy']:.2%}; written to {out}")
    if error:
        print(f"run_local: {error}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
