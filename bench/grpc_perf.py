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
import json
import sys
from collections.abc import Callable
from pathlib import Path
from subprocess import Popen

from common import (
    PEERS,
    RESULTS,
    medians,
    perf_analyzer,
    start_kernel,
    start_triton,
    stop,
    wait_until_ready,
)

MODELS = PEERS / "models"
TRITON_PORTS = (19100, 19101, 19102)
KERNEL_PORTS = (19160, 19161)
Starter = Callable[[Path, tuple[int, ...], Path], "Popen[bytes]"]
SERVERS: dict[str, tuple[Starter, tuple[int, ...]]] = {
    "tritonserver": (start_triton, TRITON_PORTS),
    "triton-kernel": (start_kernel, KERNEL_PORTS),
}


def measure(name: str, concurrency: int, interval_ms: int) -> dict[str, float]:
    start, ports = SERVERS[name]
    process = start(MODELS, ports, RESULTS / f"grpc_perf_{name}.log")
    try:
        wait_until_ready(ports[0], process)
        url = f"127.0.0.1:{ports[1]}"
        return perf_analyzer("identity_fp32", url, "grpc", concurrency, interval_ms)
    finally:
        stop(process)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--interval-ms", type=int, default=5000)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in SERVERS}
    for round_number in range(args.rounds):
        for name in SERVERS:
            result = measure(name, args.concurrency, args.interval_ms)
            runs[name].append(result)
            print(f"round {round_number + 1} {name}: {result}", flush=True)
    middle = {name: medians(results) for name, results in runs.items()}
    ratio = middle["triton-kernel"]["infer_per_sec"] / middle["tritonserver"]["infer_per_sec"]
    summary = {
        "benchmark": "perf_analyzer -i grpc, identity_fp32 FP32[16], python backend",
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "runs": runs,
        "medians": middle,
        "throughput_ratio_kernel_over_triton": round(ratio, 3),
    }
    (RESULTS / "grpc_perf.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({"medians": middle, "ratio": summary["throughput_ratio_kernel_over_triton"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
