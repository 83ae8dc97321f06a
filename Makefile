# verl-vgpo: `make test` and `make demo` from a fresh clone. Everything installs into ./.venv.
PYTHON_BOOT ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
STAMP       := $(VENV)/.verl-vgpo-installed
ALGO        ?= vgpo
STEPS       ?=
EXPERIMENT_ARGS ?=
PYTEST_ARGS ?=

.PHONY: install test test-all check demo experiment bench clean-venv

$(STAMP): setup.py constraints.txt
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@# torch first and pinned: a plain resolve of verl's dependencies would fetch another multi-GB build
	$(PIP) install -q -c constraints.txt torch torchvision
	$(PIP) install -q -c constraints.txt -e '.[test]'
	$(PY) -c "import torch, torchvision, verl, verl_vgpo; print('torch', torch.__version__, '| verl', verl.__version__)"
	@touch $(STAMP)

install: $(STAMP)

# fast tier: no main_ppo launch, no warm-start training, no real TransferQueue (under 5 min on 2 cores)
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider -m "not slow" $(PYTEST_ARGS)

# everything: the fast tier, the main_ppo end-to-end runs and the warm-start training (what CI runs)
test-all: $(STAMP) check
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider --durations=15 $(PYTEST_ARGS)

# repository checks: the run script shipped as package data with its examples/ link; no import cycle
check: $(STAMP)
	$(PY) .ci/check_layout.py

# warm start (cached), then $(ALGO) through main_ppo; greedy validation before/after -> artifacts/demo/summary.json
demo: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m verl_vgpo.apps.demo --algo $(ALGO) $(if $(STEPS),--steps $(STEPS)) --out artifacts/demo

# GRPO vs VGPO, same warm start, data and seeds -> artifacts/experiment/report.md (EXPERIMENT_ARGS=--quick: 2 seeds)
experiment: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m verl_vgpo.apps.experiment --out artifacts/experiment $(EXPERIMENT_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_estimator.py
	$(PY) benchmarks/bench_focus.py
	$(PY) benchmarks/bench_logprob_focus.py
	$(PY) benchmarks/bench_step.py
	$(PY) benchmarks/gpu_check.py --smoke --out artifacts/gpu_check_smoke.json

clean-venv:
	rm -rf $(VENV)
