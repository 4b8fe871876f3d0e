"""Footprint of triton-kernel and tritonserver 2.51 on 17 small Python-backend models.

Serves ``bench/models_footprint`` (identity models of five datatypes, two add_sub, a
negate and an ensemble of add_sub and negate, two decoupled models, a dynamically
batched model with two instances, a sequence model, an auto-completed model, a BYTES
model, a BLS model and one that answers errors: 16 Python models and one ensemble)
with each server, one at a time, in interleaved rounds (the order flips every round).
Each round copies the repository to a scratch folder, starts the server and measures:

- ready: seconds from starting the process to ``/v2/health/ready`` answering 200
  (tritonserver: from the ``exec`` of its binary by ``start_triton.sh``, so the
  script's own venv checks are not counted against it; from launch is recorded too);
- processes, RSS and PSS summed over the server's whole process tree (PSS from
  ``/proc/<pid>/smaps_rollup``), after a few check requests (the repository serves on
  both) and ``--settle`` idle seconds.

triton-kernel runs as users get it: ``python -m triton_kernel.kernel.cli serve`` from a
fresh venv made by
``pip install <this checkout>`` (no extras; bytecode compiled at install, as pip does),
unless ``--ours-python`` names another interpreter (e.g. this checkout's dev venv).
That venv also gives the install size: its site-packages less an empty venv's;
tritonserver's venv (``/tmp/peers-triton-venv``) is measured the same way. Writes
``bench/results/footprint.{md,json}``.

    python bench/footprint.py [--rounds 3] [--settle 2] [--ours-python PY] [--servers ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEERS = Path(os.environ.get("PEERS_DIR", ROOT.parent / "shared" / "peers"))
MODELS = ROOT / "bench" / "models_footprint"
RESULTS = ROOT / "bench" / "results"
TRITON_VENV = Path(os.environ.get("PEERS_TRITON_VENV", "/tmp/peers-triton-venv"))
MIB = 1024 * 1024
Row = dict[str, Any]


# --- servers -------------------------------------------------------------------------------


#: The interpreter that runs triton-kernel (set by ``main``).
OURS_PYTHON = [sys.executable]


def start_ours(
    repository: Path, ports: tuple[int, int, int], log: Path, *flags: str
) -> subprocess.Popen[bytes]:
    http, grpc, metrics = ports
    command = [
        *(OURS_PYTHON[0], "-m", "triton_kernel.kernel.cli", "serve"),
        f"--model-repository={repository}",
        *("--http-address=127.0.0.1", f"--http-port={http}"),
        *("--grpc-address=127.0.0.1", f"--grpc-port={grpc}"),
        *("--metrics-address=127.0.0.1", f"--metrics-port={metrics}"),
        "--exit-timeout-secs=5",
        *flags,
    ]
    return subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def start_triton(
    repository: Path, ports: tuple[int, int, int], log: Path
) -> subprocess.Popen[bytes]:
    command = [str(PEERS / "start_triton.sh"), str(repository), *map(str, ports)]
    return subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def start_ours_exec(
    repository: Path, ports: tuple[int, int, int], log: Path
) -> subprocess.Popen[bytes]:
    """triton-kernel with one fresh interpreter per worker (no template), for comparison."""
    return start_ours(repository, ports, log, "--backend-config=python,fork-workers=false")


EXEC = "triton-kernel-exec"
#: name -> (how to start it, its HTTP/gRPC/metrics ports, the binary whose exec starts the clock)
SERVERS: dict[str, tuple[Callable[..., subprocess.Popen[bytes]], tuple[int, int, int], str]] = {
    "tritonserver": (start_triton, (19180, 19181, 19182), "tritonserver"),
    "triton-kernel": (start_ours, (19183, 19184, 19185), ""),
    EXEC: (start_ours_exec, (19186, 19187, 19188), ""),
}


def _ready(port: int) -> bool:
    try:
        url = f"http://127.0.0.1:{port}/v2/health/ready"
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def wait_ready(
    process: subprocess.Popen[bytes], started: float, port: int, binary: str, timeout: float = 120
) -> tuple[float, float]:
    """Seconds to ready from launch, and from the ``exec`` of ``binary`` (or launch)."""
    execed = started if not binary else None
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        if execed is None and _exe(process.pid).endswith(binary):
            execed = time.perf_counter()
        if execed is not None and _ready(port):
            now = time.perf_counter()
            return now - started, now - execed
        time.sleep(0.01)
    raise RuntimeError(f"port {port}: not ready after {timeout} s")


def stop(process: subprocess.Popen[bytes]) -> list[int]:
    """SIGTERM the server; the processes of its tree still alive afterwards (should be none)."""
    tree = process_tree(process.pid)
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    time.sleep(0.5)
    return [pid for pid in tree if pid != process.pid and _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# --- measurements --------------------------------------------------------------------------


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants (from the parent ids in ``/proc/*/stat``)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            parents[int(entry.name)] = int(fields[1])
    tree, frontier = [root], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        tree.extend(children)
        frontier.extend(children)
    return tree


def tree_memory(root: int) -> Row:
    """Process count and total RSS/PSS (MiB) of ``root``'s tree, from ``smaps_rollup``."""
    rss = pss = count = 0
    names: dict[str, int] = {}
    each: list[float] = []  # PSS of each process but the root
    root_pss = 0.0
    for pid in process_tree(root):
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue  # gone meanwhile
        fields = {}
        for line in rollup.splitlines()[1:]:
            key, _, rest = line.partition(":")
            fields[key] = int(rest.split()[0])  # kB
        rss += fields.get("Rss", 0)
        pss += fields.get("Pss", 0)
        if pid == root:
            root_pss = fields.get("Pss", 0) / 1024
        else:
            each.append(fields.get("Pss", 0) / 1024)
        count += 1
        names[name] = names.get(name, 0) + 1
    return {
        "processes": count,
        "rss_mib": rss / 1024,
        "pss_mib": pss / 1024,
        "root_pss_mib": root_pss,
        "child_pss_median_mib": statistics.median(each) if each else 0.0,
        "names": names,
    }


