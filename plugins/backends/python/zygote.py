"""A warm template process that forks the workers of Python models.

Starting a worker as a fresh interpreter costs an import of numpy, the stub and
``triton_python_backend_utils`` each time (a fifth of a second of CPU and ~20 MiB
of private memory per worker). The template imports them once, freezes what it holds
out of the garbage collector's reach, and forks one child per worker: the children
share those pages copy-on-write, and start in milliseconds.

Ownership: the server starts one template (``python zygote.py <fd>``), whose parent
death signal ties it to the server; each worker is the template's child with the same
signal tied to the template, so no worker outlives the server, whatever kills it.
The template reaps its children and reports their exit statuses; the server signals
a worker through the template, which alone may reuse the worker's pid.

Control messages are pickled tuples, one per datagram of a ``SOCK_SEQPACKET`` pair:
server -> template ``("fork", token, version_dir)`` with the worker's two socket
ends attached, ``("kill", pid, signal)``; template -> server ``("ready", pid)``,
``("forked", token, pid)``, ``("fork_error", token, text)``, ``("exited", pid, code)``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pickle
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TEMPLATE = Path(__file__).resolve()
_BUFFER = 64 * 1024
#: A fork message carries the new worker's two socket ends.
_MAX_FDS = 2


class TemplateGone(ConnectionError):
    """The template process exited or closed its channel."""


# --- the server's side -------------------------------------------------------------------------


class ForkedProcess:
    """A worker forked by the template, with the part of ``asyncio.subprocess.Process``
    the server uses: ``pid``, ``returncode``, ``wait()``, ``kill()``, ``send_signal()``."""

    def __init__(self, pid: int, template: WorkerTemplate) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._template = template
        self._exited = asyncio.get_running_loop().create_future()

    async def wait(self) -> int | None:
        await asyncio.shield(self._exited)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            self._template.signal(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def _exit(self, code: int | None) -> None:
        if not self._exited.done():
            self.returncode = code
            self._exited.set_result(None)


class WorkerTemplate:
    """The server's handle on the template process: started on first use, restarted
    on the next fork after it died."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._sock: socket.socket | None = None
        self._starting: asyncio.Future[None] | None = None
        self._forks: dict[int, asyncio.Future[ForkedProcess]] = {}
        self._children: dict[int, ForkedProcess] = {}
        self._tokens = itertools.count()

    @property
    def pid(self) -> int | None:
        """The template's pid while it runs."""
        return self._process.pid if self._process is not None and self._sock else None

    async def fork(
        self, worker_ends: Sequence[socket.socket], version_dir: Path, label: str
    ) -> ForkedProcess:
        """A new worker serving ``worker_ends`` (see ``stub.serve``; the caller closes its
        copies)."""
        # Here, not at the top: the template runs this file too, and must not import the kernel.
        from triton_kernel.kernel.errors import Unavailable

        token = next(self._tokens)
        future: asyncio.Future[ForkedProcess] = asyncio.get_running_loop().create_future()
        self._forks[token] = future
        try:
            await self._ensure_started()
            self._send(("fork", token, str(version_dir)), [end.fileno() for end in worker_ends])
            return await future
        except TemplateGone as exc:
            raise Unavailable(f"unable to start the Python worker for '{label}': {exc}") from None
        finally:
            self._forks.pop(token, None)

    def signal(self, pid: int, signum: int) -> None:
        try:
            self._send(("kill", pid, int(signum)))
        except TemplateGone:
            pass  # the worker died with it (parent death signal)

    async def stop(self, timeout: float = 5.0) -> None:
        """Close the channel (the template exits, and any worker left with it); reap it."""
        process = self._process
        self._closed()
        if process is not None and process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()

    # --- internals ---------------------------------------------------------------------------

    async def _ensure_started(self) -> None:
        if self._sock is None and self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        if self._starting is not None:
            starting = self._starting
            try:
                await asyncio.shield(starting)
            finally:
                if starting.done():
                    self._starting = None

    async def _start(self) -> None:
        server_end, template_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(TEMPLATE),
                str(template_end.fileno()),
                pass_fds=(template_end.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            server_end.close()
            raise TemplateGone(f"unable to start the worker template: {exc}") from None
        finally:
            template_end.close()
        server_end.setblocking(False)
        self._sock = server_end
        asyncio.get_running_loop().add_reader(server_end.fileno(), self._readable)

    def _send(self, message: tuple[Any, ...], fds: Sequence[int] = ()) -> None:
        if self._sock is None:
            raise TemplateGone("the worker template is not running")
        data = pickle.dumps(message)
        try:
            if fds:
                socket.send_fds(self._sock, [data], fds)
            else:
                self._sock.send(data)
        except OSError as exc:  # a full buffer too: the template has stopped reading
            self._closed()
            raise TemplateGone(f"the worker template is not responding: {exc}") from None

    def _readable(self) -> None:
        while self._sock is not None:
            try:
                data, _fds, _flags, _address = socket.recv_fds(self._sock, _BUFFER, 1)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._closed()
                return
            self._on_message(pickle.loads(data))

    def _on_message(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "forked":  # registered now: its exit may come in the same read
            child = self._children[message[2]] = ForkedProcess(message[2], self)
            _settle(self._forks.get(message[1]), child)
        elif kind == "fork_error":
            _settle(self._forks.get(message[1]), TemplateGone(message[2]))
        elif kind == "exited":
            child = self._children.pop(message[1], None)
            if child is not None:
                child._exit(message[2])

    def _closed(self) -> None:
        """The template is gone (or being stopped): so are its workers."""
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        for future in self._forks.values():
            _settle(future, TemplateGone("the worker template exited"))
        children, self._children = self._children, {}
        for child in children.values():
            child._exit(-signal.SIGKILL)  # its parent death signal


def _settle(future: asyncio.Future[Any] | None, value: Any) -> None:
    if future is None or future.done():
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


# --- the template process --------------------------------------------------------------------


class _Template:
    """The template's loop: fork on request, reap children, report their exits."""

    def __init__(self, control: socket.socket) -> None:
        import selectors

        self.control = control
        self.children: set[int] = set()
        self.selector = selectors.DefaultSelector()
        self.wakeup_read, self.wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wakeup_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd does the work
        self.selector.register(control, selectors.EVENT_READ)
        self.selector.register(self.wakeup_read, selectors.EVENT_READ)

    def send(self, message: tuple[Any, ...]) -> None:
        self.control.send(pickle.dumps(message))

    def run(self) -> None:
        self.send(("ready", os.getpid()))
        while True:
            for key, _events in self.selector.select():
                if key.fileobj is self.control:
                    if not self.on_control():
                        return
                else:
                    self.reap()

    def on_control(self) -> bool:
        data, fds, _flags, _address = socket.recv_fds(self.control, _BUFFER, _MAX_FDS)
        if not data:
            return False  # the server stopped us (or died): exit, and the workers with us
        message = pickle.loads(data)
        if message[0] == "fork" and fds:
            self.fork(message[1], message[2], fds)
            fds = []
        elif message[0] == "kill" and message[1] in self.children:
            os.kill(message[1], message[2])  # not reaped yet: the pid is still the worker's
        for fd in fds:
            os.close(fd)
        return True

    def fork(self, token: int, version_dir: str, fds: list[int]) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        template = os.getpid()
        try:
            pid = os.fork()
        except OSError as exc:
            _close_all(fds)
            self.send(("fork_error", token, str(exc)))
            return
        if pid == 0:
            self.become_worker(fds, version_dir, template)  # never returns
        _close_all(fds)
        self.children.add(pid)
        self.send(("forked", token, pid))

    def reap(self) -> None:
        try:
            while os.read(self.wakeup_read, 512):
                pass
        except BlockingIOError:
            pass
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            self.send(("exited", pid, os.waitstatus_to_exitcode(status)))

    def become_worker(self, fds: list[int], version_dir: str, template: int) -> None:
        """In the child: drop the template's state and run the stub on ``fds``."""
        code = 1
        try:
            import stub

            stub._die_with_parent()
            if os.getppid() != template:  # the template died before the signal was armed
                os._exit(1)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            self.selector.close()
            for end in (self.wakeup_read, self.wakeup_write):
                os.close(end)
            self.control.close()
            _after_fork(Path(version_dir).parent.name)
            sys.argv = [stub.__file__, ",".join(map(str, fds)), version_dir]
            stub.serve(fds, version_dir)
            code = 0
        except SystemExit as exc:  # as the interpreter maps it
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            _exit(code)


def _after_fork(model: str) -> None:
    """What a fresh interpreter would not share with its siblings: random state; and the
    process's name (the model's, for ps and top)."""
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()  # the legacy global generator, seeded once in the template
    try:
        import ctypes

        name = model.encode()[:15]
        ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name), 0, 0, 0)  # PR_SET_NAME, for ps/top
    except (OSError, AttributeError):
        pass


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _exit(code: int) -> None:
    """End a forked worker as an interpreter would end (exit handlers, flushed streams)."""
    import atexit

    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def main() -> None:
    import gc
    import warnings

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when workers stop
    # Python 3.12+ warns on fork() beside other threads; numpy's OpenBLAS has a thread
    # pool, which it stops and restarts around fork itself (pthread_atfork).
    warnings.filterwarnings("ignore", ".*multi-threaded.*fork", DeprecationWarning)
    control = socket.socket(fileno=int(sys.argv[1]))
    control.setblocking(True)
    import stub  # numpy, ipc, triton_python_backend_utils: once, shared by every fork

    stub._die_with_parent()
    template = _Template(control)
    gc.collect()
    gc.freeze()  # the collector leaves the shared objects alone: their pages stay shared
    template.run()


if __name__ == "__main__":
    main()
