"""What the side-by-side benchmarks share: start a server, wait for it, run perf_analyzer.

Both servers run as real processes on loopback, one at a time, so that they never
compete for the machine's two cores; load comes from Triton's own ``perf_analyzer``
(``../shared/peers/perf_analyzer.sh``), the same client for both.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = Path(os.environ.get("PEERS_DIR", ROOT.parent / "shared" / "peers"))
RESULTS = ROOT / "bench" / "results"


def wait_until_ready(
    http_port: int, process: subprocess.Popen[bytes], timeout: float = 120
) -> None:
    """Poll ``/v2/health/ready`` (both servers answer it once every model loaded)."""
    url = f"http://127.0.0.1:{http_port}/v2/health/ready"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")


def start_triton(repository: Path, ports: Sequence[int], log: Path) -> subprocess.Popen[bytes]:
    """The real tritonserver 2.51 on ``repository`` (HTTP, gRPC and metrics ``ports``)."""
    command = [str(PEERS / "start_triton.sh"), str(repository), *map(str, ports)]
    return subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def start_kernel(repository: Path, ports: Sequence[int], log: Path) -> subprocess.Popen[bytes]:
    """triton-kernel from this checkout on ``repository`` (HTTP and gRPC ``ports``)."""
    http, grpc = ports
    command = [
        sys.executable,
        "-m",
        "triton_kernel.kernel.cli",
        "serve",
        f"--model-repository={repository}",
        "--http-address=127.0.0.1",
        f"--http-port={http}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc}",
        "--allow-metrics=false",
        "--log-info=false",
    ]
    return subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if the server has not exited within 30 s."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def perf_analyzer(
    model: str,
    url: str,
    protocol: str,
    concurrency: int,
    interval_ms: int,
    extra: Sequence[str] = (),
) -> dict[str, float]:
    """One perf_analyzer measurement at ``concurrency``: infer/s, p50 and p99 in us."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.csv"
        command = [
            str(PEERS / "perf_analyzer.sh"),
            *("-m", model, "-u", url, "-i", protocol),
            *("--concurrency-range", f"{concurrency}:{concurrency}"),
            *("--measurement-interval", str(interval_ms), "-f", str(report), *extra),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not report.exists():
            raise RuntimeError(f"perf_analyzer failed:\n{done.stdout}\n{done.stderr}")
        with report.open() as file:
            row = next(csv.DictReader(file))
    return {
        "infer_per_sec": float(row["Inferences/Second"]),
        "p50_us": float(row["p50 latency"]),
        "p99_us": float(row["p99 latency"]),
    }


def model_counts(http_port: int, model: str) -> tuple[int, int]:
    """``(inference_count, execution_count)`` from the statistics extension (HTTP)."""
    url = f"http://127.0.0.1:{http_port}/v2/models/{model}/stats"
    with urllib.request.urlopen(url, timeout=10) as response:
        stats = json.load(response)["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by ``pid`` and its live descendants.

    Both servers run Python models in child processes (Triton's stub, our worker), so
    the server's cost is the whole tree's. On a shared machine CPU per inference is
    steadier than inferences per second.
    """
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after the name: state, ppid, ..., utime (14th field) and stime (15th)
        stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, (ppid, _) in stats.items() if ppid == parent and p not in tree]
        tree.update(children)
        frontier.extend(children)
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(stats[p][1] for p in tree if p in stats) / ticks


def medians(results: Sequence[dict[str, float | None]]) -> dict[str, float | None]:
    """The median of each key over ``results`` (rounds of one configuration), Nones left out."""
    values = {key: [r[key] for r in results if r.get(key) is not None] for key in results[0]}
    return {key: statistics.median(v) if v else None for key, v in values.items()}
