"""Compile memaudit's pipelines (the audit, the early warning) to KFP IR YAML (and, optionally, Kubernetes-native
Pipeline resources)."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kfp import compiler
from kfp.compiler.compiler_utils import KubernetesManifestOptions

from memaudit.config import ExperimentConfig
from memaudit.errors import MemauditError
from memaudit.pipelines.audit import PIPELINE_NAME, build_pipeline
from memaudit.pipelines.predict import PREDICT_PIPELINE_NAME, build_predict_pipeline


@dataclass(frozen=True)
class PipelineKind:
    """One of memaudit's pipelines: its KFP name, how it is built from a config, its committed compiled file."""

    name: str
    build: Callable
    compiled: Path
    description: str


_COMPILED_DIR = Path(__file__).parent / "compiled"
PIPELINES = {
    "audit": PipelineKind(PIPELINE_NAME, build_pipeline, _COMPILED_DIR / "audit.yaml", "memaudit audit pipeline"),
    "predict": PipelineKind(
        PREDICT_PIPELINE_NAME, build_predict_pipeline, _COMPILED_DIR / "predict.yaml", "memaudit early warning"
    ),
}
COMPILED = PIPELINES["audit"].compiled


def pipeline_kind(name: str) -> PipelineKind:
    if name not in PIPELINES:
        raise MemauditError(f"unknown pipeline {name!r}", f"use one of: {', '.join(PIPELINES)}")
    return PIPELINES[name]


def compile_pipeline(
    cfg: ExperimentConfig,
    output: str | Path | None = None,
    *,
    pipeline: str = "audit",
    config_yaml: str = "",
    overrides: str = "",
    kubernetes_manifest: str | Path | None = None,
    namespace: str | None = None,
) -> list[Path]:
    """Write the IR YAML of ``pipeline`` to ``output`` (default: its committed file), and the Pipeline/
    PipelineVersion manifest when asked; returns the paths written."""
    kind = pipeline_kind(pipeline)
    function = kind.build(cfg, config_yaml=config_yaml, overrides=overrides)
    output = Path(output or kind.compiled)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(function, str(output))
    written = [output]
    if kubernetes_manifest is not None:
        manifest = Path(kubernetes_manifest)
        manifest.parent.mkdir(parents=True, exist_ok=True)
        options = KubernetesManifestOptions(
            pipeline_name=kind.name,
            pipeline_version_name=f"{kind.name}-{cfg.fingerprint()}",
            namespace=namespace,
            include_pipeline_manifest=True,
        )
        compiler.Compiler().compile(
            function, str(manifest), kubernetes_manifest_options=options, kubernetes_manifest_format=True
        )
        written.append(manifest)
    return written
