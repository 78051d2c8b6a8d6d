"""A small demo-like config for the task and pipeline tests: synthetic data, a 2-layer tiny Llama, 3 shadows."""

from memaudit.config import load_config

SMALL = [
    "dataset.synthetic.n_samples=150",
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.num_hidden_layers=2",
    "model.tiny.num_attention_heads=2",
    "model.tiny.pretrain_steps=20",
    "model.layers=[1,2]",
    "training.epochs=2",
    "training.batch_size=8",
    "shadows.n_shadows=3",
    "scoring.psmi_directions=64",
    "scoring.mahalanobis_components=4",
    "run.parallelism=2",
]


def small_config(*overrides: str):
    return load_config(preset="demo", overrides=[*SMALL, *overrides])
