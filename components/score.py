"""score (GPU): forward values and P-SMI of one shadow at every checkpoint."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output


def score(
    config_json: str,
    shadow: int,
    pool: Input[Dataset],
    member: Input[Dataset],
    base_model: Input[Model],
    checkpoints: Input[Model],
    scores: Output[Dataset],
) -> str:
    """Write the shadow's score file (skipped when complete in the store); returns its store URI."""
    from memaudit.components.values import kfp_metadata
    from memaudit.tasks.score import score_task

    result = score_task(
        config_json=config_json,
        shadow=shadow,
        pool_path=pool.path,
        member_path=member.path,
        base_model_path=base_model.path,
        checkpoints_manifest=checkpoints.path,
        manifest_path=scores.path,
    )
    scores.metadata.update(kfp_metadata(result.metadata))
    return result.uri


def component(image: str):
    return dsl.component(score, base_image=image, install_kfp_package=False)
