"""gRPC infer throughput against tritonserver, side by side, with Triton's perf_analyzer.

Serves ``../shared/peers/models`` (identity FP32[16], Python backend, one instance)
with the real tritonserver 2.51 and with triton-kernel, one at a time, in interleaved
rounds, and runs ``perf_analyzer -i grpc`` at one concurrency against each. Reports
inferences per second per round, the medians and their ratio, and writes
``bench/results/grpc_perf.json``.

    python bench/grpc_perf.py [--rounds 3] [--concurrency 8] [--interval-ms 5000]
"""

from __future__ import annotations

import argparse
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = Path(os.environ.get("PEERS_DIR", ROOT.parent / "shared" / "peers"))
MODELS = PEERS / "models"
RESULTS = ROOT / "bench" / "results"
TRITON_PORTS = (19100, 19101, 19102)
KERNEL_PORTS = (19160, 19161)


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


def start_triton(log: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    http, grpc, metrics = TRITON_PORTS
    command = [str(PEERS / "start_triton.sh"), str(MODELS), str(http), str(grpc), str(metrics)]
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    return process, http, grpc


def start_kernel(log: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    http, grpc = KERNEL_PORTS
    command = [
        sys.executable,
        "-m",
        "triton_kernel.kernel.cli",
        "serve",
        f"--model-repository={MODELS}",
        "--http-address=127.0.0.1",
        f"--http-port={http}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc}",
        "--allow-metrics=false",
        "--log-info=false",
    ]
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    return process, http, grpc


def perf_analyzer(port: int, concurrency: int, interval_ms: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.csv"
        command = [
            str(PEERS / "perf_analyzer.sh"),
            "-m",
            "identity_fp32",
            "-u",
            f"127.0.0.1:{port}",
            "-i",
            "grpc",
            "--concurrency-range",
            f"{concurrency}:{concurrency}",
            "--measurement-interval",
            str(interval_ms),
            "-f",
            str(report),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"perf_analyzer failed:\n{done.stdout}\n{done.stderr}")
        with report.open() as file:
            row = next(csv.DictReader(file))
    return {
        "infer_per_sec": float(row["Inferences/Second"]),
        "p50_us": float(row["p50 latency"]),
        "p99_us": float(row["p99 latency"]),
    }


def measure(name: str, start: object, concurrency: int, interval_ms: int) -> dict[str, float]:
    log = RESULTS / f"grpc_perf_{name}.log"
    process, http_port, grpc_port = start(log)  # type: ignore[operator]
    try:
        wait_until_ready(http_port, process)
        return perf_analyzer(grpc_port, concurrency, interval_ms)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--interval-ms", type=int, default=5000)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, float]]] = {"tritonserver": [], "triton-kernel": []}
    for round_number in range(args.rounds):
        for name, start in (("tritonserver", start_triton), ("triton-kernel", start_kernel)):
            result = measure(name, start, args.concurrency, args.interval_ms)
            runs[name].append(result)
            print(f"round {round_number + 1} {name}: {result}", flush=True)
    medians = {
        name: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for name, results in runs.items()
    }
    ratio = medians["triton-kernel"]["infer_per_sec"] / medians["tritonserver"]["infer_per_sec"]
    summary = {
        "benchmark": "perf_analyzer -i grpc, identity_fp32 FP32[16], python backend",
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "runs": runs,
        "medians": medians,
        "throughput_ratio_kernel_over_triton": round(ratio, 3),
    }
    (RESULTS / "grpc_perf.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({"medians": medians, "ratio": summary["throughput_ratio_kernel_over_triton"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
