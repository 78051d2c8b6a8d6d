"""The pool builder (docs/method.md §1) on small files in the upstream layouts, written by the tests."""

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from memaudit.cli import main
from memaudit.config import load_config
from memaudit.data.pool import build_pool, label_noise, pool_summary
from memaudit.data.poolfile import read_pool, train_pool
from memaudit.data.sources import SPECS, discover, load_split
from memaudit.data.splits import read_membership
from memaudit.data.templates import format_ethics, format_mcq
from memaudit.errors import MemauditError

# ------------------------------------------------------------------------------------------------- file writers


def arc_rows(n, prefix):
    rows = []
    for i in range(n):
        n_options = 3 if i % 50 == 7 else 5 if i % 50 == 8 else 4
        labels = [str(k + 1) for k in range(n_options)] if i % 50 == 9 else list("ABCDE"[:n_options])
        texts = [f"answer {prefix} {i} {k}" for k in range(n_options)]
        rows.append(
            {
                "id": f"{prefix}-{i}",
                "question": f"Question {prefix} {i}?",
                "choices": {"text": texts, "label": labels},
                "answerKey": labels[i % n_options],
            }
        )
    return rows


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_arc(folder, n_train=40, n_test=20, fmt="jsonl"):
    train, test = arc_rows(n_train, "train"), arc_rows(n_test, "test")
    for split, rows in (("train", train), ("test", test)):
        if fmt == "jsonl":
            write_jsonl(folder / f"ARC-Challenge-{split}.jsonl", rows)
        else:
            (folder / "ARC-Challenge").mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_parquet(folder / "ARC-Challenge" / f"{split}-00000-of-00001.parquet")
    return folder


def ethics_frame(n, prefix):
    inputs = [f"AITA for thing {prefix} {i}? | story" if i % 5 == 0 else f"I did thing {prefix} {i}." for i in range(n)]
    return pd.DataFrame(
        {"label": [i % 3 % 2 for i in range(n)], "input": inputs, "is_short": "True", "edited": "False"}
    )


def write_ethics(folder, n_train=30, n_val=12, n_hard=15):
    folder = folder / "commonsense"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("cm_train", n_train), ("cm_test", n_val), ("cm_test_hard", n_hard)):
        ethics_frame(n, name).to_csv(folder / f"{name}.csv", index=False)
    return folder.parent


def mmlu_frame(n, prefix):
    return pd.DataFrame(
        {
            "question": [f"Question {prefix} {i}?" for i in range(n)],
            "A": [f"a{i}" for i in range(n)],
            "B": [f"b{i}" for i in range(n)],
            "C": ["NA"] * n,  # must stay a string, not a missing value
            "D": [f"d{i}" for i in range(n)],
            "answer": ["ABCD"[i % 4] for i in range(n)],
        }
    )


def write_mmlu_upstream(folder, sizes=(("arc_easy", 25), ("race", 30))):
    (folder / "auxiliary_train").mkdir(parents=True, exist_ok=True)
    (folder / "test").mkdir(parents=True, exist_ok=True)
    for name, n in sizes:
        mmlu_frame(n, name).to_csv(folder / "auxiliary_train" / f"{name}.csv", header=False, index=False)
    mmlu_frame(7, "anatomy").to_csv(folder / "test" / "anatomy_test.csv", header=False, index=False)
    return folder


def cfg_for(name, **dataset):
    sets = [f"dataset.name={name}"] + [f"dataset.{k}={v}" for k, v in dataset.items()]
    return load_config(preset="demo", overrides=sets)


# ------------------------------------------------------------------------------------------ pool construction