def one_round(name: str, settle: float) -> Row:
    starter, ports, binary = SERVERS[name]
    with tempfile.TemporaryDirectory(prefix="footprint-") as tmp:
        repository = Path(tmp) / "models"
        shutil.copytree(MODELS, repository)
        log = Path(tmp) / "server.log"
        started = time.perf_counter()
        process = starter(repository, ports, log)
        try:
            from_launch, ready = wait_ready(process, started, ports[0], binary)
            check_models(ports[0])  # it serves, and has done what a first request does
            time.sleep(settle)
            row = {"server": name, "ready_s": ready, "ready_from_launch_s": from_launch}
            row.update(tree_memory(process.pid))
        except BaseException:
            stop(process)
            print(log.read_text()[-4000:], file=sys.stderr)
            raise
        left = stop(process)
    row["left_after_sigterm"] = len(left)
    return row


def _infer(port: int, model: str, inputs: list[Row], **extra: Any) -> tuple[int, Row]:
    body = json.dumps({"inputs": inputs, **extra}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/{model}/infer",
        body,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def _tensor(name: str, datatype: str, shape: list[int], data: list[Any]) -> Row:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def check_models(port: int) -> None:
    """The repository really serves on this server: a few models answer as they should."""
    ones = [1.0] * 16
    checks = [
        ("identity_fp32", [_tensor("INPUT0", "FP32", [1, 2], [1.5, 2.5])], {}, [1.5, 2.5]),
        ("add_sub", [_tensor("INPUT0", "FP32", [16], ones), _tensor("INPUT1", "FP32", [16], ones)],
         {}, [2.0] * 16),
        ("ensemble_add_sub_negate",
         [_tensor("A", "FP32", [16], ones), _tensor("B", "FP32", [16], ones)], {}, [-2.0] * 16),
        ("bls_add_sub",
         [_tensor("INPUT0", "FP32", [16], ones), _tensor("INPUT1", "FP32", [16], ones)],
         {}, [2.0] * 16),
        ("auto_complete", [_tensor("TEXT", "BYTES", [1, 1], ["abc"])], {}, ["ABC"]),
        ("string_length", [_tensor("TEXT", "BYTES", [2], ["ab", "cde"])], {}, [2, 3]),
        ("dynamic_batch", [_tensor("INPUT0", "FP32", [1, 16], ones)], {}, [2.0] * 16),
        ("sequence_accumulate", [_tensor("INPUT", "INT32", [1, 1], [5])],
         {"parameters": {"sequence_id": 7, "sequence_start": True, "sequence_end": True}}, [5]),
    ]  # fmt: skip
    for model, inputs, extra, expected in checks:
        status, answer = _infer(port, model, inputs, **extra)
        if status != 200 or answer["outputs"][0]["data"] != expected:
            raise RuntimeError(f"{model}: unexpected answer {status} {answer}")
    status, answer = _infer(port, "error_negative", [_tensor("INPUT0", "FP32", [1], [-1.0])])
    if status != 400:
        raise RuntimeError(f"error_negative: unexpected answer {status} {answer}")


# --- install size --------------------------------------------------------------------------


def disk_usage(path: Path) -> int:
    """Bytes on disk under ``path`` (as ``du``: allocated blocks, hard links once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            info = os.lstat(os.path.join(folder, name))
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total


def site_packages(venv: Path) -> Path:
    (found,) = (venv / "lib").glob("python3*/site-packages")
    return found


def checkout_files(destination: Path) -> Path:
    """Copy this checkout's files (tracked, and untracked not ignored) to ``destination``:
    pip builds from there, leaving no ``build/`` in the working tree."""
    listing = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listing.split("\0")):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def make_venvs(folder: Path) -> tuple[Path, Path, str]:
    """An empty venv, and one with this checkout pip-installed (no extras); the pip command."""
    empty, ours = folder / "empty", folder / "ours"
    for venv in (empty, ours):
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    source = checkout_files(folder / "src")
    pip = [str(ours / "bin" / "python"), "-m", "pip", "install", "-q", str(source)]
    done = subprocess.run(pip, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip install failed:\n{done.stdout}\n{done.stderr}")
    return empty, ours, shlex.join(["<venv>/bin/python", *pip[1:-1], "<checkout>"])


def install_sizes(empty: Path, ours: Path, pip_command: str) -> Row:
    """MB (10^6 bytes) each install adds to an empty venv's site-packages, and the largest parts."""
    base = disk_usage(site_packages(empty))
    return {
        "triton-kernel": (disk_usage(site_packages(ours)) - base) / 1e6,
        "tritonserver": (disk_usage(site_packages(TRITON_VENV)) - base) / 1e6,
        "empty_venv_mb": base / 1e6,
        "triton-kernel_largest": _largest(site_packages(ours), site_packages(empty)),
        "tritonserver_largest": _largest(site_packages(TRITON_VENV), site_packages(empty)),
        "pip_command": pip_command,
    }


def _largest(site: Path, empty: Path, count: int = 10) -> dict[str, float]:
    skip = {entry.name for entry in empty.iterdir()}
    sizes = {
        e.name: disk_usage(e) / 1e6 for e in site.iterdir() if e.is_dir() and e.name not in skip
    }
    top = sorted(sizes.items(), key=lambda item: -item[1])[:count]
    return {name: round(size, 1) for name, size in top}


# --- report ----------------------------------------------------------------------------------

KEYS = (
    "ready_s",
    "ready_from_launch_s",
    "processes",
    "rss_mib",
    "pss_mib",
    "root_pss_mib",
    "child_pss_median_mib",
)


def summarize(rows: list[Row]) -> dict[str, Row]:
    summary: dict[str, Row] = {}
    for name in SERVERS:
        mine = [row for row in rows if row["server"] == name]
        if mine:
            summary[name] = {key: statistics.median(row[key] for row in mine) for key in KEYS}
    return summary


#: (label, key, format) of each row of the table.
ROWS = (
    ("ready (s)", "ready_s", "{:.2f}"),
    ("ready from launch (s)", "ready_from_launch_s", "{:.2f}"),
    ("processes", "processes", "{:.0f}"),
    ("RSS total (MiB)", "rss_mib", "{:.0f}"),
    ("PSS total (MiB)", "pss_mib", "{:.0f}"),
    ("PSS of the server process (MiB)", "root_pss_mib", "{:.1f}"),
    ("PSS of a child, median (MiB)", "child_pss_median_mib", "{:.1f}"),
)


def markdown(
    summary: dict[str, Row], install: Row, command: str, rounds: int, load: list[float]
) -> str:
    theirs, ours = summary["tritonserver"], summary["triton-kernel"]
    exec_ = summary.get(EXEC)
    extra = " triton-kernel, exec'd workers |" if exec_ else ""
    lines = [
        "# Footprint: 17 small Python-backend models (`bench/models_footprint`)",
        "",
        f"Median of {rounds} interleaved rounds on this shared 2-core machine (load average"
        f" {load[0]:.1f} before, {load[1]:.1f} after).",
        f"Command: `{command}`",
        "",
        f"| | tritonserver 2.51 | triton-kernel | ratio |{extra}",
        "|---|---|---|---|" + ("---|" if exec_ else ""),
    ]
    for label, key, form in ROWS:
        line = _line(label, theirs[key], ours[key], form)
        lines.append(line + (f" {form.format(exec_[key])} |" if exec_ else ""))
    line = _line("install (MB)", install["tritonserver"], install["triton-kernel"], "{:.0f}")
    lines.append(line + (" same |" if exec_ else ""))
    lines += [
        "",
        "ready: from the `exec` of the server binary (tritonserver: after `start_triton.sh`'s"
        " venv checks; triton-kernel: from launching `python -m triton_kernel.kernel.cli"
        " serve`) to `/v2/health/ready` 200. RSS and PSS: sums over the process tree from"
        " `/proc/<pid>/smaps_rollup`, after a few check requests and the settle time."
        " Children: tritonserver's Python stubs; triton-kernel's worker template and the"
        " workers forked from it (exec'd workers: `--backend-config=python,fork-workers=false`,"
        " one fresh interpreter per instance). Install: site-packages after `pip install`"
        " (no extras) less an empty venv's, MB of 10^6 bytes on disk.",
        "",
        "Largest parts of each install (MB):",
        "",
    ]
    for name in ("triton-kernel", "tritonserver"):
        parts = ", ".join(f"{k} {v}" for k, v in install[f"{name}_largest"].items())
        lines.append(f"- {name}: {parts}")
    return "\n".join(lines) + "\n"


def _line(label: str, theirs: float, ours: float, form: str) -> str:
    ratio = ours / theirs if theirs else float("nan")
    return f"| {label} | {form.format(theirs)} | {form.format(ours)} | {ratio:.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=2.0, help="idle seconds before measuring")
    parser.add_argument("--ours-python", help="run triton-kernel with this interpreter instead")
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=list(SERVERS))
    parser.add_argument("--output", default=str(RESULTS / "footprint"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="footprint-venv-") as tmp:
        empty, ours, pip_command = make_venvs(Path(tmp))
        install = install_sizes(empty, ours, pip_command)
        OURS_PYTHON[0] = args.ours_python or str(ours / "bin" / "python")
        load = [os.getloadavg()[0]]
        rows = run_rounds(args.servers, args.rounds, args.settle)
        load.append(os.getloadavg()[0])
    command = shlex.join(["python", "bench/footprint.py", *sys.argv[1:]])
    if not {"tritonserver", "triton-kernel"} <= set(args.servers):
        return
    summary = summarize(rows)
    text = markdown(summary, install, command, args.rounds, load)
    print(text)
    output = Path(args.output)
    output.with_suffix(".md").write_text(text)
    record = {
        "command": command,
        "ours_python": args.ours_python or "fresh venv: " + pip_command,
        "load_average_1min": load,
        "rounds": rows,
        "median": summary,
        "install_mb": install,
    }
    output.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")


def run_rounds(servers: list[str], rounds: int, settle: float) -> list[Row]:
    """``rounds`` rounds over ``servers``, the order flipped every other round."""
    rows = []
    for index in range(rounds):
        for name in servers if index % 2 == 0 else servers[::-1]:
            row = one_round(name, settle)
            row["round"] = index
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
