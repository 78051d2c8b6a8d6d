"""predict (GPU): the early warning, one model fine-tuned up to c_pred and its training samples ranked by P-SMI."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output


def predict(
    config_json: str,
    parent_run_id: str,
    members_of: int,
    at_step: int,
    layer: int,
    layer_from: str,
    pool: Input[Dataset],
    base_model: Input[Model],
    prediction: Output[Dataset],
) -> str:
    """Write predictions.parquet and predict.json into ``prediction`` (reused when stored); returns their store URI."""
    from memaudit.components.values import kfp_metadata
    from memaudit.tasks.predict import PredictOptions, predict_task

    result = predict_task(
        config_json=config_json,
        parent_run_id=parent_run_id,
        pool_path=pool.path,
        base_model_path=base_model.path,
        output_path=prediction.path,
        options=PredictOptions(members_of=members_of, at_step=at_step, layer=layer, layer_from=layer_from),
    )
    prediction.metadata.update(kfp_metadata(result.metadata))
    return result.uri


def component(image: str):
    return dsl.component(predict, base_image=image, install_kfp_package=False)
