"""The shapes of the models memaudit audits, enough to count LoRA parameters and FLOPs without loading them."""

from __future__ import annotations

from dataclasses import dataclass

from memaudit.config import TINY_MODEL, ModelConfig
from memaudit.config.families import FAMILIES
from memaudit.errors import MemauditError

TINY_VOCAB = 343  # the demo tokenizer's vocabulary (model/tiny.py builds it from the synthetic words)


@dataclass(frozen=True)
class ModelShape:
    """A decoder's sizes: parameters, hidden width, blocks, MLP width, attention output widths, vocabulary."""

    params: int
    hidden: int
    blocks: int
    intermediate: int
    q_out: int
    kv_out: int
    vocab: int

    def lora_params(self, targets: list[str], r: int) -> int:
        """Parameters of a rank-``r`` LoRA adapter on ``targets``: r × (in + out) per wrapped matrix."""
        h, i = self.hidden, self.intermediate
        per_block = {
            "q_proj": (h, self.q_out), "k_proj": (h, self.kv_out), "v_proj": (h, self.kv_out),
            "o_proj": (self.q_out, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        }  # fmt: skip
        total = sum(r * sum(per_block[t]) for t in targets if t in per_block) * self.blocks
        return total + (r * (h + self.vocab) if "lm_head" in targets else 0)

    def layers(self, layers: list[int] | str) -> list[int]:
        """The hidden-state layers a config names (``all``: every block, 1..L)."""
        return list(range(1, self.blocks + 1)) if layers == "all" else list(layers)


SHAPES = {  # from each model's config.json
    FAMILIES["mistral"].hub_id: ModelShape(7_241_732_096, 4096, 32, 14336, 4096, 1024, 32000),
    FAMILIES["llama"].hub_id: ModelShape(6_738_415_616, 4096, 32, 11008, 4096, 4096, 32000),
    FAMILIES["gemma"].hub_id: ModelShape(8_537_680_896, 3072, 28, 24576, 4096, 4096, 256000),
    FAMILIES["gemma2"].hub_id: ModelShape(2_614_341_888, 2304, 26, 9216, 2048, 1024, 256000),
    "HuggingFaceTB/SmolLM2-135M-Instruct": ModelShape(134_515_008, 576, 30, 1536, 576, 192, 49152),
}


def _tiny(model: ModelConfig) -> ModelShape:
    t = model.tiny
    h, i, n = t.hidden_size, t.intermediate_size, t.num_hidden_layers
    params = n * (4 * h * h + 3 * h * i + 2 * h) + 2 * TINY_VOCAB * h + h
    return ModelShape(params, h, n, i, h, h, TINY_VOCAB)


def model_shape(model: ModelConfig) -> ModelShape:
    """The shape of the configured model, or a one-line error naming the known ones."""
    if model.name == TINY_MODEL:
        return _tiny(model)
    if model.name not in SHAPES:
        raise MemauditError(
            f"memaudit does not know the size of {model.name}",
            f"estimates cover {', '.join([TINY_MODEL, *SHAPES])}",
        )
    return SHAPES[model.name]
