"""Time from ``triton-kernel serve`` to ``/v2/health/ready`` answering 200.

    python bench/startup.py [--repeat 5] [-- extra serve flags]

Prints each run and the median; uses the example repository unless flags say otherwise.
"""

from __future__ import annotations

import argparse
import http.client
import socket
import statistics
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ready(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
        connection.request("GET", "/v2/health/ready")
        return connection.getresponse().status == 200
    except OSError:
        return False


def one_run(extra: list[str]) -> float:
    port = free_port()
    command = ["triton-kernel", "serve", "--http-address=127.0.0.1", f"--http-port={port}", *extra]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not ready(port):
            if process.poll() is not None:
                raise SystemExit(f"server exited with {process.returncode}")
            time.sleep(0.005)
        return time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args, extra = parser.parse_known_args()
    extra = [flag for flag in extra if flag != "--"]
    times = [one_run(extra) for _ in range(args.repeat)]
    for seconds in times:
        print(f"ready after {seconds:.3f} s")
    print(f"median {statistics.median(times):.3f} s over {len(times)} runs")


if __name__ == "__main__":
    sys.exit(main())
