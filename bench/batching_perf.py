"""Dynamic batching of a Python model, with and without, against tritonserver, side by side.

Serves ``bench/models`` (one ``model.py``, OUTPUT0 = 2 * INPUT0 on FP32 [16], one CPU
instance, ``max_batch_size: 32``) as ``batched`` (``dynamic_batching { }``),
``batched_gather`` (the same, with triton-kernel's ``gather_requests``: each batch reaches
the model as one request holding every client's rows; tritonserver ignores the
parameter), ``batched_delay`` (``max_queue_delay_microseconds: 500``) and ``unbatched``
(no ``dynamic_batching``) with the real tritonserver 2.51 and with triton-kernel, one
server at a time, in interleaved rounds (the order of servers and models flips every
round). Each model and protocol gets one ``perf_analyzer`` measurement at one
concurrency; the statistics extension tells how many requests each batch held. Reports
infer/s, p50 and p99 per round, the medians, kernel/triton ratios per model,
batched/unbatched and gathered/batched speedups per server, and writes
``bench/results/<output>.{json,md}`` (``batching_perf`` unless ``--output`` says).

    python bench/batching_perf.py [--rounds N] [--concurrency 16] [--interval-ms 5000]
        [--protocols grpc http] [--models batched batched_gather batched_delay unbatched]
        [--base-port 19250] [--output batching_perf]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from subprocess import Popen
from typing import Any, NamedTuple

from common import (
    RESULTS,
    ROOT,
    medians,
    model_counts,
    perf_analyzer,
    start_kernel,
    start_triton,
    stop,
    tree_cpu_seconds,
    wait_until_ready,
)

MODELS = ROOT / "bench" / "models"
BATCHED = ("batched", "batched_gather", "batched_delay")
Starter = Callable[[Path, tuple[int, ...], Path], "Popen[bytes]"]
#: name -> (how to start it, its HTTP/gRPC[/metrics] ports as offsets from --base-port)
SERVERS: dict[str, tuple[Starter, tuple[int, ...]]] = {
    "tritonserver": (start_triton, (0, 1, 2)),
    "triton-kernel": (start_kernel, (3, 4)),
}
#: A busy 2-core machine rarely holds perf_analyzer's default 10% stability.
PA_EXTRA = ("--stability-percentage", "25", "--max-trials", "10")
Row = dict[str, Any]
METRICS = ("infer_per_sec", "p50_us", "p99_us", "mean_batch", "server_cpu_us_per_infer")


class Server(NamedTuple):
    """A running server: its process (the root of its tree) and its ports."""

    pid: int
    http: int
    grpc: int


@contextmanager
def serving(name: str, repository: Path, args: argparse.Namespace) -> Iterator[Server]:
    """Run server ``name`` on ``repository`` until the block ends."""
    start, offsets = SERVERS[name]
    ports = tuple(args.base_port + offset for offset in offsets)
    process = start(repository, ports, RESULTS / f"{args.output}_{name}.log")
    try:
        wait_until_ready(ports[0], process)
        yield Server(process.pid, ports[0], ports[1])
    finally:
        stop(process)


def measure(server: Server, model: str, protocol: str, args: argparse.Namespace) -> Row:
    """One perf_analyzer run, with what the server saw: requests per ``execute``, CPU."""
    url = f"127.0.0.1:{server.http if protocol == 'http' else server.grpc}"
    counts, cpu = model_counts(server.http, model), tree_cpu_seconds(server.pid)
    try:
        row: Row = perf_analyzer(model, url, protocol, args.concurrency, args.interval_ms, PA_EXTRA)
    except RuntimeError as exc:
        row = {"error": str(exc)[-2000:]}
    cpu = tree_cpu_seconds(server.pid) - cpu
    after = model_counts(server.http, model)
    inferences, executions = after[0] - counts[0], after[1] - counts[1]
    row["mean_batch"] = round(inferences / executions, 2) if executions else None
    row["server_cpu_us_per_infer"] = round(cpu * 1e6 / inferences, 1) if inferences else None
    return row


def run_round(number: int, repositories: dict[str, Path], args: argparse.Namespace) -> list[Row]:
    """Every server, protocol and model once; odd rounds run everything in reverse order."""
    flip = (lambda items: list(reversed(items))) if number % 2 else list
    rows = []
    for server in flip(list(SERVERS)):
        with serving(server, repositories[server], args) as running:
            for protocol in flip(args.protocols):
                for model in flip(args.models):
                    row = measure(running, model, protocol, args)
                    row.update(round=number + 1, server=server, protocol=protocol, model=model)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    return rows


def summarize(rows: list[Row], args: argparse.Namespace) -> dict[str, Any]:
    """Medians per configuration, kernel/triton ratios, batched/unbatched speedups."""
    middle: dict[str, Any] = {}
    for server in SERVERS:
        for protocol in args.protocols:
            for model in args.models:
                ok = [
                    r
                    for r in rows
                    if (r["server"], r["protocol"], r["model"]) == (server, protocol, model)
                    and "error" not in r
                ]
                middle[f"{server}/{protocol}/{model}"] = (
                    medians([{k: r[k] for k in METRICS} for r in ok]) | {"rounds_ok": len(ok)}
                    if ok
                    else {"rounds_ok": 0}
                )
    return {
        "medians": middle,
        "ratio_kernel_over_triton": _ratios(middle, args),
        "speedup_batched_over_unbatched": _speedups(middle, args),
        "speedup_gathered_over_batched": _gathered(middle, args),
    }


def _rate(middle: dict[str, Any], key: str) -> float | None:
    return middle.get(key, {}).get("infer_per_sec")


def _divide(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _ratios(middle: dict[str, Any], args: argparse.Namespace) -> dict[str, float | None]:
    return {
        f"{protocol}/{model}": _divide(
            _rate(middle, f"triton-kernel/{protocol}/{model}"),
            _rate(middle, f"tritonserver/{protocol}/{model}"),
        )
        for protocol in args.protocols
        for model in args.models
    }


def _speedups(middle: dict[str, Any], args: argparse.Namespace) -> dict[str, float | None]:
    return {
        f"{server}/{protocol}/{model}": _divide(
            _rate(middle, f"{server}/{protocol}/{model}"),
            _rate(middle, f"{server}/{protocol}/unbatched"),
        )
        for server in SERVERS
        for protocol in args.protocols
        for model in args.models
        if model in BATCHED and "unbatched" in args.models
    }


def _gathered(middle: dict[str, Any], args: argparse.Namespace) -> dict[str, float | None]:
    """``batched_gather`` over ``batched``: what gathering gives (tritonserver: noise)."""
    if not {"batched", "batched_gather"} <= set(args.models):
        return {}
    return {
        f"{server}/{protocol}": _divide(
            _rate(middle, f"{server}/{protocol}/batched_gather"),
            _rate(middle, f"{server}/{protocol}/batched"),
        )
        for server in SERVERS
        for protocol in args.protocols
    }


def environment(command: str) -> dict[str, Any]:
    """What a reader needs to judge the numbers: command, commit, dirty tree, load."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "kernel", "plugins", "protocols"],
        capture_output=True,
        text=True,
    )
    return {
        "command": command,
        "commit": head.stdout.strip(),
        "uncommitted_server_files": [line[3:] for line in dirty.stdout.splitlines()],
        "cpus": os.cpu_count(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def scratch_copy(target: Path) -> Path:
    """A copy of ``bench/models`` for tritonserver, whose stub writes ``__pycache__``."""
    copy = target / "models"
    shutil.copytree(MODELS, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def report(summary: dict[str, Any]) -> str:
    """The results as markdown: how they were made, medians, ratios, every round."""
    dirty = ", ".join(summary["uncommitted_server_files"]) or "none"
    lines = [
        "# Dynamic batching of a Python model: triton-kernel and tritonserver 2.51",
        "",
        f"Produced by `{summary['command']}` (from the repository root), started"
        f" {summary['started']}, commit `{summary['commit']}`; uncommitted changes of"
        f" others under kernel/, plugins/, protocols/ at the time: {dirty}.",
        "",
        f"perf_analyzer 2.51.0, concurrency {summary['concurrency']}, batch 1 per request,"
        f" measurement interval {summary['interval_ms']} ms, `{' '.join(PA_EXTRA)}`;"
        f" {summary['rounds']} interleaved rounds, each server started afresh per round.",
        "",
        f"**Noise.** The machine has {summary['cpus']} cores, shared with other engineers"
        " running test suites during the run (load average"
        f" {summary['load_average_at_start']} at start, {summary['load_average_at_end']}"
        " at end): the server and perf_analyzer compete with them for CPU. Read medians,"
        " not single rounds, and treat differences under ~15% as noise.",
        "",
        "`mean batch` = inference_count / execution_count from the statistics extension,"
        " over the whole perf_analyzer run: the requests each `execute` received."
        " `CPU us/infer` = CPU time (user + system) of the server's process tree (its"
        " Python-model child processes included) over that run, per inference: on a"
        " shared machine it is steadier than infer/s.",
        "",
        "## Medians",
        "",
        "| protocol | model | server | infer/s | p50 us | p99 us | mean batch | CPU us/infer"
        " | rounds ok |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, m in summary["medians"].items():
        server, protocol, model = key.split("/")
        cells = [_cell(m.get(k)) for k in METRICS]
        lines.append(
            f"| {protocol} | {model} | {server} | {' | '.join(cells)} | {m['rounds_ok']} |"
        )
    lines += ["", "## triton-kernel / tritonserver (median infer/s)", ""]
    lines += ["| protocol/model | ratio |", "|---|---:|"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in summary["ratio_kernel_over_triton"].items()]
    if summary["speedup_batched_over_unbatched"]:
        lines += ["", "## batched / unbatched speedup (median infer/s, per server)", ""]
        lines += ["| server/protocol/model | speedup |", "|---|---:|"]
        speedups = summary["speedup_batched_over_unbatched"].items()
        lines += [f"| {k} | {_cell(v)} |" for k, v in speedups]
    if summary.get("speedup_gathered_over_batched"):
        lines += ["", "## gathered / batched (median infer/s, per server)", ""]
        lines += [
            "`batched_gather` is `batched` with `gather_requests`: triton-kernel hands the"
            " model one request per batch (the clients' rows stacked); tritonserver has no"
            " such option and runs it as `batched`, so its ratio shows the noise.",
            "",
        ]
        lines += ["| server/protocol | ratio |", "|---|---:|"]
        lines += [
            f"| {k} | {_cell(v)} |" for k, v in summary["speedup_gathered_over_batched"].items()
        ]
    return "\n".join([*lines, "", *_rounds_table(summary["runs"])]) + "\n"


def _rounds_table(rows: list[Row]) -> list[str]:
    lines = ["## Every round", ""]
    lines += ["| round | server | protocol | model | infer/s | p50 us | p99 us | mean batch"]
    lines[-1] += " | CPU us/infer |"
    lines += ["|---:|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = [_cell(r.get(k)) for k in METRICS]
        head = f"| {r['round']} | {r['server']} | {r['protocol']} | {r['model']} |"
        lines.append(f"{head} {' | '.join(cells)} |")
    errors = [r for r in rows if "error" in r]
    for r in errors:
        lines += ["", f"Error, round {r['round']} {r['server']} {r['protocol']} {r['model']}:"]
        lines += ["", "```", r["error"].strip(), "```"]
    return lines


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) and value < 10 else f"{value:.0f}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--interval-ms", type=int, default=5000)
    parser.add_argument("--protocols", nargs="+", default=["grpc", "http"])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["batched", "batched_gather", "batched_delay", "unbatched"],
    )
    parser.add_argument(
        "--base-port",
        type=int,
        default=19250,
        help="tritonserver takes this port and the next two, triton-kernel the two after",
    )
    parser.add_argument("--output", default="batching_perf", help="results file stem")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    command = "python bench/batching_perf.py " + shlex.join(sys.argv[1:])
    info = environment(command.strip())
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        repositories = {"tritonserver": scratch_copy(Path(tmp)), "triton-kernel": MODELS}
        for number in range(args.rounds):
            rows.extend(run_round(number, repositories, args))
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    settings = {"concurrency": args.concurrency, "interval_ms": args.interval_ms}
    summary = info | settings | {"rounds": args.rounds, "runs": rows} | summarize(rows, args)
    (RESULTS / f"{args.output}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (RESULTS / f"{args.output}.md").write_text(report(summary))
    keys = ("ratio_kernel_over_triton", "speedup_batched_over_unbatched")
    print(json.dumps({k: summary[k] for k in (*keys, "speedup_gathered_over_batched")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
