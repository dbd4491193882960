# fire-lightning — run `make help` for the targets.
# Each target sets up .venv itself: torch 2.13.0 first (the CPU build on these machines;
# a bare `torch` requirement would pull gigabytes of CUDA packages), then the package.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0

.PHONY: help venv demo peers lint test test-all clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)  ## create .venv and install the package with its dev extras

demo: $(STAMP)  ## the main job: train FIRE on the embedded 2D phantom, benchmark it against ANTs, report (CPU, < 20 min)
	$(VENV)/bin/fire demo $(ARGS)

peers: $(STAMP)  ## the full peer table on the demo's test pairs: FIRE and the MI-CNN (demo budget; runs kept and reused), ANTs, Greedy, elastix (CPU, ~31 min; ~18 with the runs there)
	test -f runs/peers-fire/training.json || $(VENV)/bin/fire train phantom2d run.name=peers-fire
	test -f runs/peers-micnn/training.json || $(VENV)/bin/fire train phantom2d_micnn run.name=peers-micnn
	$(VENV)/bin/fire benchmark runs/peers-fire --compare runs/peers-micnn --peers ants,greedy,elastix --refine 10 \
		--out runs/peers-fire/benchmark-peers $(ARGS)

lint: $(STAMP)  ## ruff over the tree (rules in pyproject.toml; the default test run includes it, tests/test_lint.py)
	$(VENV)/bin/ruff check .

test: $(STAMP)  ## the default test run (CPU, a few minutes; slow tests excluded)
	$(PY) -m pytest -q $(ARGS)

test-all: $(STAMP)  ## every test, the slow ones too
	$(PY) -m pytest -q -m "slow or not slow" $(ARGS)

clean:  ## remove the virtual environment and caches (runs/ is kept)
	rm -rf $(VENV) .pytest_cache build *.egg-info
