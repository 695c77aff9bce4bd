"""The bench the hostile suites share: a folder of planted files, and the one assertion.

Every hostile case builds its files in a fresh folder and runs one command on them.
:func:`assert_refused` requires what SECURITY.md promises: exit code 2, exactly one line
on stderr and no traceback, no marker file (the payloads try to make one), no file
added, changed or removed under the folder (so no output and no temporary file, and
every input byte-identical), and no network: no request reached the recording Hub
endpoint (:class:`HubRecorder`), and no in-process socket tried to leave the machine.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import safetensors.torch
import torch
from click.testing import CliRunner

from modeconnect.io.checkpoints import load_checkpoint
from modeconnect_cli.main import main

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT / "checkpoints"
MARKER = "pwned"
Run = Callable[[], tuple[int, str]]


# --------------------------------------------------------------------------- the network


class HubRecorder:
    """A local HTTP server standing in for the Hugging Face Hub: it records every request.

    ``HF_ENDPOINT`` points here for every hostile case (in-process and in subprocesses),
    so a download that anything tried would show up in :attr:`requests` instead of
    reaching the internet. It answers 404 to everything.
    """

    def __init__(self) -> None:
        self.requests: list[str] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _record(self) -> None:
                recorder.requests.append(f"{self.command} {self.path}")
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = do_POST = do_PUT = _record

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class OutboundSockets:
    """Refuses and records every in-process socket connection that leaves the loopback."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def install(self, monkeypatch: object) -> None:
        original = socket.socket.connect
        attempts = self.attempts

        def connect(sock: socket.socket, address: object) -> object:
            host = address[0] if isinstance(address, tuple) else str(address)
            if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in (
                "127.0.0.1", "::1", "localhost",
            ):  # fmt: skip
                attempts.append(str(address))
                raise OSError(f"hostile bench: no network ({address})")
            return original(sock, address)

        monkeypatch.setattr(socket.socket, "connect", connect)  # type: ignore[attr-defined]


def hub_environment(url: str) -> dict[str, str]:
    """The environment of a child: the Hub is the recorder, and offline mode is *not* set.

    modeconnect must keep the child offline by itself; a variable set here would hide
    a hole.
    """
    offline = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    env = {k: v for k, v in os.environ.items() if k not in offline}
    env["HF_ENDPOINT"] = url
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


# --------------------------------------------------------------------------- the bench


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``: files by sha256, folders and links as what they are."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = f"<link {os.readlink(path)}>"
        elif path.is_dir():
            out[rel] = "<dir>"
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


class Bench:
    """A folder with a clean pair, data, and helpers to plant hostile files in it."""

    def __init__(self, root: Path, hub: HubRecorder, sockets: OutboundSockets) -> None:
        self.root = root
        self.hub = hub
        self.sockets = sockets
        self.marker = root / MARKER
        self.a = self._copy("mlp_a.pt")
        self.b = self._copy("mlp_b.pt")
        self.data = self._copy("digits_test.pt")
        self.victim = root / "victim"
        self.victim.mkdir()
        (self.victim / "keep.txt").write_text("precious")

    def _copy(self, name: str) -> Path:
        target = self.root / name
        target.write_bytes((CHECKPOINTS / name).read_bytes())
        return target

    def state_dict(self) -> dict[str, torch.Tensor]:
        return load_checkpoint(self.a).state_dict

    def pt_naming(self, name: str, ref: str, kwargs: dict) -> Path:
        path = self.root / name
        torch.save({"state_dict": self.state_dict(), "model": ref, "model_kwargs": kwargs}, path)
        return path

    def safetensors_naming(self, name: str, ref: str, kwargs: dict) -> Path:
        path = self.root / name
        meta = {"modeconnect.model": ref, "modeconnect.model_kwargs": json.dumps(kwargs)}
        safetensors.torch.save_file(self.state_dict(), str(path), meta)
        return path

    def evil_module(self) -> Path:
        path = self.root / "evil_models.py"
        path.write_text(
            "from pathlib import Path\n"
            f"Path({str(self.marker)!r}).write_text('imported')\n"
            "from modeconnect.models import mlp as build\n"
        )
        return path

    def data_file(self, name: str, x: torch.Tensor, y: torch.Tensor) -> Path:
        path = self.root / name
        torch.save({"x": x, "y": y}, path)
        return path

    # ------------------------------------------------------------------ running

    def cli(self, *args: object) -> Run:
        """The command in-process (click's runner)."""

        def run() -> tuple[int, str]:
            result = CliRunner().invoke(main, [str(a) for a in args])
            return result.exit_code, result.stderr

        return run

    def subprocess(self, *args: object, cwd: Path = ROOT) -> Run:
        """The installed command's module in a child process, its Hub pointed at the recorder."""

        def run() -> tuple[int, str]:
            proc = subprocess.run(
                [sys.executable, "-m", "modeconnect_cli.main", *map(str, args)],
                capture_output=True, text=True, timeout=300, cwd=cwd,
                env=hub_environment(self.hub.url),
            )  # fmt: skip
            return proc.returncode, proc.stderr

        return run


def make_bench(tmp_path: Path, hub: HubRecorder, monkeypatch: object) -> Iterator[Bench]:
    """The ``bench`` fixture's body: the Hub pointed at the recorder, sockets kept local."""
    sockets = OutboundSockets()
    sockets.install(monkeypatch)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)  # type: ignore[attr-defined]
    if "huggingface_hub.constants" in sys.modules:
        monkeypatch.setattr(sys.modules["huggingface_hub.constants"], "ENDPOINT", hub.url)  # type: ignore[attr-defined]
    hub.requests.clear()
    yield Bench(tmp_path, hub, sockets)


def assert_refused(bench: Bench, run: Run, *expect: str) -> str:
    """Run ``run`` and require a clean refusal (module docstring); return the one line."""
    before = snapshot(bench.root)
    code, stderr = run()
    after = snapshot(bench.root)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for text in expect:
        assert text in stderr, (text, stderr)
    assert not bench.marker.exists(), "a payload ran"
    assert after == before, "files changed: " + str(set(after.items()) ^ set(before.items()))
    assert bench.hub.requests == [], f"the Hub was asked: {bench.hub.requests}"
    assert bench.sockets.attempts == [], f"sockets tried to leave: {bench.sockets.attempts}"
    return lines[0]
