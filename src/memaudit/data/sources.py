"""Loaders for ARC, ETHICS (commonsense) and MMLU from local files in their upstream layouts, or from the Hub.

Every loader returns the rows of one upstream split as a DataFrame of *raw rows* (:data:`RAW_COLUMNS`): the
question (or scenario), its option labels and texts, the gold option's index and an upstream reference. The
pool builder (:mod:`memaudit.data.pool`) adds templates, the hold-out and label noise.

Layouts recognised under a data folder (the folder itself, or its ``arc/``, ``ethics/``, ``mmlu/`` subfolder):

- ARC (``allenai/ai2_arc``, config ``ARC-Challenge``; Hub files ``ARC-Challenge/{train,validation,test}-00000-of-
  00001.parquet``): HF-layout ``ARC-Challenge-train.jsonl`` or parquet; fields ``id``, ``question``,
  ``choices{text,label}``, ``answerKey``. The original release's nested ``question{stem,choices}`` rows and its
  file names (``ARC-Challenge-Train.jsonl``, ``-Dev`` = validation) are read too.
- ETHICS (``hendrycks/ethics``, config ``commonsense``; Hub files ``data/commonsense/{train,validation,test}.csv``
  behind a loading script, parquet copies under ``refs/convert/parquet``): the upstream tar's
  ``commonsense/cm_train.csv``, ``cm_test.csv``, ``cm_test_hard.csv`` (header ``label,input,is_short,edited``) or
  HF csv/parquet files. Split names follow the Hub: ``train`` = cm_train, ``validation`` = cm_test, ``test`` =
  cm_test_hard (3964 rows, the paper's test_hf). Upstream file names are accepted as split names.
- MMLU (``cais/mmlu``, config ``all``; Hub files ``all/{auxiliary_train,dev,validation,test}-00000-of-00001.parquet``):
  the upstream ``data.tar`` folders ``auxiliary_train/*.csv``, ``dev/``, ``val/`` (= validation), ``test/`` with
  ``<subject>_<split>.csv`` (no header: question, A, B, C, D, answer letter), or HF parquet (``question``,
  ``subject``, ``choices``, ``answer`` 0-3). Files of one split are read in name order; the Hub's row order of
  ``auxiliary_train`` (the paper's first 33750 rows) is that of its parquet file, so reproduce the paper's MMLU
  pool from the HF layout.

Without a data folder the files are downloaded with ``huggingface_hub`` into the HF cache (a cached copy also
works offline); an unreachable Hub raises a one-line :class:`MemauditError` asking for ``--data-dir``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from memaudit.errors import MemauditError

RAW_COLUMNS = ("text", "option_labels", "option_texts", "gold_index", "source_id", "source_split")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
MMLU_LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class SourceSpec:
    """Where one dataset lives and how its files are named."""

    name: str
    hub_id: str
    hub_config: str
    train_split: str
    test_split: str
    family: str  # "mcq" or "ethics": which template set formats it
    folders: tuple[str, ...]  # subfolders of a data dir that may hold it
    sibling_configs: tuple[str, ...]  # other configs whose files must not be mixed in
    split_aliases: dict[str, str] = field(default_factory=dict)
    split_dirs: tuple[str, ...] = ()  # upstream folders named after their split
    hub_patterns: tuple[str, ...] = ("{config}/*",)
    layout: str = ""


SPECS: dict[str, SourceSpec] = {
    "arc": SourceSpec(
        name="arc",
        hub_id="allenai/ai2_arc",
        hub_config="ARC-Challenge",
        train_split="train",
        test_split="test",
        family="mcq",
        folders=("arc", "ai2_arc"),
        sibling_configs=("arc-challenge", "arc-easy"),
        split_aliases={"dev": "validation"},
        layout="ARC-Challenge-train.jsonl / ARC-Challenge/train-00000-of-00001.parquet "
        "(fields id, question, choices{text,label}, answerKey)",
    ),
    "ethics": SourceSpec(
        name="ethics",
        hub_id="hendrycks/ethics",
        hub_config="commonsense",
        train_split="train",
        test_split="test",
        family="ethics",
        folders=("ethics",),
        sibling_configs=("commonsense", "deontology", "justice", "utilitarianism", "virtue"),
        split_aliases={"cm_train": "train", "cm_test": "validation", "cm_test_hard": "test", "cm_ambig": "ambig"},
        hub_patterns=("data/{config}/*", "{config}/*"),
        layout="commonsense/cm_train.csv, cm_test.csv, cm_test_hard.csv (header label,input,...) "
        "or commonsense/<split>-00000-of-00001.parquet",
    ),
    "mmlu": SourceSpec(
        name="mmlu",
        hub_id="cais/mmlu",
        hub_config="all",
        train_split="auxiliary_train",
        test_split="",
        family="mcq",
        folders=("mmlu", "data"),
        sibling_configs=(),
        split_aliases={"val": "validation"},
        split_dirs=("auxiliary_train", "dev", "val", "validation", "test"),
        layout="auxiliary_train/*.csv and test/<subject>_test.csv (no header: question,A,B,C,D,answer) "
        "or all/<split>-00000-of-00001.parquet",
    ),
}

_SHARD = re.compile(r"^(?P<split>[a-z_]+?)-\d{5}-of-\d{5}$")


def spec_for(name: str) -> SourceSpec:
    if name not in SPECS:
        raise MemauditError(f"dataset {name!r} has no file loader", f"use one of: {', '.join(SPECS)}")
    return SPECS[name]


# ------------------------------------------------------------------------------------------------ file discovery


def _split_of(rel: Path, spec: SourceSpec) -> str:
    stem, parent = rel.stem.lower(), rel.parent.name.lower()
    if match := _SHARD.match(stem):
        split = match["split"]
    elif re.fullmatch(r"\d{4}", stem):  # refs/convert/parquet: <config>/<split>/0000.parquet
        split = parent
    elif stem.startswith("cm_"):
        split = stem
    elif parent in spec.split_dirs and rel.suffix.lower() == ".csv":
        split = parent
    elif "-" in stem:  # ARC-Challenge-train.jsonl, ai2_arc-train.parquet, ethics-train.parquet
        split = stem.rsplit("-", 1)[1]
    else:
        split = stem
    return spec.split_aliases.get(split, split)


def _mentions(rel: Path, config: str) -> bool:
    text = "/" + rel.as_posix().lower() + "/"
    return re.search(rf"[/_.\-]{re.escape(config.lower())}[/_.\-]", text) is not None


def discover(root: Path, spec: SourceSpec, config: str) -> tuple[Path, dict[str, list[Path]]]:
    """The dataset's folder under ``root`` and its data files grouped by (canonical) split name, in name order."""
    if not root.is_dir():
        raise MemauditError(f"data dir {root} does not exist", "pass --data-dir with an existing folder")
    for folder in spec.folders:
        sub = next((p for p in root.iterdir() if p.is_dir() and p.name.lower() == folder), None)
        if sub is not None:
            root = sub
            break
    files = sorted(
        p.relative_to(root)
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in DATA_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    mine = [f for f in files if _mentions(f, config)]
    if not mine:  # a flat folder: keep what belongs to no other config
        others = [c for c in spec.sibling_configs if c != config.lower()]
        mine = [f for f in files if not any(_mentions(f, c) for c in others)]
    groups: dict[str, list[Path]] = {}
    for rel in mine:
        groups.setdefault(_split_of(rel, spec), []).append(root / rel)
    return root, groups


def resolve_split(
    groups: dict[str, list[Path]], requested: str, spec: SourceSpec, where: Path
) -> tuple[str, list[Path]]:
    """The canonical split name and its files; an unknown name raises, listing the available splits."""
    name = requested.lower()
    name = spec.split_aliases.get(name, name)
    if name not in groups:
        upstream = {canonical: alias for alias, canonical in spec.split_aliases.items()}
        available = ", ".join(f"{g} ({upstream[g]})" if g in upstream else g for g in sorted(groups)) or "none"
        raise MemauditError(
            f"{spec.name} split {requested!r} not found under {where} (available: {available})",
            "set dataset.train_split / dataset.test_split to one of the available splits",
        )
    return name, groups[name]


# ---------------------------------------------------------------------------------------------------- file reading


def read_table(path: Path, *, csv_header: bool = True, nrows: int | None = None) -> pd.DataFrame:
    """One data file as a DataFrame (csv cells as strings); unreadable or empty files raise MemauditError."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pd.read_parquet(path)
        elif suffix == ".csv":
            header = 0 if csv_header else None
            df = pd.read_csv(path, header=header, dtype=str, keep_default_na=False, nrows=nrows)
        else:
            df = _read_json_rows(path)
    except pd.errors.EmptyDataError:
        df = pd.DataFrame()
    except MemauditError:
        raise
    except Exception as exc:
        raise MemauditError(
            f"cannot read {path} ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})",
            "replace it with a complete copy of the upstream file",
        ) from None
    if len(df) == 0:
        raise MemauditError(f"data file {path} is empty", "replace it with a complete copy of the upstream file")
    return df if nrows is None else df.iloc[:nrows]


def _read_json_rows(path: Path) -> pd.DataFrame:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        rows = json.loads(text)
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise MemauditError(
                        f"{path} line {number} is not valid JSON",
                        "replace it with a complete copy of the upstream file",
                    ) from None
    return pd.DataFrame(rows)


def _require(df: pd.DataFrame, columns: tuple[str, ...], path: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise MemauditError(
            f"{path} lacks column(s) {', '.join(missing)} (has: {', '.join(map(str, df.columns))})",
            "use the upstream file layout described in memaudit.data.sources",
        )


def _str_list(value: Any) -> list[str]:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return [str(v) for v in value]


# ----------------------------------------------------------------------------------------------------- parsers


def _parse_arc(df: pd.DataFrame, path: Path, rel: str, split: str) -> list[dict[str, Any]]:
    if "question" in df.columns and len(df) and isinstance(df["question"].iloc[0], dict):  # original release
        df = df.assign(
            choices=[q.get("choices") for q in df["question"]], question=[q.get("stem") for q in df["question"]]
        )
        df["choices"] = [
            {"text": [c["text"] for c in cs], "label": [c["label"] for c in cs]} if isinstance(cs, list) else cs
            for cs in df["choices"]
        ]
    _require(df, ("id", "question", "choices", "answerKey"), path)
    rows = []
    for rid, question, choices, key in zip(df["id"], df["question"], df["choices"], df["answerKey"], strict=True):
        if not isinstance(choices, dict) or "text" not in choices or "label" not in choices:
            raise MemauditError(f"{path}: row {rid} has no choices{{text,label}}", "use the HF ai2_arc layout")
        labels, texts = _str_list(choices["label"]), _str_list(choices["text"])
        if str(key) not in labels:
            raise MemauditError(
                f"{path}: answerKey {key!r} of row {rid} is not among its labels {labels}",
                "fix or remove that row (answerKey must be one of choices.label)",
            )
        rows.append(_raw(str(question), labels, texts, labels.index(str(key)), str(rid), split))
    return rows


def _parse_ethics(df: pd.DataFrame, path: Path, rel: str, split: str) -> list[dict[str, Any]]:
    _require(df, ("label", "input"), path)
    rows = []
    for number, (label, scenario) in enumerate(zip(df["label"], df["input"], strict=True)):
        text = str(label).strip()
        if text not in ("0", "1"):
            raise MemauditError(f"{path}: row {number} has label {label!r}, expected 0 or 1", "fix or remove that row")
        rows.append(_raw(str(scenario), ["0", "1"], [], int(text), f"{rel}:{number}", split))
    return rows


def _parse_mmlu(df: pd.DataFrame, path: Path, rel: str, split: str) -> list[dict[str, Any]]:
    if list(df.columns) == ["train"]:  # cais/mmlu's auxiliary_train config nests each row in a struct
        df = pd.DataFrame(df["train"].tolist())
    if path.suffix.lower() == ".csv" and "question" not in df.columns:  # upstream: no header
        if df.shape[1] < 6:
            raise MemauditError(
                f"{path} has {df.shape[1]} column(s), expected 6 (question, A, B, C, D, answer)",
                "use the upstream MMLU csv layout (no header)",
            )
        subject = "" if "auxiliary_train" in rel else path.stem.rsplit("_", 1)[0]
        df = pd.DataFrame(
            {
                "question": df.iloc[:, 0],
                "choices": df.iloc[:, 1:5].to_numpy().tolist(),
                "answer": df.iloc[:, 5],
                "subject": subject,
            }
        )
    _require(df, ("question", "choices", "answer"), path)
    subjects = df["subject"] if "subject" in df.columns else [""] * len(df)
    rows = []
    for number, (question, choices, answer, subject) in enumerate(
        zip(df["question"], df["choices"], df["answer"], subjects, strict=True)
    ):
        key = str(answer).strip().upper()
        gold = MMLU_LETTERS.index(key) if key in MMLU_LETTERS else int(key) if key in ("0", "1", "2", "3") else -1
        texts = _str_list(choices)
        if gold < 0 or gold >= len(texts):
            raise MemauditError(
                f"{path}: row {number} has answer {answer!r}, expected A-D or 0-3", "fix or remove that row"
            )
        row = _raw(str(question), [str(i) for i in range(len(texts))], texts, gold, f"{rel}:{number}", split)
        row["subject"] = str(subject)
        rows.append(row)
    return rows


_PARSERS = {"arc": _parse_arc, "ethics": _parse_ethics, "mmlu": _parse_mmlu}


def _raw(text: str, labels: list[str], texts: list[str], gold: int, source_id: str, split: str) -> dict[str, Any]:
    return {
        "text": text,
        "option_labels": labels,
        "option_texts": texts,
        "gold_index": gold,
        "source_id": source_id,
        "source_split": split,
    }


def load_split(
    spec: SourceSpec,
    root: Path,
    config: str,
    split: str,
    limit: int | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """The raw rows of one upstream split found under ``root`` (at most ``limit`` rows, in file order)."""
    root, groups = discover(root, spec, config)
    if not groups:
        raise MemauditError(f"no {spec.name} data files found under {root}", f"expected the layout {spec.layout}")
    split, files = resolve_split(groups, split, spec, root)
    rows: list[dict[str, Any]] = []
    for path in tqdm(files, desc=f"reading {spec.name} {split}", disable=not progress or len(files) < 4):
        remaining = None if limit is None else limit - len(rows)
        if remaining is not None and remaining <= 0:
            break
        df = read_table(path, csv_header=spec.name != "mmlu", nrows=remaining)
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        rows.extend(_PARSERS[spec.name](df, path, rel, split))
    return pd.DataFrame(rows[:limit] if limit is not None else rows)


# -------------------------------------------------------------------------------------------------------- the Hub


def hub_snapshot(spec: SourceSpec, hub_id: str, config: str, revision: str | None = None) -> Path:
    """Download the dataset's files for ``config`` at ``revision`` (default: the main branch) into the HF cache (or
    find them there) and return the folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = [p.format(config=config) for p in spec.hub_patterns]
    fix = "pass --data-dir (dataset.data_dir) with a local copy of the dataset in its upstream layout"
    try:
        return Path(snapshot_download(hub_id, repo_type="dataset", allow_patterns=patterns, revision=revision))
    except LocalEntryNotFoundError:
        at = f" at revision {revision}" if revision else ""
        raise MemauditError(
            f"cannot reach the Hugging Face Hub to download {hub_id}{at} (and no cached copy)", fix
        ) from None
    except RepositoryNotFoundError:
        raise MemauditError(
            f"dataset {hub_id} not found on the Hugging Face Hub", f"check dataset.hub_id, or {fix}"
        ) from None
    except OSError as exc:
        raise MemauditError(
            f"downloading {hub_id} from the Hugging Face Hub failed ({type(exc).__name__})", fix
        ) from None
