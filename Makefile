# Two commands do all set-up: `make app` and `make test` (README).
# Each creates .venv with python3 if missing and (re)installs the project into it
# whenever pyproject.toml is newer than the last install.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT   ?= 8501
# this machine only; to serve a class: make app ADDRESS=0.0.0.0 BSQ_APP_RUNS=0 (README)
ADDRESS ?= 127.0.0.1

.PHONY: install app test lab bench examples clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip  # -qq: errors only (warnings about absent local indexes are noise)
	$(BIN)/python -m pip install -qq -e '.[dev,ray]'  # dev: the extras the tests use; ray: its sweep test
	touch $(STAMP)

install: $(STAMP)

app: $(STAMP)
	$(BIN)/bsq-explore app --port $(PORT) --address $(ADDRESS)

# ruff first (pyproject's [tool.ruff]); then -n auto: one worker per core; loadfile keeps a file's shared
# fixtures (a trained run, a sweep) on one worker
test: $(STAMP)
	$(BIN)/ruff check bsq_explore tests app benchmarks
	$(BIN)/python -m pytest -n auto --dist loadfile

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

bench: $(STAMP)
	$(BIN)/python benchmarks/engine.py

# The shipped example sweeps, made by the kit's own command. Each completes what is missing (a killed
# `make examples` resumes) and never repeats a finished run; to remake a sweep, delete its folders
# first (rm -rf data/examples/fashion-*). Checkpoints are dropped to stay small; the float models stay,
# so a sweep can gain alphas later without retraining them.
# Measured on 2 CPU cores: digits 2.5 min (machine busy), fashion 38 min with its Hessian twins; cifar10 (all 60k images, bf16,
# 2 threads, one run at a time): 80 float epochs in 2.9 h (median 97 s an epoch), then each BSQ run, baseline
# and Hessian twin of 17 epochs in 24-27 min on a quiet machine (82-89 s an epoch; up to 75 min while tests
# share the cores), the twins after about 4 min to decode the JPEGs and measure traces: 15.5 h of logged epoch
# time in all, across sessions (README, CIFAR-10).
SWEEP  := $(BIN)/bsq-explore sweep --runs data/examples
PRUNE  := find data/examples -name checkpoint.pt -delete
CIFAR10 ?= ../shared/datasets/cifar10
.PHONY: examples-digits examples-fashion examples-cifar10
examples: examples-digits examples-fashion examples-cifar10

examples-digits: $(STAMP)
	$(SWEEP) --jobs 2 --preset digits-mlp --name digits --alphas 0,0.05,0.1,0.16,0.25,0.3,0.35,0.4,0.5,1 --hessian 32
	$(PRUNE)

examples-fashion: $(STAMP)
	$(SWEEP) --jobs 2 --preset fashion-lenet5 --name fashion --alphas 0,0.002,0.005,0.01,0.015,0.02,0.03,0.05,0.1,0.2,0.5 \
	    --uniform 1,2,3,4,8 --hessian 32
	$(PRUNE)

# --jobs 1: the preset's runs take 2 threads each; then a Hessian twin of every BSQ run (32 samples)
examples-cifar10: $(STAMP)
	$(SWEEP) --jobs 1 --preset cifar10-resnet20-cpu --name cifar10 --dataset folder:$(CIFAR10) \
	    --alphas 0,0.02,0.05,0.07,0.1,0.15,0.2,0.3,0.6 --uniform 2,3,4 --equal-compute --hessian 32
	$(PRUNE)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
