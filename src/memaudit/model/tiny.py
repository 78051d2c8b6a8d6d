"""The tiny Llama of the demo and the tests (``model.name = "tiny-llama"``), built on this machine.

:func:`ensure_base_model` builds it from a word-level tokenizer trained on a corpus, pre-trains it briefly as a
causal LM and caches it in a folder keyed by the digest of its settings and corpus. That folder is then loaded by
:func:`memaudit.model.loading.load_base_model` / ``load_tokenizer`` like any other local model, so the demo and the
tests exercise the users' loading code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from memaudit.config import ModelConfig, TinyModelConfig
from memaudit.config.presets import TINY_MODEL
from memaudit.errors import MemauditError
from memaudit.model.tokenization import left_pad
from memaudit.store.seal import folder_mismatches, seal_folder

log = logging.getLogger(__name__)
BUILT_MARKER = "MEMAUDIT_BUILT"  # written last into a built tiny-model folder
_TINY_FORMAT = 1  # bump when the builder changes what it produces
_PRETRAIN_BATCH = 16
_PRETRAIN_MAX_TOKENS = 256


SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def build_word_tokenizer(texts: Sequence[str], min_frequency: int = 1):
    """A word-level tokenizer trained on ``texts`` (tiny test and demo models).

    Words, single punctuation runs and each newline are tokens; spaces are dropped. ``add_special_tokens``
    prepends BOS. Returns a ``transformers.PreTrainedTokenizerFast`` (save it with ``save_pretrained``).
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|[^\w\s]+|\n"), behavior="removed", invert=True)
    specials = list(SPECIAL_TOKENS.values())
    trainer = trainers.WordLevelTrainer(special_tokens=specials, min_frequency=min_frequency)
    tok.train_from_iterator(texts, trainer=trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def build_tiny_model(tiny_cfg: TinyModelConfig, tokenizer, out_dir: str | Path):
    """A randomly initialised (seeded) Llama from ``tiny_cfg`` and the tokenizer's vocabulary, saved with
    its tokenizer to ``out_dir``; returns the model (fp32, CPU)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if tiny_cfg.hidden_size % tiny_cfg.num_attention_heads:
        raise MemauditError(
            f"tiny model hidden_size {tiny_cfg.hidden_size} is not a multiple of its "
            f"{tiny_cfg.num_attention_heads} attention heads",
            "change model.tiny.hidden_size or model.tiny.num_attention_heads",
        )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=tiny_cfg.hidden_size,
        intermediate_size=tiny_cfg.intermediate_size,
        num_hidden_layers=tiny_cfg.num_hidden_layers,
        num_attention_heads=tiny_cfg.num_attention_heads,
        num_key_value_heads=tiny_cfg.num_attention_heads,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        use_cache=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tiny_cfg.seed)
        model = LlamaForCausalLM(config)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model


def pretrain_causal_lm(model, tokenizer, texts: Sequence[str], steps: int, lr: float, seed: int) -> list[float]:
    """Brief causal-LM pre-training on ``texts`` (seeded batches of 16, AdamW, warmup + linear decay,
    pad positions masked); returns the loss per step."""
    eos = tokenizer.eos_token_id
    rows = [
        np.asarray([*ids, eos][:_PRETRAIN_MAX_TOKENS], dtype=np.int64) for ids in tokenizer(list(texts))["input_ids"]
    ]
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    losses: list[float] = []
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(steps):
            pick = rng.choice(len(rows), size=min(_PRETRAIN_BATCH, len(rows)), replace=False)
            batch = left_pad([rows[i] for i in pick], tokenizer.pad_token_id)
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            loss = model(**batch, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
    model.eval()
    return losses


def tiny_model_digest(tiny_cfg: TinyModelConfig, corpus_texts: Sequence[str]) -> str:
    """16 hex digits over the builder version, the tiny settings and the corpus."""
    h = hashlib.sha256(json.dumps({"format": _TINY_FORMAT, "tiny": tiny_cfg.model_dump()}, sort_keys=True).encode())
    for text in corpus_texts:
        h.update(hashlib.sha256(text.encode()).digest())
    return h.hexdigest()[:16]


def ensure_base_model(model_cfg: ModelConfig, corpus_texts: Sequence[str], cache_dir: str | Path) -> Path:
    """The folder of the tiny model for ``model_cfg`` and the corpus: reused when already built, else built.

    Builds in a temporary folder next to the final one, seals it (``COMPLETE``: every file's sha256) and renames
    it into place, so a killed build leaves nothing half-written and two processes racing for it both end up using
    one complete folder. A cached folder is used only when every checksum matches; a damaged one is moved aside
    and the model built again.
    """
    if model_cfg.name != TINY_MODEL or model_cfg.tiny is None:
        raise MemauditError(
            f"model {model_cfg.name!r} is not built locally (only 'tiny-llama' is)",
            "load it with load_base_model (Hub id or model.local_path)",
        )
    texts = [t for t in corpus_texts if t and t.strip()]
    if not texts:
        raise MemauditError("the corpus for the tiny model is empty", "pass the pool's texts (prompts and labels)")
    cache_dir = Path(cache_dir)
    final = cache_dir / f"tiny-llama-{tiny_model_digest(model_cfg.tiny, texts)}"
    if final.exists():
        damaged = folder_mismatches(final)
        if not damaged:
            return final
        aside = cache_dir / f".damaged-{final.name}-{time.time_ns()}"
        log.warning("cached tiny model %s fails its checksums (%s): moved to %s, building it again",
                    final, ", ".join(damaged[:3]), aside)  # fmt: skip
        os.rename(final, aside)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{final.name}."))
    try:
        tokenizer = build_word_tokenizer(texts)
        model = build_tiny_model(model_cfg.tiny, tokenizer, tmp)
        tiny = model_cfg.tiny
        losses = pretrain_causal_lm(model, tokenizer, texts, tiny.pretrain_steps, tiny.pretrain_lr, tiny.seed)
        model.save_pretrained(tmp)
        info = {"digest": final.name, "n_texts": len(texts), "pretrain_loss": _loss_summary(losses)}
        (tmp / BUILT_MARKER).write_text(json.dumps(info, indent=1))
        seal_folder(tmp)  # verified on every reuse, like a sealed artifact of the store
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / BUILT_MARKER).is_file():  # a stale, incomplete folder: replace it
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _loss_summary(losses: list[float]) -> dict[str, float]:
    if not losses:
        return {}
    k = max(1, len(losses) // 10)
    return {"first": float(np.mean(losses[:k])), "last": float(np.mean(losses[-k:]))}