def test_arc_sizes_ids_and_holdout_match_method(tmp_path):
    write_arc(tmp_path, n_train=1119, n_test=1172)
    pool = build_pool(cfg_for("arc", max_train_rows=1078), data_dir=tmp_path, progress=False)
    train, test = pool[pool.split == "train"], pool[pool.split == "test"]
    assert (len(train), len(test)) == (2000, 250)
    assert sorted(pool.global_index) == list(range(2250))
    expected_test = np.random.RandomState(0).choice(range(2250), 250, replace=False)
    np.testing.assert_array_equal(test.global_index, expected_test)  # drawn order, as the reference formats them
    assert train.global_index.is_monotonic_increasing
    # train_hf rows come first (capped at 1078), test_hf rows continue the numbering
    assert (pool.source_split == np.where(pool.global_index >= 1078, "test", "train")).all()
    assert pool.set_index("global_index").loc[1078, "source_id"] == "test-0"
    assert pool.set_index("global_index").loc[1077, "source_id"] == "train-1077"
    written = arc_rows(1078, "train") + arc_rows(1172, "test")
    assert Counter(pool.options.map(len)) == Counter(len(r["choices"]["label"]) for r in written)


def test_prompts_templates_and_gold_labels(tmp_path):
    write_arc(tmp_path)
    pool = build_pool(cfg_for("arc"), data_dir=tmp_path, progress=False)
    rows = {r["id"]: r for r in arc_rows(40, "train") + arc_rows(20, "test")}
    for sample in pool.itertuples():
        raw = rows[sample.source_id]
        labels, texts = raw["choices"]["label"], raw["choices"]["text"]
        assert sample.prompt == format_mcq(raw["question"], labels, texts, sample.template_id)
        assert list(sample.options) == labels
        assert labels[sample.gold_index] == raw["answerKey"]
    numeric = pool[pool.source_id == "train-9"].iloc[0]
    assert list(numeric.options) == ["1", "2", "3", "4"] and numeric.prompt.endswith("- 4: answer train 9 3\n\n")


def test_templates_sampled_per_sample_with_a_fresh_stream_for_test(tmp_path):
    write_arc(tmp_path, n_train=200, n_test=100)
    cfg = cfg_for("arc", seed=3)
    pool = build_pool(cfg, data_dir=tmp_path, progress=False)
    train, test = pool[pool.split == "train"], pool[pool.split == "test"]
    rng = np.random.RandomState(3)
    assert train.template_id.tolist() == [rng.randint(0, 10) for _ in range(len(train))]
    rng = np.random.RandomState(3)
    assert test.template_id.tolist() == [rng.randint(0, 10) for _ in range(len(test))]
    pd.testing.assert_frame_equal(pool, build_pool(cfg, data_dir=tmp_path, progress=False))
    other = build_pool(cfg_for("arc", seed=4), data_dir=tmp_path, progress=False)
    changed = (
        other.set_index("global_index").template_id.sort_index()
        != pool.set_index("global_index").template_id.sort_index()
    )
    assert changed.mean() > 0.5


def test_force_template_uses_one_template_everywhere(tmp_path):
    write_arc(tmp_path)
    pool = build_pool(cfg_for("arc", force_template=8), data_dir=tmp_path, progress=False)
    assert (pool.template_id == 8).all() and pool.prompt.str.endswith("Please solve this MCQ for me.\n\n").all()
    write_ethics(tmp_path / "e")
    with pytest.raises(MemauditError, match="the ethics_aita set has 5 templates"):
        build_pool(cfg_for("ethics", force_template=7), data_dir=tmp_path / "e", progress=False)


def test_label_noise_share_and_test_rows_untouched():
    cfg = load_config(preset="demo", overrides=["dataset.label_noise=0.5", "dataset.synthetic.n_samples=2400"])
    pool = build_pool(cfg, progress=False)
    train, test = pool[pool.split == "train"], pool[pool.split == "test"]
    n = len(train)
    random_share = (train.label_status == 0).mean()
    assert abs(random_share - 0.5) < 4 * np.sqrt(0.25 / n)
    wrong = (train.label_index != train.gold_index).mean()  # a random draw keeps the truth 1 time in 4
    assert abs(wrong - 0.375) < 4 * np.sqrt(0.375 * 0.625 / n)
    assert ((train.label_status == 1) <= (train.label_index == train.gold_index)).all()
    assert (test.label_status == 1).all() and (test.label_index == test.gold_index).all()


