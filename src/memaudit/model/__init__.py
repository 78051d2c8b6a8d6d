"""The base model: loading (dtype, 4-bit), the tiny demo model, LoRA, tokenization and the forward pass."""
