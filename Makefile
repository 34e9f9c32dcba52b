# hwsearch: everything a fresh clone needs. `make demo` and `make test` set up on their own.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FASHION_DIR := /usr/share/datasets/fashion-mnist
TRIALS ?= 20
REFINE ?= 2

.PHONY: setup data test-deps demo test test-fast bench lint clean teachers

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Real Fashion-MNIST and WordNet 3.0 (the real-text task's glosses) from Debian's packages; nothing is
# downloaded at run time.
WORDNET_DIR := /usr/share/wordnet
data:
	@need=""; \
	[ -f $(FASHION_DIR)/train-images-idx3-ubyte.gz ] || [ -n "$$HWSEARCH_DATA" ] || need="$$need dataset-fashion-mnist"; \
	[ -f $(WORDNET_DIR)/data.noun ] || [ -n "$$HWSEARCH_WORDNET" ] || need="$$need wordnet-base"; \
	if [ -z "$$need" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q $$need >/dev/null || \
		{ apt-get update -q >/dev/null && apt-get install -y -q $$need >/dev/null; }; \
	else \
		echo "missing:$$need: run 'sudo apt-get install$$need' (or set HWSEARCH_DATA to a folder with the four Fashion-MNIST IDX files, HWSEARCH_WORDNET to one with WordNet's data.noun)"; exit 1; \
	fi

# Servers and browsers the tests start for real: PostgreSQL (multi-worker storage), Chromium (report and
# dashboard checks), and the optional optuna-dashboard (pinned: the version its browser test was written for);
# as root, qemu-user and an arm64 root of Debian's Python with ONNX Runtime's aarch64 wheel (/var/tmp, built once)
# for the agent-on-ARM test.
test-deps: setup
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock optuna-dashboard==0.21.0 bottle==0.13.4
	@need=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || need="$$need postgresql"; \
	command -v chromium >/dev/null 2>&1 || need="$$need chromium"; \
	if [ -n "$$need" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get install -y -q $$need >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q $$need >/dev/null; }; \
		else echo "note:$$need missing (sudo apt-get install$$need); the tests that need them will skip"; fi; \
	fi
	@if [ "$$(id -u)" = 0 ]; then \
		command -v qemu-aarch64 >/dev/null 2>&1 || apt-get install -y -q qemu-user >/dev/null || \
			{ apt-get update -q >/dev/null && apt-get install -y -q qemu-user >/dev/null; }; \
		$(BIN)/python benchmarks/bench_arm_qemu.py --prepare-only || \
			echo "note: the arm64 root could not be built (above); the ARM agent test will skip"; \
	else echo "note: not root: the ARM agent test (qemu-user, an arm64 Python root) will skip"; fi

demo: setup data
	$(BIN)/hwsearch run --task fashion-mnist --space spaces/default.yaml \
		--device device_profiles/local-1core.yaml --trials $(TRIALS) --refine $(REFINE) --study demo

# Tests that assert on measured speed run alone after the rest: a parallel worker's training on the other core
# makes a same-round ratio swing by 20% or more (an int8 model measured 1.16x its fp32 parent beside it).
# The 15 slowest tests print: where the 15-minute budget goes.
test: setup data test-deps
	$(BIN)/python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder -m "not timing" --durations=15
	$(BIN)/python -m pytest -q -m timing

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup data
	$(BIN)/python benchmarks/run_all.py

# Retrain the built-in teachers and ship them (search/tasks/shipped/: the files a fresh clone verifies and uses).
teachers: setup data
	$(BIN)/hwsearch tasks --retrain digits --ship
	$(BIN)/hwsearch tasks --retrain fashion-mnist --ship
	$(BIN)/hwsearch tasks --retrain wordnet-supersense --ship
	$(BIN)/hwsearch tasks --retrain wordnet-lm --ship

lint: setup
	$(BIN)/ruff check search tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
