"""finetune (GPU): one shadow's LoRA fine-tune; resumes from and uploads to the object store."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output


def finetune(
    config_json: str,
    shadow: int,
    parent_run_id: str,
    pool: Input[Dataset],
    member: Input[Dataset],
    base_model: Input[Model],
    checkpoints: Output[Model],
) -> str:
    """Train shadow ``shadow`` (skipped when its checkpoints are complete); returns their store URI."""
    from memaudit.components.values import kfp_metadata
    from memaudit.tasks.finetune import finetune_task

    result = finetune_task(
        config_json=config_json,
        shadow=shadow,
        parent_run_id=parent_run_id,
        pool_path=pool.path,
        member_path=member.path,
        base_model_path=base_model.path,
        manifest_path=checkpoints.path,
    )
    checkpoints.metadata.update(kfp_metadata(result.metadata))
    return result.uri


def component(image: str):
    return dsl.component(finetune, base_image=image, install_kfp_package=False)
