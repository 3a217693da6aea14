# Two commands do all set-up: `make app` and `make test` (README).
# Each creates .venv with python3 if missing and (re)installs the project into it
# whenever pyproject.toml is newer than the last install.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT   ?= 8501

.PHONY: install app test lab bench examples clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip  # -qq: errors only (warnings about absent local indexes are noise)
	$(BIN)/python -m pip install -qq -e '.[dev,ray]'
	touch $(STAMP)

install: $(STAMP)

app: $(STAMP)
	$(BIN)/streamlit run app/main.py --server.headless true --server.port $(PORT)

# -n auto: one worker per core; loadfile keeps a file's shared fixtures (a trained run, a sweep) on one worker
test: $(STAMP)
	$(BIN)/python -m pytest -n auto --dist loadfile

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

bench: $(STAMP)
	$(BIN)/python benchmarks/engine.py

# The shipped example sweep, made by the kit's own command; checkpoints are dropped to stay small.
EXAMPLE_ALPHAS ?= 0,0.05,0.1,0.16,0.25,0.3,0.35,0.4,0.5,1
examples: $(STAMP)
	rm -rf data/examples/digits-*
	$(BIN)/bsq-explore sweep --preset digits-mlp --alphas $(EXAMPLE_ALPHAS) --jobs 2 --runs data/examples --name digits
	find data/examples \( -name checkpoint.pt -o -name float.pt \) -delete

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
