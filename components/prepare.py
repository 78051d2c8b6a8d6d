"""prepare: resolve the config, build the pool (and the demo's tiny base model), open the MLflow parent run."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Model, Output


def prepare(
    preset: str,
    config_yaml: str,
    overrides: str,
    n_shadows: int,
    dataset: str,
    model: str,
    run_name: str,
    pool: Output[Dataset],
    base_model: Output[Model],
) -> NamedTuple(
    "PrepareOutputs", [("config_json", str), ("fingerprint", str), ("parent_run_id", str), ("shadow_ids", list[int])]
):
    """Resolve the config from the run's parameters, write pool.parquet and the base model, start tracking."""
    from collections import namedtuple

    from memaudit.components.values import kfp_metadata
    from memaudit.tasks.prepare import prepare_task

    result = prepare_task(
        preset=preset,
        config_yaml=config_yaml,
        overrides=overrides,
        n_shadows=n_shadows,
        dataset=dataset,
        model=model,
        run_name=run_name,
        pool_path=pool.path,
        base_model_path=base_model.path,
    )
    pool.metadata.update(kfp_metadata(result.pool_metadata))
    base_model.metadata.update(kfp_metadata(result.model_metadata))
    outputs = namedtuple("PrepareOutputs", ["config_json", "fingerprint", "parent_run_id", "shadow_ids"])
    return outputs(result.config_json, result.fingerprint, result.parent_run_id, result.shadow_ids)


def component(image: str):
    return dsl.component(prepare, base_image=image, install_kfp_package=False)