def test_label_noise_follows_the_reference_draws():
    gold, n_options = np.array([0, 1, 2, 3, 0, 1]), np.array([4, 4, 4, 4, 3, 5])
    label_index, status = label_noise(gold, n_options, 0.5, seed=0)
    rng = np.random.RandomState(0)
    for i in range(6):
        if rng.random() <= 0.5:
            assert status[i] == 0 and label_index[i] == rng.randint(0, n_options[i])
        else:
            assert status[i] == 1 and label_index[i] == gold[i]
    assert label_noise(gold, n_options, 0.0, seed=0)[1].tolist() == [1] * 6


def test_noisy_set_is_a_pool_property_not_a_split_property():
    base = build_pool(load_config(preset="demo"), progress=False)
    for overrides in (["shadows.n_shadows=4"], ["shadows.scheme=balanced", "shadows.seed=7"], ["training.seed=1"]):
        pd.testing.assert_frame_equal(base, build_pool(load_config(preset="demo", overrides=overrides), progress=False))


def test_ethics_upstream_csv_layout(tmp_path):
    write_ethics(tmp_path)
    pool = build_pool(cfg_for("ethics"), data_dir=tmp_path, progress=False)
    assert len(pool) == 30 + 15  # cm_train + cm_test_hard (HF's 'test')
    assert set(pool.source_split) == {"train", "test"}
    assert pool.set_index("global_index").loc[30, "source_id"] == "commonsense/cm_test_hard.csv:0"
    assert (pool.options.map(list) == pd.Series([["0", "1"]] * len(pool))).all()
    aita = pool.source_id.map(lambda s: int(s.rsplit(":", 1)[1]) % 5 == 0)
    assert (pool.template_set[aita] == "ethics_aita").all() and (pool.template_id[aita] < 5).all()
    assert (pool.template_set[~aita] == "ethics").all()
    frames = {"train": ethics_frame(30, "cm_train"), "test": ethics_frame(15, "cm_test_hard")}
    for sample in pool.itertuples():
        row = frames[sample.source_split].iloc[int(sample.source_id.rsplit(":", 1)[1])]
        assert sample.gold_index == row.label
        assert sample.prompt == format_ethics(row.input, sample.template_id)
    by_alias = build_pool(cfg_for("ethics", train_split="cm_test"), data_dir=tmp_path, progress=False)
    by_name = build_pool(cfg_for("ethics", train_split="validation"), data_dir=tmp_path, progress=False)
    pd.testing.assert_frame_equal(by_alias, by_name)
    assert len(by_name) == 12 + 15


def test_ethics_hf_parquet_layout_matches_csv(tmp_path):
    write_ethics(tmp_path / "csv")
    hf = tmp_path / "hf" / "commonsense"
    hf.mkdir(parents=True)
    for split, name, n in (("train", "cm_train", 30), ("test", "cm_test_hard", 15)):
        ethics_frame(n, name)[["label", "input"]].to_parquet(hf / f"{split}-00000-of-00001.parquet")
    a = build_pool(cfg_for("ethics"), data_dir=tmp_path / "csv", progress=False)
    b = build_pool(cfg_for("ethics"), data_dir=tmp_path / "hf", progress=False)
    cols = ["global_index", "split", "prompt", "gold_index", "label_index", "label_status", "template_id"]
    pd.testing.assert_frame_equal(a[cols], b[cols])


def test_arc_parquet_layout_matches_jsonl_and_ignores_arc_easy(tmp_path):
    write_arc(tmp_path / "j")
    write_jsonl(tmp_path / "j" / "ARC-Easy-train.jsonl", arc_rows(99, "easy"))
    write_arc(tmp_path / "p", fmt="parquet")
    a = build_pool(cfg_for("arc"), data_dir=tmp_path / "j", progress=False)
    b = build_pool(cfg_for("arc"), data_dir=tmp_path / "p", progress=False)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 60


