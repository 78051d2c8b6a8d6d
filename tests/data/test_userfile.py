"""Own classification data (dataset ``file``, ``--data FILE``): reading, validation, the pool and the fingerprint."""

import inspect
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from memaudit.cli import main
from memaudit.cli.app import app
from memaudit.cli.stages import stage_app
from memaudit.config import load_config
from memaudit.config.fingerprint import result_content
from memaudit.data.pool import build_pool
from memaudit.data.poolfile import read_pool, train_pool
from memaudit.data.templates import format_mcq
from memaudit.data.userfile import read_user_file
from memaudit.errors import MemauditError
from tests.support.pipeline_config import SMALL

OPTIONS = [["red", "blue"], ["cat", "dog", "cow"], ["oak", "elm", "fir", "ash"], ["tin", "gold", "iron"]]


def items(n: int) -> list[dict]:
    """n rows with 2-4 options; labels alternate between indexes and (lower-case) letters."""
    rows = []
    for i in range(n):
        options = OPTIONS[i % len(OPTIONS)]
        gold = i % len(options)
        label = gold if i % 2 else "abcd"[gold]
        rows.append({"id": f"q{i}", "prompt": f"Which word is number {i}?", "options": options, "label": label})
    return rows


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_csv(path, rows) -> str:
    """option_0..option_3 columns, the unused ones left empty."""
    flat = [
        {
            "id": r["id"],
            "prompt": r["prompt"],
            **{f"option_{k}": v for k, v in enumerate(r["options"])},
            "label": r["label"],
        }
        for r in rows
    ]
    pd.DataFrame(flat).fillna("").to_csv(path, index=False)
    return str(path)


def file_config(path, *overrides: str):
    return load_config(preset="demo", overrides=["dataset.name=file", f"dataset.path={path}", *overrides])


def cli_error(capsys, argv) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return exc.value.code, err


# ----------------------------------------------------------------------------------------------- reading the file


def test_jsonl_csv_and_parquet_give_the_same_rows(tmp_path):
    rows = items(9)
    jsonl = read_user_file(write_jsonl(tmp_path / "d.jsonl", rows))
    csv = read_user_file(write_csv(tmp_path / "d.csv", rows))
    pd.DataFrame(rows).astype({"label": str}).to_parquet(tmp_path / "d.parquet")
    parquet = read_user_file(tmp_path / "d.parquet")
    indexes = pd.DataFrame(rows).assign(label=[i % len(OPTIONS[i % 4]) for i in range(9)])  # an int64 column
    indexes.to_parquet(tmp_path / "i.parquet")
    for other in (csv, parquet, read_user_file(tmp_path / "i.parquet")):
        pd.testing.assert_frame_equal(jsonl, other)
    assert jsonl["option_texts"].tolist() == [OPTIONS[i % 4] for i in range(9)]
    assert jsonl["option_labels"].tolist() == [list("ABCD"[: len(OPTIONS[i % 4])]) for i in range(9)]
    assert jsonl["gold_index"].tolist() == [i % len(OPTIONS[i % 4]) for i in range(9)]
    assert jsonl["source_id"].tolist() == [f"q{i}" for i in range(9)] and set(jsonl["source_split"]) == {"file"}


def test_default_ids_are_row_numbers_and_jsonl_lines(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "id"} for r in items(3)]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(f"{json.dumps(rows[0])}\n\n{json.dumps(rows[1])}\n{json.dumps(rows[2])}\n")
    assert read_user_file(jsonl)["source_id"].tolist() == ["1", "3", "4"]
    pd.DataFrame(rows).astype({"label": str}).to_parquet(tmp_path / "d.parquet")
    assert read_user_file(tmp_path / "d.parquet")["source_id"].tolist() == ["1", "2", "3"]


