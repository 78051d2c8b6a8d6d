"""Recognise values that must never leave the process: credentials in config values, env secrets, URL passwords.

Used by tracking (nothing secret reaches MLflow) and by error messages that quote URIs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

# a key (last dotted part) that names a credential; 'run.s3_secret' (the *name* of a Kubernetes Secret) is not one
_SECRET_NAME = re.compile(
    r"(^|_)(password|passwd|passphrase|secret_key|secret_access_key|access_key|access_key_id|api_key|apikey"
    r"|token|auth_token|access_token|session_token|private_key|credentials?)$"
)
# environment variables whose values are secrets
_SECRET_ENV = re.compile(r"(SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|API_KEY|PRIVATE_KEY|CREDENTIAL)", re.IGNORECASE)
_SECRET_SHAPES = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),  # Hugging Face token
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),  # GitHub token
    re.compile(r"\bsk-[A-Za-z0-9_-]{20,}"),  # API keys of the sk- kind
    re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.IGNORECASE),  # scheme://user:password@host
]
MIN_ENV_SECRET_LENGTH = 6


def secret_env_values(env: Mapping[str, str] | None = None) -> set[str]:
    """Values of environment variables whose names say they hold a secret (long enough to match safely)."""
    env = os.environ if env is None else env
    return {v for k, v in env.items() if _SECRET_ENV.search(k) and len(v) >= MIN_ENV_SECRET_LENGTH}


def is_secret_name(key: str) -> bool:
    """Whether a (dotted) key names a credential, judged on its last part."""
    last = key.rsplit(".", 1)[-1].lower().replace("-", "_")
    return bool(_SECRET_NAME.search(last))


def looks_secret(key: str, value: str, env_secrets: set[str]) -> bool:
    """Whether ``key=value`` names or carries a credential (by name, by shape, or by containing an env secret)."""
    if is_secret_name(key):
        return True
    return any(p.search(value) for p in _SECRET_SHAPES) or any(s in value for s in env_secrets)


def redact_url(url: str) -> str:
    """``scheme://user:password@host/…`` → ``scheme://***@host/…``."""
    return re.sub(r"(://)[^/@\s]*@", r"\1***@", url)
