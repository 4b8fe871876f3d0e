"""The identity_fp32 matrix of the performance issue: tritonserver, MLServer and triton-kernel.

Starts the three servers (through ``../shared/peers/``; triton-kernel from this checkout)
on ``identity_fp32`` (Python backend, FP32[1,16], one instance), then measures each
with the same closed-loop load generator (``loadgen.py --client raw``) over HTTP JSON,
HTTP binary (Triton's binary tensor extension; MLServer has none) and gRPC, at each
concurrency. Repetitions are interleaved: every configuration of every server once,
then again with the servers in reverse order, so that noise from other work on the
machine spreads over all of them. Besides throughput and latency, each run records the
server's CPU seconds per inference (user + system over its process tree, Python
workers and stubs included), which moves much less than throughput on a shared machine.

``--servers ... ceiling`` adds servers that do nothing, measured the same way: the
peers' bare-protocol ``trivial_http_server.py`` (a fixed JSON answer, so its HTTP runs
skip the identity check) and ``bench/trivial_grpc_server.py`` (the identity answer,
looked up by the request's bytes). Their rates are what the load generator itself
reaches on this machine: no server can go faster.

Writes ``bench/results/perf_matrix.json`` (every run), ``perf_matrix.md`` (medians and
ratios) and ``perf_matrix.png`` (throughput vs concurrency, a line per server, a panel
per protocol; only when matplotlib is installed).

    python bench/perf_matrix.py [--reps 3] [--duration 8] [--servers triton mlserver kernel]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import PEERS, RESULTS, start_kernel, start_triton, stop, tree_cpu_seconds
from common import wait_until_ready as _wait_ready

MODEL = "identity_fp32"
INPUT = "INPUT0:FP32:1,16"
#: Display names, in the tables' order.
NAMES = {
    "triton": "tritonserver 2.51",
    "mlserver": "MLServer 1.7.1",
    "kernel": "triton-kernel",
    "ceiling": "do-nothing server",
}
#: One colour per server in every panel of the plot.
COLOURS = {
    "triton": "tab:green",
    "mlserver": "tab:orange",
    "kernel": "tab:blue",
    "ceiling": "tab:gray",
}
#: protocol label -> (loadgen --protocol, --http-body)
PROTOCOLS = {"http-json": ("http", "json"), "http-binary": ("http", "binary"), "grpc": ("grpc", "")}
#: What each peer speaks (MLServer has no binary tensor extension).
SUPPORTS = {"mlserver": ("http-json", "grpc")}


@dataclass
class Target:
    """A running server: its process and where to reach it."""

    name: str
    process: subprocess.Popen[bytes]
    http: int
    grpc: int
    #: The process serving gRPC when it is not ``process`` (the do-nothing servers).
    grpc_process: subprocess.Popen[bytes] | None = None

    def processes(self) -> list[subprocess.Popen[bytes]]:
        return [self.process] + ([self.grpc_process] if self.grpc_process else [])


def bench_python() -> str:
    """The client venv's interpreter (loadgen's pinned numpy, grpcio, uvloop)."""
    done = subprocess.run([str(PEERS / "bench_env.sh")], capture_output=True, text=True, check=True)
    return str(Path(done.stdout.strip()) / "bin" / "python")


def start(name: str, base: int, scratch: Path, logs: Path) -> Target:
    """Start one server on its ports (``base``.. ``base``+2) and wait until it is ready."""
    log = logs / f"perf_matrix_{name}.log"
    if name == "triton":  # its Python backend writes __pycache__ into the repository
        process = start_triton(scratch / "models", (base, base + 1, base + 2), log)
    elif name == "mlserver":
        command = [str(PEERS / "start_mlserver.sh"), str(base), str(base + 1), str(base + 2)]
        env = {**os.environ, "PEERS_MLSERVER_SCRATCH": str(scratch / "mlserver")}
        process = subprocess.Popen(
            command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env
        )
    elif name == "ceiling":
        return start_ceiling(base, log)
    else:
        process = start_kernel(scratch / "models", (base, base + 1), log)
    target = Target(name, process, base, base + 1)
    try:
        wait_until_ready(target)
    except BaseException:
        stop(process)
        raise
    return target


def start_ceiling(base: int, log: Path) -> Target:
    """The do-nothing HTTP and gRPC servers, on ``base`` and ``base`` + 1."""
    output = log.open("wb")
    http = [sys.executable, str(PEERS / "trivial_http_server.py"), "--impl", "protocol"]
    grpc = [sys.executable, str(Path(__file__).with_name("trivial_grpc_server.py"))]
    target = Target(
        "ceiling",
        subprocess.Popen([*http, "--port", str(base)], stdout=output, stderr=subprocess.STDOUT),
        base,
        base + 1,
        subprocess.Popen([*grpc, "--port", str(base + 1)], stdout=output, stderr=subprocess.STDOUT),
    )
    deadline = time.monotonic() + 30
    for port in (base, base + 1):
        while not _listening(port):
            if time.monotonic() > deadline or any(p.poll() is not None for p in target.processes()):
                for process in target.processes():
                    stop(process)
                raise RuntimeError("the do-nothing servers did not start")
            time.sleep(0.2)
    return target


def wait_until_ready(target: Target) -> None:
    """Ready, and the model answers (MLServer's /v2/health/ready is up before its model)."""
    _wait_ready(target.http, target.process, timeout=600)
    url = f"http://127.0.0.1:{target.http}/v2/models/{MODEL}/ready"
    deadline = time.monotonic() + 120
    while subprocess.run(["curl", "-sf", "-o", "/dev/null", url]).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{target.name}: {MODEL} did not become ready")
        time.sleep(0.5)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def server_pid(target: Target, wire: str) -> int:
    """The server's own process (the start scripts ``exec`` it; the shell is gone)."""
    if wire == "grpc" and target.grpc_process is not None:
        return target.grpc_process.pid
    return target.process.pid


def run_one(
    python: str, target: Target, protocol: str, concurrency: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One loadgen run; the server tree's CPU seconds are sampled around it."""
    wire, body = PROTOCOLS[protocol]
    port = target.http if wire == "http" else target.grpc
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as out:
        command = [
            python,
            str(PEERS / "loadgen.py"),
            *("--url", f"127.0.0.1:{port}", "--protocol", wire, "--model", MODEL),
            *("--input", INPUT, "--concurrency", str(concurrency)),
            *(() if target.name == "ceiling" and wire == "http" else ("--check-identity",)),
            *("--duration", str(args.duration), "--warmup", str(args.warmup)),
            *("--label", target.name, "--json-out", out.name, "--quiet"),
            *(("--http-body", body) if body else ()),
        ]
        pid = server_pid(target, wire)
        cpu_before = tree_cpu_seconds(pid)
        subprocess.run(command, check=False, capture_output=True, timeout=args.duration * 10 + 60)
        cpu = tree_cpu_seconds(pid) - cpu_before
        lines = out.read().splitlines()
    if not lines:
        return {
            "server": target.name,
            "protocol": protocol,
            "concurrency": concurrency,
            "failed": True,
        }
    result = json.loads(lines[-1])
    # loadgen counts only the measured seconds: scale to the whole run (warm-up included)
    served = result["throughput"] * (args.duration + args.warmup)
    return {
        "server": target.name,
        "protocol": protocol,
        "concurrency": concurrency,
        "throughput": result["throughput"],
        "p50_us": result.get("p50_us"),
        "p99_us": result.get("p99_us"),
        "errors": result["errors"],
        "server_cpu_us": cpu / served * 1e6 if served else None,
        "client_cpu_s": result.get("client_cpu_s"),
    }


def plan(targets: list[Target], args: argparse.Namespace) -> list[tuple[int, Target, str, int]]:
    """Every run in order: repetitions interleaved, servers reversed on every other one."""
    runs = []
    for rep in range(args.reps):
        order = targets if rep % 2 == 0 else targets[::-1]
        for concurrency in args.concurrency:
            for target in order:
                for protocol in args.protocols:
                    if protocol in SUPPORTS.get(target.name, PROTOCOLS):
                        runs.append((rep, target, protocol, concurrency))
    return runs


# --- report ------------------------------------------------------------------------------


def medians(runs: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, float]]:
    """(server, protocol, concurrency) -> the median of each measure over the repetitions."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for run in runs:
        if not run.get("failed"):
            groups.setdefault((run["server"], run["protocol"], run["concurrency"]), []).append(run)
    keys = ("throughput", "p50_us", "p99_us", "server_cpu_us")
    return {
        group: {
            key: statistics.median(r[key] for r in rows if r.get(key) is not None)
            for key in keys
            if any(r.get(key) is not None for r in rows)
        }
        | {"min_throughput": min(r["throughput"] for r in rows), "reps": len(rows)}
        for group, rows in groups.items()
    }


def markdown(middle: dict[tuple[str, str, int], dict[str, float]], header: str) -> str:
    lines = [header, ""]
    lines += [
        "| server | protocol | c | infer/s (median) | min | p50 us | p99 us "
        "| server CPU us/infer |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (server, protocol, c), m in sorted(middle.items(), key=_order):
        lines.append(
            f"| {NAMES[server]} | {protocol} | {c} | {m['throughput']:,.0f} | "
            f"{m['min_throughput']:,.0f} | {m.get('p50_us', 0):,.0f} | {m.get('p99_us', 0):,.0f} "
            f"| {m.get('server_cpu_us', 0):,.0f} |"
        )
    if any(key[0] == "kernel" for key in middle):
        lines += ["", *ratio_table(middle)]
    return "\n".join(lines) + "\n"


def ratio_table(middle: dict[tuple[str, str, int], dict[str, float]]) -> list[str]:
    """triton-kernel over each peer: throughput (above 1 is faster), p50 (peer / ours) and
    CPU per inference (peer / ours: above 1 means we use less); with the do-nothing
    servers, the most any server could have reached over MLServer, and our share of it."""
    lines = [
        "| protocol | c | x tritonserver (infer/s) | p50 tritonserver/ours | "
        "CPU/infer tritonserver/ours | x MLServer (infer/s) | do-nothing x MLServer "
        "| ours / do-nothing |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (server, protocol, c), ours in sorted(middle.items(), key=_order):
        if server != "kernel":
            continue
        triton = middle.get(("triton", protocol, c), {})
        mlserver = middle.get(("mlserver", protocol, c), {})
        ceiling = middle.get(("ceiling", protocol, c), {})
        cells = [
            _ratio(ours.get("throughput"), triton.get("throughput")),
            _ratio(triton.get("p50_us"), ours.get("p50_us")),
            _ratio(triton.get("server_cpu_us"), ours.get("server_cpu_us")),
            _ratio(ours.get("throughput"), mlserver.get("throughput")),
            _ratio(ceiling.get("throughput"), mlserver.get("throughput")),
            _ratio(ours.get("throughput"), ceiling.get("throughput")),
        ]
        lines.append(f"| {protocol} | {c} | " + " | ".join(cells) + " |")
    return lines


def _ratio(top: float | None, bottom: float | None) -> str:
    return f"{top / bottom:.2f}" if top and bottom else "-"


def _order(item: tuple[tuple[str, str, int], Any]) -> tuple[int, int, int]:
    server, protocol, c = item[0]
    return list(PROTOCOLS).index(protocol), c, list(NAMES).index(server)


def plot(middle: dict[tuple[str, str, int], dict[str, float]], path: Path) -> bool:
    """Throughput vs concurrency, one line per server, one panel per protocol."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    protocols = [p for p in PROTOCOLS if any(k[1] == p for k in middle)]
    figure, axes = plt.subplots(1, len(protocols), figsize=(5 * len(protocols), 4), sharey=True)
    for axis, protocol in zip(list(getattr(axes, "flat", [axes])), protocols, strict=True):
        for server, label in NAMES.items():
            points = sorted(
                (c, m["throughput"])
                for (s, p, c), m in middle.items()
                if s == server and p == protocol
            )
            if points:
                axis.plot(
                    *zip(*points, strict=True),
                    marker="o",
                    label=label,
                    color=COLOURS[server],
                    linestyle="--" if server == "ceiling" else "-",
                )
        axis.set_title(f"identity_fp32, {protocol}")
        axis.set_yscale("log")  # (the do-nothing servers are an order of magnitude above)
        axis.set_xlabel("concurrency")
        axis.grid(alpha=0.3)
    axes_list = list(getattr(axes, "flat", [axes]))
    axes_list[0].set_ylabel("inferences / s (median)")
    axes_list[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return True


# --- main --------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", nargs="+", default=list(NAMES), choices=list(NAMES))
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--port-base",
        type=int,
        default=19190,
        help="triton BASE..+2, mlserver BASE+3..+5, kernel BASE+6..+7, ceiling BASE+8..+9",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--name", default="perf_matrix", help="results file stem")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    python = bench_python()
    offsets = {"triton": 0, "mlserver": 3, "kernel": 6, "ceiling": 8}
    load = Path("/proc/loadavg").read_text().split()[:3]
    started = time.strftime("%Y-%m-%d %H:%M")
    targets: list[Target] = []
    with tempfile.TemporaryDirectory(prefix="perf-matrix-") as tmp:
        scratch = Path(tmp)
        shutil.copytree(
            PEERS / "models", scratch / "models", ignore=shutil.ignore_patterns("__pycache__")
        )
        try:
            for name in args.servers:
                targets.append(start(name, args.port_base + offsets[name], scratch, args.out))
                print(f"started {name}", flush=True)
            runs = []
            for rep, target, protocol, c in plan(targets, args):
                run = run_one(python, target, protocol, c, args) | {"rep": rep}
                runs.append(run)
                print(json.dumps(run), flush=True)
        finally:
            for target in targets:
                for process in target.processes():
                    stop(process)
    middle = medians(runs)
    header = (
        f"identity_fp32 (Python backend, FP32[1,16], one instance), loadgen.py --client raw, "
        f"{args.reps} interleaved repetitions of {args.duration:g} s (+{args.warmup:g} s "
        f"warm-up); {started} to {time.strftime('%H:%M')}, {os.cpu_count()} cores, load "
        f"average {' '.join(load)} at the start and "
        f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])} at the end (a machine "
        f"shared with other work: compare ratios, not absolute rates)."
    )
    (args.out / f"{args.name}.md").write_text(markdown(middle, header))
    summary = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "header": header,
        "runs": runs,
        "medians": [
            dict(zip(("server", "protocol", "concurrency"), k, strict=True)) | v
            for k, v in sorted(middle.items(), key=_order)
        ],
    }
    (args.out / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    plotted = plot(middle, args.out / f"{args.name}.png")
    print(markdown(middle, header))
    if not plotted:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
