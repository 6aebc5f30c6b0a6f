# slicectl: `make up` brings up a single-node testbed with a demo slice; `make test` runs
# the whole suite. Both work on a fresh Debian bookworm machine as root and are idempotent.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: up test host venv lint unit plc docker bench clean-test

# make up PLC=https://plc.example.org/PLCAPI/ NODE_KEY=plnode.txt joins that PLC instead
# of hosting one here (see the README's "Growing to many machines").
up: host venv
	$(BIN)/slicectl node up $(if $(PLC),--plc-url $(PLC) --node-key $(NODE_KEY) $(if $(PLC_CAFILE),--cafile $(PLC_CAFILE)))
	ln -sf $(CURDIR)/$(BIN)/slicectl /usr/local/bin/slicectl

test: host venv lint
	$(BIN)/slicectl node prepare
	$(BIN)/pytest -q -m unit
	$(BIN)/pytest -q -m plc
	$(BIN)/pytest -q -m "docker or testbed" --durations=15

host:
	bash scripts/install-host.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

lint: venv
	$(BIN)/ruff check slicectl sensors auditd tests bench
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -q -m unit

plc: venv
	$(BIN)/pytest -q -m plc

docker: venv
	$(BIN)/pytest -q -m docker

bench: venv
	$(BIN)/python bench/node_bench.py
	$(BIN)/python bench/net_bench.py
	$(BIN)/python bench/audit_bench.py
	$(BIN)/python bench/sensor_bench.py
	$(BIN)/python bench/raw_bench.py
	$(BIN)/python bench/plc_bench.py
	$(BIN)/python bench/dormant_bench.py --slivers 1000 --wakes 50
