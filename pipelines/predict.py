"""The early-warning pipeline: prepare → predict (one GPU task), from the same components as the audit.

Its parameters are the audit's (``preset``, ``config_yaml``, ``overrides``, ``dataset``, ``model``, ``run_name``)
and the prediction's: ``members_of`` (a shadow's half instead of the whole training set), ``at_step`` (force c_pred),
``layer`` and ``layer_from`` (an audit's summary.json, e.g. an s3:// aggregate prefix); -1 / "" leave them unset.
"""

from kfp import dsl

from memaudit.components import predict
from memaudit.config import ExperimentConfig
from memaudit.pipelines.audit import common_settings, prepare_step

PREDICT_PIPELINE_NAME = "memaudit-predict"


def build_predict_pipeline(cfg: ExperimentConfig, *, config_yaml: str = "", overrides: str = ""):
    """The pipeline function for ``cfg``; ``config_yaml``/``overrides`` become the parameters' defaults."""

    @dsl.pipeline(
        name=PREDICT_PIPELINE_NAME,
        pipeline_root=cfg.run.pipeline_root or None,
        description="Which training samples will a fine-tune memorize? One model trained up to the prediction "
        "checkpoint, its samples ranked by P-SMI (Dentan et al., arXiv 2409.18858), without shadow models.",
    )
    def early_warning(
        preset: str = cfg.preset or "",
        config_yaml: str = config_yaml,
        overrides: str = overrides,
        dataset: str = "",
        model: str = "",
        run_name: str = "",
        members_of: int = -1,
        at_step: int = -1,
        layer: int = -1,
        layer_from: str = "",
    ):
        parameters = {"preset": preset, "config_yaml": config_yaml, "overrides": overrides, "n_shadows": 0}
        prep = prepare_step(cfg, {**parameters, "dataset": dataset, "model": model, "run_name": run_name})
        options = {"members_of": members_of, "at_step": at_step, "layer": layer, "layer_from": layer_from}
        task = predict.component(cfg.run.image_gpu)(
            config_json=prep.outputs["config_json"],
            parent_run_id=prep.outputs["parent_run_id"],
            pool=prep.outputs["pool"],
            base_model=prep.outputs["base_model"],
            **options,
        )
        common_settings(task, cfg, "predict", gpu=True)

    return early_warning
