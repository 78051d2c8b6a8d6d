"""The embedded runner's warm worker: tasks forked from one process that has already imported torch,
transformers, peft, mlflow and the stages, instead of every kfp.local subprocess importing them again.

``memaudit run`` starts :func:`worker` (a Unix socket in a private folder) and sets ``MEMAUDIT_WARM_SOCKET`` for
the pipeline's tasks. A task entry point decorated with :func:`forked` then hands its call to the worker: the
keyword arguments, the environment, the working folder and its stdout/stderr (passed as file descriptors, so its
output lands in the task's log). The worker forks a child that runs the call and sends back its result, or its
exception after printing the traceback. Without the variable (a cluster pod, a test, the child itself) the
function runs where it is called. The child runs the same code on the same inputs: results are identical.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import os
import pickle
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

WARM_ENV = "MEMAUDIT_WARM_SOCKET"
PRELOAD = (  # what every task would otherwise import on its own, seconds each on a small CPU
    "torch",
    "transformers",
    "transformers.models.llama.modeling_llama",
    "peft",
    "mlflow",
    "pandas",
    "pyarrow.parquet",
    "matplotlib.pyplot",
    "memaudit.tasks.prepare",
    "memaudit.tasks.split",
    "memaudit.tasks.finetune",
    "memaudit.tasks.score",
    "memaudit.tasks.aggregate",
    "memaudit.tasks.plot",
    "memaudit.stages.finetune",
    "memaudit.stages.score",
    "memaudit.stages.aggregate",
    "memaudit.report.outputs",
)
READY_TIMEOUT_S = 300.0
FAILED_SUFFIX = ".failed"  # beside the socket: why the worker could not start
_HEADER = struct.Struct("!Q")


def forked(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run by the warm worker when ``MEMAUDIT_WARM_SOCKET`` is set, else here (keyword arguments only)."""

    @functools.wraps(fn)
    def call(**kwargs: Any) -> Any:
        path = os.environ.get(WARM_ENV)
        if not path:
            return fn(**kwargs)
        return _remote(path, fn.__module__, fn.__qualname__, kwargs)

    return call


def _send(sock: socket.socket, obj: Any, fds: list[int] | None = None) -> None:
    data = pickle.dumps(obj)
    header = _HEADER.pack(len(data))
    if fds:
        socket.send_fds(sock, [header], fds)
    else:
        sock.sendall(header)
    sock.sendall(data)


def _recv_exact(sock: socket.socket, n: int, first: bytes = b"") -> bytes:
    data = bytearray(first)
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the warm worker closed the connection")
        data += chunk
    return bytes(data)


def _recv(sock: socket.socket, n_fds: int = 0) -> tuple[Any, list[int]]:
    fds: list[int] = []
    first = b""
    if n_fds:
        first, fds, _, _ = socket.recv_fds(sock, _HEADER.size, n_fds)
        if not first:
            raise ConnectionError("the warm worker closed the connection")
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size, first))
    return pickle.loads(_recv_exact(sock, size)), fds


def _connect(path: str) -> socket.socket:
    """A connection to the worker, waiting while it imports (it listens only once it is ready)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            failed = Path(path + FAILED_SUFFIX)
            if failed.is_file():
                raise RuntimeError(f"the warm worker failed to start: {failed.read_text().strip()}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"the warm worker at {path} did not start within {READY_TIMEOUT_S:.0f} s") from None
            time.sleep(0.1)


def _remote(path: str, module: str, name: str, kwargs: dict[str, Any]) -> Any:
    """Run ``module.name(**kwargs)`` in a child of the worker, with this process's environment and output."""
    sys.stdout.flush()
    sys.stderr.flush()
    request = {"module": module, "name": name, "kwargs": kwargs, "env": dict(os.environ), "cwd": os.getcwd()}
    with _connect(path) as sock:
        _send(sock, request, fds=[sys.stdout.fileno(), sys.stderr.fileno()])
        try:
            (ok, value), _ = _recv(sock)
        except ConnectionError:
            raise RuntimeError("the task's process in the warm worker ended without a result (killed?)") from None
    if ok:
        return value
    raise value


def _run_child(conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: take over the caller's output, environment and folder, run the call, answer."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for fd, target in zip(fds, (1, 2), strict=True):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ.pop(WARM_ENV, None)  # the call runs here, not forwarded again
    os.chdir(request["cwd"])
    try:
        fn = getattr(importlib.import_module(request["module"]), request["name"])
        answer: tuple[bool, Any] = (True, fn(**request["kwargs"]))
    except BaseException as exc:
        traceback.print_exc()
        answer = (False, exc)
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()  # what a task process would run as it exits (MLflow's flushes)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        _send(conn, answer)
    except (pickle.PicklingError, TypeError, AttributeError):
        _send(conn, (False, RuntimeError(f"{type(answer[1]).__name__}: {answer[1]}")))


def serve(path: str, preload: tuple[str, ...] = PRELOAD) -> None:
    """Import ``preload``, then listen on ``path`` and fork a child per call (until killed)."""
    try:
        for name in preload:
            importlib.import_module(name)
    except Exception as exc:
        Path(path + FAILED_SUFFIX).write_text(f"{type(exc).__name__}: {exc}")
        raise
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    while True:
        conn, _ = server.accept()
        try:
            request, fds = _recv(conn, n_fds=2)
        except (ConnectionError, pickle.UnpicklingError, struct.error):
            conn.close()
            continue
        if os.fork() == 0:
            server.close()
            code = 0
            try:
                _run_child(conn, request, fds)
            except BaseException:
                traceback.print_exc()
                code = 1
            os._exit(code)
        conn.close()
        for fd in fds:
            os.close(fd)


@contextlib.contextmanager
def worker(log: Path, preload: tuple[str, ...] = PRELOAD) -> Iterator[None]:
    """A warm worker for the duration of the block (its own output to ``log``), announced to tasks through
    ``MEMAUDIT_WARM_SOCKET``; stopped afterwards."""
    folder = tempfile.mkdtemp(prefix="memaudit-warm-")  # short: a socket path has at most 107 bytes
    path = str(Path(folder) / "socket")
    command = [sys.executable, "-m", "memaudit.tasks.warm", path, *preload]
    with open(log, "a") as out:
        child = subprocess.Popen(command, stdout=out, stderr=out)
    os.environ[WARM_ENV] = path
    try:
        yield
    finally:
        os.environ.pop(WARM_ENV, None)
        child.kill()
        child.wait()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    serve(sys.argv[1], tuple(sys.argv[2:]))
