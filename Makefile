# The two set-up commands of the README: `make demo` and `make test`. Each builds .venv by itself.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
export OMP_WAIT_POLICY ?= PASSIVE
STAMP := $(VENV)/.installed

.PHONY: demo gallery test test-all bench lint clean venv analyses

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

# The benches' peers are not test dependencies. --no-deps so none pulls another torch:
# curvlinops-for-pytorch requires backpack-for-pytorch, which requires torchvision (a CUDA torch);
# the parts the benches call import only what is listed here (+ numpy, scipy, tqdm, installed).
BENCH_PEERS = loss-landscapes==3.0.6 pyhessian==0.1 curvlinops-for-pytorch==3.0.1 einops==0.8.2 \
	einconv==0.1.0 linear_operator==0.6.1 hessian-eigenthings==1.0.0a5
bench: $(STAMP)
	$(PY) -m pip install -q --no-deps $(BENCH_PEERS)
	$(PY) bench/run_all.py

# The research scripts of analyses/ (README "Research scripts"), one after another; they share
# the training runs in checkpoints/, so only the first trains. ARGS goes to each, e.g. ARGS=--quick.
ANALYSES := $(sort $(filter-out analyses/runs.py,$(wildcard analyses/*.py)))
analyses: $(STAMP)
	@set -e; for script in $(ANALYSES); do echo "== $$script"; $(PY) $$script $(ARGS); done

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
