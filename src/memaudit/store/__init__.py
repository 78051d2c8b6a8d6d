"""Object storage for pipeline artifacts: which store to use, and how a task reads a URI it was handed.

The stores themselves: :class:`~memaudit.store.local.LocalStore` (a folder, the embedded default) and
:class:`~memaudit.store.s3.S3Store` (S3/MinIO), both :class:`~memaudit.store.base.ObjectStore` (atomic writes,
COMPLETE markers with sha256, immutable complete prefixes). The run layout is in :mod:`memaudit.store.layout`.

Environment (read by :func:`store_from_env` and :func:`store_for_uri`):

``MEMAUDIT_S3_ENDPOINT``   S3 API endpoint (``host:port`` or ``http(s)://host:port``); unset = local folder store
``MEMAUDIT_S3_ACCESS_KEY`` / ``MEMAUDIT_S3_SECRET_KEY``   credentials (fallback ``AWS_ACCESS_KEY_ID`` /
                           ``AWS_SECRET_ACCESS_KEY``)
``MEMAUDIT_S3_BUCKET``     bucket (default ``memaudit``)
``MEMAUDIT_S3_SECURE``     TLS for a ``host:port`` endpoint (default false; a scheme in the endpoint wins)
``MEMAUDIT_S3_REGION``     region (optional)
``MEMAUDIT_S3_CA_BUNDLE``  CA certificates of an https endpoint signed by a private CA (default: ``SSL_CERT_FILE``,
                           else certifi's)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from memaudit.errors import MemauditError
from memaudit.store.base import STORE_TAG, ObjectStore
from memaudit.store.layout import RunLayout, RunStorage
from memaudit.store.local import LocalStore
from memaudit.store.s3 import S3Store
from memaudit.store.seal import MARKER

__all__ = [
    "DEFAULT_BUCKET",
    "ENDPOINT_ENV",
    "MARKER",
    "LocalStore",
    "ObjectStore",
    "RunLayout",
    "RunStorage",
    "S3Store",
    "download_uri",
    "s3_store_from_env",
    "store_for_uri",
    "store_from_env",
]

DEFAULT_BUCKET = "memaudit"
ENDPOINT_ENV = "MEMAUDIT_S3_ENDPOINT"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _secure_flag(env: Mapping[str, str]) -> bool:
    raw = env.get("MEMAUDIT_S3_SECURE", "").strip().lower()
    if raw not in _TRUE | _FALSE:
        raise MemauditError(f"MEMAUDIT_S3_SECURE={raw!r} is not a boolean", "set it to true or false")
    return raw in _TRUE


def s3_store_from_env(bucket: str | None = None, env: Mapping[str, str] | None = None) -> S3Store:
    """An :class:`S3Store` configured from ``MEMAUDIT_S3_*`` (``bucket`` overrides ``MEMAUDIT_S3_BUCKET``)."""
    env = os.environ if env is None else env
    endpoint = env.get(ENDPOINT_ENV, "").strip()
    if not endpoint:
        raise MemauditError(f"{ENDPOINT_ENV} is not set", "set it to the S3 endpoint, e.g. http://minio:9000")
    return S3Store(
        endpoint,
        bucket or env.get("MEMAUDIT_S3_BUCKET", "").strip() or DEFAULT_BUCKET,
        env.get("MEMAUDIT_S3_ACCESS_KEY") or env.get("AWS_ACCESS_KEY_ID") or "",
        env.get("MEMAUDIT_S3_SECRET_KEY") or env.get("AWS_SECRET_ACCESS_KEY") or "",
        secure=_secure_flag(env),
        region=env.get("MEMAUDIT_S3_REGION") or None,
    )


def store_from_env(local_root: str | Path, env: Mapping[str, str] | None = None) -> ObjectStore:
    """S3Store when ``MEMAUDIT_S3_ENDPOINT`` is set, else a LocalStore in ``local_root``."""
    env = os.environ if env is None else env
    if env.get(ENDPOINT_ENV, "").strip():
        return s3_store_from_env(env=env)
    return LocalStore(local_root)


def store_for_uri(uri: str, env: Mapping[str, str] | None = None) -> tuple[ObjectStore, str]:
    """The store holding ``uri`` and the key inside it.

    ``s3://bucket/key`` uses the endpoint and credentials from the environment; ``file:///…`` (or a plain path)
    must lie inside a LocalStore folder (found by its ``.memaudit-store`` tag).
    """
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise MemauditError(f"S3 URI {uri!r} has no bucket", "write s3://bucket/key")
        return s3_store_from_env(bucket=parts.netloc, env=env), unquote(parts.path.lstrip("/"))
    if parts.scheme == "file":
        path = Path(url2pathname(unquote(parts.path)))
    elif parts.scheme in ("", "local") or len(parts.scheme) == 1:  # plain path (or a Windows drive letter)
        path = Path(uri.removeprefix("local://"))
    else:
        raise MemauditError(
            f"unsupported URI scheme {parts.scheme!r} in {uri!r}", "use s3://bucket/key or file:///path"
        )
    path = path.expanduser().resolve()
    for root in [path, *path.parents]:
        if (root / STORE_TAG).is_file():
            rel = path.relative_to(root).as_posix()
            return LocalStore(root), "" if rel == "." else rel
    raise MemauditError(f"{uri} is not inside a memaudit store", "pass a URI that a memaudit task wrote")


def download_uri(uri: str, dest: str | Path, *, verify: bool = True, env: Mapping[str, str] | None = None) -> Path:
    """Fetch the object or folder at ``uri`` to ``dest`` (verified against its COMPLETE marker by default)."""
    store, key = store_for_uri(uri, env=env)
    dest = Path(dest)
    if key and store.exists(key):
        return store.get_file(key, dest, verify=verify)
    store.get_dir(key, dest, verify=verify)
    return dest
