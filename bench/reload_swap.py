"""Poll mode under load: how long a changed model takes to serve, and what fails meanwhile.

    python bench/reload_swap.py [--server kernel|triton|both] [--clients 8] [--rounds 5]

Starts the server in ``--model-control-mode=poll`` on a one-model repository (a Python
model answering ``IN * FACTOR``), keeps ``--clients`` closed-loop clients busy (half
HTTP, half gRPC, ``tritonclient`` sync), then rewrites the version's ``model.py`` with a
new FACTOR, once per round. For each round it reports the time from the change until
the first answer of the new version (the poll interval is part of it), until the last
answer of the old one, and the requests sent and failed from the change until the old
version has drained (``--settle`` seconds after the last old answer). ``triton`` is the
real tritonserver 2.51 (``../shared/peers``), on ports 19110-19112.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from subprocess import STDOUT, Popen

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from common import PEERS, RESULTS, stop, wait_until_ready
from tritonclient.utils import InferenceServerException

MODEL = "swapped"
CONFIG = """
name: "swapped"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""
MODEL_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils

FACTOR = {factor}


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(
                "OUT", (pb_utils.get_input_tensor_by_name(r, "IN").as_numpy() * FACTOR)
                .astype(np.float32))])
            for r in requests
        ]
"""


@dataclass
class Round:
    server: str
    round: int
    #: Seconds from the file change to the first answer of the new version.
    first_new_s: float
    #: Seconds from the file change to the last answer of the old version.
    last_old_s: float
    #: Answers per second in the second before the change (steady load on the old version).
    steady_rps: float
    #: Requests answered (or failed) from the change until the old version drained.
    sent: int
    failed: int
    errors: list[str]


class Load:
    """Closed-loop clients; each answer is recorded as (end time, value or None, error)."""

    def __init__(self, http_port: int, grpc_port: int, clients: int) -> None:
        self.results: list[tuple[float, float | None, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i % 2 == 0, http_port, grpc_port))
            for i in range(clients)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self, http: bool, http_port: int, grpc_port: int) -> None:
        module = httpclient if http else grpcclient
        client = module.InferenceServerClient(f"127.0.0.1:{http_port if http else grpc_port}")
        tensor = module.InferInput("IN", [1], "FP32")
        tensor.set_data_from_numpy(np.ones(1, dtype=np.float32))
        while not self._stop.is_set():
            try:
                value: float | None = float(client.infer(MODEL, [tensor]).as_numpy("OUT")[0])
                error = ""
            except InferenceServerException as exc:
                value, error = None, str(exc)
            with self._lock:
                self.results.append((time.perf_counter(), value, error))
        client.close()

    def since(self, started: float) -> list[tuple[float, float | None, str]]:
        with self._lock:
            return [r for r in self.results if r[0] >= started]


def write_model(model_dir: Path, factor: float) -> None:
    """Replace ``1/model.py`` in one step (a poll never reads half a file)."""
    staging = model_dir / ".model.py"
    staging.write_text(MODEL_PY.format(factor=factor))
    os.replace(staging, model_dir / "1" / "model.py")


def one_round(
    load: Load, model_dir: Path, server: str, number: int, settle: float, timeout: float
) -> Round:
    old, new = float(number), float(number + 1)
    before = time.perf_counter()
    time.sleep(1.0)  # steady load on the old version before the change
    changed = time.perf_counter()
    steady = len(load.since(before)) / (changed - before)
    write_model(model_dir, new)
    deadline = changed + timeout
    while time.perf_counter() < deadline:
        answers = load.since(changed)
        new_ends = [t for t, v, _ in answers if v == new]
        if len(new_ends) >= 50:
            last_old = max((t for t, v, _ in answers if v == old), default=changed)
            if time.perf_counter() >= last_old + settle:
                break
        time.sleep(0.05)
    answers = load.since(changed)
    new_ends = [t for t, v, _ in answers if v == new]
    old_ends = [t for t, v, _ in answers if v == old]
    errors = [e for _, v, e in answers if v is None]
    return Round(
        server,
        number,
        first_new_s=round(min(new_ends, default=deadline) - changed, 3),
        last_old_s=round(max(old_ends, default=changed) - changed, 3),
        steady_rps=round(steady, 1),
        sent=len(answers),
        failed=len(errors),
        errors=sorted(set(errors))[:5],
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(server: str, repo: Path, poll_secs: int, log: Path) -> tuple[Popen[bytes], int, int]:
    flags = ["--model-control-mode=poll", f"--repository-poll-secs={poll_secs}"]
    if server == "triton":
        ports = (19110, 19111, 19112)
        command = [str(PEERS / "start_triton.sh"), str(repo), *map(str, ports), *flags]
    else:
        ports = (free_port(), free_port(), 0)
        command = [
            sys.executable,
            "-m",
            "triton_kernel.kernel.cli",
            "serve",
            f"--model-repository={repo}",
            "--http-address=127.0.0.1",
            f"--http-port={ports[0]}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={ports[1]}",
            "--allow-metrics=false",
            *flags,
        ]
    process = Popen(command, stdout=log.open("wb"), stderr=STDOUT)
    wait_until_ready(ports[0], process)
    return process, ports[0], ports[1]


def run(server: str, args: argparse.Namespace) -> list[Round]:
    with tempfile.TemporaryDirectory(prefix="reload-swap-") as scratch:
        repo = Path(scratch) / "repo"
        model_dir = repo / MODEL
        (model_dir / "1").mkdir(parents=True)
        (model_dir / "config.pbtxt").write_text(CONFIG)
        write_model(model_dir, 1.0)
        log = RESULTS / f"reload_swap_{server}.log"
        process, http_port, grpc_port = start(server, repo, args.poll_secs, log)
        load = Load(http_port, grpc_port, args.clients)
        load.start()
        try:
            return [
                one_round(load, model_dir, server, n, args.settle, args.timeout)
                for n in range(1, args.rounds + 1)
            ]
        finally:
            load.stop()
            stop(process)


def report(rounds: list[Round]) -> str:
    lines = [
        "| server | round | first new answer (s) | last old answer (s) | steady req/s "
        "| sent | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rounds:
        lines.append(
            f"| {r.server} | {r.round} | {r.first_new_s:.3f} | {r.last_old_s:.3f} "
            f"| {r.steady_rps:.0f} | {r.sent} | {r.failed} |"
        )
    for server in sorted({r.server for r in rounds}):
        mine = [r for r in rounds if r.server == server]
        lines.append(
            f"| {server} | median / total | "
            f"{statistics.median(r.first_new_s for r in mine):.3f} | "
            f"{statistics.median(r.last_old_s for r in mine):.3f} | "
            f"{statistics.median(r.steady_rps for r in mine):.0f} | "
            f"{sum(r.sent for r in mine)} | {sum(r.failed for r in mine)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=("kernel", "triton", "both"), default="kernel")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--poll-secs", type=int, default=1)
    parser.add_argument("--settle", type=float, default=2.0, help="after the last old answer")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    servers = ["kernel", "triton"] if args.server == "both" else [args.server]
    rounds = [r for server in servers for r in run(server, args)]
    table = report(rounds)
    print(table)
    for r in rounds:
        if r.errors:
            print(f"{r.server} round {r.round} errors: {r.errors}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "reload_swap.json").write_text(
        json.dumps({"args": vars(args), "rounds": [asdict(r) for r in rounds]}, indent=1)
    )
    (RESULTS / "reload_swap.md").write_text(
        f"`python bench/reload_swap.py {' '.join(sys.argv[1:])}`\n\n{table}\n"
    )


if __name__ == "__main__":
    main()
