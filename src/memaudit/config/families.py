"""The model families of the paper (docs/method.md §3.1): what each real model has and which of its layers and
modules the paper uses. The paper presets take their model, layers and LoRA targets from here.

Layer ℓ is ``hidden_states[ℓ]`` (L + 1 entries: 0 the embeddings, 1..L − 1 the block outputs, L after the final
norm). ``tests/model/test_families.py`` checks every row against the ``transformers`` config class of its model
type and runs a scaled-down random model of each family through finetune and score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]


@dataclass(frozen=True)
class ModelFamily:
    """One family: its model on the Hub and the paper's choices for it."""

    hub_id: str  # the model the paper (or, for a family outside the paper, memaudit's tests) names
    model_type: str  # transformers' ``config.model_type``
    n_layers: int  # decoder blocks L of that model
    final_norm_layer: bool  # whether ``all_layers`` ends with hidden_states[L] (Gemma-7B: the authors stop at L − 1)
    in_paper: bool = True
    lora_targets: tuple[str, ...] = tuple(LORA_TARGETS)

    def all_layers(self, n_layers: int | None = None) -> list[int]:
        """The authors' ``all_layers`` for this family's model, or for a model of ``n_layers`` blocks."""
        n = self.n_layers if n_layers is None else n_layers
        return list(range(1, n + 1 if self.final_norm_layer else n))

    @property
    def off_the_shelf_layer(self) -> int:
        """The layer of the off-the-shelf rule P-SMI < 0: the last of ``all_layers``."""
        return self.all_layers()[-1]

    def preset_settings(self) -> dict[str, Any]:
        """A paper preset's model, layers and LoRA targets (the off-the-shelf layer is pinned only where it is
        not the final-norm layer, so ``model.layers=all`` keeps the paper's)."""
        settings: dict[str, Any] = {
            "model": {"name": self.hub_id, "layers": self.all_layers()},
            "lora": {"target_modules": list(self.lora_targets)},
        }
        if not self.final_norm_layer:
            settings["evaluation"] = {"off_the_shelf_layer": self.off_the_shelf_layer}
        return settings


FAMILIES: dict[str, ModelFamily] = {
    "mistral": ModelFamily("mistralai/Mistral-7B-v0.1", "mistral", 32, final_norm_layer=True),
    "llama": ModelFamily("meta-llama/Llama-2-7b-hf", "llama", 32, final_norm_layer=True),
    "gemma": ModelFamily("google/gemma-7b", "gemma", 28, final_norm_layer=False),
    # Not in the paper: tested so that an audit of Gemma-2 runs the same code; its layers are all of 1..L.
    "gemma2": ModelFamily("google/gemma-2-2b", "gemma2", 26, final_norm_layer=True, in_paper=False),
}
