"""The pipeline's task bodies on a local store: outputs sealed, completed work skipped, killed work resumed."""

import json
import socket

import numpy as np
import pytest
import torch

from memaudit.errors import MemauditError
from memaudit.stages import finetune as stages_finetune
from memaudit.store import LocalStore, RunStorage
from memaudit.tasks import aggregate as aggregate_tasks
from memaudit.tasks.split import split_task
from tests.support.pipeline_config import small_config
from tests.support.task_runs import (
    aggregate,
    final_adapter,
    finetune,
    flip_last_byte,
    plot,
    point_tasks_at,
    prepare,
    progress_events,
    quarantined,
    score,
)

pytestmark = pytest.mark.slow  # trains and scores tiny shadows through the task bodies


def test_prepare_builds_once_then_reuses_the_stored_pool_and_model(env):
    cfg = small_config()
    first, art = prepare(env, cfg)
    assert first.fingerprint == cfg.fingerprint() and first.shadow_ids == [0, 1, 2]
    assert (art / "base_model" / "config.json").is_file()
    store = LocalStore(env / "store")
    assert store.is_sealed(f"{cfg.fingerprint()}/pool.parquet") and store.is_complete(f"{cfg.fingerprint()}/base-model")
    again, _ = prepare(env, cfg)
    events = [(e["stage"], e["event"]) for e in progress_events(env / "progress.jsonl") if e["event"] != "start"]
    assert events == [("prepare", "done"), ("split", "done"), ("prepare", "skipped"), ("split", "skipped")]
    assert again.parent_run_id != first.parent_run_id  # one MLflow parent per pipeline run


def test_a_new_output_folder_takes_the_tiny_model_from_the_machines_cache(env, monkeypatch, tmp_path_factory):
    cfg = small_config()
    _, art = prepare(env, cfg)
    elsewhere = point_tasks_at(monkeypatch, tmp_path_factory.mktemp("second-output"))  # an empty store

    def must_not_pretrain(*args, **kwargs):
        raise AssertionError("the tiny model was pre-trained again")

    monkeypatch.setattr("memaudit.model.tiny.pretrain_causal_lm", must_not_pretrain)
    _, art2 = prepare(elsewhere, cfg)
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (art2 / "base_model" / name).read_bytes() == (art / "base_model" / name).read_bytes()


def test_finetune_score_seal_the_shadow_and_a_rerun_skips(env, monkeypatch):
    cfg = small_config()
    result, art = prepare(env, cfg)
    ft = finetune(result, art, 1)
    sc = score(result, art, 1)
    storage = RunStorage(LocalStore(env / "store"), cfg.fingerprint())
    assert storage.shadow_complete(1) and storage.store.verify_complete(storage.layout.shadow(1))
    assert sc.uri.endswith(f"{cfg.fingerprint()}/shadows/1/scores.npz")
    assert json.loads((art / "ckpts-1.json").read_text())["checkpoints"] == ft.metadata["checkpoints"]
    assert not storage.store.list_keys(f"{storage.layout.shadow(1)}/resume")  # trainer state dropped once sealed

    def must_not_train(*args, **kwargs):
        raise AssertionError("a complete shadow was trained again")

    monkeypatch.setattr("memaudit.stages.finetune.finetune", must_not_train)
    monkeypatch.setattr("memaudit.stages.score.score_shadow", must_not_train)
    finetune(result, art, 1)
    score(result, art, 1)
    last = [(e["stage"], e["event"]) for e in progress_events(env / "progress.jsonl")][-4:]
    assert last == [("finetune", "start"), ("finetune", "skipped"), ("score", "start"), ("score", "skipped")]


def test_killed_finetune_resumes_from_the_store_and_ends_identical(env, tmp_path_factory, monkeypatch):
    cfg = small_config()
    # reference: an uninterrupted run in its own store
    ref_root = tmp_path_factory.mktemp("ref")
    monkeypatch.setenv("MEMAUDIT_STORE_DIR", str(ref_root / "store"))
    result, art = prepare(ref_root, cfg)
    ref = finetune(result, art, 0)
    final_step = ref.metadata["checkpoints"][-1]
    reference = final_adapter(ref_root, cfg, 0, final_step)

    monkeypatch.setenv("MEMAUDIT_STORE_DIR", str(env / "store"))
    result, art = prepare(env, cfg)
    real_upload = RunStorage.upload_checkpoint
    calls = []

    def dying_upload(self, shadow, step, adapter_dir):
        if len(calls) == 3:
            raise MemauditError("simulated kill after three checkpoints")
        calls.append(step)
        return real_upload(self, shadow, step, adapter_dir)

    monkeypatch.setattr(RunStorage, "upload_checkpoint", dying_upload)
    failed = finetune(result, art, 0)  # recorded in the task's output, so that the other shadows go on
    assert failed.uri == "failed:0:finetune: simulated kill after three checkpoints"
    storage = RunStorage(LocalStore(env / "store"), cfg.fingerprint())
    assert storage.stored_checkpoints(0) == calls and len(calls) == 3
    monkeypatch.setattr(RunStorage, "upload_checkpoint", real_upload)
    finetune(result, art, 0)
    resumed = [e for e in progress_events(env / "progress.jsonl") if e.get("detail", "").startswith("resuming")]
    assert resumed and resumed[-1]["detail"] == f"resuming after step {calls[-1]}"
    got = final_adapter(env, cfg, 0, final_step)
    assert got.keys() == reference.keys()
    for key in got:
        assert torch.equal(got[key], reference[key]), key


