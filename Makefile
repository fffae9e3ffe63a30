# Persona: `make demo` runs the system on a local broker, `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

TRAIN := .venv-train
# Empty: the default is deploy/workers.py's TEST_MODEL_REGISTRY.
TEST_MODELS ?=

.PHONY: setup setup-train test-models ops-tools demo test test-heavy soak test-unit lint evaluation clean kafka-down

# How long each step of `make test` takes, printed into the log ("== make <target>: ...").
# make expands every line of a recipe before it runs the first, so $(T0) in a recipe's last
# line is the time its first line started.
T0 = $(shell date +%s)
STARTED = @echo "== make $@: started $$(date -u +%H:%M:%S) UTC"
TOOK = @echo "== make $@: took $$(( $$(date +%s) - $(T0) )) s"

setup: $(VENV)/.installed

# The trainer environment (torch, transformers; no Faust): see README, "Environments".
setup-train: $(TRAIN)/.installed

$(TRAIN)/.installed: pyproject.toml
	$(STARTED)
	$(PYTHON) -m venv $(TRAIN)
	$(TRAIN)/bin/pip install -q --upgrade pip
	$(TRAIN)/bin/pip install -q -e ".[train,test]"
	touch $@
	$(TOOK)

# fp32 and int8 exports of the packaged encoder, for the encoder and hot-swap tests.
test-models: setup-train
	$(STARTED)
	bash deploy/test-models.sh $(TEST_MODELS)
	$(TOOK)

$(VENV)/.installed: pyproject.toml
	$(STARTED)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[worker,test]"
	touch $@
	$(TOOK)

# Debian's prometheus and promtool: the alert-rule tests and the real-Prometheus scrape test.
ops-tools:
	bash deploy/prometheus/install.sh

demo: setup
	bash deploy/demo.sh

# The whole suite (unit, integration on a real broker, chaos). pytest's exit code 5 (no
# tests collected) is a failure here, and so is any broker or worker left running.
test: setup test-models ops-tools
	$(STARTED)
	bash deploy/run-tests.sh
	$(TOOK)

# The tests marked heavy (not in `make test`): three broker bounces mid-replay, 10,000 malformed
# records among MovieLens-100k. A few minutes each; they print their figures (-s).
test-heavy: setup
	$(BIN)/python -m pytest -q -s -m heavy tests

# The soak (not in CI): SOAK_MINUTES of MovieLens under a killer schedule (workers SIGTERMed
# and SIGKILLed at random, one broker bounce), then the consistency check; RSS trend in var/soak/.
# SOAK_BATCH=16: the replay in batch records of up to 16 of a user's events.
SOAK_MINUTES ?= 20
SOAK_BATCH ?= 1
soak: setup
	PERSONA_SOAK_MINUTES=$(SOAK_MINUTES) PERSONA_SOAK_BATCH=$(SOAK_BATCH) $(BIN)/python -m pytest -q -s -m soak tests/chaos/test_soak.py

# docs/EVALUATION.md results and plots: the prequential harness on the test slice of each dataset.
evaluation: setup
	$(BIN)/python -m stream_app.evaluation_report --out docs

test-unit: setup
	$(BIN)/python -m pytest -q tests/unit

# ruff (pycodestyle, pyflakes, isort, bugbear) over the tree; mypy --strict over every package.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy --strict state scoring stream_app encoders export deploy bench

kafka-down:
	-$(BIN)/persona kafka down

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache
