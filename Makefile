# The two commands of the README. Both install what they need first (idempotent).
PY := .venv/bin/python

.PHONY: setup demo test unit integration lint bench mutate
setup:
	@bash scripts/setup.sh

demo: setup
	@.venv/bin/multiconsole demo

test: setup
	@.venv/bin/ruff check multiconsole tests bench
	@.venv/bin/pytest -q -p no:cacheprovider --durations=15

unit: setup
	@.venv/bin/pytest -q tests/unit tests/engine

integration: setup
	@.venv/bin/pytest -q tests/integration

lint: setup
	@.venv/bin/ruff check multiconsole tests bench
	@.venv/bin/ruff format --check multiconsole tests bench

bench: setup
	@$(PY) bench/agent.py
	@$(PY) bench/monitor.py
	@$(PY) bench/proxy.py
	@$(PY) bench/overlay_start.py
	@$(PY) bench/images.py
	@$(PY) bench/keys.py

# Mutation testing of the pure modules (not part of `make test`: it takes a while).
mutate: setup
	@$(PY) scripts/mutate.py
