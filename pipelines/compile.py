"""Compile the audit pipeline to KFP IR YAML (and, optionally, Kubernetes-native Pipeline resources)."""

from pathlib import Path

from kfp import compiler
from kfp.compiler.compiler_utils import KubernetesManifestOptions

from memaudit.config import ExperimentConfig
from memaudit.pipelines.audit import PIPELINE_NAME, build_pipeline

COMPILED = Path(__file__).parent / "compiled" / "audit.yaml"


def compile_pipeline(
    cfg: ExperimentConfig,
    output: str | Path = COMPILED,
    *,
    config_yaml: str = "",
    overrides: str = "",
    kubernetes_manifest: str | Path | None = None,
    namespace: str | None = None,
) -> list[Path]:
    """Write the IR YAML to ``output`` (and the Pipeline/PipelineVersion manifest); returns the paths written."""
    pipeline = build_pipeline(cfg, config_yaml=config_yaml, overrides=overrides)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(output))
    written = [output]
    if kubernetes_manifest is not None:
        manifest = Path(kubernetes_manifest)
        manifest.parent.mkdir(parents=True, exist_ok=True)
        options = KubernetesManifestOptions(
            pipeline_name=PIPELINE_NAME,
            pipeline_version_name=f"{PIPELINE_NAME}-{cfg.fingerprint()}",
            namespace=namespace,
            include_pipeline_manifest=True,
        )
        compiler.Compiler().compile(
            pipeline, str(manifest), kubernetes_manifest_options=options, kubernetes_manifest_format=True
        )
        written.append(manifest)
    return written
