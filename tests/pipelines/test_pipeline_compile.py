"""The compiled pipeline: committed YAML up to date, and its IR structurally sound."""

import filecmp

import pytest
import yaml

from memaudit.cli import main
from memaudit.config import load_config
from memaudit.pipelines.compile import PIPELINES, compile_pipeline

COMMITTED_PRESET = "arc-mistral"  # `make compile` = memaudit compile --preset arc-mistral
GPU_TASKS = {"finetune", "score"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    cfg = load_config(preset=COMMITTED_PRESET)
    path = tmp_path_factory.mktemp("ir") / "audit.yaml"
    compile_pipeline(cfg, path)
    spec, platform = yaml.safe_load_all(path.read_text())
    return cfg, path, spec, platform


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_committed_yaml_is_up_to_date(pipeline, tmp_path):
    committed = PIPELINES[pipeline].compiled
    fresh = compile_pipeline(load_config(preset=COMMITTED_PRESET), tmp_path / committed.name, pipeline=pipeline)[0]
    assert committed.is_file(), f"{committed.name} is missing: run `make compile`"
    assert filecmp.cmp(fresh, committed, shallow=False), f"{committed.name} is stale: run `make compile`"


def test_predict_pipeline_is_prepare_then_one_gpu_predict_task():
    spec, _ = yaml.safe_load_all(PIPELINES["predict"].compiled.read_text())
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"prepare", "predict"}
    assert tasks["predict"]["dependentTasks"] == ["prepare"]
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert {"members_of", "at_step", "layer", "layer_from", "preset", "config_yaml"} <= set(inputs)
    assert inputs["members_of"]["defaultValue"] == -1


def _dags(spec):
    yield "root", spec["root"]
    for name, comp in spec["components"].items():
        if "dag" in comp:
            yield name, comp


def test_every_reference_resolves(compiled):
    _, _, spec, _ = compiled
    components, executors = spec["components"], spec["deploymentSpec"]["executors"]
    for comp in components.values():
        if "executorLabel" in comp:
            assert comp["executorLabel"] in executors
    for dag_name, comp in _dags(spec):
        tasks = comp["dag"]["tasks"]
        declared = comp.get("inputDefinitions", {})
        for task_name, task in tasks.items():
            ref = task["componentRef"]["name"]
            assert ref in components, f"{dag_name}/{task_name} -> {ref}"
            callee_inputs = components[ref].get("inputDefinitions", {})
            for dep in task.get("dependentTasks", []):
                assert dep in tasks
            for kind in ("parameters", "artifacts"):
                for arg, binding in task.get("inputs", {}).get(kind, {}).items():
                    assert arg in callee_inputs.get(kind, {}), f"{task_name} passes unknown {kind[:-1]} {arg}"
                    if "taskOutputParameter" in binding or "taskOutputArtifact" in binding:
                        src = binding.get("taskOutputParameter") or binding.get("taskOutputArtifact")
                        assert src["producerTask"] in tasks
                        outputs = components[tasks[src["producerTask"]]["componentRef"]["name"]]["outputDefinitions"]
                        key = src.get("outputParameterKey") or src.get("outputArtifactKey")
                        assert key in outputs[kind], f"{task_name}.{arg} <- {src}"
                    elif "componentInputParameter" in binding:
                        name = binding["componentInputParameter"]
                        assert name in declared.get("parameters", {}) or name.endswith("-loop-item"), name
                    elif "componentInputArtifact" in binding:
                        assert binding["componentInputArtifact"] in declared.get("artifacts", {})


def _task_executor(spec, task_name):
    for _, comp in _dags(spec):
        for name, task in comp["dag"]["tasks"].items():
            if name == task_name:
                return spec["components"][task["componentRef"]["name"]].get("executorLabel")
    raise KeyError(task_name)


def test_loop_parallelism_and_collected_scores(compiled):
    cfg, _, spec, _ = compiled
    loops = [task for _, comp in _dags(spec) for task in comp["dag"]["tasks"].values() if "parameterIterator" in task]
    assert len(loops) == 1
    loop = loops[0]
    assert loop["iteratorPolicy"]["parallelismLimit"] == cfg.run.parallelism
    body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert set(body) == GPU_TASKS
    assert body["score"]["inputs"]["artifacts"]["checkpoints"]["taskOutputArtifact"]["producerTask"] == "finetune"
    agg_inputs = spec["root"]["dag"]["tasks"]["aggregate"]["inputs"]["parameters"]["score_uris"]
    assert "taskOutputParameter" in agg_inputs  # the collected list of score URIs, not artifacts