def test_mmlu_upstream_csv_and_hf_parquet_layouts(tmp_path):
    up = write_mmlu_upstream(tmp_path / "data")
    pool = build_pool(cfg_for("mmlu", max_train_rows=40), data_dir=tmp_path, progress=False)
    assert len(pool) == 40 and set(pool.source_split) == {"auxiliary_train"}  # MMLU test_hf is empty
    by_id = pool.set_index("source_id")
    assert by_id.loc["auxiliary_train/race.csv:14", "global_index"] == 39  # files in name order, capped
    first = by_id.loc["auxiliary_train/arc_easy.csv:2"]
    assert list(first.options) == ["0", "1", "2", "3"] and first.gold_index == 2
    assert first.prompt == format_mcq("Question arc_easy 2?", list("0123"), ["a2", "b2", "NA", "d2"], first.template_id)
    # the same rows in the HF parquet layout (answer as int, choices as a list), next to a per-subject config
    aux = pd.concat([mmlu_frame(25, "arc_easy"), mmlu_frame(30, "race")], ignore_index=True)
    hf = pd.DataFrame(
        {
            "question": aux.question,
            "subject": "",
            "choices": aux[["A", "B", "C", "D"]].to_numpy().tolist(),
            "answer": aux.answer.map("ABCD".index),
        }
    )
    (tmp_path / "hf" / "all").mkdir(parents=True)
    (tmp_path / "hf" / "anatomy").mkdir()
    hf.to_parquet(tmp_path / "hf" / "all" / "auxiliary_train-00000-of-00001.parquet")
    hf.head(3).to_parquet(tmp_path / "hf" / "anatomy" / "auxiliary_train-00000-of-00001.parquet")
    hf_pool = build_pool(cfg_for("mmlu", max_train_rows=40), data_dir=tmp_path / "hf", progress=False)
    cols = ["global_index", "split", "prompt", "options", "gold_index", "label_index", "template_id"]
    pd.testing.assert_frame_equal(pool[cols], hf_pool[cols])
    subst = build_pool(cfg_for("mmlu", train_split="test"), data_dir=up, progress=False)
    assert len(subst) == 7 and set(subst.subject) == {"anatomy"}


@pytest.mark.parametrize(
    ("name", "config", "files", "expected"),
    [
        (
            "arc",
            "ARC-Challenge",
            [
                "ARC-Challenge/ai2_arc-train.parquet",
                "ARC-Challenge/test/0000.parquet",
                "ARC-Easy/ai2_arc-train.parquet",
            ],
            {"train": ["ARC-Challenge/ai2_arc-train.parquet"], "test": ["ARC-Challenge/test/0000.parquet"]},
        ),
        (
            "arc",
            "ARC-Challenge",
            ["arc/ARC-Challenge-Train.jsonl", "arc/ARC-Challenge-Dev.jsonl", "arc/ARC-Easy-Train.jsonl"],
            {"train": ["ARC-Challenge-Train.jsonl"], "validation": ["ARC-Challenge-Dev.jsonl"]},
        ),
        (
            "ethics",
            "commonsense",
            ["data/commonsense/train.csv", "data/commonsense/test.csv", "data/justice/train.csv"],
            {"train": ["data/commonsense/train.csv"], "test": ["data/commonsense/test.csv"]},
        ),
        (
            "ethics",
            "commonsense",
            ["ethics/commonsense/ethics-validation.parquet", "ethics/commonsense/cm_ambig.csv"],
            {"validation": ["commonsense/ethics-validation.parquet"], "ambig": ["commonsense/cm_ambig.csv"]},
        ),
        (
            "mmlu",
            "all",
            ["all/validation-00000-of-00001.parquet", "auxiliary_train/train-00000-of-00001.parquet", "README.md"],
            {"validation": ["all/validation-00000-of-00001.parquet"]},
        ),
        (
            "mmlu",
            "all",
            [
                "data/auxiliary_train/race.csv",
                "data/auxiliary_train/obqa.csv",
                "data/val/x_val.csv",
                "data/dev/x_dev.csv",
            ],
            {
                "auxiliary_train": ["auxiliary_train/obqa.csv", "auxiliary_train/race.csv"],
                "validation": ["val/x_val.csv"],
                "dev": ["dev/x_dev.csv"],
            },
        ),
    ],
)
def test_discover_recognises_upstream_and_hub_file_names(tmp_path, name, config, files, expected):
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    root, groups = discover(tmp_path, SPECS[name], config)
    assert {split: [p.relative_to(root).as_posix() for p in paths] for split, paths in groups.items()} == expected


