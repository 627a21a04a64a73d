# Two commands on a fresh machine: `make serve` and `make test`. Both build .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := constraints/cpu.txt
STAMP := $(VENV)/.installed

.PHONY: venv test test-cluster lint format serve demo pretrained bench clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[train,serve,client,dev]"
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# pytest exits 5 when it collects no test: that is a failure here, not a pass.
# The tests on a Ray cluster of several nodes (marker `cluster`, ~4 minutes) have a target
# of their own: with them `make test` took 20.5 minutes on the 2-core machine.
test: lint
	$(PY) -m pytest -q -m "not cluster"

test-cluster: $(STAMP)
	$(PY) -m pytest -q -m cluster

# The service on the bundled default model (models/default), at http://127.0.0.1:8000.
serve: $(STAMP)
	$(VENV)/bin/pdeserve serve

# One solve per system in surrogate and validate modes, a Darcy problem (a two-phase
# medium) in surrogate, validate and auto modes: errors, error estimates, timings and
# demo.png; starts the service when none answers at $$PDESERVE_URL (default 127.0.0.1:8000).
demo: $(STAMP)
	$(VENV)/bin/pdeserve demo --out demo.png

# The bundled model's recipe, data generation to publish: the GPU variant where torch sees
# a GPU (training/configs/pretrained.yaml), else the CPU one (mixed-fields-small, about two
# hours on 2 cores). Resumable: RUN=NAME make pretrained again after a kill.
pretrained: $(STAMP)
	PY=$(PY) bash training/pretrained.sh

bench: $(STAMP)
	$(PY) -m bench.datagen

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
