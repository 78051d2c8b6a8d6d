"""audit-model: a user's adapter scored against a stored shadow population (docs/design.md §2.8).

Pure parts on hand-built arrays (offline LiRA values, the run's threshold, member files, the base-model rule); then,
on a small complete run built through the task bodies, shadow 0's own final adapter reproduces the run's ground
truth and an adapter of another LoRA shape is audited offline through the CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import norm

from memaudit.cli import main
from memaudit.config import load_config
from memaudit.data.poolfile import read_pool, train_pool
from memaudit.data.splits import read_membership
from memaudit.errors import MemauditError
from memaudit.metrics import lira, logit_gap, memorized_threshold
from memaudit.model.adapter import check_base_model
from memaudit.stages.audit_model import FACTS, REPORT, TABLE, audit_frame, member_mask_from_ids, read_member_ids
from memaudit.stages.scorefile import read_scores
from memaudit.store import LocalStore, RunStorage
from memaudit.tasks.audit_model import audit_model_task
from memaudit.tasks.results import RUN_CONFIG
from tests.support.pipeline_config import small_config
from tests.support.task_runs import aggregate, finetune, point_tasks_at, prepare, score

# 3 reference shadows (rows 1..3) behind the target (row 0), 2 samples. OUT sets: sample 0 {1.0, 3.0} (μ 2, σ 1),
# sample 1 {0.0, 4.0} (μ 2, σ 2); the target's members are both samples.
GAPS = np.array([[2.0, 6.0], [5.0, 0.0], [1.0, 9.0], [3.0, 4.0]])
MEMBER = np.array([[True, True], [True, False], [False, True], [False, False]])
TRAIN = pd.DataFrame({"global_index": [10, 11], "source_id": ["a", "b"], "label_index": [0, 1], "label_status": [1, 0]})


def _log_odds(t: float) -> float:
    return float(np.log(norm.cdf(t)) - np.log(norm.cdf(-t)))


def test_offline_scores_and_the_runs_threshold_by_hand():
    cfg = load_config(overrides=["evaluation.lira_mode=online", "evaluation.memorized_fraction=0.6"])
    frame, facts = audit_frame(cfg, TRAIN, GAPS, MEMBER, np.array([3.0, 2.0]))
    np.testing.assert_allclose(frame["score"], [_log_odds(1.0), 0.0], rtol=1e-12, atol=1e-12)
    # the run's threshold: the 0.4 quantile of the target's own offline scores on its members, log-odds(0) and (2)
    threshold = 0.4 * _log_odds(2.0)
    assert facts["mode"] == "offline" and facts["threshold"] == pytest.approx(threshold, rel=1e-12)
    assert frame["memorized"].tolist() == [True, False] and facts["n_memorized"] == 1
    assert facts["n_members"] is None and "member" not in frame
    assert frame["id"].tolist() == ["a", "b"] and frame["statistic"].dtype == np.float64


def test_known_members_give_online_lira_and_only_members_are_memorized():
    rule = ["evaluation.memorized_rule=threshold", "evaluation.memorized_threshold=-100"]
    cfg = load_config(overrides=["evaluation.lira_mode=online", *rule])
    members = np.array([False, True])
    frame, facts = audit_frame(cfg, TRAIN, GAPS, MEMBER, np.array([3.0, 2.0]), members)
    np.testing.assert_array_equal(frame["score"], lira(np.array([3.0, 2.0]), GAPS[1:], MEMBER[1:]))
    assert facts["mode"] == "online" and facts["threshold"] == -100.0
    assert frame["memorized"].tolist() == [False, True] and frame["member"].tolist() == [False, True]


def test_member_files_name_samples_by_source_id_or_global_index(tmp_path):
    (tmp_path / "m.txt").write_text("a\n\n11\n")
    pd.DataFrame({"id": ["11"]}).to_csv(tmp_path / "m.csv", index=False)
    pd.DataFrame({"id": ["a"], "other": [1]}).to_parquet(tmp_path / "m.parquet")
    assert read_member_ids(tmp_path / "m.txt") == ["a", "11"]
    for name, expected in (("m.txt", [True, True]), ("m.csv", [False, True]), ("m.parquet", [True, False])):
        ids = read_member_ids(tmp_path / name)
        assert member_mask_from_ids(TRAIN, ids, name).tolist() == expected
    with pytest.raises(MemauditError, match=r"member id '12' in m\.txt is not a sample of the run's train pool"):
        member_mask_from_ids(TRAIN, ["a", "12", "zz"], "m.txt")
    pd.DataFrame({"sample": ["a"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(MemauditError, match="has no 'id' column"):
        read_member_ids(tmp_path / "bad.csv")


def test_the_base_model_must_be_the_runs():
    hub = load_config(overrides=["model.name=org/model", "model.revision=abc", "model.layers=[]"]).model
    tiny = load_config().model
    check_base_model({"base_model_name_or_path": "org/model", "revision": "abc"}, hub, "a")
    check_base_model({"base_model_name_or_path": "org/model", "revision": None}, hub, "a")  # peft's default
    check_base_model({"base_model_name_or_path": "/runs/x/base_model", "revision": None}, tiny, "a")
    refused = [
        ({"base_model_name_or_path": "org/model", "revision": "def"}, hub),
        ({"base_model_name_or_path": "org/other", "revision": None}, hub),
        ({"base_model_name_or_path": "/some/folder", "revision": None}, hub),
        ({"base_model_name_or_path": "org/model", "revision": None}, tiny),
    ]
    for saved, model in refused:
        with pytest.raises(MemauditError, match="adapter a was trained on"):
            check_base_model(saved, model, "a")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A complete small run (3 shadows, aggregated) laid out as ``memaudit run --output`` leaves it."""
    root, cfg = tmp_path_factory.mktemp("run"), small_config()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        point_tasks_at(mp, root)
        result, art = prepare(root, cfg)
        uris = []
        for shadow in range(3):
            finetune(result, art, shadow)
            uris.append(score(result, art, shadow).uri)
        aggregate(result, art, uris)
    (root / RUN_CONFIG).write_text(cfg.to_yaml())
    storage = RunStorage(LocalStore(root / "store"), cfg.fingerprint())
    return root, cfg, storage