def test_arc_original_release_rows_read_like_the_hf_layout(tmp_path):
    hf = arc_rows(6, "train")
    release = [
        {
            "id": r["id"],
            "question": {
                "stem": r["question"],
                "choices": [
                    {"text": t, "label": lab}
                    for t, lab in zip(r["choices"]["text"], r["choices"]["label"], strict=True)
                ],
            },
            "answerKey": r["answerKey"],
        }
        for r in hf
    ]
    a = load_split(
        SPECS["arc"],
        write_jsonl(tmp_path / "a" / "ARC-Challenge-Train.jsonl", release).parent,
        "ARC-Challenge",
        "train",
    )
    b = load_split(
        SPECS["arc"], write_jsonl(tmp_path / "b" / "ARC-Challenge-train.jsonl", hf).parent, "ARC-Challenge", "train"
    )
    pd.testing.assert_frame_equal(a, b)


def test_ethics_and_mmlu_sizes_match_method(tmp_path):
    write_ethics(tmp_path / "e", n_train=13910, n_val=5, n_hard=3964)
    pool = build_pool(cfg_for("ethics", max_train_rows=13901), data_dir=tmp_path / "e", progress=False)
    assert pool_summary(pool)["n_train"] == 15880 and pool_summary(pool)["n_test"] == 1985
    assert pool.global_index.max() == 17864
    write_mmlu_upstream(tmp_path / "m", sizes=(("mc_test", 34000),))
    pool = build_pool(cfg_for("mmlu", max_train_rows=33750), data_dir=tmp_path / "m", progress=False)
    assert (pool_summary(pool)["n_train"], pool_summary(pool)["n_test"]) == (30000, 3750)


# ---------------------------------------------------------------------------------------------------------- CLI


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    return exc.value.code, err


def test_cli_prepare_then_split(tmp_path, capsys):
    pool_path, member_path = tmp_path / "out" / "pool.parquet", tmp_path / "out" / "member.npy"
    main(["stage", "prepare", "--preset", "demo", "--set", "dataset.synthetic.n_samples=300", "-o", str(pool_path)])
    out = capsys.readouterr().out
    assert "267 train + 33 test" in out and "options per sample {4: 267}" in out
    pool = read_pool(pool_path)
    assert {"hard", "keyword_rank", "template_set"} <= set(pool.columns)
    split_args = ["stage", "split", "--preset", "demo", "--set", "shadows.n_shadows=6", "--pool", str(pool_path)]
    main([*split_args, "-o", str(member_path)])
    out = capsys.readouterr().out
    assert "6 models x 267 samples" in out and "members per model 133-133" in out
    member = read_membership(member_path, n_samples=len(train_pool(pool)))
    assert member.shape == (6, 267)
    before = member_path.read_bytes()
    main([*split_args, "-o", str(member_path)])
    assert member_path.read_bytes() == before


def _bad_inputs(tmp_path):
    cases = {}
    d = tmp_path / "missing_column"
    rows = arc_rows(5, "train")
    for r in rows:
        del r["answerKey"]
    write_jsonl(d / "ARC-Challenge-train.jsonl", rows)
    cases["missing_column"] = ("arc", d, "lacks column(s) answerKey")
    d = tmp_path / "unknown_key"
    rows = arc_rows(5, "train")
    rows[3]["answerKey"] = "Z"
    write_jsonl(d / "ARC-Challenge-train.jsonl", rows)
    write_jsonl(d / "ARC-Challenge-test.jsonl", arc_rows(5, "test"))
    cases["unknown_key"] = ("arc", d, "answerKey 'Z' of row train-3 is not among its labels")
    d = tmp_path / "mmlu_answer"
    write_mmlu_upstream(d)
    frame = mmlu_frame(3, "x")
    frame.loc[1, "answer"] = "E"
    frame.to_csv(d / "auxiliary_train" / "zz.csv", header=False, index=False)
    cases["mmlu_answer"] = ("mmlu", d, "zz.csv: row 1 has answer 'E', expected A-D or 0-3")
    d = tmp_path / "empty_file"
    write_ethics(d)
    (d / "commonsense" / "cm_train.csv").write_text("")
    cases["empty_file"] = ("ethics", d, "cm_train.csv is empty")
    d = tmp_path / "unreadable"
    (d / "ARC-Challenge").mkdir(parents=True)
    (d / "ARC-Challenge" / "train-00000-of-00001.parquet").write_bytes(b"PAR1 not really parquet")
    cases["unreadable"] = ("arc", d, "cannot read")
    cases["missing_dir"] = ("arc", tmp_path / "nowhere", "data dir")
    (tmp_path / "empty_dir").mkdir()
    cases["no_files"] = ("mmlu", tmp_path / "empty_dir", "no mmlu data files found")
    d = tmp_path / "no_train"
    write_ethics(d)
    (d / "commonsense" / "cm_train.csv").unlink()
    cases["unknown_split"] = ("ethics", d, "split 'train' not found")
    return cases