def test_a_damaged_checkpoint_of_a_killed_shadow_is_set_aside_and_the_shadow_retrained(env, monkeypatch):
    cfg = small_config()
    result, art = prepare(env, cfg)
    real_upload = RunStorage.upload_checkpoint

    def die_after_two(self, shadow, step, adapter_dir):
        if len(RunStorage(self.store, cfg.fingerprint()).stored_checkpoints(shadow)) == 2:
            raise MemauditError("simulated kill")
        return real_upload(self, shadow, step, adapter_dir)

    monkeypatch.setattr(RunStorage, "upload_checkpoint", die_after_two)
    assert finetune(result, art, 2).uri.startswith("failed:2:finetune: simulated kill")
    monkeypatch.setattr(RunStorage, "upload_checkpoint", real_upload)
    stored = sorted((env / "store").glob(f"{cfg.fingerprint()}/shadows/2/ckpt-*/adapter/adapter_model.safetensors"))
    flip_last_byte(stored[-1])
    finetune(result, art, 2)  # the damaged checkpoint is moved aside and shadow 2 trains afresh
    damaged = [e for e in progress_events(env / "progress.jsonl") if e["event"] == "damaged"]
    assert len(damaged) == 1 and damaged[0]["shadow"] == 2 and "ckpt-" in damaged[0]["message"]
    assert f"shadows/2/{stored[-1].parent.parent.name}/adapter/adapter_model.safetensors" in quarantined(env, cfg)
    score(result, art, 2)
    assert RunStorage(LocalStore(env / "store"), cfg.fingerprint()).shadow_complete(2)


def test_damaged_scores_of_a_sealed_shadow_are_set_aside_and_only_scoring_reruns(env, monkeypatch):
    cfg = small_config()
    result, art = prepare(env, cfg)
    finetune(result, art, 0)
    score(result, art, 0)
    scores = env / "store" / cfg.fingerprint() / "shadows" / "0" / "scores.npz"
    good = scores.read_bytes()
    flip_last_byte(scores)
    monkeypatch.setattr("memaudit.stages.finetune.finetune", lambda *a, **k: pytest.fail("retrained"))
    finetune(result, art, 0)  # verifies the sealed shadow: the scores are set aside, the checkpoints kept
    assert quarantined(env, cfg) == ["shadows/0/COMPLETE", "shadows/0/scores.npz"]
    score(result, art, 0)
    assert scores.read_bytes() == good  # recomputed, identical
    events = progress_events(env / "progress.jsonl")
    assert [e["event"] for e in events if e["stage"] == "finetune"][-2:] == ["damaged", "skipped"]
    assert [e["event"] for e in events if e["stage"] == "score"][-1] == "done"
    assert RunStorage(LocalStore(env / "store"), cfg.fingerprint()).store.verify_complete(
        f"{cfg.fingerprint()}/shadows/0"
    )


def test_a_failed_shadow_does_not_sink_the_others_when_min_complete_allows(env, monkeypatch):
    result, art = prepare(env, small_config("shadows.n_shadows=4"))
    real = stages_finetune.finetune

    def broken_for_shadow_2(cfg, pool, member, shadow, *args, **kwargs):
        if shadow == 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(cfg, pool, member, shadow, *args, **kwargs)

    monkeypatch.setattr(stages_finetune, "finetune", broken_for_shadow_2)
    uris = []
    for shadow in range(4):
        finetune(result, art, shadow)
        uris.append(score(result, art, shadow).uri)
    reason = "failed:2:finetune: RuntimeError: CUDA error: an illegal memory access was encountered"
    assert uris[2] == reason  # the score task passes its fine-tune's failure on
    with pytest.raises(MemauditError, match=r"1 of 4 shadows failed \(shadow 2: finetune: RuntimeError: CUDA .*"
                       r"set shadows\.min_complete=3 to aggregate the 3 complete ones"):  # fmt: skip
        aggregate(result, art, uris)
    partial = small_config("shadows.n_shadows=4", "shadows.min_complete=0.75")
    result = result.__class__(**{**result.__dict__, "config_json": json.dumps(partial.to_dict())})
    out = aggregate(result, art, uris)
    summary = json.loads((art / "summary").read_text())
    assert summary["missing_shadows"] == [2] and summary["shadow_ids"] == [0, 1, 3] and summary["n_shadows_used"] == 2
    assert "-without-" in out.uri
    report = plot(result, art, out.uri)
    assert "-without-" in report and "missing shadows" in (art / "report.html").read_text()
    assert_tracked_for_people(env, result.parent_run_id, summary, (art / "headline.md").read_text())
    events = [
        (e["stage"], e["shadow"], e["event"]) for e in progress_events(env / "progress.jsonl") if e["event"] == "error"
    ]
    assert ("finetune", 2, "error") in events


