"""memaudit estimate: exact counts against the paper's setups and real models, times against the stated formula."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from memaudit.cli import main
from memaudit.config import load_config
from memaudit.cost.counts import audit_counts, pool_sizes
from memaudit.cost.estimate import DEVICES, MEAN_TOKENS, UTILISATION, estimate
from memaudit.cost.models import TINY_VOCAB, model_shape
from memaudit.model.lora import apply_lora

# docs/method.md §1.5: train pool, members per model, steps per epoch (batch 2 × accumulation 2), total steps
PAPER = {
    "arc-mistral": (2000, 1000, 250, 2500),
    "ethics-mistral": (15880, 7940, 1985, 19850),
    "mmlu-mistral": (30000, 15000, 3750, 37500),
    "mmlu-llama": (30000, 15000, 3750, 37500),
    "mmlu-gemma": (30000, 15000, 3750, 37500),
}


@pytest.mark.parametrize("preset", sorted(PAPER))
def test_the_paper_presets_count_the_papers_setup(preset):
    c = audit_counts(load_config(preset=preset))
    assert (c.train_pool, c.members, c.steps_per_epoch, c.steps_per_shadow) == PAPER[preset]
    assert c.n_shadows == 100 and c.epochs == 10
    spe = c.steps_per_epoch  # the method's schedule: 5 checkpoints in epoch 1, then every epoch end
    assert [s for s, _ in c.checkpoints] == [0, *(k * spe // 5 for k in range(1, 5)), *(e * spe for e in range(1, 11))]
    assert c.samples_trained == c.members * 10 * 100
    assert c.scoring_rows == 15 * (c.train_pool + c.test_rows) * 100


def test_the_demo_counts_what_its_run_trains():
    cfg = load_config(preset="demo")
    c = audit_counts(cfg)
    assert pool_sizes(cfg) == (1067, 133) and c.members == 533  # the demo's summary: n_members 533
    assert c.steps_per_shadow == 67 * 14 and len(c.checkpoints) == 19
    assert pool_sizes(load_config(preset="smollm2-smoke")) == (43, 5)  # pool_size 48, 1/9 held out


def _tiny_model(cfg) -> LlamaForCausalLM:
    t = cfg.model.tiny
    config = LlamaConfig(vocab_size=TINY_VOCAB, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                         num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
                         num_key_value_heads=t.num_attention_heads, tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def test_shapes_count_parameters_and_lora_like_the_real_modules():
    cfg = load_config(preset="demo")
    model = _tiny_model(cfg)
    shape = model_shape(cfg.model)
    assert shape.params == sum(p.numel() for p in model.parameters())
    wrapped = apply_lora(model, cfg.lora, seed=0)
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    assert shape.lora_params(cfg.lora.target_modules, cfg.lora.r) == trainable
    assert shape.lora_params(["q_proj"], 4) == 4 * (64 + 64) * 2  # r × (in + out) × blocks


def test_time_follows_the_stated_flops_model():
    cfg = load_config(preset="arc-mistral")
    est, c = estimate(cfg, "h100"), audit_counts(cfg)
    rate = 989e12 * UTILISATION
    tokens = MEAN_TOKENS["arc"]
    assert est.train_s == pytest.approx(1_000_000 * tokens * 4 * 7_241_732_096 / rate)
    assert est.score_s == pytest.approx(c.scoring_rows * tokens * 2 * 7_241_732_096 / rate)
    assert estimate(cfg, "a100").train_s == pytest.approx(est.train_s * 989 / 312)
    assert est.early_warning_s < 0.01 * (est.train_s + est.score_s)
    assert "estimated from FLOPs" in est.source
    demo = estimate(load_config(preset="demo"), "cpu")
    assert demo.source.startswith("measured") and demo.train_s == pytest.approx(368.3)  # the demo's fine-tune task time
    assert set(DEVICES) == {"h100", "a100", "l4", "cpu"}


def test_cli_prints_counts_with_their_source(capsys):
    main(["estimate", "--preset", "arc-mistral", "--device", "h100"])
    out = capsys.readouterr().out
    assert "2,500 steps per shadow" in out and "100 shadows: 250,000 steps, 1,000,000 samples" in out
    assert "3,375,000 forward passes (15 checkpoints × 2,250 rows × 100 shadows)" in out
    assert "device-hours on NVIDIA H100 SXM" in out and "estimated from FLOPs" in out and "early warning" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "demo", "--device", "tpu"], "unknown device 'tpu'"),
        (["--preset", "arc-mistral", "--set", "model.name=org/unknown-7b"], "does not know the size of org/unknown"),
    ],
)
def test_cli_refuses_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["estimate", *argv])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and message in err and len(err.splitlines()) == 1


REAL_CONFIGS = {  # the real models' config.json sizes, built on the meta device (no weights)
    "mistralai/Mistral-7B-v0.1": ("MistralConfig", {"num_key_value_heads": 8, "intermediate_size": 14336}),
    "meta-llama/Llama-2-7b-hf": ("LlamaConfig", {"num_key_value_heads": 32, "intermediate_size": 11008}),
    "google/gemma-7b": (
        "GemmaConfig",
        {
            "num_key_value_heads": 16,
            "intermediate_size": 24576,
            "head_dim": 256,
            "num_attention_heads": 16,
            "hidden_size": 3072,
            "num_hidden_layers": 28,
            "vocab_size": 256000,
            "tie_word_embeddings": True,
        },
    ),
    "google/gemma-2-2b": (
        "Gemma2Config",
        {
            "num_key_value_heads": 4,
            "intermediate_size": 9216,
            "head_dim": 256,
            "num_attention_heads": 8,
            "hidden_size": 2304,
            "num_hidden_layers": 26,
            "vocab_size": 256000,
            "tie_word_embeddings": True,
        },
    ),
    "HuggingFaceTB/SmolLM2-135M-Instruct": (
        "LlamaConfig",
        {
            "num_key_value_heads": 3,
            "intermediate_size": 1536,
            "num_attention_heads": 9,
            "hidden_size": 576,
            "num_hidden_layers": 30,
            "vocab_size": 49152,
            "tie_word_embeddings": True,
        },
    ),
}


@pytest.mark.parametrize("name", sorted(REAL_CONFIGS))
def test_known_shapes_match_the_real_architectures(name):
    import transformers

    kind, sizes = REAL_CONFIGS[name]
    config = getattr(transformers, kind)(**{"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
                                            "vocab_size": 32000, "tie_word_embeddings": False, **sizes})  # fmt: skip
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    shape = model_shape(load_config(preset="demo", overrides=[f"model.name={name}"]).model)
    assert shape.params == sum(p.numel() for p in model.parameters())
    attention = model.model.layers[0].self_attn
    assert (shape.q_out, shape.kv_out) == (attention.q_proj.out_features, attention.k_proj.out_features)


def test_the_line_before_a_run_never_stops_it():
    from memaudit.cli.estimate import estimate_line

    line = estimate_line(load_config(preset="arc-mistral"), "a100")
    assert line.startswith("estimate: 100 shadows × 2,500 steps, 3,375,000 scoring passes; ~") and "A100" in line
    unknown = load_config(preset="arc-mistral", overrides=["model.name=org/unknown-7b"])
    assert estimate_line(unknown, "h100") == "estimate: none (memaudit does not know the size of org/unknown-7b)"