@pytest.mark.parametrize(
    "case",
    [
        "missing_column",
        "unknown_key",
        "mmlu_answer",
        "empty_file",
        "unreadable",
        "missing_dir",
        "no_files",
        "unknown_split",
    ],
)
def test_bad_inputs_exit_2_with_one_line(case, tmp_path, capsys):
    name, folder, message = _bad_inputs(tmp_path)[case]
    out = tmp_path / "pool.parquet"
    code, err = run_cli(
        ["stage", "prepare", "-p", "demo", "-s", f"dataset.name={name}", "--data-dir", str(folder), "-o", str(out)],
        capsys,
    )
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert message in err and "fix:" in err
    assert not out.exists()


def test_messages_name_the_expected_layout_and_available_splits(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MemauditError, match=r"expected the layout auxiliary_train/\*\.csv"):
        build_pool(cfg_for("mmlu"), data_dir=tmp_path / "empty", progress=False)
    write_ethics(tmp_path / "e", n_train=0)
    (tmp_path / "e" / "commonsense" / "cm_train.csv").unlink()
    with pytest.raises(MemauditError, match=r"available: test \(cm_test_hard\), validation \(cm_test\)"):
        build_pool(cfg_for("ethics"), data_dir=tmp_path / "e", progress=False)


def test_unreachable_hub_asks_for_a_data_dir(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    code, err = run_cli(["stage", "prepare", "-p", "arc-mistral", "-o", str(tmp_path / "p.parquet")], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "cannot reach the Hugging Face Hub to download allenai/ai2_arc" in err and "--data-dir" in err


def test_unreachable_hub_endpoint_fails_fast_in_a_fresh_process(tmp_path):
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "memaudit.cli", "stage", "prepare", "-p", "mmlu-mistral", "-o", str(tmp_path / "p")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "cais/mmlu" in result.stderr and "--data-dir" in result.stderr
    assert time.monotonic() - start < 60
    assert not Path(tmp_path / "p").exists()


def test_dataset_revision_pins_the_hub_snapshot_and_the_fingerprint(tmp_path, monkeypatch):
    """Two revisions of ARC in an offline HF cache: each pins its own data; an uncached revision is refused."""
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "cache"
    repo = cache / "datasets--allenai--ai2_arc"
    revisions = {"a" * 40: "old", "b" * 40: "new"}
    for sha, prefix in revisions.items():
        folder = repo / "snapshots" / sha / "ARC-Challenge"
        folder.mkdir(parents=True)
        for split in ("train", "test"):
            pd.DataFrame(arc_rows(40, f"{prefix}-{split}")).to_parquet(folder / f"{split}-00000-of-00001.parquet")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    pools = {sha: build_pool(cfg_for("arc", revision=sha), progress=False) for sha in revisions}
    for sha, prefix in revisions.items():
        assert pools[sha]["source_id"].str.startswith(prefix).all(), prefix
    fingerprints = {cfg_for("arc", revision=sha).fingerprint() for sha in revisions} | {cfg_for("arc").fingerprint()}
    assert len(fingerprints) == 3  # each revision is its own audit; no revision keeps the fingerprint it had
    with pytest.raises(MemauditError, match=f"allenai/ai2_arc at revision {'c' * 40} \\(and no cached copy\\)"):
        build_pool(cfg_for("arc", revision="c" * 40), progress=False)
