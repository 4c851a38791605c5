# First run, tests and benchmarks on a development machine.
#
#   make run    virtual environment, demo model if the store has none, then serve
#   make test   virtual environment, then the whole test suite
#
# Every variable below can be overridden: make run PORT=9000 STORE=/srv/models

PYTHON ?= python3
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 8000
STORE ?= model_store
# Demo model: trained once on the sample shipped in the repository.
DEMO_DATA ?= samples/magnetic_tile
DEMO_CLASS ?= magnetic_tile
DEMO_EPOCHS ?= 60
DEMO_IMAGE_SIZE ?= 128
# The tested torch pair. pyproject.toml accepts older releases too, so this
# pin is installed first to keep pip from picking another build.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
# Served against bare-model latency for one class of the store; extra options
# go in BENCH_ARGS, for example BENCH_ARGS='--concurrency 1 4 --requests 50'.
BENCH_CLASS ?= $(DEMO_CLASS)
BENCH_ARGS ?=

VENV_PYTHON := $(VENV)/bin/python
# Reinstalls only when the packaging metadata changes, so repeated runs of
# `make run` and `make test` start at once.
VENV_STAMP := $(VENV)/.installed

.PHONY: venv test demo-model run bench clean

venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	test -x $(VENV_PYTHON) || $(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install $(TORCH_PINS)
	$(VENV_PYTHON) -m pip install -e '.[test]'
	touch $@

test: venv
	$(VENV_PYTHON) -m pytest

# Trains only when no class in the store has a model.json, so an operator's
# own models are never overwritten.
demo-model: venv
	@if ls $(STORE)/*/model.json >/dev/null 2>&1; then \
		echo "$(STORE)/ already contains a model, so no demo model is trained."; \
	else \
		echo "Training the demo model on $(DEMO_DATA) into $(STORE)/$(DEMO_CLASS)/ (a few minutes on a CPU)"; \
		$(VENV_PYTHON) -m training fit --data $(DEMO_DATA) --class-name $(DEMO_CLASS) \
			--store $(STORE) --epochs $(DEMO_EPOCHS) --image-size $(DEMO_IMAGE_SIZE); \
	fi

run: venv demo-model
	@echo "Open http://$(HOST):$(PORT)/"
	AEXAD_MODEL_STORE=$(STORE) exec $(VENV_PYTHON) -m uvicorn service.main:app --host $(HOST) --port $(PORT)

bench: venv demo-model
	$(VENV_PYTHON) benchmarks/service_latency.py --store $(STORE) --class-name $(BENCH_CLASS) $(BENCH_ARGS)

# Removes what `make venv` and test runs create. The model store stays,
# because it may contain models that took long to train.
clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
