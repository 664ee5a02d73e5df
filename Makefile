# Set-up and checks for a fresh machine: `make demo`, `make test`.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; on a GPU machine use e.g. TORCH_SPEC="torch" (CUDA build).
TORCH_SPEC ?= torch==2.13.0
BIN = $(VENV)/bin
DEMO_INDEX = .engine-demo

.PHONY: install demo test test-quick test-fp32 lint format clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: install
	$(BIN)/engine index examples/corpus --index $(DEMO_INDEX)
	$(BIN)/engine info --index $(DEMO_INDEX)
	@echo; echo '--- search without an instruction'
	$(BIN)/engine search "how do plants make sugar" --index $(DEMO_INDEX) -k 3
	@echo; echo '--- search with an instruction'
	$(BIN)/engine search "how do plants make sugar" --index $(DEMO_INDEX) -k 3 \
		--instruct "Given a question, retrieve passages that answer it"

test: install lint
	$(BIN)/pytest -q

# Everything but the tests marked slow (subprocess, torchrun and kill -9 end-to-end runs).
test-quick: install lint
	$(BIN)/pytest -q -m "not slow"

# The precision-dependent tests again as a CPU without bf16 runs them: strict fp32, and oneDNN
# held to AVX2 (no AVX-512, no bf16 or AMX instructions), whatever this CPU has.
test-fp32: install
	ENGINE_PRECISION=fp32 ONEDNN_MAX_CPU_ISA=AVX2 $(BIN)/pytest -q -m precision

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) $(DEMO_INDEX) .pytest_cache .ruff_cache
