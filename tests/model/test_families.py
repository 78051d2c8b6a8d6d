"""The paper's model families without their 7B weights (docs/method.md §3.1).

Per family, the ``transformers`` config class of its model type scaled down to 2 blocks (hidden 64, 4 heads, 2 KV
heads where the family has grouped-query attention) with the family's real vocabulary size gets seeded random
weights and is saved in bf16 with a word tokenizer; memaudit then loads it as ``model.local_path`` under the
family's Hub id and runs its LoRA, forward, finetune and score code on it, in bf16 on the CPU.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer
from transformers import AutoModelForCausalLM
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from memaudit.config import load_config
from memaudit.config.families import FAMILIES, ModelFamily
from memaudit.config.presets import PRESETS
from memaudit.data.poolfile import train_pool
from memaudit.errors import MemauditError
from memaudit.model.forward import answer_forward
from memaudit.model.loading import load_base_model, load_tokenizer, num_layers, resolve_layers
from memaudit.model.lora import apply_lora, lora_parameter_count
from memaudit.model.tiny import build_word_tokenizer
from memaudit.model.tokenization import encode_frame
from memaudit.stages.aggregate import off_the_shelf_index
from memaudit.stages.finetune import finetune
from memaudit.stages.score import score_shadow
from memaudit.stages.scorefile import read_scores
from tests.support.toy_pool import (
    TOY_SETS,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    toy_corpus,
    toy_members,
    toy_pool,
)

SMALL = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "head_dim": 16}
ATTENTION, MLP = ("q_proj", "k_proj", "v_proj", "o_proj"), ("gate_proj", "up_proj", "down_proj")
PAPER_PRESETS = [name for name, (description, _) in PRESETS.items() if description.startswith("paper:")]
TRAINING_SETS = [s for s in TOY_SETS if not s.startswith("model.")] + ["scoring.mahalanobis_components=4"]
FAMILY_NAMES = [
    pytest.param(name, marks=pytest.mark.skipif(f.model_type not in CONFIG_MAPPING, reason="transformers lacks it"))
    for name, f in FAMILIES.items()
]


def _real_config(family: ModelFamily):
    """The defaults of the family's config class (the real model's shape, for the families tested here)."""
    return CONFIG_MAPPING[family.model_type]()


def _family_config(name: str, folder, *overrides: str):
    """The family's paper preset (a Mistral one for a family outside the paper) on the scaled model in ``folder``,
    with the toy training settings and the family's layers for 2 blocks."""
    family = FAMILIES[name]
    preset = next((p for p in PAPER_PRESETS if load_config(preset=p).model.name == family.hub_id), "arc-mistral")
    sets = [f"model.name={family.hub_id}", f"model.local_path={folder}", f"model.layers={family.all_layers(2)}"]
    return load_config(preset=preset, overrides=[*sets, *TRAINING_SETS, *overrides])


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def built(request, tmp_path_factory):
    """(family name, folder, pool): the family's 2-block random model and a word tokenizer, saved in bf16."""
    name, df = request.param, toy_pool(n_train=16, n_test=4)
    real = _real_config(FAMILIES[name])
    tokenizer = build_word_tokenizer(toy_corpus(df))
    kv_heads = 2 if real.num_key_value_heads < real.num_attention_heads else SMALL["num_attention_heads"]
    ids = {f"{t}_token_id": getattr(tokenizer, f"{t}_token_id") for t in ("bos", "eos", "pad")}
    config = CONFIG_MAPPING[real.model_type](**SMALL, num_key_value_heads=kv_heads, vocab_size=real.vocab_size, **ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    folder = tmp_path_factory.mktemp(name)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return name, folder, df


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_table_agrees_with_the_transformers_config_of_the_family(name):
    family, real = FAMILIES[name], _real_config(FAMILIES[name])
    assert real.model_type == family.model_type and real.num_hidden_layers == family.n_layers
    last = family.n_layers if family.final_norm_layer else family.n_layers - 1
    assert family.all_layers() == list(range(1, last + 1)) and family.off_the_shelf_layer == last
    if name == "gemma":  # the authors' range(1, 28): Gemma-7B's final-norm layer 28 is left out
        assert (family.n_layers, family.off_the_shelf_layer, family.final_norm_layer) == (28, 27, False)


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_paper_presets_take_model_layers_and_targets_from_their_family(preset):
    cfg = load_config(preset=preset)
    family = next(f for f in FAMILIES.values() if f.hub_id == cfg.model.name)
    assert family.in_paper and cfg.lora.target_modules == list(family.lora_targets)
    assert cfg.model.layers == family.all_layers() and "lm_head" in cfg.lora.target_modules
    for layers in (cfg.model.layers, "all"):  # --set model.layers=all keeps the paper's off-the-shelf layer
        computed = resolve_layers(layers, family.n_layers, family.hub_id)
        assert computed[off_the_shelf_index(cfg, computed)] == family.off_the_shelf_layer


def test_every_paper_family_has_a_preset():
    used = {load_config(preset=p).model.name for p in PAPER_PRESETS}
    assert used == {f.hub_id for f in FAMILIES.values() if f.in_paper}


def test_pickled_weights_are_refused_in_one_line(built, tmp_path):
    name, folder, _ = built
    model = load_base_model(_family_config(name, folder).model)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # a pickle only, as older Hub repos hold
    with pytest.raises(MemauditError, match="has no safetensors weights") as refused:
        load_base_model(_family_config(name, tmp_path).model)
    assert "safe_serialization=True" in refused.value.fix


def test_scaled_model_loads_in_bf16_with_the_real_vocabulary(built):
    name, folder, _ = built
    model = load_base_model(_family_config(name, folder).model)
    real = _real_config(FAMILIES[name])
    assert model.config.model_type == FAMILIES[name].model_type and num_layers(model) == 2
    assert model.lm_head.out_features == model.config.vocab_size == real.vocab_size
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    assert tied == real.tie_word_embeddings  # Gemma ties lm_head to the embeddings, Mistral and Llama-2 do not


def test_lora_wraps_exactly_the_family_targets(built):
    name, folder, _ = built
    cfg = _family_config(name, folder)
    base = load_base_model(cfg.model)
    n_params = lora_parameter_count(base, cfg.lora)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = apply_lora(base, cfg.lora, seed=0)
    assert [str(w.message) for w in caught] == []
    expected = {"lm_head"} | {
        f"model.layers.{i}.{part}.{t}" for i in range(2) for part, ts in (("self_attn", ATTENTION), ("mlp", MLP))
        for t in ts
    }  # fmt: skip
    assert {n.rsplit(".", 1)[-1] for n in expected} == set(FAMILIES[name].lora_targets)
    inner = model.base_model.model
    assert {n for n, m in inner.named_modules() if isinstance(m, LoraLayer)} == expected
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in trainable) and sum(p.numel() for p in trainable.values()) == n_params


