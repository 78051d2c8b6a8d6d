"""Rules the KFP v2 backend enforces and kfp.local does not, checked on every committed compiled pipeline.

Each assertion names the upstream source (kubeflow/pipelines) or issue that states the rule.
"""

import itertools
import json
import math
from pathlib import Path

import pytest
import yaml

from memaudit.components.values import MAX_CURVE_POINTS, downsample_curve, kfp_metadata, kfp_metrics
from memaudit.config import load_config
from memaudit.pipelines.audit import CA_DIR, HF_CACHE, MLFLOW_CLIENT_LABEL, model_cache_size
from memaudit.pipelines.compile import COMPILED, PIPELINES, compile_pipeline
from memaudit.pipelines.submit import BACKEND_FLOOR

COMPILED_FILES = sorted(COMPILED.parent.glob("*.yaml"))
GPU_EXECUTORS = {"exec-finetune", "exec-score", "exec-predict"}  # those a compiled pipeline has
SECRET_NAMES = ("ACCESS_KEY", "SECRET_KEY", "TOKEN", "PASSWORD")


def _load(path: Path):
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.fixture(scope="module", params=COMPILED_FILES, ids=lambda p: p.name)
def compiled(request):
    return _load(request.param)


def _dags(spec):
    yield spec["root"]
    yield from (c for c in spec["components"].values() if "dag" in c)


def _param_type(spec, dag, binding):
    """The IR type of the value a task input parameter binding resolves to (None for constants)."""
    declared = dag.get("inputDefinitions", {}).get("parameters", {})
    if "componentInputParameter" in binding:
        return declared[binding["componentInputParameter"]]["parameterType"]
    if "taskOutputParameter" in binding:
        src = binding["taskOutputParameter"]
        producer = spec["components"][dag["dag"]["tasks"][src["producerTask"]]["componentRef"]["name"]]
        return producer["outputDefinitions"]["parameters"][src["outputParameterKey"]]["parameterType"]
    return None


def test_committed_pipelines_exist():
    assert {p.name for p in COMPILED_FILES} == {kind.compiled.name for kind in PIPELINES.values()}
    assert COMPILED in COMPILED_FILES


def test_every_parameter_binding_has_the_consumers_type(compiled):
    # backend/src/v2/driver/resolve.go: a resolved parameter whose type differs from the input's is rejected
    spec, _ = compiled
    checked = 0
    for dag in _dags(spec):
        for name, task in dag["dag"]["tasks"].items():
            wanted = spec["components"][task["componentRef"]["name"]].get("inputDefinitions", {}).get("parameters", {})
            for arg, binding in task.get("inputs", {}).get("parameters", {}).items():
                got = _param_type(spec, dag, binding)
                if got is not None:
                    assert got == wanted[arg]["parameterType"], f"{name}.{arg}: {got} != {wanted[arg]['parameterType']}"
                    checked += 1
    assert checked > 10


def test_loop_items_are_typed_like_their_consumers(compiled):
    # backend/src/v2/driver: the loop item's declared type must equal the consumer's (an untyped list is STRING)
    spec, _ = compiled
    loops = [t for d in _dags(spec) for t in d["dag"]["tasks"].values() if "parameterIterator" in t]
    assert loops or "exec-finetune" not in spec["deploymentSpec"]["executors"]  # shadows are trained in a loop
    for loop in loops:
        body = spec["components"][loop["componentRef"]["name"]]
        item = loop["parameterIterator"]["itemInput"]
        item_type = body["inputDefinitions"]["parameters"][item]["parameterType"]
        for task in body["dag"]["tasks"].values():
            wanted = spec["components"][task["componentRef"]["name"]]["inputDefinitions"]["parameters"]
            for arg, binding in task.get("inputs", {}).get("parameters", {}).items():
                if binding.get("componentInputParameter") == item:
                    assert item_type == wanted[arg]["parameterType"] == "NUMBER_INTEGER"


def test_no_named_parallel_for_below_the_floor(compiled):
    # kubeflow/pipelines#13239: a named ParallelFor breaks dsl.Collected before 2.16
    spec, _ = compiled
    if BACKEND_FLOOR >= (2, 16):
        return
    for dag in _dags(spec):
        for name, task in dag["dag"]["tasks"].items():
            if "parameterIterator" in task:
                assert task["taskInfo"]["name"].startswith("for-loop-"), f"named ParallelFor {name}"


def test_floor_covers_the_features_the_pipeline_uses():
    # #11725 Collected from a nested pipeline (2.14), #12216 optional secrets (2.15), #11979 nested DAG status (2.17)
    assert BACKEND_FLOOR >= (2, 16)


def test_gpu_tasks_are_scheduled_on_gpus(compiled):
    # kfp-kubernetes platform spec: nodeSelector/tolerations per executor; accelerator limit in the container spec
    spec, platform = compiled
    executors = spec["deploymentSpec"]["executors"]
    gpu = GPU_EXECUTORS & set(executors)
    assert gpu, "a pipeline without a GPU task"
    for name in gpu:
        resources = executors[name]["container"]["resources"]
        assert resources["accelerator"]["resourceCount"] == "1"
        assert "nvidia.com/gpu" in resources["accelerator"]["resourceType"]
        assert platform[name]["nodeSelector"]["labels"]
        assert platform[name].get("tolerations")


def test_every_task_runs_restricted_with_limits_and_a_deadline(compiled):
    spec, platform = compiled
    run = load_config(preset="arc-mistral").run
    for name, executor in spec["deploymentSpec"]["executors"].items():
        resources, pod = executor["container"]["resources"], platform[name]
        # Pod Security "restricted": runAsNonRoot with a fixed non-root uid and gid (the images' USER 10001)
        assert pod["securityContext"] == {"runAsUser": "10001", "runAsGroup": "10001", "runAsNonRoot": True}, name
        # LimitRange / quota review: every container has CPU and memory limits, not only requests
        assert resources["resourceCpuLimit"] and resources["resourceMemoryLimit"], name
        assert resources["resourceCpuLimit"] == resources["resourceCpuRequest"], name  # limit defaults to request
        # a hung task ends (activeDeadlineSeconds = run.timeout_s) and frees its node, GPU included
        assert int(pod["activeDeadlineSeconds"]) == run.timeout_s, name
        # the chart's NetworkPolicy admits to MLflow only pods with this label
        assert pod["podMetadata"]["labels"] == dict([MLFLOW_CLIENT_LABEL]), name


def test_secrets_reach_tasks_as_env_never_as_parameters(compiled):
    # backend/src/v2/driver: parameters are stored in MLMD and shown in the UI; secrets go through secretAsEnv
    spec, platform = compiled
    for comp in spec["components"].values():
        for param in comp.get("inputDefinitions", {}).get("parameters", {}):
            assert not any(s in param.upper() for s in SECRET_NAMES), f"secret-like parameter {param}"
    for name in spec["deploymentSpec"]["executors"]:
        env = {e["envVar"] for s in platform[name]["secretAsEnv"] for e in s["keyToEnv"]}
        assert {"MEMAUDIT_S3_ACCESS_KEY", "MEMAUDIT_S3_SECRET_KEY"} <= env
        # COMPLETE markers are signed and checked with the install's key wherever the store is written or read
        (seal,) = [s for s in platform[name]["secretAsEnv"] if s["keyToEnv"][0]["envVar"] == "MEMAUDIT_SEAL_KEY"]
        assert seal["optional"] and seal["secretNameParameter"]["runtimeValue"]["constant"] == "memaudit-seal", name


def test_hub_model_metadata_has_no_null_or_non_finite_value():
    # backend/src/v2/metadata: artifact metadata becomes a structpb.Struct; the launcher rejects null values
    raw = {"name": "mistralai/Mistral-7B-v0.1", "revision": None, "nested": {"a": None, "x": float("nan")}}
    clean = kfp_metadata(raw)
    assert clean == {"name": "mistralai/Mistral-7B-v0.1", "nested": {"x": "nan"}}
    json.dumps(clean, allow_nan=False)


def test_metrics_drop_non_finite_values():
    # protojson cannot encode NaN or ±inf in a metrics artifact
    assert kfp_metrics({"auc": 0.5, "nan": float("nan"), "inf": math.inf, "none": None, "n": 3}) == {
        "auc": 0.5,
        "n": 3.0,
    }


def test_roc_curves_are_downsampled_for_the_ui():
    # the KFP UI renders ClassificationMetrics point by point: at most MAX_CURVE_POINTS per curve
    fpr = [i / 999 for i in range(1000)]
    tpr = [min(1.0, 2 * f) for f in fpr]
    thr = list(range(1000, 0, -1))
    out_fpr, out_tpr, out_thr = downsample_curve(fpr, tpr, thr)
    assert len(out_fpr) == len(out_tpr) == len(out_thr) == MAX_CURVE_POINTS
    assert (out_fpr[0], out_fpr[-1]) == (0.0, 1.0) and out_thr[0] == 1000 and out_thr[-1] == 1
    assert all(a < b for a, b in itertools.pairwise(out_fpr))
    assert downsample_curve([0.0, 1.0], [0.0, 1.0]) == ([0.0, 1.0], [0.0, 1.0])


def test_gpu_tasks_get_disk_for_the_model_weights(compiled):
    # a 7B model's bf16 weights (~15 GB) must not land in the pod's writable layer (kubelet evicts on disk pressure)
    _, platform = compiled
    for name in GPU_EXECUTORS & set(platform):
        volumes = platform[name].get("genericEphemeralVolume", []) + platform[name].get("pvcMount", [])
        assert [v["mountPath"] for v in volumes] == [HF_CACHE]