def test_a_json_array_in_a_csv_cell_and_a_utf8_bom_are_read(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes('\ufeffprompt,options,label\n"Is it, or not?","[""yes"", ""no""]",B\n'.encode())
    row = read_user_file(path).iloc[0]
    assert (row["text"], row["option_texts"], row["gold_index"]) == ("Is it, or not?", ["yes", "no"], 1)


# ------------------------------------------------------------------------------------------------------- the pool


def test_the_pool_of_a_file_uses_the_mcq_templates_and_letters(tmp_path):
    rows = items(40)
    cfg = file_config(write_jsonl(tmp_path / "d.jsonl", rows), "dataset.label_noise=0")
    pool = build_pool(cfg, progress=False)
    assert (pool["split"] == "train").sum() == 36 and (pool["split"] == "test").sum() == 4  # 1/9 held out
    by_id = {r["id"]: r for r in rows}
    for _, row in pool.iterrows():
        item = by_id[row["source_id"]]
        letters = list("ABCD"[: len(item["options"])])
        assert row["prompt"] == format_mcq(item["prompt"], letters, item["options"], row["template_id"])
        assert list(row["options"]) == letters and row["template_set"] == "mcq"
        assert row["gold_index"] == row["label_index"] == int(row["source_id"][1:]) % len(letters)
    assert pool["template_id"].nunique() > 1  # one template drawn per sample
    assert pool["global_index"].tolist() != sorted(pool["global_index"])  # the hold-out draws test rows


def test_label_noise_and_the_row_cap_apply_as_for_the_paper_sets(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", items(90))
    pool = build_pool(file_config(path, "dataset.label_noise=0.5", "dataset.max_train_rows=45"), progress=False)
    train = train_pool(pool)
    assert len(pool) == 45 and set(pool["source_id"]) == {f"q{i}" for i in range(45)}
    assert 0.2 < (train["label_status"] == 0).mean() < 0.8
    assert (pool.loc[pool["split"] == "test", "label_status"] == 1).all()


# ------------------------------------------------------------------------------------------------ the fingerprint


def test_the_fingerprint_follows_the_content_not_the_path(tmp_path):
    a = file_config(write_jsonl(tmp_path / "a.jsonl", items(12)))
    b = file_config(write_jsonl(tmp_path / "b.jsonl", items(12)))
    changed = items(12)
    changed[4]["label"] = 0
    c = file_config(write_jsonl(tmp_path / "c.jsonl", changed))
    assert a.dataset.path != b.dataset.path and a.fingerprint() == b.fingerprint()
    assert c.fingerprint() != a.fingerprint() and len(a.dataset.file_sha256) == 64
    assert "file_sha256" not in result_content(load_config(preset="demo").dataset)  # other fingerprints unchanged


def test_a_file_changed_after_the_config_was_made_is_refused(tmp_path):
    path = tmp_path / "d.jsonl"
    cfg = file_config(write_jsonl(path, items(12)))
    write_jsonl(path, items(13))
    with pytest.raises(MemauditError, match=r"d\.jsonl changed since the config was made"):
        build_pool(cfg, progress=False)
    assert len(build_pool(file_config(path), progress=False)) == 13  # a config made anew reads the new content


def test_dataset_file_needs_a_path_and_a_path_needs_dataset_file(capsys):
    code, err = cli_error(capsys, ["config", "show", "--set", "dataset.name=file"])
    assert code == 2 and "dataset 'file' needs dataset.path" in err
    code, err = cli_error(capsys, ["config", "show", "--set", "dataset.path=x.jsonl"])
    assert code == 2 and "'path' and 'file_sha256' are only allowed with dataset name 'file'" in err


# ---------------------------------------------------------------------------------------------------- the CLI


def test_data_is_the_two_overrides_and_names_an_existing_file(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "odd: #1"
    folder.mkdir()
    write_jsonl(folder / "my data.jsonl", items(12))
    monkeypatch.chdir(folder)
    main(["config", "show", "--data", "my data.jsonl"])
    shown = capsys.readouterr().out
    main(["config", "show", "--set", "dataset.name=file", "--set", f"dataset.path='{folder / 'my data.jsonl'}'"])
    assert capsys.readouterr().out == shown
    assert yaml.safe_load(shown)["dataset"]["path"] == str(folder / "my data.jsonl")
    code, err = cli_error(capsys, ["config", "show", "--data", "absent.jsonl"])
    assert (code, err) == (
        2,
        "error: --data file absent.jsonl not found; fix: pass an existing JSONL, CSV or parquet file",
    )


def test_every_command_that_resolves_a_config_takes_data():
    commands = [c.callback for c in app.registered_commands + stage_app.registered_commands]
    commands += [c.callback for g in app.registered_groups for c in g.typer_instance.registered_commands]
    with_config = [f for f in commands if "set_" in inspect.signature(f).parameters]
    assert len(with_config) >= 10
    assert [f.__name__ for f in with_config if "data" not in inspect.signature(f).parameters] == []


def _json_case(name):
    """(file name, bytes, expected message with {path}) of one bad file."""
    rows = items(6)
    if name == "missing_column":
        return (
            "d.jsonl",
            [{k: v for k, v in r.items() if k != "label"} for r in rows],
            (
                "{path} lacks the column label (has: id, prompt, options); fix: give it the columns prompt, options "
                "(or option_0, option_1, ...), label and optionally id"
            ),
        )
    if name == "label_out_of_range":
        rows[1]["label"] = 3
        return (
            "d.jsonl",
            rows,
            (
                "{path} line 2 has the label 3, out of range for its 3 options (0-2 or A-C); "
                "fix: set label to the gold option's 0-based index or its letter"
            ),
        )
    if name == "label_not_an_option":
        rows[5]["label"] = "oak"
        return (
            "d.jsonl",
            rows,
            (
                "{path} line 6 has the label 'oak', not an option index or letter (0-2 or A-C); "
                "fix: set label to the gold option's 0-based index or its letter"
            ),
        )
    if name == "one_option":
        rows[1]["options"] = ["cat"]
        return (
            "d.jsonl",
            rows,
            ("{path} line 2 has 1 option(s), fewer than two; fix: give every row at least 2 options"),
        )
    if name == "duplicate_ids":
        rows[5]["id"] = "q1"
        return (
            "d.jsonl",
            rows,
            (
                "{path} line 6 repeats the id 'q1' of line 2; fix: give every row a unique id "
                "(or drop the id column to number the rows)"
            ),
        )
    if name == "free_text":
        return (
            "d.jsonl",
            [{"prompt": "Say hi", "completion": "hi"}],
            (
                "{path} holds free-text generation data (has: prompt, completion): only classification-style data is "
                "supported; fix: give every row a prompt, its options and the gold option as label"
            ),
        )
    if name == "invalid_json":
        return (
            "d.jsonl",
            b'{"prompt": "a", "options": ["x", "y"], "label": 0}\n{"prompt": \n',
            ("{path} line 2 is not valid JSON; fix: write one JSON object per line"),
        )
    raise KeyError(name)


def _csv_case(name):
    if name == "empty_file":
        return (
            "d.csv",
            b"",
            (
                "dataset file {path} is empty; fix: give it the columns prompt, options (or option_0, option_1, ...), "
                "label and optionally id, one row per sample"
            ),
        )
    if name == "header_only":
        return (
            "d.csv",
            b"prompt,option_0,option_1,label\n",
            (
                "dataset file {path} has no rows; fix: give it the columns prompt, options "
                "(or option_0, option_1, ...), label and optionally id, one row per sample"
            ),
        )
    if name == "utf16":
        return (
            "d.csv",
            "prompt,option_0,option_1,label\nhi,a,b,0\n".encode("utf-16"),
            ("cannot read {path} as UTF-8 (byte 0xff at offset 0); fix: save it as UTF-8"),
        )
    if name == "utf16_no_bom":
        return (
            "d.csv",
            "prompt,option_0,option_1,label\nhi,a,b,0\n".encode("utf-16-le"),
            ("cannot read {path} as UTF-8 (it holds NUL bytes, as UTF-16 does); fix: save it as UTF-8"),
        )
    if name == "latin1":
        return (
            "d.csv",
            "prompt,option_0,option_1,label\ncaf\u00e9?,a,b,0\n".encode("latin-1"),
            ("cannot read {path} as UTF-8 (byte 0xe9 at offset 34); fix: save it as UTF-8"),
        )
    if name == "option_gap":
        return (
            "d.csv",
            b"prompt,option_0,option_1,option_2,label\nq1,a,b,c,0\nq2,a,,c,1\n",
            (
                "{path} row 2 has an empty option_1 before option_2; "
                "fix: fill the options from option_0 on (only cells at the end may be empty)"
            ),
        )
    raise KeyError(name)


JSON_CASES = [
    "missing_column",
    "label_out_of_range",
    "label_not_an_option",
    "one_option",
    "duplicate_ids",
    "free_text",
    "invalid_json",
]
CSV_CASES = ["empty_file", "header_only", "utf16", "utf16_no_bom", "latin1", "option_gap"]


@pytest.mark.parametrize("case", JSON_CASES + CSV_CASES)
def test_a_bad_file_is_one_line_naming_the_row_and_exit_2(case, tmp_path, capsys):
    name, content, message = _json_case(case) if case in JSON_CASES else _csv_case(case)
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write_jsonl(path, content)
    code, err = cli_error(capsys, ["config", "show", "--data", str(path)])
    assert (code, err) == (2, "error: " + message.format(path=path))


def test_a_bad_file_stops_stage_prepare_before_writing_anything(tmp_path, capsys):
    rows = items(6)
    rows[3]["options"] = ["only"]
    out = tmp_path / "out" / "pool.parquet"
    argv = ["stage", "prepare", "--set", "dataset.name=file", "--set", f"dataset.path={tmp_path / 'd.jsonl'}"]
    write_jsonl(tmp_path / "d.jsonl", rows)
    code, err = cli_error(capsys, [*argv, "-o", str(out)])
    assert code == 2 and "d.jsonl line 4 has 1 option(s), fewer than two" in err and not out.parent.exists()


# ----------------------------------------------------------------------------------------- end to end (tiny model)


@pytest.mark.slow
def test_own_data_trains_and_scores_with_the_tiny_model(tmp_path, capsys):
    """prepare (pool + tiny base model), split, fine-tune and score one shadow on a 60-row own-data file."""
    data = write_csv(tmp_path / "own.csv", items(60))
    small = [o for o in SMALL if not o.startswith("dataset.")]
    common = ["--data", data, *(a for o in [*small, "training.epochs=1"] for a in ("--set", o))]
    pool, member, base = tmp_path / "pool.parquet", tmp_path / "member.npy", tmp_path / "base"
    main(["stage", "prepare", *common, "-o", str(pool), "--base-model", str(base)])
    out = capsys.readouterr().out
    assert "dataset file, 54 train + 6 test" in out
    built = next(base.iterdir())
    main(["stage", "split", *common, "--pool", str(pool), "-o", str(member)])
    shadow = ["--pool", str(pool), "--members", str(member), "--shadow", "0", "--base-model", str(built)]
    main(["stage", "finetune", *common, *shadow, "--output", str(tmp_path / "ckpt"), "-q"])
    main(
        [
            "stage",
            "score",
            *common,
            *shadow,
            "--checkpoints",
            str(tmp_path / "ckpt"),
            "--output",
            str(tmp_path / "s.npz"),
            "-q",
        ]
    )
    scores = np.load(tmp_path / "s.npz")
    n_train = len(train_pool(read_pool(pool)))
    assert scores["option_logits"].shape[1:] == (n_train, 4) and np.isfinite(scores["loss"]).all()
    three = (train_pool(read_pool(pool))["options"].map(len) == 3).to_numpy()
    assert np.isneginf(scores["option_logits"][:, three, 3]).all()  # absent 4th option
    assert np.isfinite(scores["option_logits"][:, three, :3]).all()