def test_lm_head_lora_moves_the_logits_not_the_embeddings(built):
    """With tied embeddings (Gemma) the shared weight stays one frozen tensor and the LoRA acts on the output only."""
    name, folder, _ = built
    cfg = _family_config(name, folder)
    model = apply_lora(load_base_model(cfg.model), cfg.lora, seed=0)
    inner = model.base_model.model
    if _real_config(FAMILIES[name]).tie_word_embeddings:
        assert inner.lm_head.base_layer.weight is inner.model.embed_tokens.weight
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        before = model(input_ids=ids, output_hidden_states=True)
        inner.lm_head.lora_B["default"].weight.fill_(0.01)
        after = model(input_ids=ids, output_hidden_states=True)
    assert all(torch.equal(a, b) for a, b in zip(before.hidden_states, after.hidden_states, strict=True))
    assert not torch.equal(before.logits, after.logits)


def test_the_frozen_output_layer_gets_a_contiguous_input(built):
    """Else torch copies the frozen weight once per batch row (seconds per batch for Gemma's vocabulary on a CPU)."""
    name, folder, df = built
    cfg = _family_config(name, folder)
    model, tok = apply_lora(load_base_model(cfg.model), cfg.lora, seed=0), load_tokenizer(cfg.model)
    rows = encode_frame(tok, train_pool(df).head(4), cfg.training.max_len).input_ids
    seen: list[bool] = []
    head = model.base_model.model.lm_head.base_layer
    head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].is_contiguous()))
    with torch.no_grad():  # logits_to_keep hands the output layer a strided view of the last positions
        answer_forward(model, rows, tok.pad_token_id, torch.device("cpu"))
    assert seen == [True] and not head.weight.requires_grad


def test_hidden_states_are_the_block_outputs_then_the_final_norm(built):
    name, folder, df = built
    family, cfg = FAMILIES[name], _family_config(name, folder)
    model, tok = load_base_model(cfg.model), load_tokenizer(cfg.model)
    rows = encode_frame(tok, train_pool(df).head(4), cfg.training.max_len).input_ids
    blocks: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda _m, _a, out: blocks.append(out)) for b in model.model.layers]
    embedded = []
    hooks.append(model.model.embed_tokens.register_forward_hook(lambda _m, a, _o: embedded.append(a[0])))
    with torch.no_grad():
        _, states = answer_forward(model, rows, tok.pad_token_id, torch.device("cpu"), [0, 1, 2])
        normed = model.model.norm(blocks[-1])
    for hook in hooks:
        hook.remove()
    assert len(states) == num_layers(model) + 1 == 3
    scale = math.sqrt(SMALL["hidden_size"]) if name.startswith("gemma") else 1.0  # Gemma scales its embeddings
    raw = F.embedding(embedded[0], model.model.embed_tokens.weight)
    torch.testing.assert_close(states[0], (raw * torch.tensor(scale, dtype=raw.dtype))[:, -3], rtol=0, atol=0)
    assert torch.equal(states[1], blocks[0][:, -3]) and torch.equal(states[2], normed[:, -3])
    assert resolve_layers("all", 2, family.hub_id) == [1, 2]  # 'all' includes the final-norm layer
    assert resolve_layers(cfg.model.layers, 2, family.hub_id) == ([1, 2] if family.final_norm_layer else [1])


@pytest.mark.slow
def test_finetune_and_score_run_in_bf16_on_the_cpu(built, tmp_path):
    name, folder, df = built
    cfg = _family_config(name, folder)
    member = toy_members(len(train_pool(df)))
    log = finetune(cfg, df, member, 0, None, tmp_path / "ckpts", device="cpu", progress=False)
    assert log["total_steps"] == 4 and all(math.isfinite(p["loss"]) for p in log["loss"])
    path = score_shadow(cfg, df, member, 0, None, tmp_path / "ckpts", tmp_path / "scores.npz", device="cpu",
                        progress=False)  # fmt: skip
    s = read_scores(path)
    assert s["layers"].tolist() == FAMILIES[name].all_layers(2) and s["checkpoints"].tolist() == [0, 1, 2, 4]
    assert np.isfinite(s["psmi"][:, :, member]).all() and np.isnan(s["psmi"][:, :, ~member]).all()
    assert np.isfinite(s["loss"]).all() and np.isfinite(s["test_loss"]).all()
    median = np.median(s["loss"][:, member], axis=1)
    assert median[-1] < median[0]  # the adapters trained and each checkpoint's weights were loaded
