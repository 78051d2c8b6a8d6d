"""The S3 client's retry policy on a real HTTP exchange: throttling, 5xx and a server that is not up yet."""

import http.server
import socket
import threading
import time
from typing import ClassVar

import pytest
import urllib3

from memaudit.store.s3 import RETRY_STATUS, pool_manager


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Answers each request with the next status of ``statuses`` while there is one, then 200."""

    statuses: ClassVar[list[int]] = []
    seen: ClassVar[list[float]] = []

    def do_GET(self):
        self.seen.append(time.monotonic())
        status = self.statuses.pop(0) if self.statuses else 200
        body = b"ok" if status == 200 else b"<Error><Code>SlowDown</Code></Error>"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _serve(port: int = 0) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("statuses", [[503, 503], [429, 500, 502], [504]])
def test_throttling_and_server_errors_are_retried_with_growing_waits(statuses):
    _Flaky.statuses, _Flaky.seen = list(statuses), []
    server = _serve()
    try:
        pool = pool_manager(connect=2, read=5, retries=8, secure=False)
        response = pool.request("GET", f"http://127.0.0.1:{server.server_address[1]}/bucket/key")
    finally:
        server.shutdown()
    assert response.status == 200 and response.data == b"ok"
    assert len(_Flaky.seen) == len(statuses) + 1 and set(statuses) <= set(RETRY_STATUS)
    waits = [b - a for a, b in zip(_Flaky.seen, _Flaky.seen[1:], strict=False)]
    assert all(w >= 0.0 for w in waits) and (len(waits) < 3 or waits[-1] > waits[0])  # exponential backoff


def test_retries_are_bounded_then_the_error_surfaces():
    _Flaky.statuses, _Flaky.seen = [503] * 10, []
    server = _serve()
    try:
        pool = pool_manager(connect=2, read=5, retries=2, secure=False)
        with pytest.raises(urllib3.exceptions.MaxRetryError):
            pool.request("GET", f"http://127.0.0.1:{server.server_address[1]}/bucket/key")
    finally:
        server.shutdown()
    assert len(_Flaky.seen) == 3  # the first try and 2 retries


def test_a_server_that_comes_up_during_the_retries_is_reached():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _Flaky.statuses, _Flaky.seen = [], []
    holder: list[http.server.ThreadingHTTPServer] = []
    timer = threading.Timer(1.5, lambda: holder.append(_serve(port)))  # a restart: refused for 1.5 s
    timer.start()
    try:
        start = time.monotonic()
        response = pool_manager(connect=2, read=5, retries=8, secure=False).request("GET", f"http://127.0.0.1:{port}/x")
        assert response.status == 200 and time.monotonic() - start >= 1.0
    finally:
        timer.join()
        for server in holder:
            server.shutdown()


def test_a_private_ca_of_the_store_wins_over_the_process_wide_one(monkeypatch, tmp_path):
    import certifi

    monkeypatch.delenv("MEMAUDIT_S3_CA_BUNDLE", raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    assert pool_manager(connect=1, read=1, retries=0, secure=True).connection_pool_kw["ca_certs"] == certifi.where()
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "system.pem"))
    monkeypatch.setenv("MEMAUDIT_S3_CA_BUNDLE", str(tmp_path / "corp-ca.crt"))
    pool = pool_manager(connect=1, read=1, retries=0, secure=True)
    assert pool.connection_pool_kw["ca_certs"] == str(tmp_path / "corp-ca.crt")
    assert pool_manager(connect=1, read=1, retries=0, secure=False).connection_pool_kw["ca_certs"] is None
