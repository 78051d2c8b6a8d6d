import json
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file

import memaudit.model.loading as loading
import memaudit.model.tiny as tiny
from memaudit.config import LoraSettings, ModelConfig, TinyModelConfig
from memaudit.errors import MemauditError
from memaudit.model.loading import load_base_model, load_tokenizer, resolve_device
from memaudit.model.lora import apply_lora, load_adapter_weights, lora_parameter_count, lora_state, save_adapter
from memaudit.model.tiny import BUILT_MARKER, build_tiny_model, build_word_tokenizer, ensure_base_model
from tests.support.toy_pool import (
    TINY,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    toy_config,
    toy_corpus,
    toy_pool,
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def corpus():
    return toy_corpus(toy_pool())


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "tiny-models"


@pytest.fixture(scope="module")
def cfg():
    return toy_config()


@pytest.fixture(scope="module")
def built(cfg, corpus, cache_dir):
    return ensure_base_model(cfg.model, corpus, cache_dir)


def test_tiny_model_loads_back_through_user_code(cfg, built):
    tok = load_tokenizer(cfg.model, built)
    model = load_base_model(cfg.model, built)
    assert tok.padding_side == "left" and tok.truncation_side == "left" and tok.pad_token is not None
    c = model.config
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads) == (32, 64, 2, 2)
    assert c.vocab_size == len(tok) and c.eos_token_id == tok.eos_token_id and c.pad_token_id == tok.pad_token_id
    assert model.dtype == torch.float32 and not model.training
    info = json.loads((built / BUILT_MARKER).read_text())
    assert info["pretrain_loss"]["last"] < info["pretrain_loss"]["first"] - 0.3  # pre-training learned something


def test_tiny_model_is_reused_and_keyed_by_corpus_and_settings(cfg, corpus, built, cache_dir):
    stamp = (built / "model.safetensors").stat().st_mtime_ns
    assert ensure_base_model(cfg.model, corpus, cache_dir) == built
    assert (built / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    other = toy_config("model.tiny.pretrain_steps=0")
    assert ensure_base_model(other.model, corpus[:10], cache_dir) != built
    assert ensure_base_model(other.model, corpus, cache_dir) != built
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_tiny_model_build_uses_the_folder_another_process_finished(cfg, corpus, tmp_path, monkeypatch, built):
    theirs = ensure_base_model(cfg.model, corpus, tmp_path)  # digest of cfg + corpus
    marker = (theirs / BUILT_MARKER).read_text() + "theirs"
    shutil.rmtree(theirs)
    real = tiny.pretrain_causal_lm

    def slow_pretrain(*args, **kwargs):  # meanwhile another process completes the same folder
        shutil.copytree(built, theirs)
        (theirs / BUILT_MARKER).write_text(marker)
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny, "pretrain_causal_lm", slow_pretrain)
    assert ensure_base_model(cfg.model, corpus, tmp_path) == theirs
    assert (theirs / BUILT_MARKER).read_text() == marker
    assert [p.name for p in tmp_path.iterdir()] == [theirs.name]


def test_tiny_model_init_is_seeded(corpus, tmp_path):
    tok = build_word_tokenizer(corpus)
    tiny = TinyModelConfig(**TINY)
    a = build_tiny_model(tiny, tok, tmp_path / "a")
    b = build_tiny_model(tiny, tok, tmp_path / "b")
    c = build_tiny_model(tiny.model_copy(update={"seed": 1}), tok, tmp_path / "c")
    for (name, wa), wb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(wa, wb), name
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_tiny_model_errors(cfg, tmp_path):
    with pytest.raises(MemauditError, match="corpus for the tiny model is empty"):
        ensure_base_model(cfg.model, ["", "  "], tmp_path)
    with pytest.raises(MemauditError, match="only 'tiny-llama'"):
        ensure_base_model(ModelConfig(name="org/model"), ["text"], tmp_path)
    bad = TinyModelConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(MemauditError, match="not a multiple"):
        build_tiny_model(bad, build_word_tokenizer(["a b"]), tmp_path / "bad")


def test_load_errors_name_the_fix(cfg, built, tmp_path, monkeypatch):
    with pytest.raises(MemauditError, match=r"built locally.*--base-model"):
        load_base_model(cfg.model)
    with pytest.raises(MemauditError, match=r"not found.*model.local_path"):
        load_tokenizer(cfg.model, tmp_path / "nowhere")
    with pytest.raises(MemauditError, match=r"layers \[3\] out of range.*2 layers"):
        load_base_model(toy_config("model.layers=[1, 3]").model, built)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as unreachable, without retries
    with pytest.raises(MemauditError, match=r"cannot load.*model.local_path"):
        load_tokenizer(ModelConfig(name="memaudit-test/absent-model"))


def test_local_path_and_bf16(cfg, built):
    model_cfg = cfg.model.model_copy(update={"local_path": str(built), "dtype": "bfloat16"})
    model = load_base_model(model_cfg)
    assert model.dtype == torch.bfloat16
    assert load_tokenizer(model_cfg).eos_token_id == model.config.eos_token_id


