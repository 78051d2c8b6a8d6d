"""Own classification data (dataset ``file``): one JSONL, JSON, CSV or parquet file, validated into raw rows.

Columns (any others are ignored):

- ``prompt``: the question or text to classify;
- ``options``: the option texts as a list (a JSON array in a CSV cell), or columns ``option_0`` .. ``option_k``
  (empty cells at the end give a row fewer options); two to 26 options a row, labelled ``A``, ``B``, ... and
  formatted with the multiple-choice templates, exactly like ARC and MMLU rows (docs/method.md §1.2);
- ``label``: the gold option, a 0-based index or a letter (case-insensitive);
- ``id`` (optional): a unique id per row, kept as the pool's ``source_id``; by default the row's number.

Rows are numbered from 1 in messages: the line of a JSONL file, the data row (after the header) of a CSV file,
the row of a parquet file or JSON array. Every problem (a missing column, a label out of range, fewer than two
options, duplicate ids, an empty file, bytes that are not UTF-8) raises a one-line :class:`MemauditError` naming
the row and the fix. Free-text generation data (prompt/completion, prompt/response) is refused: only
classification-style data can be audited.
"""

from __future__ import annotations

import io
import json
import math
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from memaudit.config.fingerprint import content_sha256
from memaudit.data.sources import DATA_SUFFIXES, RAW_COLUMNS
from memaudit.errors import MemauditError

OPTION_LETTERS = string.ascii_uppercase
FILE_SPLIT = "file"  # source_split of every row
GENERATION_COLUMNS = ("completion", "response", "output", "chosen", "target", "generation")
FORMAT_FIX = "give it the columns prompt, options (or option_0, option_1, ...), label and optionally id"
_OPTION_COLUMN = re.compile(r"^option_(\d+)$")


@dataclass(frozen=True)
class _Table:
    columns: list[str]
    rows: list[tuple[int, dict[str, Any]]]  # (row number from 1, record)
    noun: str  # "line" (JSONL) or "row"


def read_user_file(path: str | Path, expected_sha256: str | None = None) -> pd.DataFrame:
    """The file's rows as raw rows (:data:`memaudit.data.sources.RAW_COLUMNS`), validated; with
    ``expected_sha256`` (``dataset.file_sha256``) a file whose content changed since the config was made raises."""
    path = Path(path)
    raw = _read_bytes(path)
    actual = content_sha256(raw)
    if expected_sha256 is not None and actual != expected_sha256:
        raise MemauditError(
            f"dataset file {path} changed since the config was made (sha256 {actual[:12]}..., config "
            f"dataset.file_sha256 {expected_sha256[:12]}...)",
            "restore the file, or make the config again without dataset.file_sha256 to audit the new content",
        )
    table = _table(path, raw)
    option_columns = _option_columns(table, path)
    ids: dict[str, int] = {}
    rows = []
    for number, record in table.rows:
        where = f"{path} {table.noun} {number}"
        text, texts, gold = _parse_row(record, option_columns, where)
        source_id = _row_id(record, where) if "id" in table.columns else str(number)
        if source_id in ids:
            raise MemauditError(
                f"{where} repeats the id {source_id!r} of {table.noun} {ids[source_id]}",
                "give every row a unique id (or drop the id column to number the rows)",
            )
        ids[source_id] = number
        labels = list(OPTION_LETTERS[: len(texts)])
        rows.append(dict(zip(RAW_COLUMNS, (text, labels, texts, gold, source_id, FILE_SPLIT), strict=True)))
    return pd.DataFrame(rows, columns=list(RAW_COLUMNS))


def _read_bytes(path: Path) -> bytes:
    if path.suffix.lower() not in DATA_SUFFIXES:
        raise MemauditError(
            f"dataset file {path} has an unsupported type {path.suffix or '(no suffix)'!r}",
            f"save it as one of {', '.join(DATA_SUFFIXES)}",
        )
    if not path.is_file():
        raise MemauditError(f"dataset file {path} not found", "pass an existing file with --data or dataset.path")
    raw = path.read_bytes()
    if not raw.strip():
        raise MemauditError(f"dataset file {path} is empty", f"{FORMAT_FIX}, one row per sample")
    return raw


def _table(path: Path, raw: bytes) -> _Table:
    """The records of the file with their row numbers (JSONL: line numbers)."""
    if path.suffix.lower() == ".parquet":
        try:
            df = pd.read_parquet(io.BytesIO(raw))
        except Exception as exc:  # pyarrow raises several types for foreign or truncated files
            raise MemauditError(
                f"cannot read {path} as parquet ({type(exc).__name__})", "save it again as parquet, JSONL or CSV"
            ) from None
        table = _Table([str(c) for c in df.columns], list(enumerate(df.to_dict("records"), start=1)), "row")
    elif path.suffix.lower() == ".csv":
        table = _csv_table(path, _decode(path, raw))
    else:
        table = _json_table(path, _decode(path, raw))
    if not table.rows:
        raise MemauditError(f"dataset file {path} has no rows", f"{FORMAT_FIX}, one row per sample")
    return table


def _decode(path: Path, raw: bytes) -> str:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MemauditError(
            f"cannot read {path} as UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})", "save it as UTF-8"
        ) from None
    if "\x00" in text:
        raise MemauditError(f"cannot read {path} as UTF-8 (it holds NUL bytes, as UTF-16 does)", "save it as UTF-8")
    return text


def _csv_table(path: Path, text: str) -> _Table:
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        df = pd.DataFrame()
    except (pd.errors.ParserError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise MemauditError(f"cannot parse {path} as CSV ({first})", "quote cells that hold commas") from None
    return _Table([str(c) for c in df.columns], list(enumerate(df.to_dict("records"), start=1)), "row")


def _json_table(path: Path, text: str) -> _Table:
    """A JSON array of objects (rows numbered from 1) or JSON Lines (rows numbered by their line)."""
    if text.lstrip().startswith("["):
        try:
            items = list(enumerate(json.loads(text), start=1))
        except json.JSONDecodeError as exc:
            problem = f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})"
            raise MemauditError(problem, "fix its syntax") from None
        noun = "row"
    else:
        items, noun = [], "line"
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    items.append((number, json.loads(line)))
                except json.JSONDecodeError:
                    raise MemauditError(
                        f"{path} line {number} is not valid JSON", "write one JSON object per line"
                    ) from None
    for number, item in items:
        if not isinstance(item, dict):
            raise MemauditError(f"{path} {noun} {number} is not a JSON object", 'write {"prompt": ..., ...} rows')
    columns = list(dict.fromkeys(key for _, item in items for key in item))
    return _Table(columns, items, noun)


def _option_columns(table: _Table, path: Path) -> list[str] | None:
    """The ``option_<i>`` columns in order, or None when the options are one ``options`` list column."""
    numbered = sorted((int(m[1]), c) for c in table.columns if (m := _OPTION_COLUMN.match(c)))
    has = f"(has: {', '.join(table.columns)})"
    if "options" not in table.columns and not numbered:
        if any(c in GENERATION_COLUMNS for c in table.columns):
            raise MemauditError(
                f"{path} holds free-text generation data {has}: only classification-style data is supported",
                "give every row a prompt, its options and the gold option as label",
            )
        raise MemauditError(f"{path} lacks the column options {has}", FORMAT_FIX)
    missing = [c for c in ("prompt", "label") if c not in table.columns]
    if missing:
        raise MemauditError(f"{path} lacks the column {' and '.join(missing)} {has}", FORMAT_FIX)
    if numbered and "options" in table.columns:
        raise MemauditError(f"{path} has both an options column and option_<i> columns", "keep one of the two")
    if not numbered:
        return None
    gap = next((i for i, (n, _) in enumerate(numbered) if n != i), None)
    if gap is not None:
        raise MemauditError(
            f"{path} has the column {numbered[gap][1]} but no option_{gap}", "number the option columns from option_0"
        )
    return [c for _, c in numbered]