@pytest.mark.slow
def test_shadow_zeros_own_adapter_reproduces_its_ground_truth(finished_run, tmp_path, monkeypatch):
    root, cfg, storage = finished_run
    monkeypatch.setenv("MEMAUDIT_TORCH_THREADS", "1")  # as the score task ran
    final = storage.stored_checkpoints(0)[-1]
    adapter = storage.download_checkpoints(0, tmp_path, [final])[final]
    train = train_pool(read_pool(storage.store.get_file(storage.layout.pool, tmp_path / "pool.parquet")))
    members = read_membership(storage.store.get_file(storage.layout.member, tmp_path / "member.npy"))[0]
    pd.DataFrame({"id": train["global_index"][members].astype(str)}).to_csv(tmp_path / "members.csv", index=False)

    result = audit_model_task(root, adapter, tmp_path / "members.csv", progress=False)

    table = pd.read_parquet(root / "model-audit" / TABLE)
    truth = pd.read_parquet(
        storage.store.path(storage.layout.aggregate(cfg.evaluation_fingerprint(), "samples.parquet"))
    )
    stored = read_scores(storage.store.path(storage.layout.scores(0)))
    np.testing.assert_allclose(
        table["statistic"], logit_gap(stored["option_logits"][-1], stored["label_index"]), atol=1e-6
    )
    np.testing.assert_allclose(table["score"], truth["lira"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(table["memorized"], truth["memorized"])
    np.testing.assert_array_equal(table["member"], truth["member"])
    facts = json.loads((root / "model-audit" / FACTS).read_text())
    assert facts == json.loads(json.dumps(result.facts)) and facts["mode"] == "online"
    assert facts["n_memorized"] == int(truth["memorized"].sum()) > 0 and facts["reference_shadows"] == [1, 2]


@pytest.mark.slow
def test_an_adapter_of_its_own_shape_is_audited_offline_from_the_cli(finished_run, tmp_path, monkeypatch, capsys):
    from peft import LoraConfig, get_peft_model

    from memaudit.model.loading import load_base_model

    root, cfg, storage = finished_run
    base = tmp_path / "base"
    storage.store.get_dir(storage.layout.base_model, base)
    torch.manual_seed(0)
    own = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(load_base_model(cfg.model, base), own).save_pretrained(tmp_path / "adapter")
    out = tmp_path / "audit"

    main(["audit-model", "--run", str(root), "--adapter", str(tmp_path / "adapter"), "-o", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert "offline LiRA against 2 shadows" in printed and f"outputs: {out}" in printed

    table, facts = pd.read_parquet(out / TABLE), json.loads((out / FACTS).read_text())
    files = [read_scores(storage.store.path(storage.layout.scores(s))) for s in range(3)]
    gaps = np.stack([logit_gap(f["option_logits"][-1], f["label_index"]) for f in files])
    member = np.stack([f["member"] for f in files])
    ev, offline = cfg.evaluation, {"online": False, "global_variance": cfg.evaluation.lira_mode == "global"}
    target = lira(gaps[0], gaps[1:], member[1:], **offline)
    rule = {"rule": ev.memorized_rule, "fraction": ev.memorized_fraction, "threshold": ev.memorized_threshold}
    threshold = memorized_threshold(target[member[0]], **rule)
    assert "member" not in table and facts["mode"] == "offline" and facts["threshold"] == pytest.approx(threshold)
    np.testing.assert_allclose(table["score"], lira(table["statistic"].to_numpy(), gaps[1:], member[1:], **offline))
    np.testing.assert_array_equal(table["memorized"], table["score"] >= threshold)
    assert np.abs(table["statistic"] - gaps[0]).max() > 1e-3  # another model than shadow 0
    report = (out / REPORT).read_text()
    assert report.startswith("## Model audit") and report.count("\n| ") == 1 + 10
