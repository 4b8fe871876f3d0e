"""A real ``triton-kernel serve`` process on loopback, driven by the real ``tritonclient``."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tritonclient.http as httpclient

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "models"
MODELS = Path(__file__).resolve().parent / "models"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    process: subprocess.Popen[str]
    url: str
    log_path: Path
    #: ``host:port`` of the gRPC frontend.
    grpc_url: str = ""

    def log(self) -> str:
        return self.log_path.read_text()

    def client(self, **kwargs: object) -> httpclient.InferenceServerClient:
        return httpclient.InferenceServerClient(self.url, **kwargs)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def start_server(
    repository: Path | None, *flags: str, log_path: Path, wait_ready: bool = True
) -> RunningServer:
    port, grpc_port = free_port(), free_port()
    command = [sys.executable, "-m", "triton_kernel.kernel.cli", "serve"]
    if repository is not None:
        command.append(f"--model-repository={repository}")
    command += [
        "--http-address=127.0.0.1",
        f"--http-port={port}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc_port}",
        "--allow-metrics=false",
        "--exit-timeout-secs=5",
        *flags,
    ]
    log = log_path.open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    server = RunningServer(process, f"127.0.0.1:{port}", log_path, f"127.0.0.1:{grpc_port}")
    if wait_ready:
        wait_until_live(server)
    return server


def wait_until_live(server: RunningServer, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{server.log()}")
        try:
            with socket.create_connection(tuple(server.url.split(":")), 0.2):  # type: ignore[arg-type]
                return
        except OSError:
            time.sleep(0.05)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server did not start:\n{server.log()}")


def write_model(repository: Path, name: str, config: str, model_py: str, version: int = 1) -> Path:
    """A Triton Python model: ``<repo>/<name>/config.pbtxt`` and ``<version>/model.py``."""
    model_dir = repository / name
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    if config:
        (model_dir / "config.pbtxt").write_text(textwrap.dedent(config))
    (model_dir / str(version) / "model.py").write_text(textwrap.dedent(model_py))
    return model_dir


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example models plus the test models of ``tests/integration/models``."""
    repo = tmp_path_factory.mktemp("repo")
    for source in (EXAMPLES, MODELS):
        for model in source.iterdir():
            if model.is_dir():
                shutil.copytree(model, repo / model.name)
    return repo


@pytest.fixture(scope="session")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    log_path = tmp_path_factory.mktemp("log") / "server.log"
    running = start_server(repository, log_path=log_path)
    client = running.client()
    deadline = time.monotonic() + 30
    while not client.is_server_ready() and time.monotonic() < deadline:
        time.sleep(0.05)
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    with server.client() as c:
        yield c


@pytest.fixture
def url(server: RunningServer) -> str:
    return f"http://{server.url}"


def pids_of_children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc), to check that none outlives the server."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry))
    return children