def test_model_cache_pvc_replaces_the_pods_own_volume():
    cfg = load_config(preset="arc-mistral", overrides=["run.model_cache_pvc=hf-models"])
    platform = _compile(cfg)
    for name in GPU_EXECUTORS & set(platform):
        assert "genericEphemeralVolume" not in platform[name]
        assert platform[name]["pvcMount"][0]["mountPath"] == HF_CACHE
        assert platform[name]["pvcMount"][0]["pvcNameParameter"]["runtimeValue"]["constant"] == "hf-models"


def test_a_private_ca_reaches_every_task_for_the_object_store_only():
    spec, platform = _compile_spec(load_config(preset="arc-mistral", overrides=["run.ca_bundle_config_map=corp-ca"]))
    for name, executor in spec["deploymentSpec"]["executors"].items():
        (mount,) = platform[name]["configMapAsVolume"]
        assert mount["configMapName"] == "corp-ca" and mount["mountPath"] == CA_DIR, name
        env = {e["name"]: e["value"] for e in executor["container"]["env"]}
        assert env == {"MEMAUDIT_S3_CA_BUNDLE": f"{CA_DIR}/ca.crt"}, name  # not SSL_CERT_FILE: the Hub keeps its CAs
    assert all("configMapAsVolume" not in pod for pod in _compile(load_config(preset="arc-mistral")).values())


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_the_pipeline_root_can_be_the_tenants_own_bucket(pipeline, tmp_path):
    cfg = load_config(preset="arc-mistral", overrides=["run.pipeline_root=s3://memaudit-team-a/kfp"])
    compile_pipeline(cfg, tmp_path / "p.yaml", pipeline=pipeline)
    assert _load(tmp_path / "p.yaml")[0]["defaultPipelineRoot"] == "s3://memaudit-team-a/kfp"  # no data in KFP's bucket
    compile_pipeline(load_config(preset="arc-mistral"), tmp_path / "d.yaml", pipeline=pipeline)
    assert "defaultPipelineRoot" not in _load(tmp_path / "d.yaml")[0]  # the namespace's kfp-launcher decides


def test_cache_volume_size_follows_the_model_or_the_setting():
    assert model_cache_size("mistralai/Mistral-7B-v0.1") == "31Gi"  # 7e9 × 2 B × 1.5 = 21 GB, + 10
    assert model_cache_size("Qwen/Qwen2.5-0.5B") == "12Gi"
    assert model_cache_size("tiny-llama") == "20Gi"
    cfg = load_config(preset="arc-mistral", overrides=["run.ephemeral_storage=100Gi"])
    assert {
        v["size"] for p in [_compile(cfg)] for n in GPU_EXECUTORS & set(p) for v in p[n]["genericEphemeralVolume"]
    } == {"100Gi"}


def _compile_spec(cfg):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.yaml"
        compile_pipeline(cfg, path)
        return _load(path)


def _compile(cfg):
    return _compile_spec(cfg)[1]


class _Artifact:
    """What KFP hands a component for an input or output artifact: a path and a metadata dict."""

    def __init__(self, path: Path):
        self.path, self.metadata = str(path), {}


@pytest.mark.parametrize("stage", ["finetune", "score"])
def test_a_failing_shadow_task_returns_its_failure_so_the_loop_goes_on(stage, tmp_path, monkeypatch):
    """KFP ignores retry policies inside ParallelFor (#12389) and fails the DAG with any iteration: a shadow task
    therefore reports its failure as its output (a per-iteration status), and the aggregate decides with
    shadows.min_complete. No ignore_upstream_failure is needed, so every backend >= the floor runs it."""
    from memaudit.components import finetune, score

    for key in ("MEMAUDIT_STORE_DIR", "MEMAUDIT_S3_ENDPOINT", "KFP_POD_NAME"):
        monkeypatch.delenv(key, raising=False)
    (tmp_path / "ckpts").write_text(json.dumps({"shadow": 3}))
    common = {"config_json": json.dumps(load_config(preset="demo").to_dict()), "shadow": 3}
    arts = {name: _Artifact(tmp_path / name) for name in ("pool", "member", "base_model")}
    out = _Artifact(tmp_path / "out")
    if stage == "finetune":
        uri = finetune.finetune(**common, parent_run_id="p", **arts, checkpoints=out)
    else:
        uri = score.score(**common, **arts, checkpoints=_Artifact(tmp_path / "ckpts"), scores=out)
    assert uri.startswith(f"failed:3:{stage}: this task has no object store")
    assert out.metadata == kfp_metadata(out.metadata) and out.metadata["failed"] == uri
    spec, _ = _load(COMPILED)
    aggregate = spec["root"]["dag"]["tasks"]["aggregate"]
    assert "triggerPolicy" not in aggregate  # nothing backend-specific: the loop's outputs carry the status
