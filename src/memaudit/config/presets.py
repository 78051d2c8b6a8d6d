"""The presets: the CPU demo and the paper's five setups (docs/method.md §3), as overrides of the config defaults.

The paper presets share ``PAPER_COMMON`` (LoRA r 8 / α 16 / dropout 0.5, AdamW 2.5e-5 with 5 warmup steps,
batch 2 × accumulation 2, 10 epochs, 100 shadows, target 0); each adds its dataset cap, model and layers. The
layers are the authors' ``all_layers`` (docs/method.md §3.1), so the best layer is searched over every one of them
(§6.1), and the off-the-shelf rule uses the last of them (Gemma: 27, not the final norm's 28).
"""

from __future__ import annotations

from typing import Any

TINY_MODEL = "tiny-llama"  # model.name of the small Llama built on this machine (memaudit.model.tiny)
PAPER_LAYERS_32 = list(range(1, 33))  # all_layers of Mistral-7B and Llama-2-7B
PAPER_LAYERS_GEMMA = list(range(1, 28))  # Gemma-7B's all_layers: 1..27, its layer 28 (after the final norm) left out
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]

PAPER_COMMON: dict[str, Any] = {
    "model": {"dtype": "bfloat16", "layers": PAPER_LAYERS_32},
    "lora": {"r": 8, "alpha": 16, "dropout": 0.5},
    "training": {"learning_rate": 2.5e-5, "warmup_steps": 5, "batch_size": 2, "grad_accum": 2, "epochs": 10},
    "shadows": {"n_shadows": 100, "target": 0, "scheme": "paper"},
    "run": {
        "parallelism": 8,
        "gpu_node_selector": {"memaudit.io/pool": "gpu"},
        "gpu_tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
}

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "demo": (
        "CPU, minutes: a tiny Llama built and pre-trained locally, the synthetic dataset, 16 shadows",
        {
            # Tuned with benchmarks/demo_tuning.py. The tiny model and the synthetic generator take their defaults
            # (a preset cannot set 'tiny'/'synthetic' sections: they would break --set model.name/dataset.name):
            # 2 layers, pre-trained 2000 steps on texts answered with the category name (corpus_answer "text").
            "dataset": {"name": "synthetic", "label_noise": 0.08},
            "model": {"name": TINY_MODEL, "dtype": "float32", "layers": [1, 2]},
            "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
            "training": {
                "learning_rate": 3e-3,
                "warmup_steps": 5,
                "batch_size": 8,
                "grad_accum": 1,
                "epochs": 14,
                "max_len": 64,
            },
            "checkpoints": {"per_epoch_in_first": 5, "every_epochs": 1},
            "scoring": {"batch_size": 128, "psmi_directions": 500, "mahalanobis_components": 16},
            "shadows": {"n_shadows": 16, "target": 0, "scheme": "paper"},
            "evaluation": {"lira_mode": "global"},
            "run": {"parallelism": 2},
        },
    ),
    "arc-mistral": (
        "paper: ARC-Challenge (2000 samples) on Mistral-7B, 100 shadows, GPU",
        {
            "dataset": {"name": "arc", "max_train_rows": 1078},
            "model": {"name": "mistralai/Mistral-7B-v0.1"},
            "scoring": {"batch_size": 24},
        },
    ),
    "ethics-mistral": (
        "paper: ETHICS commonsense (15880 samples) on Mistral-7B, 100 shadows, GPU",
        {
            "dataset": {"name": "ethics", "max_train_rows": 13901},
            "model": {"name": "mistralai/Mistral-7B-v0.1"},
            "scoring": {"batch_size": 24},
        },
    ),
    "mmlu-mistral": (
        "paper: MMLU auxiliary_train (30000 samples) on Mistral-7B, 100 shadows, GPU",
        {
            "dataset": {"name": "mmlu", "max_train_rows": 33750},
            "model": {"name": "mistralai/Mistral-7B-v0.1"},
            "scoring": {"batch_size": 24},
        },
    ),
    "mmlu-llama": (
        "paper: MMLU auxiliary_train (30000 samples) on Llama-2-7B, 100 shadows, GPU",
        {
            "dataset": {"name": "mmlu", "max_train_rows": 33750},
            "model": {"name": "meta-llama/Llama-2-7b-hf"},
            "scoring": {"batch_size": 24},
        },
    ),
    "mmlu-gemma": (
        "paper: MMLU auxiliary_train (30000 samples) on Gemma-7B, 100 shadows, GPU",
        {
            "dataset": {"name": "mmlu", "max_train_rows": 33750},
            "model": {"name": "google/gemma-7b", "layers": PAPER_LAYERS_GEMMA},
            "evaluation": {"off_the_shelf_layer": PAPER_LAYERS_GEMMA[-1]},
            "scoring": {"batch_size": 16},
        },
    ),
}
