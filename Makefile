# Persona: `make demo` runs the system on a local broker, `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

TRAIN := .venv-train
TEST_MODELS := var/test-models/encoder

.PHONY: setup setup-train test-models demo test test-unit lint clean kafka-down

setup: $(VENV)/.installed

# The trainer environment (torch, transformers; no Faust): see README, "Environments".
setup-train: $(TRAIN)/.installed

$(TRAIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(TRAIN)
	$(TRAIN)/bin/pip install -q --upgrade pip
	$(TRAIN)/bin/pip install -q -e ".[train,test]"
	touch $@

# fp32 and int8 exports of the packaged encoder, for the encoder and hot-swap tests.
test-models: setup-train
	bash deploy/test-models.sh $(TEST_MODELS)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[worker,test]"
	touch $@

demo: setup
	bash deploy/demo.sh

# The whole suite (unit, integration on a real broker, chaos). pytest's exit code 5 (no
# tests collected) is a failure here, and so is any broker or worker left running.
test: setup test-models
	bash deploy/run-tests.sh

test-unit: setup
	$(BIN)/python -m pytest -q tests/unit

lint: setup
	$(BIN)/mypy --strict state scoring stream_app encoders export deploy

kafka-down:
	-$(BIN)/persona kafka down

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache
