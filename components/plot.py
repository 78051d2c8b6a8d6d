"""plot (CPU): figures and the self-contained HTML report; closes the MLflow parent run."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Output


def plot(
    config_json: str,
    parent_run_id: str,
    aggregate_uri: str,
    samples: Input[Dataset],
    summary: Input[Artifact],
    report: Output[HTML],
    headline: Output[Markdown],
) -> str:
    """Render the report (HTML with embedded PNGs) and its headline (Markdown) for the KFP run page; returns the
    report's store URI."""
    from memaudit.tasks.plot import plot_task

    return plot_task(
        config_json=config_json,
        parent_run_id=parent_run_id,
        aggregate_uri=aggregate_uri,
        samples_path=samples.path,
        summary_path=summary.path,
        html_path=report.path,
        markdown_path=headline.path,
    )


def component(image: str):
    return dsl.component(plot, base_image=image, install_kfp_package=False)
