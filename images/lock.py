"""Hashed lock files of the images' Python dependencies: images/<image>/requirements.lock.

Each lock resolves the image's pins in pyproject.toml (images/requirements.py selects them) with every transitive
dependency, for the images' Python 3.12 on x86_64 manylinux, from PyPI, each with its sha256 hashes; the
Dockerfiles install it with ``pip install --require-hashes --no-deps``. torch and its CUDA stack (nvidia-*, cuda-*,
triton) are left out: the images install them from PyTorch's own index (the CPU or the CUDA build), pinned by
version. Needs ``uv`` (a dev dependency) and PyPI:

    python images/lock.py            # rewrite every lock (make lock)
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SELECTIONS = {  # each image's pins, by its folder under images/
    "runtime-cpu": ["--with", "boto3"],
    "runtime-gpu": ["--extra", "gpu"],
    "mlflow": ["--only", "mlflow", "--only", "boto3"],  # the tracking server alone: boto3 for its S3 artifacts
}
TARGET = ["--python-version", "3.12", "--python-platform", "x86_64-manylinux_2_28"]
FROM_TORCH_INDEX = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")  # installed with torch, from its index
_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==")


def lock_path(image: str) -> Path:
    return ROOT / "images" / image / "requirements.lock"


def without_torch_stack(text: str) -> str:
    """The lock without the entries (a pin line and its indented hash and comment lines) of torch's stack."""
    out, skipping = [], False
    for line in text.splitlines():
        if not line.startswith((" ", "\t")):
            match = _ENTRY.match(line)
            skipping = bool(match and FROM_TORCH_INDEX.match(match.group(1).lower()))
        if not skipping:
            out.append(line)
    return "\n".join(out) + "\n"


def compile_lock(image: str) -> str:
    """The lock of ``image`` as uv writes it, then without torch's stack, under a header saying how it was made."""
    selected = subprocess.run(
        [sys.executable, str(ROOT / "images" / "requirements.py"), str(ROOT / "pyproject.toml"), *SELECTIONS[image]],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "requirements.in"
        source.write_text(selected)
        uv = Path(sys.executable).parent / "uv"
        cmd = [str(uv), "pip", "compile", str(source), *TARGET, "--generate-hashes", "--no-header", "--quiet"]
        text = subprocess.run([*cmd, "--index-url", "https://pypi.org/simple"], capture_output=True, text=True,
                              check=True).stdout  # fmt: skip
    header = (
        f"# The {image} image's dependencies with their sha256 hashes, for pip install --require-hashes --no-deps.\n"
        "# Written by `make lock` (images/lock.py) from pyproject.toml; torch and its CUDA stack, in the images that\n"
        "# have them, come from PyTorch's index instead (see the Dockerfile). Do not edit by hand.\n"
    )
    return header + without_torch_stack(text.replace(source.as_posix(), "requirements.in"))


def main() -> int:
    for image in SELECTIONS:
        lock_path(image).write_text(compile_lock(image))
        print(f"wrote {lock_path(image).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
