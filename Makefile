# Two commands for users: `make demo` and `make test`. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export MPLBACKEND ?= Agg

.PHONY: setup test demo preview data lint clean-venv

setup: $(STAMP)

# Re-installs only when the pinned requirements or the package metadata change.
$(STAMP): requirements.txt setup.py setup.cfg package.xml
	@bash tools/ensure_system_deps.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check --select F --quiet .
	$(PY) -m pytest -q tests

# Fake depth camera -> grasp node over DDS -> files, picture, latency and quality table.
demo: $(STAMP)
	$(VENV)/bin/dvqvae-grasp demo --out demo_out

# PNG renders of the hand model in four poses.
preview: $(STAMP)
	$(VENV)/bin/dvqvae-hand preview --out demo_out/hand

# The default training set (data/grasps), rebuilt from its committed compact form in
# datasets/default: meshes and surface points are regenerated and checked. Resumable.
data: $(STAMP)
	$(VENV)/bin/dvqvae-data unpack datasets/default data/grasps

lint: $(STAMP)
	$(VENV)/bin/ruff check --select F .

clean-venv:
	rm -rf $(VENV)