def test_gpu_resources_images_and_retries(compiled):
    cfg, _, spec, _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    for task in ("prepare", "split", "finetune", "score", "aggregate", "plot"):
        container = executors[_task_executor(spec, task)]["container"]
        resources = container.get("resources", {})
        if task in GPU_TASKS:
            assert container["image"] == cfg.run.image_gpu
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert resources["accelerator"]["resourceCount"] == "1"
        else:
            assert container["image"] == cfg.run.image_cpu
            assert "accelerator" not in resources
    for _, comp in _dags(spec):
        for name, task in comp["dag"]["tasks"].items():
            if name in GPU_TASKS:
                assert task["retryPolicy"]["maxRetryCount"] == cfg.run.retries


def test_node_selector_toleration_and_secret_placement(compiled):
    cfg, _, spec, platform = compiled
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for task in ("prepare", "split", "finetune", "score", "aggregate", "plot"):
        conf = k8s[_task_executor(spec, task)]
        secrets = {s["secretName"]: s for s in conf.get("secretAsEnv", [])}
        s3 = secrets[cfg.run.s3_secret]
        assert {k["envVar"] for k in s3["keyToEnv"]} == {"MEMAUDIT_S3_ACCESS_KEY", "MEMAUDIT_S3_SECRET_KEY"}
        if task in GPU_TASKS:
            assert conf["nodeSelector"]["labels"] == cfg.run.gpu_node_selector
            assert conf["tolerations"][0]["key"] == cfg.run.gpu_tolerations[0].key
        else:
            assert "nodeSelector" not in conf and "tolerations" not in conf


def test_no_secret_in_compiled_yaml(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMAUDIT_S3_SECRET_KEY", "planted-secret-value-123")
    monkeypatch.setenv("MEMAUDIT_S3_ACCESS_KEY", "planted-access-key-456")
    path = tmp_path / "a.yaml"
    compile_pipeline(load_config(preset="demo"), path)
    text = path.read_text()
    assert "planted-secret-value-123" not in text and "planted-access-key-456" not in text


def test_pipeline_parameters_users_change_in_the_ui(compiled):
    _, _, spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {"preset", "config_yaml", "overrides", "n_shadows", "dataset", "model", "run_name"}
    assert params["preset"]["defaultValue"] == COMMITTED_PRESET


def test_cli_compile_writes_ir_and_kubernetes_manifest(tmp_path, capsys):
    out, manifest = tmp_path / "p.yaml", tmp_path / "k8s.yaml"
    main(
        [
            "compile",
            "--preset",
            "demo",
            "--set",
            "run.image_gpu=reg.example/gpu:9",
            "--output",
            str(out),
            "--kubernetes-manifest",
            str(manifest),
            "--namespace",
            "team-a",
        ]
    )
    assert "reg.example/gpu:9" in out.read_text()
    docs = list(yaml.safe_load_all(manifest.read_text()))
    assert [d["kind"] for d in docs] == ["Pipeline", "PipelineVersion"]
    assert all(d["apiVersion"] == "pipelines.kubeflow.org/v2beta1" for d in docs)
    assert all(d["metadata"]["namespace"] == "team-a" for d in docs)
    assert docs[1]["spec"]["pipelineSpec"]["root"]["inputDefinitions"]["parameters"]["preset"]["defaultValue"] == "demo"


def test_the_kfp_run_page_shows_the_report_and_its_headline(compiled):
    _, _, spec, _ = compiled
    outputs = spec["components"]["comp-plot"]["outputDefinitions"]["artifacts"]
    assert outputs["report"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert outputs["headline"]["artifactType"]["schemaTitle"] == "system.Markdown"
    metrics = spec["components"]["comp-aggregate"]["outputDefinitions"]["artifacts"]["metrics"]
    assert metrics["artifactType"]["schemaTitle"] == "system.Metrics"
