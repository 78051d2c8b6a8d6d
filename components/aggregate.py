"""aggregate (CPU): LiRA ground truth, predictors and their evaluation from all score files."""

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Output


def aggregate(
    config_json: str,
    parent_run_id: str,
    score_uris: list[str],
    pool: Input[Dataset],
    samples: Output[Dataset],
    summary: Output[Artifact],
    metrics: Output[Metrics],
    roc: Output[ClassificationMetrics],
) -> str:
    """Write samples.parquet and summary.json; log headline metrics and the target's P-SMI ROC for the KFP UI."""
    from memaudit.components.values import downsample_curve, kfp_metrics
    from memaudit.tasks.aggregate import aggregate_task

    result = aggregate_task(
        config_json=config_json,
        parent_run_id=parent_run_id,
        score_uris=score_uris,
        pool_path=pool.path,
        samples_path=samples.path,
        summary_path=summary.path,
    )
    for name, value in kfp_metrics(result.metrics).items():
        metrics.log_metric(name, value)
    roc.log_roc_curve(*downsample_curve(result.roc_fpr, result.roc_tpr, result.roc_threshold))
    return result.uri


def component(image: str):
    return dsl.component(aggregate, base_image=image, install_kfp_package=False)
