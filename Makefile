# The two set-up commands of the README: `make demo` and `make test`. Each builds .venv by itself.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
export OMP_WAIT_POLICY ?= PASSIVE
STAMP := $(VENV)/.installed

.PHONY: demo gallery test test-all bench lint clean venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/landscape demo

# The README gallery: the demo's figures as PNGs in analyses/gallery/ (each < 300 KB; committed).
# Reuses the runs and results of `make demo` (it computes only what is missing) and redraws the figures.
gallery: $(STAMP)
	$(VENV)/bin/landscape demo --redraw --gallery analyses/gallery

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

# The slice bench's peer, loss-landscapes, is not a test dependency; --no-deps so it never pulls
# another torch (it needs only numpy and torch, both installed).
bench: $(STAMP)
	$(PY) -m pip install -q --no-deps loss-landscapes==3.0.6
	$(PY) bench/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
