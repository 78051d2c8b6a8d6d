"""The audit pipeline: prepare → split → ParallelFor(shadows){finetune → score} → aggregate → plot.

The graph is built from a config at compile time: image tags, parallelism, GPU resources, node selector,
tolerations, retries, the S3 credentials Secret and the ConfigMap with the service endpoints all come from its
``run`` section (KFP fixes parallelism and pod settings in the compiled spec). What users change per run is a
pipeline parameter: ``preset``, ``config_yaml`` (a config file's text), ``overrides`` (``key=value`` lines),
``n_shadows``, ``dataset``, ``model`` and ``run_name``; the prepare task resolves them into one config that
every later task receives as JSON.

The shadow loop lives in a nested pipeline that takes the prepare outputs as its inputs: kfp 2.17's local
runner replaces, inside a ParallelFor, any task-output parameter coming from outside the loop by the loop item.
"""

import math
import re

from kfp import dsl, kubernetes
from kfp.dsl import Dataset, Input, Model

from memaudit.components import aggregate, finetune, plot, prepare, score, split
from memaudit.config import ExperimentConfig
from memaudit.tasks.runtime import CA_BUNDLE_ENV, SEAL_KEY_ENV

PIPELINE_NAME = "memaudit-audit"
S3_SECRET_KEYS = ("MEMAUDIT_S3_ACCESS_KEY", "MEMAUDIT_S3_SECRET_KEY")
TRACKING_SECRET_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
CA_DIR = "/etc/memaudit/ca"  # where run.ca_bundle_config_map is mounted (its key ca.crt)
HF_CACHE = "/cache/huggingface"  # HF_HOME of both runtime images (images/*/Dockerfile)
RUN_AS = 10001  # uid and gid of the images' memaudit user (images/*/Dockerfile)
MLFLOW_CLIENT_LABEL = ("memaudit.io/mlflow-client", "true")  # the chart's NetworkPolicy admits these pods to MLflow
ENV_CONFIG_KEYS = ("MEMAUDIT_S3_ENDPOINT", "MEMAUDIT_S3_BUCKET", "MEMAUDIT_S3_SECURE", "MLFLOW_TRACKING_URI")


def model_cache_size(model_name: str) -> str:
    """A GPU pod's HF cache size: bf16 weights (2 bytes a parameter, from the ``7B`` in the name) × 1.5 + 10 GiB."""
    match = re.search(r"(\d+(?:\.\d+)?)[bB](?![a-zA-Z])", model_name)
    return f"{math.ceil(float(match[1]) * 2 * 1.5) + 10}Gi" if match else "20Gi"


def common_settings(task: dsl.PipelineTask, cfg: ExperimentConfig, name: str, *, gpu: bool) -> None:
    """Resources and limits, a deadline, a non-root security context, credentials and endpoints every task gets;
    GPU scheduling for the GPU stages."""
    run = cfg.run
    resources = run.gpu_resources if gpu else run.cpu_resources
    task.set_display_name(name)
    task.set_caching_options(enable_caching=False)  # the object store decides what to skip, not the KFP cache
    task.set_cpu_request(resources.cpu).set_memory_request(resources.memory)
    task.set_cpu_limit(resources.cpu_limit or resources.cpu).set_memory_limit(
        resources.memory_limit or resources.memory
    )
    kubernetes.set_timeout(task, run.timeout_s)
    kubernetes.set_security_context(task, run_as_user=RUN_AS, run_as_group=RUN_AS, run_as_non_root=True)
    kubernetes.add_pod_label(task, *MLFLOW_CLIENT_LABEL)
    kubernetes.use_secret_as_env(task, run.s3_secret, {key: key for key in S3_SECRET_KEYS})
    tracking_login = {key: key for key in TRACKING_SECRET_KEYS}
    kubernetes.use_secret_as_env(task, run.tracking_secret, tracking_login, optional=True)  # never a parameter
    kubernetes.use_secret_as_env(task, run.seal_secret, {SEAL_KEY_ENV: SEAL_KEY_ENV}, optional=True)
    kubernetes.use_config_map_as_env(task, run.env_config_map, {key: key for key in ENV_CONFIG_KEYS}, optional=True)
    if run.ca_bundle_config_map:
        kubernetes.use_config_map_as_volume(task, run.ca_bundle_config_map, mount_path=CA_DIR)
        task.set_env_variable(CA_BUNDLE_ENV, f"{CA_DIR}/ca.crt")
    if not gpu:
        return
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
    if run.retries:
        task.set_retry(num_retries=run.retries, backoff_duration=f"{run.retry_backoff_s}s", backoff_factor=2.0)
    kubernetes.use_secret_as_env(task, run.hf_token_secret, {"HF_TOKEN": "HF_TOKEN"}, optional=True)
    for key, value in run.gpu_node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for tol in run.gpu_tolerations:
        kubernetes.add_toleration(task, key=tol.key, operator=tol.operator, value=tol.value, effect=tol.effect)
    _model_cache(task, cfg)


