"""The score file of one shadow (docs/design.md §2): forward values on the whole train pool at every checkpoint.

Stored as ``.npz`` (little-endian arrays). Required keys:

| key | shape / type | meaning |
|---|---|---|
| ``global_index`` | int64 [N] | pool order |
| ``member`` | bool [N] | in this shadow's training split |
| ``label_index`` | int64 [N] | index of the inserted (possibly noisy) label among the options |
| ``checkpoints`` / ``epochs`` | int64 [C] / float64 [C] | optimizer step and epoch of each checkpoint |
| ``option_logits`` | float32 [C, N, K] | logits of the K option tokens at the answer position; absent = -inf |
| ``loss`` | float32 [C, N] | answer-token cross-entropy over the full vocabulary |
| ``layers`` | int64 [L] | hidden-state layers used |
| ``psmi`` | float32 [C, L, N] | P-SMI of members (NaN for non-members) |

Optional keys: ``shadow`` (int64 scalar); ``psmi_std`` float32 [C, L, N] (std of P-SMI over directions,
members only); ``mahalanobis`` float32 [C, L, N] (members only); ``hidden`` float16 [C, L, N, d] (opt-in); the
held-out test rows ``test_global_index`` int64 [T], ``test_label_index`` int64 [T], ``test_option_logits`` float32
[C, T, K], ``test_loss`` float32 [C, T].

:func:`read_score_rows` reads a few checkpoints without loading the others: ``np.load`` reads a whole ``.npz``
member even to index one row, and a score file is mostly per-checkpoint arrays (``[C, ...]``), while the aggregate
needs two checkpoints per model. It memory-maps the members instead: ``np.savez`` stores them uncompressed, so each
``.npy`` payload lies at a fixed offset of the file (compressed members fall back to a full read). The zip CRCs of
mapped members are not checked: the object store's ``COMPLETE`` checksums cover the files.
"""

from __future__ import annotations

import re
import struct
import zipfile
from pathlib import Path

import numpy as np

from memaudit.errors import MemauditError
from memaudit.store.atomic import atomic_path

REQUIRED: dict[str, np.dtype] = {
    "global_index": np.dtype("int64"),
    "member": np.dtype("bool"),
    "label_index": np.dtype("int64"),
    "checkpoints": np.dtype("int64"),
    "epochs": np.dtype("float64"),
    "option_logits": np.dtype("float32"),
    "loss": np.dtype("float32"),
    "layers": np.dtype("int64"),
    "psmi": np.dtype("float32"),
}
OPTIONAL: dict[str, np.dtype] = {
    "shadow": np.dtype("int64"),
    "psmi_std": np.dtype("float32"),
    "mahalanobis": np.dtype("float32"),
    "hidden": np.dtype("float16"),
    "test_global_index": np.dtype("int64"),
    "test_label_index": np.dtype("int64"),
    "test_option_logits": np.dtype("float32"),
    "test_loss": np.dtype("float32"),
}


def _shapes_ok(a: dict[str, np.ndarray]) -> str | None:
    """Return a description of the first inconsistent shape, or None."""
    n = a["global_index"].shape[0]
    c = a["checkpoints"].shape[0]
    n_layers = a["layers"].shape[0]
    expected = {
        "global_index": (n,),
        "member": (n,),
        "label_index": (n,),
        "checkpoints": (c,),
        "epochs": (c,),
        "loss": (c, n),
        "psmi": (c, n_layers, n),
    }
    expected.update({k: (c, n_layers, n) for k in ("psmi_std", "mahalanobis") if k in a})
    for key, shape in expected.items():
        if a[key].shape != shape:
            return f"{key} has shape {a[key].shape}, expected {shape}"
    logits = a["option_logits"]
    if logits.ndim != 3 or logits.shape[:2] != (c, n):
        return f"option_logits has shape {logits.shape}, expected ({c}, {n}, K)"
    if "hidden" in a and a["hidden"].shape[:3] != (c, n_layers, n):
        return f"hidden has shape {a['hidden'].shape}, expected ({c}, {n_layers}, {n}, d)"
    if "test_global_index" in a:
        t = a["test_global_index"].shape[0]
        for key, shape in {"test_label_index": (t,), "test_loss": (c, t)}.items():
            if key in a and a[key].shape != shape:
                return f"{key} has shape {a[key].shape}, expected {shape}"
    if c == 0 or n == 0:
        return "it holds no checkpoints or no samples"
    return None


def validate_scores(arrays: dict[str, np.ndarray], where: str = "score file") -> dict[str, np.ndarray]:
    """Check keys, dtypes and shapes; returns the arrays cast to the schema's dtypes."""
    missing = [k for k in REQUIRED if k not in arrays]
    if missing:
        raise MemauditError(f"{where} lacks key(s) {', '.join(missing)}", "re-run the score stage for it")
    out: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        dtype = REQUIRED.get(key) or OPTIONAL.get(key)
        value = np.asarray(value)
        out[key] = value.astype(dtype.newbyteorder("<"), copy=False) if dtype is not None else value
    problem = _shapes_ok(out)
    if problem:
        raise MemauditError(f"{where} is inconsistent: {problem}", "re-run the score stage for it")
    return out


def write_scores(path: str | Path, **arrays: np.ndarray) -> Path:
    """Validate and write a score file atomically (temp file, then rename)."""
    arrays = validate_scores(arrays)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return Path(path)


def read_scores(path: str | Path, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Read and validate a score file; ``keys`` limits which optional arrays are loaded (required always are)."""
    path = Path(path)
    if not path.is_file():
        raise MemauditError(f"score file {path} not found", "run the score stage for this shadow")
    try:
        with np.load(path, allow_pickle=False) as npz:
            wanted = [k for k in npz.files if keys is None or k in REQUIRED or k in keys]
            arrays = {k: npz[k] for k in wanted}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise MemauditError(
            f"score file {path} is corrupted ({type(exc).__name__})", "delete it and re-run the score stage"
        ) from None
    return validate_scores(arrays, where=f"score file {path}")


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