def assert_tracked_for_people(env, run_id: str, summary: dict, markdown: str) -> None:
    """The parent run as the MLflow UI shows it: the pool as its dataset, a short headline, step series per
    layer and checkpoint, the summary table as its description, shadows counted live, the whole config."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{env / 'mlflow.db'}")
    run = client.get_run(run_id)
    (pool,) = run.inputs.dataset_inputs
    assert pool.dataset.name == "synthetic" and len(pool.dataset.digest) == 16
    assert len(run.data.metrics) <= 43 and len(run.data.params) <= 30  # docs/design.md: the parent run's keys
    assert run.data.metrics["psmi_fpr"] == summary["best_layer"]["fpr_at_tpr"]
    assert run.data.metrics["shadows_complete"] == 3.0  # shadow 2 failed
    by_layer = client.get_metric_history(run_id, "psmi_fpr_by_layer")
    assert sorted(m.step for m in by_layer) == [1, 2]
    by_step = client.get_metric_history(run_id, "median_member_loss")
    assert [m.value for m in sorted(by_step, key=lambda m: m.step)] == summary["c_pred"]["median_member_loss"]
    assert markdown.startswith("**memaudit audit: synthetic") and "| P-SMI (layer" in markdown
    assert run.data.tags["mlflow.note.content"] == markdown
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.json", "summary.json", "predictors.json", "report.html"} <= artifacts


def test_headline_metrics_and_roc_for_the_kfp_ui(tmp_path):
    from memaudit.report.headline import FACTS, KINDS, headline_metrics
    from memaudit.stages.aggregate import aggregate
    from memaudit.testing import write_synthetic_scores

    written = write_synthetic_scores(tmp_path / "s", n_models=6, n_samples=200)
    cfg = small_config("shadows.n_shadows=6")
    aggregate(cfg, written.paths, written.pool, tmp_path / "agg", progress=False)
    summary = json.loads((tmp_path / "agg" / "summary.json").read_text())
    metrics = headline_metrics(summary)
    assert metrics["share_memorized"] == pytest.approx(summary["share_memorized"])
    best = f"psmi_L{summary['best_layer']['layer']}"
    assert metrics["psmi_auc"] == pytest.approx(summary["predictors"][best]["target"]["auc"])
    assert metrics["loss_fpr_all"] == pytest.approx(summary["predictors"]["loss"]["all_models"]["fpr_at_tpr"]["mean"])
    # a headline, not a dump: 4 numbers of each of the paper's 5 predictors and the run's facts, short flat keys
    assert len(metrics) <= 4 * len(KINDS) + len(FACTS) <= 40 and all("." not in k for k in metrics)
    fpr, tpr, thr = aggregate_tasks._target_roc(tmp_path / "agg", summary)
    assert fpr[0] == 0.0 and tpr[-1] == 1.0 and np.isfinite(thr).all() and len(fpr) == len(tpr) == len(thr)


def test_a_cluster_pod_without_object_store_is_refused(env, monkeypatch):
    monkeypatch.delenv("MEMAUDIT_STORE_DIR")
    monkeypatch.setenv("KFP_POD_NAME", "audit-xyz-finetune")
    cfg = small_config()
    with pytest.raises(MemauditError, match="no object store"):
        split_task(config_json=json.dumps(cfg.to_dict()), pool_path="p", member_path="m")


def test_a_task_outside_its_run_writes_nowhere(env, monkeypatch, tmp_path):
    monkeypatch.delenv("MEMAUDIT_STORE_DIR")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    with pytest.raises(MemauditError, match="this task has no object store; fix: set MEMAUDIT_STORE_DIR"):
        split_task(config_json=json.dumps(small_config().to_dict()), pool_path="p", member_path="m")
    assert list((tmp_path / "cwd").iterdir()) == []  # no memaudit-store/ in the current directory


def test_an_unreachable_tracking_server_never_fails_a_training_task(env, monkeypatch, capsys):
    cfg = small_config()
    result, art = prepare(env, cfg)  # the parent run opens on the sqlite store
    with socket.socket() as sock:  # a port that was free a moment ago: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setattr("memaudit.tasks.runtime.TRACK_WAIT_S", 0.01)
    finetune(result, art, 1)
    score(result, art, 1)
    assert RunStorage(LocalStore(env / "store"), cfg.fingerprint()).shadow_complete(1)
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warning == [
        f"memaudit: warning: shadow 1's training was not logged to MLflow (cannot reach MLflow at "
        f"http://127.0.0.1:{port} (Connection refused)); its outputs are stored"
    ]
    events = progress_events(env / "progress.jsonl")
    assert [e["event"] for e in events if e["stage"] == "finetune" and e["event"] != "step"] == ["start", "done"]