def test_nf4_error_paths(cfg, built, monkeypatch):
    nf4 = cfg.model.model_copy(update={"quantization": "nf4"})
    with pytest.raises(MemauditError, match=r"nf4.*needs a CUDA device"):
        load_base_model(nf4, built, device="cpu")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as when not installed
    with pytest.raises(MemauditError, match=r"needs bitsandbytes.*memaudit\[gpu\]"):
        loading._nf4_kwargs(torch.device("cuda"))


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(MemauditError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(MemauditError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_lora_parameter_count_matches_peft_and_scales_with_r(cfg, built):
    counts = []
    for r in (4, 8):
        lora = LoraSettings(r=r)
        model = load_base_model(cfg.model, built)
        expected = lora_parameter_count(model, lora)
        peft_model = apply_lora(model, lora, seed=0)
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        assert trainable == expected == lora_parameter_count(peft_model, lora)
        counts.append(expected)
    # by hand: 2 blocks × (4 attn 32→32 + gate/up 32→64 + down 64→32) + lm_head 32→V
    vocab = load_base_model(cfg.model, built).config.vocab_size
    assert counts[0] == 4 * (2 * (4 * 64 + 2 * 96 + 96) + 32 + vocab)
    assert counts[1] == 2 * counts[0]


def test_lora_init_is_seeded_and_targets_must_exist(cfg, built):
    lora = LoraSettings(r=4)
    a = lora_state(apply_lora(load_base_model(cfg.model, built), lora, seed=3))
    b = lora_state(apply_lora(load_base_model(cfg.model, built), lora, seed=3))
    c = lora_state(apply_lora(load_base_model(cfg.model, built), lora, seed=4))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if "lora_A" in k)
    assert all(not v.any() for k, v in a.items() if "lora_B" in k)  # B starts at zero: adapter = identity
    with pytest.raises(MemauditError, match=r"\['w_proj'\]"):
        apply_lora(load_base_model(cfg.model, built), LoraSettings(target_modules=["q_proj", "w_proj"]), seed=0)


def test_adapter_holds_only_lora_weights_and_round_trips(cfg, built, tmp_path):
    lora = LoraSettings(r=4)
    model = apply_lora(load_base_model(cfg.model, built), lora, seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    save_adapter(model, tmp_path / "adapter")
    keys = load_file(tmp_path / "adapter" / "adapter_model.safetensors").keys()
    assert keys and all("lora_A" in k or "lora_B" in k for k in keys)
    assert any("lm_head.lora_B" in k for k in keys)  # lm_head is adapted, but its full weight is not saved
    other = apply_lora(load_base_model(cfg.model, built), lora, seed=1)
    load_adapter_weights(other, tmp_path / "adapter", lora)
    want, got = lora_state(model), lora_state(other)
    assert all(torch.equal(want[k], got[k]) for k in want)

    with pytest.raises(MemauditError, match="trained with r=4"):
        load_adapter_weights(
            apply_lora(load_base_model(cfg.model, built), LoraSettings(r=2), 0), tmp_path / "adapter", LoraSettings(r=2)
        )
    (tmp_path / "adapter" / "adapter_model.safetensors").write_bytes(b"truncated")
    with pytest.raises(MemauditError, match="unreadable"):
        load_adapter_weights(other, tmp_path / "adapter", lora)


@pytest.mark.gpu
@cuda
def test_nf4_loads_in_4bit_on_cuda(cfg, built):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    model = load_base_model(cfg.model.model_copy(update={"quantization": "nf4"}), built, device="cuda")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    lora = LoraSettings(r=4)
    expected = lora_parameter_count(model, lora)
    peft_model = apply_lora(model, lora, seed=0)
    assert sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == expected
    out = peft_model(input_ids=torch.tensor([[1, 5, 6, 7]], device="cuda"))
    assert torch.isfinite(out.logits.float()).all()


def test_corrupted_model_folder_is_a_clear_error(cfg, built, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(built, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(MemauditError, match=r"cannot load the weights from folder .*complete folder"):
        load_base_model(cfg.model, broken)


def test_a_damaged_cached_model_is_set_aside_and_built_again(cfg, corpus, built, tmp_path, caplog):
    from memaudit.store.seal import MARKER

    cache = tmp_path / "cache"
    shutil.copytree(built, cache / built.name)
    cached = cache / built.name
    assert (cached / MARKER).is_file() and ensure_base_model(cfg.model, corpus, cache) == cached  # verified, reused
    weights = cached / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # one bit flipped
    with caplog.at_level("WARNING", logger="memaudit.model.tiny"):
        again = ensure_base_model(cfg.model, corpus, cache)
    assert again == cached and weights.read_bytes() == good  # rebuilt, seeded: the same bytes
    assert "fails its checksums (model.safetensors)" in caplog.text
    assert [p.name.startswith(f".damaged-{built.name}") for p in cache.iterdir() if p != cached] == [True]
