# Two commands on a fresh machine: `make serve` and `make test`. Both build .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := constraints/cpu.txt
STAMP := $(VENV)/.installed

.PHONY: venv test lint format serve bench clean

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
test: lint
	$(PY) -m pytest -q

# Until the pre-trained model ships in the repository, `make serve` trains a small
# stand-in (training/configs/quickstart.yaml) and publishes it as `default` once.
DEFAULT_MODEL := registry/default

$(DEFAULT_MODEL): | $(STAMP)
	$(VENV)/bin/pdeserve pretrain --config quickstart --no-ray --storage runs --run-name quickstart --quiet
	$(VENV)/bin/pdeserve export --checkpoint runs/quickstart/model --name default --registry registry

serve: $(STAMP) | $(DEFAULT_MODEL)
	$(VENV)/bin/pdeserve serve

bench: $(STAMP)
	$(PY) bench/datagen.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
