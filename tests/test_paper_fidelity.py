"""The five paper presets against the tables of docs/method.md: layers, off-the-shelf layer, hyper-parameters,
checkpoint schedule and pool sizes. The expected values are read from the document, so code and doc agree."""

import re
from pathlib import Path

import pytest

from memaudit.config import load_config
from memaudit.config.presets import LORA_TARGETS
from memaudit.data.pool import holdout_positions
from memaudit.stages.schedule import schedule_for

METHOD = (Path(__file__).resolve().parents[1] / "docs" / "method.md").read_text()
SETUPS = {
    "ARC-Mistral": "arc-mistral",
    "ETHICS-Mistral": "ethics-mistral",
    "MMLU-Mistral": "mmlu-mistral",
    "MMLU-Llama": "mmlu-llama",
    "MMLU-Gemma": "mmlu-gemma",
}


def _section(number: str) -> str:
    """The text of section ``number`` of docs/method.md, up to the next heading of the same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(number)}\.? .*$", METHOD, flags=re.MULTILINE)
    assert match, f"docs/method.md has no section {number}"
    level = len(match.group(1))
    rest = METHOD[match.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, flags=re.MULTILINE)
    return rest[: end.start()] if end else rest


def _table(number: str, first_column: str) -> dict[str, dict[str, str]]:
    """The markdown table of section ``number`` whose header starts with ``first_column``: row name → cells."""
    tables: list[list[list[str]]] = [[]]
    for line in _section(number).splitlines():
        if not line.startswith("|"):
            tables.append([])
            continue
        cells = [c.strip().strip("*").strip() for c in line.strip("|").split("|")]
        if not set("".join(cells)) <= set("-: "):
            tables[-1].append(cells)
    tables = [t for t in tables if t]
    header, *rows = next(t for t in tables if t[0][0] == first_column)
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d+(?:\.\d+)?(?:e-?\d+)?", text)]


def _layer_range(text: str) -> list[int]:
    first, last = map(int, re.search(r"(\d+)\.\.(\d+)", text).groups())
    return list(range(first, last + 1))


@pytest.fixture(scope="module", params=list(SETUPS))
def setup(request):
    return request.param, load_config(preset=SETUPS[request.param])


def test_layers_are_all_layers_and_off_the_shelf_is_the_last(setup):
    name, cfg = setup
    per_setup = _table("3.3", "setup")[name]  # §3.3: which model each setup uses
    models = {row["Hub id"].strip("`"): row for row in _table("3.1", "short name").values()}
    hub_id = {"Mistral-7B": "mistralai/Mistral-7B-v0.1", "Llama-2-7B": "meta-llama/Llama-2-7b-hf"}.get(
        per_setup["model"], "google/gemma-7b"
    )
    assert cfg.model.name == hub_id
    all_layers = _layer_range(models[hub_id]["`all_layers` (layer search)"])  # §3.1
    assert cfg.model.layers == all_layers
    off_the_shelf = cfg.evaluation.off_the_shelf_layer or cfg.model.layers[-1]  # None: the last computed layer
    assert off_the_shelf == all_layers[-1]  # §6.2: 32, Gemma 27
    assert (cfg.evaluation.off_the_shelf_layer == 27) == ("gemma" in cfg.model.name)


def test_training_hyper_parameters(setup):
    name, cfg = setup
    common = _table("3.3", "setting")  # §3.3, common to the five setups
    lr, warmup = _numbers(common["learning rate"]["value"])[:2]
    batch, accum = _numbers(common["batch"]["value"])[:2]
    r, alpha, dropout = _numbers(common["LoRA"]["value"])[:3]
    t = cfg.training
    assert (t.learning_rate, t.warmup_steps, t.batch_size, t.grad_accum) == (lr, warmup, batch, accum)
    assert t.epochs == _numbers(common["epochs"]["value"])[0] and t.max_len == _numbers(common["max_len"]["value"])[0]
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (r, alpha, dropout)
    assert set(cfg.lora.target_modules) == set(LORA_TARGETS) and "lm_head" in cfg.lora.target_modules
    per_setup = _table("3.3", "setup")[name]
    assert cfg.scoring.batch_size == int(per_setup["eval batch"])
    assert cfg.shadows.n_shadows == 100 and cfg.shadows.scheme == "paper"  # §2


def test_pool_sizes(setup):
    name, cfg = setup
    dataset = name.split("-")[0]
    sources = _table("1.1", "dataset")[dataset]  # §1.1
    cap = int(_numbers(sources["train_hf (cap)"])[-1])
    test_hf = int(_numbers(sources["test_hf"])[0]) if _numbers(sources["test_hf"]) else 0
    assert cfg.dataset.max_train_rows == cap
    train, test = holdout_positions(cap + test_hf, cfg.dataset.holdout_fraction, cfg.dataset.seed)
    assert (len(train), len(test)) == (int(sources["train pool (8/9)"]), int(sources["test (1/9)"]))
    sizes = next(row for key, row in _table("1.5", "setup").items() if key.split(" ")[0] == dataset.upper())  # §1.5
    assert len(train) == int(sizes["train pool"])


def _documented_schedule(dataset: str) -> list[int]:
    """The steps of §3.4's listing for ``dataset``: the listed ones, the ellipsis continuing the last stride."""
    line = next(line for line in _section("3.4").splitlines() if line.startswith(dataset.upper() + " "))
    head, _, last = line.split(" ", 1)[1].partition("…")
    steps = [int(x) for x in re.findall(r"\d+", head)]
    stride, final = steps[-1] - steps[-2], int(re.findall(r"\d+", last)[0])
    return steps + list(range(steps[-1] + stride, final + 1, stride))


def test_checkpoint_schedule(setup):
    name, cfg = setup
    dataset = name.split("-")[0]
    sizes = next(row for key, row in _table("1.5", "setup").items() if key.split(" ")[0] == dataset.upper())
    members = int(sizes["members per model (½)"])
    schedule = schedule_for(cfg, members)  # §3.4
    assert [step for step, _ in schedule] == _documented_schedule(dataset)
    assert schedule[-1][0] == int(sizes["total steps (10 epochs)"])
    assert [epoch for _, epoch in schedule][:6] == [0, 0.2, 0.4, 0.6, 0.8, 1.0] and len(schedule) == 15
    per_setup = _table("3.3", "setup")[name]
    assert schedule[1][0] == int(per_setup["save_steps (1/5 epoch)"])
