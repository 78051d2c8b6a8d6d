"""split: the membership matrix member[S, N] of the shadow population."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output


def split(config_json: str, pool: Input[Dataset], member: Output[Dataset]):
    """Write member.npy (bool [S, N]) for the resolved config."""
    from memaudit.components.values import kfp_metadata
    from memaudit.tasks.split import split_task

    member.metadata.update(
        kfp_metadata(split_task(config_json=config_json, pool_path=pool.path, member_path=member.path))
    )


def component(image: str):
    return dsl.component(split, base_image=image, install_kfp_package=False)
