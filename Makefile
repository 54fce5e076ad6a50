# varaccel: `make test` sets everything up and runs the whole regression; `make run` does the main job.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pytest-xdist workers: the machines have 2 cores.
JOBS ?= 2
# One CI shard of N: `make test SHARD=1/4` (see README); JUNIT=FILE keeps its results for the report.
SHARD ?=
JUNIT ?=

.PHONY: all venv test test-golden test-rtl verilog run synth lint bench clean distclean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, by its exact version: the local CPU wheel. Anything that pulls torch
	# afterwards is satisfied by it instead of downloading a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

venv: $(STAMP)

verilog: $(STAMP)
	$(VENV)/bin/varaccel verilog --out build/verilog

test: $(STAMP) verilog
	$(PY) -m pytest -n $(JOBS) $(if $(SHARD),--shard $(SHARD)) $(if $(JUNIT),--junitxml=$(JUNIT)) tests

test-golden: $(STAMP)
	$(PY) -m pytest -n $(JOBS) tests -m "not rtl"

test-rtl: $(STAMP)
	$(PY) -m pytest -n $(JOBS) tests -m rtl

run: $(STAMP)
	$(VENV)/bin/varaccel run

synth: $(STAMP)
	$(VENV)/bin/varaccel synth --all

bench: $(STAMP)
	$(PY) -m sim.bench

clean:
	rm -rf build

distclean: clean
	rm -rf $(VENV) *.egg-info