def _model_cache(task: dsl.PipelineTask, cfg: ExperimentConfig) -> None:
    """The HF cache of a GPU task: a shared PVC, or a volume of the pod's own sized for the model's weights."""
    if cfg.run.model_cache_pvc:
        kubernetes.mount_pvc(task, pvc_name=cfg.run.model_cache_pvc, mount_path=HF_CACHE)
        return
    size = cfg.run.ephemeral_storage or model_cache_size(cfg.model.name)
    kubernetes.add_ephemeral_volume(
        task, volume_name="hf-cache", mount_path=HF_CACHE, access_modes=["ReadWriteOnce"], size=size
    )


def prepare_step(cfg: ExperimentConfig, parameters: dict) -> dsl.PipelineTask:
    """The prepare task of a pipeline (it may download a gated dataset or model: the HF token reaches it)."""
    prep = prepare.component(cfg.run.image_cpu)(**parameters)
    common_settings(prep, cfg, "prepare", gpu=False)
    kubernetes.use_secret_as_env(prep, cfg.run.hf_token_secret, {"HF_TOKEN": "HF_TOKEN"}, optional=True)
    return prep


def _shadows_pipeline(cfg: ExperimentConfig):
    """The nested pipeline of the shadow loop: ParallelFor(shadow ids) { finetune → score }, its score URIs out."""
    finetune_op, score_op = finetune.component(cfg.run.image_gpu), score.component(cfg.run.image_gpu)

    @dsl.pipeline(name="memaudit-shadows", description="Fine-tune and score every shadow model.")
    def shadows(
        shadow_ids: list[int],
        config_json: str,
        parent_run_id: str,
        pool: Input[Dataset],
        member: Input[Dataset],
        base_model: Input[Model],
    ) -> list[str]:
        with dsl.ParallelFor(shadow_ids, parallelism=cfg.run.parallelism) as shadow:
            inputs = {"config_json": config_json, "shadow": shadow, "pool": pool, "member": member}
            train = finetune_op(**inputs, parent_run_id=parent_run_id, base_model=base_model)
            common_settings(train, cfg, "finetune", gpu=True)
            scored = score_op(**inputs, base_model=base_model, checkpoints=train.outputs["checkpoints"])
            common_settings(scored, cfg, "score", gpu=True)
        return dsl.Collected(scored.outputs["Output"])

    return shadows


def _graph(cfg: ExperimentConfig, shadows, parameters: dict) -> None:
    """prepare → split → shadows → aggregate → plot, from the run's parameters (called while compiling)."""
    cpu = cfg.run.image_cpu
    prep = prepare_step(cfg, parameters)
    run_inputs = {"config_json": prep.outputs["config_json"], "parent_run_id": prep.outputs["parent_run_id"]}
    members = split.component(cpu)(config_json=run_inputs["config_json"], pool=prep.outputs["pool"])
    common_settings(members, cfg, "split", gpu=False)
    fan_out = shadows(
        shadow_ids=prep.outputs["shadow_ids"],
        **run_inputs,
        pool=prep.outputs["pool"],
        member=members.outputs["member"],
        base_model=prep.outputs["base_model"],
    )
    fan_out.set_display_name("shadows")
    agg = aggregate.component(cpu)(**run_inputs, score_uris=fan_out.output, pool=prep.outputs["pool"])
    common_settings(agg, cfg, "aggregate", gpu=False)
    report = plot.component(cpu)(
        **run_inputs,
        aggregate_uri=agg.outputs["Output"],
        samples=agg.outputs["samples"],
        summary=agg.outputs["summary"],
    )
    common_settings(report, cfg, "plot", gpu=False)


def build_pipeline(cfg: ExperimentConfig, *, config_yaml: str = "", overrides: str = ""):
    """The pipeline function for ``cfg``; ``config_yaml``/``overrides`` become the parameters' defaults."""
    shadows = _shadows_pipeline(cfg)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        pipeline_root=cfg.run.pipeline_root or None,
        description="Which training samples did a fine-tuned LLM memorize (LiRA on shadow models), and does "
        "P-SMI at an early checkpoint predict them? Dentan et al., arXiv 2409.18858.",
    )
    def audit(
        preset: str = cfg.preset or "",
        config_yaml: str = config_yaml,
        overrides: str = overrides,
        n_shadows: int = 0,
        dataset: str = "",
        model: str = "",
        run_name: str = "",
    ):
        parameters = {"preset": preset, "config_yaml": config_yaml, "overrides": overrides, "n_shadows": n_shadows}
        _graph(cfg, shadows, {**parameters, "dataset": dataset, "model": model, "run_name": run_name})

    return audit
