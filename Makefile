# Two commands: `make demo` (set up .venv, train the digits CNN on CPU) and `make test` (the whole suite, offline).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow bench venv clean

venv: $(STAMP)

# pip resolves torch/torchvision like any other dependency; on a machine with a local wheel cache it stays offline.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/accelerate launch --config_file launch_configs/cpu.yaml \
		-m accel_train train --config examples/configs/digits.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python -m pytest -q -m benchmark -s tests/benchmarks

clean:
	rm -rf $(VENV) runs build *.egg-info
