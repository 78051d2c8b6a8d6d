"""S3 / MinIO object store on the ``minio`` SDK.

Writes upload to ``.memaudit-tmp/<uuid>`` and then server-side copy to the final key (recording the sha256 as user
metadata, so COMPLETE markers need no second download) and delete the temporary object: a failed upload never
leaves a final key. Connection problems fail fast: a probe with no retries and a short connect timeout runs when the
store is created; later calls use a few retries with backoff. Credentials live only inside the minio client and
never appear in ``repr``, logs or error messages.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import REPLACE, CopySource
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from minio.helpers import check_bucket_name
from urllib3.exceptions import HTTPError

from memaudit.errors import MemauditError
from memaudit.store.base import TMP_PREFIX, ObjectNotFound, ObjectStore
from memaudit.store.seal import HashingReader

SHA_META = "memaudit-sha256"
PART_SIZE = 16 * 1024 * 1024
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken"}
_MISSING_CODES = {"NoSuchKey", "NoSuchObject", "ResourceNotFound"}
CREDENTIALS_FIX = (
    "set MEMAUDIT_S3_ACCESS_KEY and MEMAUDIT_S3_SECRET_KEY (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) "
    "to a key that may read and write the bucket"
)


def parse_endpoint(endpoint: str, secure: bool | None) -> tuple[str, bool]:
    """('host:port', secure) from 'host:port' or 'http(s)://host:port'; an explicit scheme decides ``secure``."""
    text = endpoint.strip()
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
            raise MemauditError(
                f"invalid S3 endpoint {endpoint!r}", "write host:port or http(s)://host:port, without a path"
            )
        return parts.netloc.rsplit("@", 1)[-1], parts.scheme == "https"
    if not text or "/" in text:
        raise MemauditError(f"invalid S3 endpoint {endpoint!r}", "write host:port or http(s)://host:port")
    return text, bool(secure)


RETRY_STATUS = (429, 500, 502, 503, 504)  # throttling (429, 503 SlowDown) and server errors
RETRY_BACKOFF_S, RETRY_BACKOFF_MAX_S, RETRY_JITTER_S = 0.5, 20.0, 0.5


def retry_policy(retries: int) -> urllib3.Retry:
    """Bounded exponential backoff with jitter (0.5 s, 1 s, 2 s … capped at 20 s, + up to 0.5 s) on connection
    errors, timeouts, throttling and 5xx, for every S3 call (uploads included: they are idempotent); ``retries``
    = 8 spans about a minute, long enough for an S3 server to restart."""
    return urllib3.Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        allowed_methods=None,
        status_forcelist=RETRY_STATUS,
        backoff_factor=RETRY_BACKOFF_S,
        backoff_max=RETRY_BACKOFF_MAX_S,
        backoff_jitter=RETRY_JITTER_S,
        respect_retry_after_header=True,
    )


CA_BUNDLE_ENV = "MEMAUDIT_S3_CA_BUNDLE"  # a private CA of the object store only (the Hub keeps the public ones)


def ca_bundle() -> str:
    """The CA certificates that TLS to the object store is checked against."""
    return os.environ.get(CA_BUNDLE_ENV) or os.environ.get("SSL_CERT_FILE") or certifi.where()


def pool_manager(*, connect: float, read: float, retries: int, secure: bool) -> urllib3.PoolManager:
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect, read=read),
        maxsize=10,
        cert_reqs="CERT_REQUIRED" if secure else "CERT_NONE",
        ca_certs=ca_bundle() if secure else None,
        retries=retry_policy(retries),
    )


def _reason(exc: BaseException) -> str:
    """A short, one-line reason from a urllib3 error (connection refused, timed out, TLS failure...)."""
    inner = getattr(exc, "reason", None) or exc
    text = " ".join(str(inner).split())
    return text.rsplit(": ", 1)[-1][:160] or type(inner).__name__


class S3Store(ObjectStore):
    """Objects in one S3 bucket. Creates the bucket when it is missing (if the credentials may)."""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        access_key: str,
        secret_key: str,
        secure: bool | None = None,
        region: str | None = None,
        *,
        create_bucket: bool = True,
        connect_timeout: float = 3.0,
        read_timeout: float = 30.0,
        retries: int = 8,
    ):
        super().__init__()
        host, self.secure = parse_endpoint(endpoint, secure)
        self.endpoint = ("https://" if self.secure else "http://") + host
        try:
            check_bucket_name(bucket)
        except ValueError:
            raise MemauditError(
                f"invalid S3 bucket name {bucket!r}", "use 3-63 lowercase letters, digits, dots and hyphens"
            ) from None
        self.bucket = bucket
        if not access_key or not secret_key:
            raise MemauditError(f"no S3 credentials for {self.endpoint}", CREDENTIALS_FIX)
        common = {"access_key": access_key, "secret_key": secret_key, "secure": self.secure, "region": region}
        self._client = Minio(
            host,
            **common,
            http_client=pool_manager(connect=connect_timeout, read=read_timeout, retries=retries, secure=self.secure),
        )
        probe = Minio(
            host, **common, http_client=pool_manager(connect=connect_timeout, read=5, retries=0, secure=self.secure)
        )
        with self._errors("connect to"):
            if not probe.bucket_exists(bucket):
                if not create_bucket:
                    raise MemauditError(
                        f"bucket {bucket!r} does not exist at {self.endpoint}",
                        "create it or set MEMAUDIT_S3_BUCKET to an existing bucket",
                    )
                with contextlib.suppress(S3Error):  # created concurrently by another task: fine
                    probe.make_bucket(bucket)
                if not probe.bucket_exists(bucket):
                    raise MemauditError(
                        f"bucket {bucket!r} does not exist at {self.endpoint} and could not be created",
                        "create it or set MEMAUDIT_S3_BUCKET to an existing bucket",
                    )

    def __repr__(self) -> str:
        return f"S3Store(endpoint={self.endpoint!r}, bucket={self.bucket!r})"

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}"

    @contextlib.contextmanager
    def _errors(self, action: str, key: str | None = None) -> Iterator[None]:
        """Turn minio/urllib3 failures into one-line MemauditErrors (never with credentials)."""
        where = f"{self.endpoint} (bucket {self.bucket!r})"
        try:
            yield
        except S3Error as exc:
            if exc.code in _MISSING_CODES and key is not None:
                raise ObjectNotFound(key) from None
            if exc.code in _AUTH_CODES:
                raise MemauditError(
                    f"S3 endpoint {where} rejected the credentials ({exc.code})", CREDENTIALS_FIX
                ) from None
            target = self.uri(key) if key else where
            raise MemauditError(
                f"S3 failed to {action} {target}: {exc.code}: {exc.message}",
                "check the bucket and the server's log",
            ) from None
        except (InvalidResponseError, ServerError) as exc:
            raise MemauditError(
                f"{where} did not answer like an S3 server ({' '.join(str(exc).split())[:160]})",
                "point MEMAUDIT_S3_ENDPOINT at the S3 API port (http:// for plain HTTP)",
            ) from None
        except (HTTPError, MinioException) as exc:  # local read errors (OSError) propagate as they are
            raise MemauditError(
                f"cannot {action} S3 endpoint {where}: {_reason(exc)}",
                "start the S3 server or correct MEMAUDIT_S3_ENDPOINT (http://host:port; MEMAUDIT_S3_SECURE for TLS)",
            ) from None

    def _raw_put(self, key: str, stream: HashingReader, size: int) -> None:
        tmp = f"{TMP_PREFIX}/{uuid.uuid4().hex}"
        try:
            with self._errors("upload", key):
                self._client.put_object(self.bucket, tmp, stream, size, part_size=PART_SIZE if size < 0 else 0)
                meta = {SHA_META: stream.hexdigest()}
                self._client.copy_object(
                    self.bucket, key, CopySource(self.bucket, tmp), metadata=meta, metadata_directive=REPLACE
                )
        finally:
            with contextlib.suppress(Exception):
                self._client.remove_object(self.bucket, tmp)

    def _raw_open(self, key: str) -> BinaryIO:
        with self._errors("read", key):
            response = self._client.get_object(self.bucket, key)
        return _Response(response, lambda: self._errors("read", key))

    def _raw_exists(self, key: str) -> bool:
        try:
            with self._errors("look up", key):
                self._client.stat_object(self.bucket, key)
        except ObjectNotFound:
            return False
        return True

    def _stored_digest(self, key: str) -> tuple[str, int] | None:
        with self._errors("look up", key):
            stat = self._client.stat_object(self.bucket, key)
        meta = {k.lower(): v for k, v in (stat.metadata or {}).items()}
        sha = meta.get(f"x-amz-meta-{SHA_META}")
        return (sha, int(stat.size or 0)) if sha else None

    def _raw_list(self, prefix: str) -> Iterable[str]:
        with self._errors("list", prefix or None):
            names = [o.object_name for o in self._client.list_objects(self.bucket, prefix=prefix, recursive=True)]
        return [n for n in names if n and not n.startswith(TMP_PREFIX + "/") and not n.endswith("/")]

    def _raw_delete(self, keys: list[str]) -> None:
        for key in keys:
            with self._errors("delete", key):
                self._client.remove_object(self.bucket, key)


class _Response:
    """A urllib3 response as a closable binary stream that releases its connection."""

    def __init__(self, response: urllib3.BaseHTTPResponse, errors: Callable[[], contextlib.AbstractContextManager]):
        self._response = response
        self._errors = errors

    def read(self, n: int = -1) -> bytes:
        with self._errors():
            return self._response.read(None if n < 0 else n)

    def close(self) -> None:
        self._response.close()
        self._response.release_conn()