def _parse_row(record: dict[str, Any], option_columns: list[str] | None, where: str) -> tuple[str, list[str], int]:
    """(prompt, option texts, gold index) of one record."""
    text = _cell(record.get("prompt"), where, "prompt")
    if text is None:
        raise MemauditError(f"{where} has no prompt", "give every row a non-empty prompt")
    if option_columns is None:
        texts = _list_options(record.get("options"), where)
    else:
        texts = _column_options(record, option_columns, where)
    if len(texts) < 2:
        raise MemauditError(f"{where} has {len(texts)} option(s), fewer than two", "give every row at least 2 options")
    if len(texts) > len(OPTION_LETTERS):
        raise MemauditError(
            f"{where} has {len(texts)} options, more than the letters A-Z", f"keep at most {len(OPTION_LETTERS)}"
        )
    return text, texts, _label(record.get("label"), len(texts), where)


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _cell(value: Any, where: str, what: str) -> str | None:
    """A cell as text, None when missing or blank; lists and mappings raise."""
    if _missing(value):
        return None
    if isinstance(value, list | tuple | dict | np.ndarray):
        raise MemauditError(f"{where}: {what} is a {type(value).__name__}, not text", f"write {what} as text")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    return text if text.strip() else None


def _list_options(value: Any, where: str) -> list[str]:
    if isinstance(value, str) and value.strip().startswith("["):  # a JSON array in a CSV cell
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise MemauditError(f"{where}: options is not a valid JSON array", 'write it as ["yes", "no"]') from None
    if _missing(value):
        return []
    if not isinstance(value, list | tuple | np.ndarray):
        raise MemauditError(f"{where}: options is not a list", 'write the options as a list, e.g. ["yes", "no"]')
    texts = [_cell(v, where, "each option") for v in value]
    for letter, option in zip(OPTION_LETTERS, texts, strict=False):
        if option is None:
            raise MemauditError(f"{where}: option {letter} is empty", "give every option a text")
    return [str(t) for t in texts]


def _column_options(record: dict[str, Any], columns: list[str], where: str) -> list[str]:
    """The ``option_<i>`` cells of one row; empty cells at the end give it fewer options."""
    texts = [_cell(record.get(column), where, column) for column in columns]
    while texts and texts[-1] is None:
        texts.pop()
    if None in texts:
        empty = texts.index(None)
        raise MemauditError(
            f"{where} has an empty option_{empty} before option_{len(texts) - 1}",
            "fill the options from option_0 on (only cells at the end may be empty)",
        )
    return [str(t) for t in texts]


def _label(value: Any, n_options: int, where: str) -> int:
    """The gold index from a 0-based index or a letter (case-insensitive); anything else raises."""
    valid = f"0-{n_options - 1} or A-{OPTION_LETTERS[n_options - 1]}"
    fix = "set label to the gold option's 0-based index or its letter"
    if _missing(value) or (isinstance(value, str) and not value.strip()):
        raise MemauditError(f"{where} has no label", fix)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = value.strip() if isinstance(value, str) else None
    if isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_):
        index = int(value)
    elif text is not None and re.fullmatch(r"[0-9]+", text):
        index = int(text)
    elif text is not None and re.fullmatch(r"[A-Za-z]", text):
        index = OPTION_LETTERS.index(text.upper())
    else:
        raise MemauditError(f"{where} has the label {value!r}, not an option index or letter ({valid})", fix)
    if not 0 <= index < n_options:
        raise MemauditError(f"{where} has the label {value!r}, out of range for its {n_options} options ({valid})", fix)
    return index


def _row_id(record: dict[str, Any], where: str) -> str:
    source_id = _cell(record.get("id"), where, "id")
    if source_id is None:
        raise MemauditError(f"{where} has no id", "give every row an id (or drop the id column to number the rows)")
    return source_id
