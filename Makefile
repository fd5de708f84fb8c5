# Every target runs through uv; uv itself is bootstrapped with pip when missing,
# so a machine with only python3, pip and make can run all of them.
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
RUN := $(UV) run --quiet
# The integration suite includes the Ray Data tests, so it needs the ray extra.
RUN_WITH_RAY := $(UV) run --quiet --extra ray

.PHONY: run test test-unit test-integration test-all lint typecheck bench bench-learning uv

uv:
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv

run: uv
	$(RUN) python main.py

test: uv
	$(RUN_WITH_RAY) pytest -q tests/unit tests/integration

test-unit: uv
	$(RUN) pytest -q tests/unit

test-integration: uv
	$(RUN_WITH_RAY) pytest -q tests/integration

test-all: uv
	$(RUN_WITH_RAY) pytest -q tests -m ''

lint: uv
	$(RUN) ruff check --no-cache src tests benchmarks examples main.py
	$(RUN) ruff format --no-cache --check src tests benchmarks examples main.py
	$(RUN) lint-imports --no-cache

typecheck: uv
	$(RUN) mypy

bench: uv
	$(RUN) python -m benchmarks

# Optimizers on a real small model (DESIGN 13): builds llama-cpp-python and fetches
# SmolLM2-135M once per machine into ~/.cache/plait-bench, DSPy into its own venv there.
bench-learning: uv
	$(RUN) python -m benchmarks.learning
