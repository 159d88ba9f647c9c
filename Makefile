# Two commands: `make demo` (set up .venv, train the digits CNN on CPU) and `make test` (the whole suite, offline).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow bench venv clean

venv: $(STAMP)

# pip resolves torch/torchvision like any other dependency; on a machine with a local wheel cache it stays offline.
# CONSTRAINTS pins every package to the version the whole suite last passed with (a dependency's new release
# changed what the suite saw between two runs of one commit). `make venv CONSTRAINTS=` installs the newest within
# pyproject.toml's ranges; once `make test` passes there, `$(BIN)/python -m pip freeze --exclude-editable >
# tests/constraints.txt` moves the pins.
CONSTRAINTS ?= tests/constraints.txt

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]' $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
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
