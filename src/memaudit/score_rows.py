"""Read a few checkpoints of a score file without loading the others, and a score file's shadow id.

``np.load`` reads a whole ``.npz`` member even to index one row, and a score file is mostly per-checkpoint arrays
(``[C, ...]``). The aggregate stage needs two checkpoints per model, so it memory-maps the members instead: a
file written by :func:`memaudit.scorefile.write_scores` (``np.savez``) stores its members uncompressed, so each
``.npy`` payload lies at a fixed offset of the file. Compressed members fall back to a full read. The result is
validated with the score-file schema; the zip CRCs of the mapped members are not checked (the object store's
``COMPLETE`` checksums cover the files).
"""

from __future__ import annotations

import re
import struct
import zipfile
from pathlib import Path

import numpy as np

from memaudit.errors import MemauditError
from memaudit.scorefile import REQUIRED, validate_scores

PER_CHECKPOINT = ("option_logits", "loss", "psmi", "psmi_std", "mahalanobis", "test_option_logits", "test_loss")
_LOCAL_HEADER = 30  # bytes of a zip local file header before its name and extra field
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _member(zf: zipfile.ZipFile, path: Path, key: str) -> np.ndarray:
    """The array ``key``: memory-mapped when stored uncompressed, else read whole."""
    info = zf.getinfo(f"{key}.npy")
    with zf.open(info) as fh:
        if info.compress_type != zipfile.ZIP_STORED:
            return np.lib.format.read_array(fh, allow_pickle=False)
        version = np.lib.format.read_magic(fh)
        if version not in _HEADER_READERS:
            fh.seek(0)
            return np.lib.format.read_array(fh, allow_pickle=False)
        shape, fortran, dtype = _HEADER_READERS[version](fh)
        header_end = fh.tell()
    if dtype.hasobject:
        raise ValueError(f"{key} holds Python objects")
    with open(path, "rb") as raw:
        raw.seek(info.header_offset)
        local = raw.read(_LOCAL_HEADER)
    if len(local) != _LOCAL_HEADER or local[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"bad local header for {key}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    offset = info.header_offset + _LOCAL_HEADER + name_len + extra_len + header_end
    if offset + dtype.itemsize * int(np.prod(shape)) > path.stat().st_size:
        raise EOFError(f"{key} is truncated")
    if int(np.prod(shape)) == 0:
        return np.empty(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def read_score_rows(path: str | Path, rows: list[int], keys: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The required arrays of a score file (and the optional ``keys`` present), with every per-checkpoint array
    reduced to the checkpoint indices ``rows`` (in that order); ``checkpoints``/``epochs`` are kept whole.
    A missing, corrupted or inconsistent file raises :class:`MemauditError`."""
    path = Path(path)
    if not path.is_file():
        raise MemauditError(f"score file {path} not found", "run the score stage for this shadow")
    try:
        with zipfile.ZipFile(path) as zf:
            present = {name[:-4] for name in zf.namelist() if name.endswith(".npy")}
            wanted = [k for k in present if k in REQUIRED or k in keys]
            arrays = {k: _member(zf, path, k) for k in wanted}
        arrays = validate_scores(arrays, where=f"score file {path}")
        return {k: np.array(v[rows]) if k in PER_CHECKPOINT else np.array(v) for k, v in arrays.items()}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, IndexError) as exc:
        raise MemauditError(
            f"score file {path} is corrupted ({type(exc).__name__})", "delete it and re-run the score stage"
        ) from None


def shadow_id(path: Path) -> int:
    """The shadow id of a score file: its ``shadow`` key, else the last integer in its name or its folder's
    (``shadows/3/scores.npz``, ``shadow-3.npz``)."""
    if not path.is_file():
        raise MemauditError(f"score file {path} not found", "run the score stage for this shadow")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "shadow" in npz.files:
                return int(npz["shadow"])
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise MemauditError(
            f"score file {path} is corrupted ({type(exc).__name__})", "delete it and re-run the score stage"
        ) from None
    for name in (path.stem, path.parent.name):
        found = re.findall(r"\d+", name)
        if found:
            return int(found[-1])
    raise MemauditError(f"score file {path} names no shadow id", "re-run the score stage (it writes 'shadow')")
